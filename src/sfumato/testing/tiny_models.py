"""Tiny random-weight Stable Diffusion models in the real file formats, for tests.

No weights can be downloaded where our tests run, so this factory builds each family's networks with
the *structure* of the real ones (block types and numbering, transformer depths, conv vs linear
projections, SDXL's size/crop embedding, 4 VAE levels so latents are 1/8 of the image, the real CLIP
vocabulary and 77 positions) but tiny widths, and writes them as real single-file checkpoints
(`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*` / `conditioner.embedders.*`)
or diffusers folders. Loading code then runs exactly as it does on a downloaded model.

Deterministic: the same variant and seed give the same tensors on every machine.

Variants and what tells them apart in a file:
- `sd1`, `sd1-inpaint` (UNet in_channels 9), `sd1-pix2pix` (8): CLIP-L text encoder.
- `sd2` (512-base, epsilon) and `sd2-v` (768-v, v-prediction): OpenCLIP-H-style encoder, linear
  transformer projections. Their files are identical in structure, as real SD2 512 and 768-v files are;
  the prediction type lives only in the yaml/scheduler config. A loader must take it from the user, a
  yaml beside the file, the name, or (as A1111 does) guess it from a test forward pass. `write_single_file`
  deliberately stores no hint, like the real files.
- `sdxl`, `sdxl-inpaint` (9): CLIP-L + OpenCLIP-bigG-style encoder with projection, `label_emb`.

SD2's text encoder is written whole, with all its layers, in both formats. Real SD2 single files hold 24
OpenCLIP layers and A1111 uses the penultimate one's output; stabilityai's diffusers repos hold the first
23. A loader that builds SD2 from a single file without its last layer (as diffusers does) therefore
matches `text_encoder(ids, output_hidden_states=True).hidden_states[-2]` of the tiny model.

Default image size is 64 px (UNet `sample_size` 8, VAE 64) so that pipelines run fast when a test does
not choose one; real SD1 is 512 px. Widths change at the same levels as the real ones, so every tiny key
name is a real key name (see `unet_config`).

The tiny OpenCLIP projection is deliberately not square (width 64 -> 48), unlike the real ones, so that a
transposed `text_projection` fails by shape instead of passing unnoticed.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import pathlib
import shutil
import struct
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sfumato.models.ldm_export import Family, pipeline_to_single_file, save_single_file

Variant = Literal["sd1", "sd1-inpaint", "sd1-pix2pix", "sd2", "sd2-v", "sdxl", "sdxl-inpaint"]


@dataclass(frozen=True)
class VariantSpec:
    """What distinguishes a variant: family, UNet input channels, prediction type, diffusers pipeline."""

    family: Family
    in_channels: int
    prediction_type: Literal["epsilon", "v_prediction"]
    pipeline_class: str
    scheduler_class: str


VARIANTS: dict[str, VariantSpec] = {
    "sd1": VariantSpec("sd1", 4, "epsilon", "StableDiffusionPipeline", "PNDMScheduler"),
    "sd1-inpaint": VariantSpec("sd1", 9, "epsilon", "StableDiffusionInpaintPipeline", "PNDMScheduler"),
    "sd1-pix2pix": VariantSpec(
        "sd1", 8, "epsilon", "StableDiffusionInstructPix2PixPipeline", "EulerAncestralDiscreteScheduler"
    ),
    "sd2": VariantSpec("sd2", 4, "epsilon", "StableDiffusionPipeline", "PNDMScheduler"),
    "sd2-v": VariantSpec("sd2", 4, "v_prediction", "StableDiffusionPipeline", "EulerDiscreteScheduler"),
    "sdxl": VariantSpec("sdxl", 4, "epsilon", "StableDiffusionXLPipeline", "EulerDiscreteScheduler"),
    "sdxl-inpaint": VariantSpec(
        "sdxl", 9, "epsilon", "StableDiffusionXLInpaintPipeline", "EulerDiscreteScheduler"
    ),
}

# Widths of the tiny text encoders; the UNet's cross-attention width follows from them as in the real
# models (SD1: CLIP-L 768, SD2: ViT-H 1024, SDXL: 768 + 1280 = 2048, pooled 1280).
CLIP_L_WIDTH = 32
OPEN_CLIP_WIDTH = 64
OPEN_CLIP_PROJECTION = 48
SDXL_TIME_EMBED = 8  # real SDXL: 256, for each of the 6 size/crop numbers
# Head counts are not in a checkpoint's shapes, so loaders follow conventions (sfumato.models.detect):
# real models use 64-wide heads (SD1's UNet: 8 heads); tiny ones, narrower than 128, 16-wide heads.
HEAD_WIDTH = 16

_TOKENIZER_DATA = ("models", "data", "clip_tokenizer")


def _spec(variant: str) -> VariantSpec:
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown tiny variant {variant!r}; known: {', '.join(VARIANTS)}") from None


def unet_config(variant: Variant) -> dict[str, Any]:
    """The tiny `UNet2DConditionModel` config of a variant: the real block structure, tiny widths.

    Levels, layers per level, attention placement and where the width changes are the real ones, so
    every LDM key name of a tiny file (`input_blocks.7.0.skip_connection`, `output_blocks.5.2.conv`, ...)
    is one the real checkpoints have. SD1/SD2: 4 levels x 2 layers, widths 1:2:3:3 (real 1:2:4:4).
    SDXL: 3 levels x 2 layers, no attention on the first, transformer depth 1 then 2 (real 2 then 10),
    and the `text_time` embedding fed by the pooled projection plus 6 size/crop numbers.
    """
    spec = _spec(variant)
    common: dict[str, Any] = {"sample_size": 8, "in_channels": spec.in_channels, "out_channels": 4}
    if spec.family == "sdxl":
        return {
            **common,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "block_out_channels": [32, 64, 96],
            "layers_per_block": 2,
            "transformer_layers_per_block": [1, 1, 2],
            "attention_head_dim": [c // HEAD_WIDTH for c in (32, 64, 96)],  # real: [5, 10, 20]
            "use_linear_projection": True,
            "cross_attention_dim": CLIP_L_WIDTH + OPEN_CLIP_WIDTH,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": SDXL_TIME_EMBED,
            "projection_class_embeddings_input_dim": OPEN_CLIP_PROJECTION + 6 * SDXL_TIME_EMBED,
        }
    blocks = {
        **common,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "block_out_channels": [32, 64, 96, 96],
        "layers_per_block": 2,
    }
    if spec.family == "sd1":
        # SD1's config calls the number of heads "attention_head_dim" (8), as the real one does.
        return {**blocks, "cross_attention_dim": CLIP_L_WIDTH, "attention_head_dim": 8}
    return {
        **blocks,
        "cross_attention_dim": OPEN_CLIP_WIDTH,
        "attention_head_dim": [
            c // HEAD_WIDTH for c in blocks["block_out_channels"]
        ],  # real: [5, 10, 20, 20]
        "use_linear_projection": True,
        "upcast_attention": True,  # as SD2.1's config (no effect in fp32)
    }


def vae_config(family: Family) -> dict[str, Any]:
    """The tiny `AutoencoderKL` config: the real 4 levels x 2 layers (latents 1/8 of the image), widths
    changing where the real ones do (1:2:3:3, real 1:2:4:4, so the same `nin_shortcut`s exist), 32 groups."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [32, 64, 96, 96],
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 64,
        "scaling_factor": 0.13025 if family == "sdxl" else 0.18215,
        "force_upcast": family == "sdxl",
    }


def clip_l_config() -> CLIPTextConfig:
    """CLIP-L's shape in miniature: quick_gelu, the real vocabulary, 77 positions, pads with eos."""
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=CLIP_L_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=CLIP_L_WIDTH // HEAD_WIDTH,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=CLIP_L_WIDTH,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def open_clip_config() -> CLIPTextConfig:
    """OpenCLIP ViT-H (SD2) / ViT-bigG (SDXL) in miniature: gelu, pads with id 0 ("!")."""
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=OPEN_CLIP_WIDTH,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=OPEN_CLIP_WIDTH // HEAD_WIDTH,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=OPEN_CLIP_PROJECTION,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
    )


_BETAS = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}


def scheduler_config(variant: Variant) -> dict[str, Any]:
    """The scheduler config the real diffusers repo of this variant ships (PNDM or Euler, scaled_linear)."""
    spec = _spec(variant)
    config: dict[str, Any] = {
        "_class_name": spec.scheduler_class,
        **_BETAS,
        "prediction_type": spec.prediction_type,
        "steps_offset": 1,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "trained_betas": None,
    }
    if spec.scheduler_class == "EulerDiscreteScheduler":
        config.update(interpolation_type="linear", timestep_spacing="leading", use_karras_sigmas=False)
    return config


@dataclass
class TinyComponents:
    """The in-memory diffusers/transformers components of one tiny model."""

    variant: Variant
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None

    @property
    def spec(self) -> VariantSpec:
        return _spec(self.variant)

    @property
    def family(self) -> Family:
        return self.spec.family

    def single_file_state_dict(self) -> dict[str, Tensor]:
        """The whole model in the original single-file layout."""
        return pipeline_to_single_file(
            family=self.family,
            unet=self.unet,
            vae=self.vae,
            text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2,
        )


def _tokenizer_dir() -> Traversable:
    return importlib.resources.files("sfumato").joinpath(*_TOKENIZER_DATA)


def load_tokenizer(*, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """Our packaged CLIP tokenizer; SD2/SDXL's OpenCLIP encoders pad with "!" (id 0)."""
    with importlib.resources.as_file(_tokenizer_dir()) as folder:
        return CLIPTokenizer.from_pretrained(
            str(folder), model_max_length=77, pad_token=pad_token, local_files_only=True
        )


def build_components(variant: Variant, seed: int = 0) -> TinyComponents:
    """Build the tiny networks of `variant` from `seed` without touching the global RNG state."""
    spec = _spec(variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config(variant)).eval()
        vae = AutoencoderKL(**vae_config(spec.family)).eval()
        text_encoder_2 = None
        tokenizer_2 = None
        if spec.family == "sd2":
            text_encoder = CLIPTextModel(open_clip_config()).eval()
            tokenizer = load_tokenizer(pad_token="!")
        else:
            text_encoder = CLIPTextModel(clip_l_config()).eval()
            tokenizer = load_tokenizer()
        if spec.family == "sdxl":
            text_encoder_2 = CLIPTextModelWithProjection(open_clip_config()).eval()
            tokenizer_2 = load_tokenizer(pad_token="!")
    return TinyComponents(
        variant=variant,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=scheduler_config(variant),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


def write_single_file(
    path: str | os.PathLike[str],
    variant: Variant,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    fmt: Literal["safetensors", "ckpt"] | None = None,
    metadata: dict[str, str] | None = None,
) -> TinyComponents:
    """Write a tiny single-file checkpoint (format from `fmt`, else the suffix); return its components.
    `metadata` goes into a safetensors header (e.g. `modelspec.resolution`)."""
    path = Path(path)
    if fmt is not None and path.suffix.lower() != f".{fmt}":
        raise ValueError(f"{path.name}: fmt={fmt!r} needs a .{fmt} file name")
    components = build_components(variant, seed)
    save_single_file(components.single_file_state_dict(), path, dtype=dtype, metadata=metadata)
    return components


def _write_tokenizer_folder(folder: Path, tokenizer: CLIPTokenizer) -> None:
    """A tokenizer folder as the real SD repos have it: vocab.json, merges.txt and two small configs."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    source = _tokenizer_dir()
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes(source.joinpath(name).read_bytes())
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": str(tokenizer.pad_token),
    }
    config = {
        **special,
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _pipeline(components: TinyComponents) -> Any:
    """The diffusers pipeline of the variant's kind (inpaint, pix2pix, XL...) over `components`."""
    import diffusers

    spec = components.spec
    parts: dict[str, Any] = {
        "unet": components.unet,
        "vae": components.vae,
        "text_encoder": components.text_encoder,
        "tokenizer": components.tokenizer,
        "scheduler": getattr(diffusers, spec.scheduler_class).from_config(components.scheduler_config),
    }
    if spec.family == "sdxl":
        parts.update(text_encoder_2=components.text_encoder_2, tokenizer_2=components.tokenizer_2)
    else:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return getattr(diffusers, spec.pipeline_class)(**parts)


def _write_tokenizers(path: Path, components: TinyComponents) -> None:
    _write_tokenizer_folder(path / "tokenizer", components.tokenizer)
    if components.tokenizer_2 is not None:
        _write_tokenizer_folder(path / "tokenizer_2", components.tokenizer_2)


def write_diffusers_folder(path: str | os.PathLike[str], variant: Variant, seed: int = 0) -> TinyComponents:
    """Write a tiny model as a diffusers folder (`model_index.json`, one subfolder per component)."""
    path = Path(path)
    components = build_components(variant, seed)
    _pipeline(components).save_pretrained(path, safe_serialization=True)
    _write_tokenizers(path, components)
    return components


def write_config_folder(path: str | os.PathLike[str], variant: Variant) -> None:
    """A diffusers folder with every config and tokenizer but no weights.

    That is what `from_single_file(file, config=folder)` needs to load a single file offline, and what
    a loader ships for each family instead of fetching configs from the Hub.
    """
    path = Path(path)
    components = build_components(variant)
    pipeline = _pipeline(components)
    pipeline.save_config(path)
    for name in ("unet", "vae", "scheduler"):
        getattr(pipeline, name).save_config(path / name)
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(components, name)
        if encoder is not None:
            encoder.config.save_pretrained(path / name)
    _write_tokenizers(path, components)


class _TouchOnUnpickle:
    """Unpickling this calls `Path.touch(marker)`: the stand-in for an attacker's code."""

    def __init__(self, marker_path: Path) -> None:
        self.marker_path = marker_path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (pathlib.Path.touch, (self.marker_path,))


def write_malicious_ckpt(path: str | os.PathLike[str], marker_path: str | os.PathLike[str]) -> None:
    """A `.ckpt` that looks like a checkpoint but creates `marker_path` when unpickled unsafely.

    `torch.load(weights_only=True)` refuses it; `weights_only=False` would run the payload, which here
    only creates an empty file, so a test can prove the loader never executed it.
    """
    state_dict = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)}
    torch.save({"state_dict": state_dict, "callbacks": _TouchOnUnpickle(Path(marker_path))}, Path(path))


def write_truncated(path: str | os.PathLike[str], source: str | os.PathLike[str]) -> None:
    """A copy of `source` cut in the middle of its tensor data (a download that stopped half way).

    For safetensors the header stays intact, so only reading the tensors can notice the damage.
    """
    data = Path(source).read_bytes()
    start = 0
    if len(data) > 8:
        (header_len,) = struct.unpack("<Q", data[:8])
        if 8 + header_len < len(data) and data[8:9] == b"{":
            start = 8 + header_len
    Path(path).write_bytes(data[: start + (len(data) - start) // 2])


def write_corrupt_header(path: str | os.PathLike[str]) -> None:
    """A `.safetensors` whose header length is plausible but whose JSON header is cut short."""
    header = b'{"model.diffusion_model.input_blocks.0.0.weight": {"dtype": "F32", "shape": [32, 4,'
    Path(path).write_bytes(struct.pack("<Q", len(header)) + header + bytes(64))
