"""Recognise a checkpoint's family and infer each network's config from its tensor shapes.

Why by shapes: real checkpoints carry no config, fine-tunes change widths and depths, and our tests'
tiny models must load through the very same path as a 7 GB SDXL file. Like ComfyUI's model detection,
we read the original (LDM) key layout: channels from conv shapes, depths from key counts, context width
from cross-attention weights. What shapes cannot tell (attention head counts) follows the families'
conventions: SD1 UNets use 8 heads; linear-projection UNets (SD2, SDXL) and CLIP encoders use 64-wide
heads. Tiny models narrower than 128 channels use 16-wide heads, a convention our fixture factory follows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from sfumato.errors import ModelFileError
from sfumato.models.files import tensor_shape

Family = Literal["sd1", "sd2", "sdxl"]
Variant = Literal["base", "inpaint", "pix2pix"]
Prediction = Literal["epsilon", "v_prediction"]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIXES = {
    "sd1": "cond_stage_model.transformer.",
    "sdxl": "conditioner.embedders.0.transformer.",
}
OPEN_CLIP_PREFIXES = {"sd2": "cond_stage_model.model.", "sdxl": "conditioner.embedders.1.model."}
VAE_SCALING = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}
NATIVE_SIZE = {"sd1": 512, "sd2": 512, "sdxl": 1024}
VARIANT_BY_IN_CHANNELS: dict[int, Variant] = {4: "base", 9: "inpaint", 8: "pix2pix"}


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder: where its keys live, its architecture and its transformers config."""

    kind: Literal["clip_l", "open_clip"]
    prefix: str
    config: dict[str, Any]
    with_projection: bool = False
    layers_in_file: int = 0


@dataclass(frozen=True)
class CheckpointInfo:
    """What a single-file checkpoint is, and the diffusers configs to build its networks."""

    family: Family
    variant: Variant
    prediction: Prediction | None  # None: unknown from keys alone (SD2: eps-512 and v-768 look alike)
    unet_config: dict[str, Any]
    vae_config: dict[str, Any] | None  # None: no VAE baked in
    text_encoders: tuple[TextEncoderSpec, ...] = field(default_factory=tuple)
    dtype: str = "float32"
    resolution: tuple[int, int] | None = None  # (width, height) the file declares, if any


def native_resolution(
    family: Family, prediction: Prediction, declared: tuple[int, int] | None
) -> tuple[int, int]:
    """The size a model was trained at: what the file declares, else the family's (SD2-v: 768)."""
    if declared:
        return declared
    side = 768 if family == "sd2" and prediction == "v_prediction" else NATIVE_SIZE[family]
    return side, side


def _float_or_none(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value and value > 0 else None


def _declared_norm_groups(name: str, text: str, channels: list[int]) -> int:
    """The VAE's GroupNorm group count a model trained here declares: shapes cannot tell it, and the
    guess from them (32 where every width allows it, else 8) is wrong for a narrow VAE trained with 8."""
    groups = int(text) if text.isdigit() else 0
    if groups < 1 or any(c % groups for c in channels):
        raise ModelFileError(
            f"{name}: sfumato.vae_norm_num_groups {text!r} does not divide the VAE's widths {channels}"
        )
    return groups


def read_modelspec(metadata: Mapping[str, str]) -> tuple[tuple[int, int] | None, Prediction | None]:
    """Resolution and prediction type from Stability's `modelspec.*` safetensors metadata, when present
    (our own exports write it too, which is how small custom-resolution models declare their size)."""
    resolution = None
    if match := re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", metadata.get("modelspec.resolution", "")):
        resolution = (int(match.group(1)), int(match.group(2)))
    kind = metadata.get("modelspec.prediction_type", "").lower()
    prediction: Prediction | None = (
        "v_prediction" if kind.startswith("v") else "epsilon" if kind.startswith("eps") else None
    )
    return resolution, prediction


def _indices(keys: list[str], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.match(k))})


def _count(keys: list[str], pattern: str) -> int:
    return len(_indices(keys, pattern))


def _heads(channels: int) -> int:
    """Attention heads for a width: 64-wide heads in every real model; tiny test models (< 128 wide)
    use 16-wide heads, or 8-wide where 16 does not divide the width."""
    width = 64 if channels >= 128 else 16
    if channels % width:
        width = 8
    return max(1, channels // width)


def infer_unet_config(
    sd: Mapping[str, torch.Tensor], keys: list[str], prefix: str = UNET_PREFIX
) -> dict[str, Any]:
    """A diffusers `UNet2DConditionModel` config from an LDM UNet's shapes."""
    p = re.escape(prefix)

    def shape(key: str) -> tuple[int, ...]:
        return tensor_shape(sd, prefix + key)

    conv_in = shape("input_blocks.0.0.weight")
    model_channels, in_channels = conv_in[0], conv_in[1]
    # Walk the input blocks: res blocks (+ optional transformer) per level, a downsampler between levels.
    levels: list[list[tuple[int, int]]] = [[]]
    for i in _indices(keys, rf"{p}input_blocks\.(\d+)\.")[1:]:
        if f"{prefix}input_blocks.{i}.0.op.weight" in sd:
            levels.append([])
            continue
        out_ch = shape(f"input_blocks.{i}.0.out_layers.3.weight")[0]
        depth = _count(keys, rf"{p}input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\.")
        levels[-1].append((out_ch, depth))
    if not levels[-1]:
        levels.pop()
    num_res_blocks = len(levels[0])
    if any(len(level) != num_res_blocks for level in levels):
        raise ModelFileError(
            "UNet levels have different numbers of res blocks; this architecture is not supported"
        )
    block_out = [level[0][0] for level in levels]
    depths = [level[0][1] for level in levels]
    # The up path mirrors the down path, but its transformer depths may differ (SDXL's do not; some
    # fine-tuned architectures do): read them from the output blocks, deepest level first.
    up_depths = []
    for lvl in range(len(levels)):
        first_out = lvl * (num_res_blocks + 1)
        up_depths.append(_count(keys, rf"{p}output_blocks\.{first_out}\.1\.transformer_blocks\.(\d+)\."))
    mid_depth = _count(keys, rf"{p}middle_block\.1\.transformer_blocks\.(\d+)\.")

    attn_key = next((k for k in keys if k.startswith(prefix) and k.endswith("attn2.to_k.weight")), None)
    if attn_key is None:
        raise ModelFileError("UNet has no cross-attention layers; not a Stable Diffusion UNet")
    context_dim = tensor_shape(sd, attn_key)[1]
    proj_key = next(k for k in keys if k.startswith(prefix) and k.endswith(".proj_in.weight"))
    linear = len(tensor_shape(sd, proj_key)) == 2
    heads: int | list[int] = [_heads(c) for c in block_out] if linear else 8

    config: dict[str, Any] = {
        "in_channels": in_channels,
        "out_channels": shape("out.2.weight")[0],
        "block_out_channels": block_out,
        "layers_per_block": num_res_blocks,
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in up_depths],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if mid_depth else None,
        "transformer_layers_per_block": [max(d, 1) for d in depths],
        "cross_attention_dim": context_dim,
        "attention_head_dim": heads,
        "use_linear_projection": linear,
    }
    if [max(d, 1) for d in up_depths] != [max(d, 1) for d in reversed(depths)]:
        config["reverse_transformer_layers_per_block"] = [max(d, 1) for d in up_depths]
    if mid_depth and mid_depth != config["transformer_layers_per_block"][-1]:
        raise ModelFileError("UNet middle block depth differs from its last level; not supported")
    time_embed = shape("time_embed.0.weight")[0]
    if time_embed != 4 * model_channels:
        config["time_embedding_dim"] = time_embed
    if f"{prefix}label_emb.0.0.weight" in sd:
        config["addition_embed_type"] = "text_time"
        config["projection_class_embeddings_input_dim"] = shape("label_emb.0.0.weight")[1]
    return config


def _vae_config(
    in_channels: int, out_channels: int, block_out: list[int], layers: int, latent: int, family: Family
) -> dict[str, Any]:
    return {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * len(block_out),
        "up_block_types": ["UpDecoderBlock2D"] * len(block_out),
        "block_out_channels": block_out,
        "layers_per_block": layers,
        "latent_channels": latent,
        "norm_num_groups": 32 if all(c % 32 == 0 for c in block_out) else 8,
        "sample_size": NATIVE_SIZE[family],
        "scaling_factor": VAE_SCALING[family],
        "force_upcast": family == "sdxl",
    }


def infer_vae_config(
    sd: Mapping[str, torch.Tensor], keys: list[str], prefix: str, family: Family
) -> dict[str, Any]:
    """A diffusers `AutoencoderKL` config from an LDM VAE's shapes (`encoder.down.N.block.M`)."""
    p = re.escape(prefix)
    levels = _indices(keys, rf"{p}encoder\.down\.(\d+)\.")
    return _vae_config(
        tensor_shape(sd, prefix + "encoder.conv_in.weight")[1],
        tensor_shape(sd, prefix + "decoder.conv_out.weight")[0],
        [tensor_shape(sd, f"{prefix}encoder.down.{i}.block.0.conv2.weight")[0] for i in levels],
        _count(keys, rf"{p}encoder\.down\.0\.block\.(\d+)\."),
        tensor_shape(sd, prefix + "quant_conv.weight")[0] // 2,
        family,
    )


def _infer_diffusers_vae_config(
    sd: Mapping[str, torch.Tensor], keys: list[str], prefix: str, family: Family
) -> dict:
    """The same from diffusers' own layout (`encoder.down_blocks.N.resnets.M`), e.g. the SDXL VAE file."""
    p = re.escape(prefix)
    levels = _indices(keys, rf"{p}encoder\.down_blocks\.(\d+)\.")
    return _vae_config(
        tensor_shape(sd, prefix + "encoder.conv_in.weight")[1],
        tensor_shape(sd, prefix + "decoder.conv_out.weight")[0],
        [tensor_shape(sd, f"{prefix}encoder.down_blocks.{i}.resnets.0.conv2.weight")[0] for i in levels],
        _count(keys, rf"{p}encoder\.down_blocks\.0\.resnets\.(\d+)\."),
        tensor_shape(sd, prefix + "quant_conv.weight")[0] // 2,
        family,
    )


def _clip_l_spec(sd: Mapping[str, torch.Tensor], keys: list[str], prefix: str) -> TextEncoderSpec:
    inner = prefix + ("text_model." if f"{prefix}text_model.embeddings.token_embedding.weight" in sd else "")
    vocab, hidden = tensor_shape(sd, inner + "embeddings.token_embedding.weight")
    layers = _count(keys, rf"{re.escape(inner)}encoder\.layers\.(\d+)\.")
    config = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": tensor_shape(sd, inner + "encoder.layers.0.mlp.fc1.weight")[0],
        "num_hidden_layers": layers,
        "num_attention_heads": _heads(hidden),
        "max_position_embeddings": tensor_shape(sd, inner + "embeddings.position_embedding.weight")[0],
        "hidden_act": "quick_gelu",
        "projection_dim": hidden,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }
    return TextEncoderSpec("clip_l", prefix, config, layers_in_file=layers)


def _sd2_layers_to_build(layers_in_file: int, width: int) -> int:
    """SD2 uses the penultimate of ViT-H's 24 layers, so the last is never built (as diffusers does).
    Files converted back from diffusers hold only those 23 layers: keep all of them then. Narrower
    (test) encoders follow the same rule: everything but the last layer."""
    if width == 1024:
        return min(layers_in_file, 23)
    return max(1, layers_in_file - 1)


def _open_clip_spec(
    sd: Mapping[str, torch.Tensor], keys: list[str], prefix: str, *, with_projection: bool, drop_last: bool
) -> TextEncoderSpec:
    vocab, hidden = tensor_shape(sd, prefix + "token_embedding.weight")
    layers = _count(keys, rf"{re.escape(prefix)}transformer\.resblocks\.(\d+)\.")
    proj_key = prefix + "text_projection"
    projection_dim = tensor_shape(sd, proj_key)[1] if proj_key in sd else hidden
    config = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": tensor_shape(sd, prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0],
        "num_hidden_layers": _sd2_layers_to_build(layers, hidden) if drop_last else layers,
        "num_attention_heads": _heads(hidden),
        "max_position_embeddings": tensor_shape(sd, prefix + "positional_embedding")[0],
        "hidden_act": "gelu",
        "projection_dim": projection_dim,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 0,
    }
    return TextEncoderSpec(
        "open_clip", prefix, config, with_projection=with_projection, layers_in_file=layers
    )


def _dtype_of(sd: Mapping[str, torch.Tensor], key: str) -> str:
    if hasattr(sd, "dtype_name"):
        name = sd.dtype_name(key)  # type: ignore[attr-defined]
        return {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(name, name.lower())
    return str(sd[key].dtype).removeprefix("torch.")


def detect_checkpoint(sd: Mapping[str, torch.Tensor], *, name: str = "checkpoint") -> CheckpointInfo:
    """Identify a single-file checkpoint from its keys and shapes, or say clearly what it is not."""
    keys = list(sd.keys())
    if f"{UNET_PREFIX}input_blocks.0.0.weight" not in sd:
        raise ModelFileError(f"{name}: not a Stable Diffusion checkpoint ({_guess_other_kind(keys)})")
    if any(k.startswith(OPEN_CLIP_PREFIXES["sdxl"]) for k in keys):
        family: Family = "sdxl"
    elif any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        raise ModelFileError(f"{name}: an SDXL refiner checkpoint; refiners are not supported yet")
    elif any(k.startswith(OPEN_CLIP_PREFIXES["sd2"]) for k in keys):
        family = "sd2"
    elif any(k.startswith(CLIP_L_PREFIXES["sd1"]) for k in keys):
        family = "sd1"
    else:
        raise ModelFileError(
            f"{name}: has a UNet but no text encoder this program knows (SD1/SD2/SDXL layouts)"
        )

    unet_config = infer_unet_config(sd, keys)
    in_channels = unet_config["in_channels"]
    if in_channels not in VARIANT_BY_IN_CHANNELS:
        raise ModelFileError(f"{name}: UNet takes {in_channels} input channels; expected 4, 8 or 9")
    variant = VARIANT_BY_IN_CHANNELS[in_channels]
    unet_config["upcast_attention"] = family == "sd2"
    unet_config["sample_size"] = NATIVE_SIZE[family] // 8

    if family == "sdxl":
        encoders = (
            _clip_l_spec(sd, keys, CLIP_L_PREFIXES["sdxl"]),
            _open_clip_spec(sd, keys, OPEN_CLIP_PREFIXES["sdxl"], with_projection=True, drop_last=False),
        )
        pooled = encoders[1].config["projection_dim"]
        adm = unet_config.get("projection_class_embeddings_input_dim")
        if adm is None or (adm - pooled) % 6:
            raise ModelFileError(f"{name}: SDXL UNet's size embedding does not fit its text encoder")
        unet_config["addition_time_embed_dim"] = (adm - pooled) // 6
    elif family == "sd2":
        encoders = (
            _open_clip_spec(sd, keys, OPEN_CLIP_PREFIXES["sd2"], with_projection=False, drop_last=True),
        )
    else:
        encoders = (_clip_l_spec(sd, keys, CLIP_L_PREFIXES["sd1"]),)

    metadata = getattr(sd, "metadata", {}) or {}
    vae_config = None
    if f"{VAE_PREFIX}encoder.conv_in.weight" in sd:
        vae_config = infer_vae_config(sd, keys, VAE_PREFIX, family)
        if scaling := _float_or_none(metadata.get("sfumato.vae_scaling_factor")):
            vae_config["scaling_factor"] = scaling  # models trained here declare their latent scale
        if groups := metadata.get("sfumato.vae_norm_num_groups"):
            vae_config["norm_num_groups"] = _declared_norm_groups(
                name, groups, vae_config["block_out_channels"]
            )
    resolution, declared_prediction = read_modelspec(metadata)
    prediction: Prediction | None = "epsilon" if family in ("sd1", "sdxl") else None
    if "v_pred" in sd:  # ComfyUI's marker tensor for v-prediction checkpoints
        prediction = "v_prediction"
    prediction = declared_prediction or prediction
    if resolution:
        unet_config["sample_size"] = resolution[1] // 8
    return CheckpointInfo(
        family=family,
        variant=variant,
        prediction=prediction,
        unet_config=unet_config,
        vae_config=vae_config,
        text_encoders=encoders,
        dtype=_dtype_of(sd, f"{UNET_PREFIX}input_blocks.0.0.weight"),
        resolution=resolution,
    )


def _guess_other_kind(keys: list[str]) -> str:
    if any(k.startswith(("lora_unet_", "lora_te")) or ".lora_down." in k for k in keys):
        return "it looks like a LoRA; put it in models/Lora and use <lora:name:1> in the prompt"
    if any(k.startswith(("encoder.down.", "decoder.up.", "first_stage_model.")) for k in keys):
        return "it looks like a VAE; put it in models/VAE and choose it with --vae"
    if "string_to_param" in keys or "emb_params" in keys or {"clip_l", "clip_g"} <= set(keys):
        return "it looks like a textual-inversion embedding; put it in embeddings/"
    if any(k.startswith("control_model.") for k in keys):
        return "it looks like a ControlNet; put it in models/ControlNet"
    if not keys:
        return "it holds no tensors"
    return f"unknown architecture; first keys: {', '.join(keys[:3])}"


def detect_vae_file(sd: Mapping[str, torch.Tensor], family: Family, *, name: str = "VAE") -> tuple[dict, str]:
    """Config and key prefix of a standalone VAE file: LDM layout (bare or inside a full checkpoint,
    `encoder.down.*`) or diffusers layout (`encoder.down_blocks.*`)."""
    keys = list(sd.keys())
    for prefix in ("", VAE_PREFIX, "vae."):
        if f"{prefix}encoder.down_blocks.0.resnets.0.conv1.weight" in sd:
            return _infer_diffusers_vae_config(sd, keys, prefix, family), prefix
        if f"{prefix}encoder.down.0.block.0.conv1.weight" in sd:
            return infer_vae_config(sd, keys, prefix, family), prefix
    raise ModelFileError(f"{name}: not a VAE (no encoder weights found); {_guess_other_kind(keys)}")
