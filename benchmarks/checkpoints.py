"""Full-size random-weight checkpoints (SD1.5, SDXL) as real single files, plus offline diffusers configs.

Speed does not depend on the weights, so the benchmarks use the real architectures with random
weights: N(0, 0.02²), norm layers weight 1 / bias 0, other biases 0, from a fixed seed, which keeps
every activation O(1) and every output finite. The networks are built on the meta device and filled
tensor by tensor, written with `sfumato.models.ldm_export` as fp16 single files in the original LDM
layout (what users download), and cached in benchmarks/out/ under a name carrying a version string
(bumped when the recipe changes). Next to each file is a configs-only diffusers folder (model_index.json,
component configs, our packaged CLIP tokenizer) so `from_single_file(config=...)` loads offline.

    python benchmarks/checkpoints.py sd15|sdxl     # build one (also done on demand by the suite)
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import OUT_DIR, THREADS, log

WEIGHT_SEED = 0
WEIGHT_STD = 0.02

CLIP_L_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}

# SDXL's second encoder, OpenCLIP ViT-bigG/14's text tower (pads with "!", id 0).
OPEN_CLIP_BIGG_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 0,
}


def _vae_config(scaling_factor: float, sample_size: int) -> dict[str, Any]:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": sample_size,
        "scaling_factor": scaling_factor,
    }


@dataclass(frozen=True)
class RandomModel:
    """One cached full-size random checkpoint and what diffusers needs to load it."""

    version: str
    family: str  # sfumato.models.ldm_export family
    pipeline_class: str
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]
    text_configs: tuple[dict[str, Any], ...]
    native_size: int
    extra_model_index: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return OUT_DIR / f"{self.version}-seed{WEIGHT_SEED}.safetensors"

    @property
    def config_dir(self) -> Path:
        return OUT_DIR / f"{self.version}-config"

    def ready(self) -> bool:
        return self.path.is_file() and (self.config_dir / "model_index.json").is_file()


SD15 = RandomModel(
    version="sd15-random-v2",
    family="sd1",
    pipeline_class="StableDiffusionPipeline",
    # UNet2DConditionModel's defaults are SD1.5's UNet except the cross-attention width.
    unet_config={"sample_size": 64, "cross_attention_dim": 768},
    vae_config=_vae_config(0.18215, 512),
    text_configs=(CLIP_L_CONFIG,),
    native_size=512,
    extra_model_index={
        "feature_extractor": [None, None],
        "safety_checker": [None, None],
        "requires_safety_checker": False,
    },
)

SDXL = RandomModel(
    version="sdxl-random-v1",
    family="sdxl",
    pipeline_class="StableDiffusionXLPipeline",
    unet_config={
        "sample_size": 128,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [320, 640, 1280],
        "layers_per_block": 2,
        "transformer_layers_per_block": [1, 2, 10],
        "attention_head_dim": [5, 10, 20],
        "use_linear_projection": True,
        "cross_attention_dim": 2048,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    },
    vae_config={**_vae_config(0.13025, 1024), "force_upcast": True},
    text_configs=(CLIP_L_CONFIG, OPEN_CLIP_BIGG_CONFIG),
    native_size=1024,
    extra_model_index={"force_zeros_for_empty_prompt": True},
)

MODELS = {"sd15": SD15, "sdxl": SDXL}


def _random_state_dict(module: Any, generator: Any) -> dict[str, Any]:
    """Deterministic small random weights for a module built on the meta device, stored as fp16."""
    import torch

    norms = set()
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.GroupNorm | torch.nn.LayerNorm):
            norms.update({f"{name}.weight", f"{name}.bias"})
    out = {}
    for key, meta in module.state_dict().items():
        if not meta.is_floating_point():
            out[key] = torch.arange(meta.shape[-1], dtype=meta.dtype).expand(meta.shape).clone()
        elif key in norms:
            out[key] = (torch.ones if key.endswith(".weight") else torch.zeros)(
                meta.shape, dtype=torch.float16
            )
        elif key.endswith(".bias"):
            out[key] = torch.zeros(meta.shape, dtype=torch.float16)
        else:
            weight = torch.randn(meta.shape, generator=generator, dtype=torch.float32)
            out[key] = weight.mul_(WEIGHT_STD).to(torch.float16)
    return out


def _write_tokenizer(folder: Path, pad_token: str) -> None:
    from importlib import resources

    from sfumato.models.loader import TOKENIZER_PACKAGE

    folder.mkdir(parents=True, exist_ok=True)
    source = resources.files(TOKENIZER_PACKAGE) / "clip_tokenizer"
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes(source.joinpath(name).read_bytes())
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _write_config_folder(model: RandomModel, unet: Any, vae: Any, encoders: list[Any]) -> None:
    """What `from_single_file(config=folder)` needs offline: configs and tokenizer files, no weights."""
    import diffusers

    folder = model.config_dir
    folder.mkdir(parents=True, exist_ok=True)
    sdxl = model.family == "sdxl"
    index: dict[str, Any] = {
        "_class_name": model.pipeline_class,
        "_diffusers_version": diffusers.__version__,
        **model.extra_model_index,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if sdxl:
        index |= {
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
        }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    unet.save_config(folder / "unet")
    vae.save_config(folder / "vae")
    diffusers.EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    ).save_config(folder / "scheduler")
    for index_number, encoder in enumerate(encoders):
        suffix = f"_{index_number + 1}" if index_number else ""
        encoder.config.save_pretrained(folder / f"text_encoder{suffix}")
        _write_tokenizer(folder / f"tokenizer{suffix}", "!" if index_number else "<|endoftext|>")
    log(f"wrote config folder {folder}")


def build(model: RandomModel) -> dict[str, Any]:
    """Write the checkpoint and the config folder of `model` (whichever is missing)."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sfumato.models.ldm_export import pipeline_to_single_file, save_single_file

    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    with init_empty_weights():
        unet = UNet2DConditionModel(**model.unet_config)
        vae = AutoencoderKL(**model.vae_config)
        encoders = [
            (CLIPTextModelWithProjection if i else CLIPTextModel)(CLIPTextConfig(**config))
            for i, config in enumerate(model.text_configs)
        ]
    if not (model.config_dir / "model_index.json").is_file():
        _write_config_folder(model, unet, vae, encoders)
    if not model.path.is_file():
        log(f"building random weights ({model.version}, seed {WEIGHT_SEED}, std {WEIGHT_STD})")
        generator = torch.Generator("cpu").manual_seed(WEIGHT_SEED)
        parts = [_random_state_dict(m, generator) for m in (unet, vae, *encoders)]
        params = sum(t.numel() for sd in parts for t in sd.values())
        state = pipeline_to_single_file(
            family=model.family,  # type: ignore[arg-type]
            unet=parts[0],
            vae=parts[1],
            text_encoder=parts[2],
            text_encoder_2=parts[3] if len(parts) > 3 else None,
            unet_config=unet.config,
        )
        del parts
        log(f"{params / 1e9:.3f} B parameters; writing {model.path}")
        metadata = {"sfumato.benchmark": model.version, "seed": str(WEIGHT_SEED), "std": str(WEIGHT_STD)}
        save_single_file(state, model.path, dtype=torch.float16, metadata=metadata)
    return {
        "build_s": time.perf_counter() - start,
        "path": str(model.path),
        "bytes": model.path.stat().st_size,
    }


if __name__ == "__main__":
    print(json.dumps(build(MODELS[sys.argv[1]])))
