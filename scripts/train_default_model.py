"""Train sfumato's embedded default model from scratch on the synthetic shapes world, end to end.

    python scripts/train_default_model.py --out runs/default [--images 30000] [--vae-steps 3000]
        [--vae-detail-steps 1000] [--text-steps 1000] [--unet-steps 4000] [--threads 2]
        [--vae-from FILE]
    cp runs/default/sfumato-shapes.safetensors src/sfumato/models/data/default/

Stages (each one resumable: re-running the command continues a killed run):
1. render the dataset (`sfumato.data.shapes.write_dataset`, kohya layout);
2. train the VAE (`VAEObjective`) on it, or with `--vae-from` take the VAE of a model this script
   made before (the same recipe: its recipe's VAE minutes are carried over);
3. encode every image once (`LatentCache`, kohya's cache_latents);
4. pretrain the text encoder to name every attribute of its caption (`CaptionLabelObjective`);
5. train the UNet (`DiffusionObjective`, VAE and text encoder frozen) with caption dropout
   for classifier-free guidance;
6. export one SD1-family single-file checkpoint (LDM key layout, fp16, `modelspec.*` metadata) that
   loads through the same code as any user checkpoint. Score it with `sfumato eval shapes --model`.

`--export-checkpoint runs/default/unet/checkpoints/step-001000` exports a checkpoint of a run still
training (with its EMA weights), to score it on the way.

The exported file recommends a CFG scale (`RECOMMENDED`, with the sweep that chose it), which requests
that set none then use (`sfumato.models.recommended`). `--restamp FILE` writes the recommendation into
a model exported before it existed, its tensors untouched: that is how the shipped v8 got it.

The architecture is a miniature SD1: a 3-level VAE (latents 1/4 of the image: 16×16 at the 64-px
native size), a 64-wide 4-layer CLIP text encoder on the real CLIP tokenizer, and a small UNet whose
attention follows SD1's conventions (8 heads, conv projections), so `models.detect` infers it from
shapes like any fine-tune. Sizes and step counts were chosen to fit the 90-minute budget on a 2-core
CPU; the figures behind each choice are in the comments where they are set.

Shape figures in those comments dated up to 2026-12-05 were read by the checker's first shape
classifier (scalar features), which under-read generated shapes: it agreed with a person on 72 of 89
of v8's shapes. Re-scored with silhouettes (`sfumato.eval.shapes`), the shipped v8 reads, over 200 + 100
prompts at seed 0 (and seed 1), at A1111's CFG 7: colour 0.925 (0.9225), shape 0.9425 (0.935),
position 0.99 (0.99), two objects both right 0.61 (0.55); at its recommended CFG 2: colour 0.98
(0.9775), shape 0.9525 (0.93), position 0.9975 (0.9925), two objects 0.83 (0.78). Its VAE round trip
reads 1.00 on every attribute. The figures in the comments were measured at CFG 7. The comparisons
between recipes in the comments still hold (one checker for each), their absolute shape figures do not.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from sfumato.data.shapes import LABEL_CLASSES, dataset_labels, write_dataset
from sfumato.devices import bf16_autocast_helps, pick_device
from sfumato.models.ldm_export import pipeline_to_single_file, save_single_file
from sfumato.models.loader import clip_tokenizer, load_checkpoint, sd_alphas_cumprod
from sfumato.models.recommended import RECOMMENDED_KEY
from sfumato.training import (
    EMA,
    CaptionLabelObjective,
    CaptionOptions,
    DatasetConfig,
    DiffusionObjective,
    KohyaDataset,
    LatentCache,
    Trainer,
    TrainerConfig,
    VAEObjective,
    latest_checkpoint,
)

RESOLUTION = 64
TEXT_WIDTH = 64
# The settings the exported file recommends (`sfumato.models.recommended`): users who leave the CFG
# scale unset get this one. Swept on v8 (2026-12-05; `sfumato eval shapes --count 200 --set cfg_scale=N`,
# seeds 0 and 1; two objects both right, then colour and shape of one object, seed 0):
#   CFG 9: 0.53 (seed 0 only), 0.91, 0.92;  7 (A1111's default): 0.61 / 0.55, 0.925, 0.94;
#   5.5: 0.69 / 0.64;  4: 0.73 / 0.68, 0.95, 0.945;  3: 0.77 / 0.75, 0.96, 0.945;  2.5: 0.78 / 0.74;
#   2: 0.83 / 0.78, 0.98, 0.95;  1.5: 0.72 / 0.76, 0.985, 0.91 (shapes blur below 2).
# Strong guidance over-drives this small model: it leaks one object's colour into the other and drops
# or doubles objects. The one-object attributes gain too.
RECOMMENDED = {"cfg_scale": 2.0}


def build_networks(seed: int) -> tuple[AutoencoderKL, CLIPTextModel, UNet2DConditionModel]:
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        # 32 channels at full resolution: the (16, 32, 64) VAE of v6/v7 turned small stars and crosses
        # into blobs and diamonds (its round trip scored shape 0.82). Measured training step, batch 64
        # of 32² crops: (16, 32, 64) 0.211 s fp32; (32, 64, 128) 0.590 s fp32, 0.299 s bf16 autocast.
        # Tried 2026-12-05 (v11, not shipped): latents 1/2 of the image (32x32) from a (32, 64) VAE, so
        # a small object spans 5 latents, not 2.5 (v8 loses outlines while denoising: img2img from the
        # true picture at strength 0.3 reads shape 0.86 against the round trip's 0.945). With a
        # (32, 64, 96, 128) UNet (attention at 8x8 and 4x4; 0.98 s/step against 0.74-0.82) the budget
        # held 1600 + 600 VAE steps (19.2 min; round trip: shape 0.92, two objects 0.84, as good as
        # v8's), 800 text steps (6.8 min), a 5-minute latent cache and 3350 UNet steps (55.8 min).
        # 200 + 100 prompts: background 0.24, colour 0.78, shape 0.36, position 0.825, two objects 0.02;
        # backgrounds came out pink or blue whatever the prompt named. Four times the latent pixels
        # cost more UNet time per step than this budget can give.
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=RESOLUTION,
        scaling_factor=1.0,  # set from the trained latents' spread before the UNet stage
    )
    # Start with a narrow posterior (std e^-3): with the default std of 1 the decoder first has to learn
    # through noise as large as the latents, which cost most of a short run (measured: 150 steps gave a
    # reconstruction L1 of 0.20 at std 1 and 0.19 at e^-3; at lr 2e-3 L1 did not fall below 0.40).
    with torch.no_grad():
        vae.quant_conv.bias[vae.config.latent_channels :] = -6.0
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=TEXT_WIDTH,
            intermediate_size=4 * TEXT_WIDTH,
            num_hidden_layers=4,
            num_attention_heads=TEXT_WIDTH // 16,  # models.detect: 16-wide heads below 128 channels
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=TEXT_WIDTH,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // 4,
        in_channels=4,
        out_channels=4,
        # Cross-attention at 8x8 and 4x4 (and the middle), none at 16x16: attention over 256 positions
        # was half the step's time (3.0 s vs 1.6 s at batch 64) and objects are 3-5 latents wide.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        # Tried 2026-12-05 (v9, not shipped): (96, 128, 128), to draw outlines at 16x16 more sharply. Its
        # step took 0.96-1.03 s against 0.74 s, so 3000 steps fit the budget instead of 4000, and it
        # scored worse everywhere: colour 0.84, shape 0.58, two objects 0.18, cross 0.10 (v8: 0.925,
        # 0.67, 0.29, 0.24). At this budget, steps matter more than width at 16x16.
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,  # SD1 convention: 8 heads
    )
    return vae, text_encoder, unet


def dataset(folder: Path, batch_size: int, dropout: float, seed: int) -> KohyaDataset:
    config = DatasetConfig(
        resolution=(RESOLUTION, RESOLUTION),
        batch_size=batch_size,
        buckets=((RESOLUTION, RESOLUTION),),
        captions=CaptionOptions(caption_dropout_rate=dropout),
        seed=seed,
    )
    return KohyaDataset.from_folder(folder, config)


def _vae_stage(objective: VAEObjective, data: Path, out: Path, steps: int, seed: int, warmup: int) -> None:
    """bf16 autocast where the device has bf16 matrix units: the VAE's step then takes half the time
    (above). The UNet's and the text encoder's steps gain nothing from it (1.03×,
    `benchmarks/default_model_training.py`), so they stay fp32."""
    config = TrainerConfig(
        output_dir=out,
        max_steps=steps,
        learning_rate=1e-3,
        lr_scheduler="cosine",
        lr_warmup_steps=warmup,
        mixed_precision="bf16" if bf16_autocast_helps(pick_device()) else "no",
        save_every=250,
        seed=seed,
        ema_decay=None,
    )
    batches = dataset(data, VAE_BATCH, 0.0, seed)
    Trainer(objective, batches, config).train(resume_from=latest_checkpoint(out))


# The VAE trains on 32² crops, batch 64 (the pixels of 16 whole images per step, so the same time per
# step), centred on an object 80 % of the time: compute goes to objects' edges, not flat background.
VAE_CROP, VAE_BATCH = 32, 64


def train_vae(vae: AutoencoderKL, data: Path, out: Path, steps: int, detail_steps: int, seed: int) -> None:
    """Two stages on object-centred crops: MSE, then L1 with the objects' pixels weighted 11×.

    Measured with the checker on reconstructions of held-out scenes (`sfumato eval shapes --reconstruct`,
    200 one-object and 100 two-object): the (32, 64, 128) VAE under bf16 autocast (v8, 23.6 min) reads
    shape 0.93, small objects 0.83, two objects 0.83; the (16, 32, 64) one in fp32 (v6, 19.7 min) read
    0.82, 0.61 and 0.63. Earlier (2026-12-04, one-object scenes): 3000 + 1000 steps on crops read colour
    1.00, shape 0.84, position 1.00; the one before (1700 + 600 steps on whole images, batch 16) read
    colour 0.89, shape 0.35, position 0.995: its reconstructions were too blurred to tell a ring, cross
    or star from a disc. Crops also run faster (3.8 steps/s against 2.1 at the same pixels per step:
    attention in the VAE's middle block is over 64 positions instead of 256).
    """
    objective = VAEObjective(vae, reconstruction="mse", crop_size=VAE_CROP)
    _vae_stage(objective, data, out / "vae", steps, seed, warmup=50)
    detail = VAEObjective(vae, reconstruction="l1", foreground_weight=10.0, crop_size=VAE_CROP)
    _vae_stage(detail, data, out / "vae-detail", detail_steps, seed + 1, warmup=30)


def pretrain_text_encoder(
    text_encoder: CLIPTextModel, data_root: Path, out: Path, steps: int, seed: int
) -> None:
    """Teach the encoder to tell every attribute apart before the UNet sees it (`CaptionLabelObjective`).

    Measured: without this stage the jointly trained encoder never separated the position words and
    the model drew objects where the seed put them (position 0.14, chance 0.11).
    """
    data = dataset(data_root, 256, 0.0, seed)
    labels = torch.tensor(dataset_labels([item.path for item in data.items]))
    objective = CaptionLabelObjective(text_encoder, clip_tokenizer(False), labels, LABEL_CLASSES)
    config = TrainerConfig(
        output_dir=out,
        max_steps=steps,
        learning_rate=1e-3,
        lr_scheduler="cosine",
        lr_warmup_steps=50,
        save_every=250,
        seed=seed,
    )
    Trainer(objective, data, config).train(resume_from=latest_checkpoint(out))
    load_prefixed(text_encoder, out / "model.safetensors", "text_encoder.")


def load_prefixed(module: torch.nn.Module, weights: Path, prefix: str) -> None:
    """Load the `prefix`-ed tensors of a stage's weights file into `module`."""
    trained = load_file(str(weights))
    module.load_state_dict({k.removeprefix(prefix): v for k, v in trained.items() if k.startswith(prefix)})


@torch.no_grad()
def latent_scaling_factor(cache: LatentCache) -> float:
    """1/std of the latents, as SD's 0.18215 was chosen: the UNet then sees unit-variance latents."""
    return float(1.0 / torch.stack(list(cache.mean)).std())


def train_unet(
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    unet: UNet2DConditionModel,
    data: KohyaDataset,
    cache: LatentCache,
    out: Path,
    steps: int,
    seed: int,
) -> None:
    objective = DiffusionObjective(
        unet,
        vae,
        text_encoder,
        clip_tokenizer(False),
        sd_alphas_cumprod(),
        min_snr_gamma=5.0,
        # Tried 2026-12-05 (v10, not shipped): v8 loses the shapes' outlines in the low-noise steps
        # (`TimestepBias`'s docstring), so plain eps MSE with t < 500 drawn 3x as often
        # (`TimestepBias("earlier", multiplier=3.0, portion=0.5)`). 200 + 100 prompts: shape 0.69 (v8
        # 0.67; large 0.81, small 0.52), but colour 0.77 (0.925), background 0.87 (0.997), position 0.955
        # (0.99), two objects 0.15 (0.29): the noisy steps that were drawn less set the colours.
        # Plain backgrounds are all low frequency: offset noise lets the model set an image's mean colour
        # instead of inheriting it from the initial noise (SD's schedule never reaches zero SNR).
        noise_offset=0.1,
        # The text encoder stays as `pretrain_text_encoder` left it. Measured (2026-12-04): trained
        # jointly, it collapsed "top left" vs "top right" from a relative L2 of 0.42 to 0.06 while the UNet
        # learned only the row words, and every column word drew the same image (position 0.28). Frozen,
        # with the crop-trained VAE and 4000 steps: colour 0.97, shape 0.61, position 0.99, count 0.97,
        # two objects both right 0.31 (`sfumato eval shapes --count 200`); the UNet step is 0.79 s, not 0.86.
        # With a fifth of the captions leaving sizes or positions out (v7, shipped): colour 0.905, shape
        # 0.55, position 0.95, two objects 0.19, but on short prompts (no size, no position) background
        # and colour 1.00 instead of 0.12. The VAE bounds shape: its own round trip of the true images
        # scores shape 0.82 and two objects 0.63 (`sfumato eval shapes --reconstruct`). v8 (shipped):
        # the (32, 64, 128) VAE (round trip: shape 0.93, two objects 0.83) and a tenth of the captions
        # underspecified: colour 0.925, shape 0.67, position 0.99, two objects 0.29; short prompts
        # background 1.00, colour 0.98, shape 0.70. UNet step 0.74 s (49.3 min for 4000 steps).
        train_text_encoder=False,
        latent_cache=cache,
    )
    config = TrainerConfig(
        output_dir=out,
        max_steps=steps,
        learning_rate=5e-4,
        lr_scheduler="cosine",
        lr_warmup_steps=100,
        save_every=250,
        seed=seed,
        ema_decay=0.995,
    )
    trainer = Trainer(objective, data, config)
    trainer.train(resume_from=latest_checkpoint(out))


def load_unet_stage(weights: Path, unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Load the UNet stage's weights (its `model.safetensors`, or a checkpoint's) into the UNet."""
    load_prefixed(unet, weights, "unet.")
    return unet


def export(
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    unet: UNet2DConditionModel,
    path: Path,
    recipe: dict[str, object],
) -> Path:
    """One SD1-family single file (fp16, LDM keys, `modelspec.*` metadata) that loads like any checkpoint."""
    state = pipeline_to_single_file(family="sd1", unet=unet, vae=vae, text_encoder=text_encoder)
    metadata = {
        "modelspec.resolution": f"{RESOLUTION}x{RESOLUTION}",
        "modelspec.prediction_type": "epsilon",
        "modelspec.title": "sfumato shapes (default model)",
        "sfumato.recipe": json.dumps(recipe, default=str),
        RECOMMENDED_KEY: json.dumps(RECOMMENDED),
        "sfumato.vae_scaling_factor": str(vae.config.scaling_factor),
        "sfumato.vae_norm_num_groups": str(vae.config.norm_num_groups),
    }
    return save_single_file(state, path, dtype=torch.float16, metadata=metadata)


def restamp_recommended(path: Path) -> None:
    """Write `RECOMMENDED` into a model this script exported before; its tensors stay as they are."""
    with safe_open(str(path), framework="pt") as source:
        metadata = source.metadata() or {}
    save_file(
        load_file(str(path)), str(path), metadata={**metadata, RECOMMENDED_KEY: json.dumps(RECOMMENDED)}
    )


def trained_vae(vae: AutoencoderKL, vae_dir: Path) -> AutoencoderKL:
    vae.load_state_dict(load_file(str(vae_dir / "model.safetensors")))
    return vae.requires_grad_(False).eval()


def export_checkpoint(
    folder: Path,
    text_weights: Path,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    unet: UNet2DConditionModel,
) -> Path:
    """A UNet-stage checkpoint as a single file, with its EMA weights (what the final model would hold)
    and the pretrained text encoder (`text_weights`, the text stage's `model.safetensors`)."""
    load_unet_stage(folder / "model.safetensors", unet)
    load_prefixed(text_encoder, text_weights, "text_encoder.")
    ema = EMA(list(unet.parameters()), decay=0.0)
    ema.load_state_dict(load_file(str(folder / "ema.safetensors")))
    with ema.swapped():
        return export(
            vae, text_encoder, unet, folder / "sfumato-shapes.safetensors", {"checkpoint": folder.name}
        )


def _trained_seconds(run: Path) -> float:
    """Training time of a stage across all its resumes: the last row of its `log.csv`."""
    with (run / "log.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return float(rows[-1]["seconds"]) if rows else 0.0


def _vae_minutes(vae_from: Path | None, out: Path) -> float:
    """The VAE stages' training minutes: this run's, or those recorded in the model it came from."""
    if vae_from is None:
        return round((_trained_seconds(out / "vae") + _trained_seconds(out / "vae-detail")) / 60, 1)
    with safe_open(str(vae_from), framework="pt") as source:
        return float(json.loads((source.metadata() or {})["sfumato.recipe"])["vae_minutes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/default"))
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--vae-detail-steps", type=int, default=1000)
    parser.add_argument("--text-steps", type=int, default=1000)
    parser.add_argument("--unet-steps", type=int, default=4000)  # 52.6 min at 0.79 s/step (2026-12-04)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--vae-from",
        type=Path,
        help="take the VAE of this single-file model (one this script made) instead of training one",
    )
    parser.add_argument(
        "--export-checkpoint",
        type=Path,
        help="only export this UNet-stage checkpoint folder (to score a run while it trains)",
    )
    parser.add_argument(
        "--restamp",
        type=Path,
        help="only write this script's recommended settings into a model it exported before",
    )
    args = parser.parse_args()
    if args.restamp is not None:
        restamp_recommended(args.restamp)
        return
    torch.set_num_threads(args.threads)
    started = time.time()
    data_root = args.out / "data"
    if not (data_root / "1_shapes").is_dir():
        write_dataset(data_root, args.images, seed=args.seed, size=RESOLUTION)
    vae, text_encoder, unet = build_networks(args.seed)
    vae_dir, unet_dir = args.out / "vae-detail", args.out / "unet"
    data = dataset(data_root, 64, 0.1, args.seed)

    if args.vae_from is not None:
        vae = load_checkpoint(args.vae_from, device=torch.device("cpu"), dtype=torch.float32).vae
        vae = vae.requires_grad_(False).eval()
    else:
        if args.export_checkpoint is None:
            train_vae(vae, data_root, args.out, args.vae_steps, args.vae_detail_steps, args.seed)
            print(f"VAE done after {time.time() - started:.0f} s")
        vae = trained_vae(vae, vae_dir)
    cache = LatentCache.load_or_encode(unet_dir / "latents.safetensors", data, vae)
    vae.register_to_config(scaling_factor=latent_scaling_factor(cache))
    print(
        f"latents cached after {time.time() - started:.0f} s; scaling factor {vae.config.scaling_factor:.4f}"
    )

    if args.export_checkpoint is not None:
        text_weights = args.out / "text" / "model.safetensors"
        print(f"wrote {export_checkpoint(args.export_checkpoint, text_weights, vae, text_encoder, unet)}")
        return
    pretrain_text_encoder(text_encoder, data_root, args.out / "text", args.text_steps, args.seed)
    print(f"text encoder pretrained after {time.time() - started:.0f} s")
    train_unet(vae, text_encoder, unet, data, cache, unet_dir, args.unet_steps, args.seed)
    load_unet_stage(unet_dir / "model.safetensors", unet)
    minutes = (time.time() - started) / 60
    recipe = {k: v for k, v in vars(args).items() if k not in ("export_checkpoint", "restamp")} | {
        "vae_minutes": _vae_minutes(args.vae_from, args.out),
        "text_minutes": round(_trained_seconds(args.out / "text") / 60, 1),
        "unet_minutes": round(_trained_seconds(unet_dir) / 60, 1),
        "process_minutes": round(minutes, 1),
    }
    path = export(vae, text_encoder, unet, args.out / "sfumato-shapes.safetensors", recipe)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) after {minutes:.1f} minutes")


if __name__ == "__main__":
    main()
