"""Train sfumato's embedded default model from scratch on the synthetic shapes world, end to end.

    python scripts/train_default_model.py --out runs/default [--images 20000] [--vae-steps 1500]
        [--unet-steps 6000] [--minutes-budget 90]

Stages (each one resumable: re-running the command continues a killed run):
1. render the dataset (`sfumato.data.shapes.write_dataset`, kohya layout);
2. train the VAE (`VAEObjective`) on it;
3. train the text encoder and UNet together (`DiffusionObjective`, VAE frozen) with caption dropout
   for classifier-free guidance;
4. export one SD1-family single-file checkpoint (LDM key layout, fp16, `modelspec.*` metadata) that
   loads through the same code as any user checkpoint, and score it with `sfumato eval shapes`'s checker.

The architecture is a miniature SD1: a 3-level VAE (latents 1/4 of the image: 16×16 at the 64-px
native size), a 64-wide 4-layer CLIP text encoder on the real CLIP tokenizer, and a small UNet whose
attention follows SD1's conventions (8 heads, conv projections), so `models.detect` infers it from
shapes like any fine-tune.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sfumato.data.shapes import write_dataset
from sfumato.models.ldm_export import pipeline_to_single_file, save_single_file
from sfumato.models.loader import clip_tokenizer, sd_alphas_cumprod
from sfumato.training import (
    CaptionOptions,
    DatasetConfig,
    DiffusionObjective,
    KohyaDataset,
    Trainer,
    TrainerConfig,
    VAEObjective,
    latest_checkpoint,
)

RESOLUTION = 64
TEXT_WIDTH = 64


def build_networks(seed: int) -> tuple[AutoencoderKL, CLIPTextModel, UNet2DConditionModel]:
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=RESOLUTION,
        scaling_factor=1.0,  # set from the trained latents' spread before the UNet stage
    )
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
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
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


def train_vae(vae: AutoencoderKL, data: Path, out: Path, steps: int, seed: int) -> None:
    config = TrainerConfig(
        output_dir=out,
        max_steps=steps,
        learning_rate=1e-3,
        lr_scheduler="cosine",
        lr_warmup_steps=50,
        save_every=500,
        seed=seed,
        ema_decay=None,
    )
    trainer = Trainer(
        VAEObjective(vae, reconstruction="l1", kl_weight=1e-6), dataset(data, 32, 0.0, seed), config
    )
    trainer.train(resume_from=latest_checkpoint(out))


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, data: Path, seed: int) -> float:
    """1/std of the latents, as SD's 0.18215 was chosen: the UNet then sees unit-variance latents."""
    sample = dataset(data, 256, 0.0, seed)
    batch = sample.load_batch(0, sample.epoch_plan(0)[0])
    latents = vae.encode(batch["pixel_values"]).latent_dist.mean
    return float(1.0 / latents.std())


def train_unet(
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    unet: UNet2DConditionModel,
    data: Path,
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
        train_text_encoder=True,
        min_snr_gamma=5.0,
    )
    config = TrainerConfig(
        output_dir=out,
        max_steps=steps,
        learning_rate=4e-4,
        lr_scheduler="cosine",
        lr_warmup_steps=200,
        save_every=500,
        seed=seed,
        ema_decay=0.999,
    )
    trainer = Trainer(objective, dataset(data, 64, 0.1, seed), config)
    trainer.train(resume_from=latest_checkpoint(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/default"))
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--unet-steps", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    data_root = args.out / "data"
    if not (data_root / "1_shapes").is_dir():
        write_dataset(data_root, args.images, seed=args.seed, size=RESOLUTION)
    vae, text_encoder, unet = build_networks(args.seed)

    vae_dir = args.out / "vae"
    train_vae(vae, data_root, vae_dir, args.vae_steps, args.seed)
    vae.load_state_dict(_load(vae_dir / "model.safetensors", ""))
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, data_root, args.seed))
    vae.requires_grad_(False).eval()
    print(f"VAE done after {time.time() - started:.0f} s; scaling factor {vae.config.scaling_factor:.4f}")

    unet_dir = args.out / "unet"
    train_unet(vae, text_encoder, unet, data_root, unet_dir, args.unet_steps, args.seed)
    trained = _load(unet_dir / "model.safetensors", "")
    unet.load_state_dict({k.removeprefix("unet."): v for k, v in trained.items() if k.startswith("unet.")})
    text_encoder.load_state_dict(
        {k.removeprefix("text_encoder."): v for k, v in trained.items() if k.startswith("text_encoder.")}
    )
    minutes = (time.time() - started) / 60
    state = pipeline_to_single_file(family="sd1", unet=unet, vae=vae, text_encoder=text_encoder)
    metadata = {
        "modelspec.resolution": f"{RESOLUTION}x{RESOLUTION}",
        "modelspec.prediction_type": "epsilon",
        "modelspec.title": "sfumato shapes (default model)",
        "sfumato.recipe": json.dumps(vars(args) | {"minutes": round(minutes, 1)}, default=str),
        "sfumato.vae_scaling_factor": str(vae.config.scaling_factor),
    }
    path = save_single_file(
        state, args.out / "sfumato-shapes.safetensors", dtype=torch.float16, metadata=metadata
    )
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) after {minutes:.1f} minutes")


def _load(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k.removeprefix(prefix): v for k, v in load_file(str(path)).items() if k.startswith(prefix)}


if __name__ == "__main__":
    main()
