"""Diffusers components -> the original (CompVis / Stability "LDM") single-file checkpoint layout.

This is the inverse of diffusers' single-file converters (`diffusers.loaders.single_file_utils`): a
model merged or trained here is saved as one `.safetensors` (or `.ckpt`) file that A1111, ComfyUI,
InvokeAI and kohya load like any checkpoint downloaded from the field.

The layouts, by family (prefixes added by `pipeline_to_single_file`):

| component | SD1 | SD2 | SDXL |
|---|---|---|---|
| UNet | `model.diffusion_model.` | same | same (+ `label_emb.0.*` for the size/crop embedding) |
| VAE | `first_stage_model.` | same | same |
| text encoder | `cond_stage_model.transformer.text_model.*` (CLIP-L, HF names) | `cond_stage_model.model.*` (OpenCLIP ViT-H names) | `conditioner.embedders.0.transformer.text_model.*` (CLIP-L) and `conditioner.embedders.1.model.*` (OpenCLIP ViT-bigG) |

Every key is mapped by an explicit table built from the model's structure; a key we cannot place is an
error, never silently dropped or passed through, because a checkpoint with a stray diffusers-named key
loads "fine" in A1111 (it loads non-strictly) and then generates noise.

What real checkpoints carry and we do not write: the DDPM schedule buffers (`betas`, `alphas_cumprod`,
...; A1111 rebuilds them from its yaml), `model_ema.*`, OpenCLIP's `logit_scale`, and CLIP-L's
`position_ids` buffer (passed through only when the given state dict has it; transformers 5 has none).
Loaders treat all of them as optional.

The returned tensors share memory with the inputs (no copy of a multi-GB model); only tensors whose
layout changes (fused q/k/v, transposed projection, 1x1-conv attention) are new.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

Family = Literal["sd1", "sd2", "sdxl"]
StateDict = Mapping[str, Tensor]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIXES: dict[Family, tuple[str, ...]] = {
    "sd1": ("cond_stage_model.",),
    "sd2": ("cond_stage_model.",),
    "sdxl": ("conditioner.embedders.0.", "conditioner.embedders.1."),
}


class _HasStateDict(Protocol):
    def state_dict(self) -> dict[str, Tensor]: ...


Component = _HasStateDict | StateDict
# diffusers module path -> (LDM module path, renames of its direct children, or None)
_ModuleMap = dict[str, tuple[str, Mapping[str, str] | None]]

# ---------------------------------------------------------------------------------------------- UNet

_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    # SDXL's size/crop ("text_time") embedding and the "projection" class embedding of SD2-unCLIP
    # both live in LDM's `label_emb.0` Sequential(Linear, SiLU, Linear).
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}

# diffusers ResnetBlock2D child -> LDM ResBlock child
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _per_block(value: int | Any, n: int) -> list[int]:
    return [int(value)] * n if isinstance(value, int) else [int(v) for v in value]


def _unet_module_map(config: Mapping[str, Any]) -> _ModuleMap:
    """diffusers module prefix -> (LDM module prefix, child renames or None), from the block structure.

    LDM numbers its blocks flatly: `input_blocks.0` is conv_in, then per level `layers` blocks of
    (ResBlock [, SpatialTransformer]) and, except for the last level, one Downsample block. The output
    side has `layers + 1` blocks per level, the last of which ends with an Upsample placed after the
    attention when the level has one (`.2.conv`) or after the ResBlock alone (`.1.conv`).
    """
    modules: _ModuleMap = {d: (ldm, None) for d, ldm in _UNET_FIXED.items()}
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    levels = len(down_types)
    layers = _per_block(config["layers_per_block"], levels)

    index = 1
    for i, block_type in enumerate(down_types):
        for j in range(layers[i]):
            modules[f"down_blocks.{i}.resnets.{j}"] = (f"input_blocks.{index}.0", _UNET_RESNET)
            if block_type.startswith("CrossAttn"):
                modules[f"down_blocks.{i}.attentions.{j}"] = (f"input_blocks.{index}.1", None)
            index += 1
        if i < levels - 1:
            modules[f"down_blocks.{i}.downsamplers.0.conv"] = (f"input_blocks.{index}.0.op", None)
            index += 1

    modules["mid_block.resnets.0"] = ("middle_block.0", _UNET_RESNET)
    modules["mid_block.attentions.0"] = ("middle_block.1", None)
    modules["mid_block.resnets.1"] = ("middle_block.2", _UNET_RESNET)

    up_layers = list(reversed(layers))
    index = 0
    for i, block_type in enumerate(up_types):
        has_attention = block_type.startswith("CrossAttn")
        for j in range(up_layers[i] + 1):
            modules[f"up_blocks.{i}.resnets.{j}"] = (f"output_blocks.{index}.0", _UNET_RESNET)
            if has_attention:
                modules[f"up_blocks.{i}.attentions.{j}"] = (f"output_blocks.{index}.1", None)
            index += 1
        if i < levels - 1:
            slot = 2 if has_attention else 1
            modules[f"up_blocks.{i}.upsamplers.0.conv"] = (f"output_blocks.{index - 1}.{slot}.conv", None)
    return modules


def _rename_by_modules(state_dict: StateDict, modules: _ModuleMap, what: str) -> dict[str, Tensor]:
    """Rename each key by its longest matching module prefix; unknown keys are an error."""
    out: dict[str, Tensor] = {}
    unplaced: list[str] = []
    for key, tensor in state_dict.items():
        parts = key.split(".")
        for n in range(len(parts) - 1, 0, -1):
            target = modules.get(".".join(parts[:n]))
            if target is None:
                continue
            ldm_prefix, child_renames = target
            rest = parts[n:]
            if child_renames is not None:
                rest = [child_renames.get(rest[0], rest[0]), *rest[1:]]
            out[".".join([ldm_prefix, *rest])] = tensor
            break
        else:
            unplaced.append(key)
    if unplaced:
        raise ValueError(f"{what}: no LDM name for {len(unplaced)} key(s), e.g. {unplaced[:5]}")
    return out


def unet_to_ldm(unet_state_dict: StateDict, unet_config: Mapping[str, Any]) -> dict[str, Tensor]:
    """A `UNet2DConditionModel` state dict in LDM `openaimodel.UNetModel` names (no prefix).

    Handles SD1 (conv proj_in/out), SD2 (linear proj_in/out; head dims only affect the config),
    SDXL (several transformer blocks per attention, `add_embedding` -> `label_emb.0`) and any
    `in_channels` (4, 8 for InstructPix2Pix, 9 for inpainting): the weights keep their shapes.
    """
    return _rename_by_modules(unet_state_dict, _unet_module_map(unet_config), "UNet")


# ----------------------------------------------------------------------------------------------- VAE

_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v"}
_VAE_FIXED = {
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
    **{
        f"{part}.{name}": f"{part}.{name}"
        for part in ("encoder", "decoder")
        for name in ("conv_in", "conv_out")
    },
    **{f"{part}.conv_norm_out": f"{part}.norm_out" for part in ("encoder", "decoder")},
    # diffusers' `to_out` is ModuleList(Linear, Dropout); LDM has one conv.
    **{
        f"{part}.mid_block.attentions.0.to_out.0": f"{part}.mid.attn_1.proj_out"
        for part in ("encoder", "decoder")
    },
}
_VAE_LEVEL = re.compile(
    r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.(resnets\.\d+|downsamplers\.0\.conv|upsamplers\.0\.conv)\."
)
_VAE_CONV_ATTENTION = re.compile(r".*\.mid\.attn_1\.(q|k|v|proj_out)\.weight")


def vae_to_ldm(vae_state_dict: StateDict) -> dict[str, Tensor]:
    """An `AutoencoderKL` state dict in LDM `AutoencoderKL` names (no prefix).

    The decoder's levels are numbered in reverse in LDM (`up.3` runs first), and the mid-block
    attention's q/k/v/proj_out are 1x1 convolutions there, so their 2-D weights gain two unit dims.
    """
    levels = [m for key in vae_state_dict if (m := _VAE_LEVEL.match(key))]
    last_up = max((int(m.group(2)) for m in levels if m.group(1) == "decoder.up"), default=-1)
    modules: _ModuleMap = {d: (ldm, None) for d, ldm in _VAE_FIXED.items()}
    for m in levels:
        side, level, module = m.group(1), int(m.group(2)), m.group(3)
        ldm_level = f"{side}.{level if side == 'encoder.down' else last_up - level}"
        if module.startswith("resnets."):
            modules[m.group(0)[:-1]] = (f"{ldm_level}.block.{module.split('.')[1]}", _VAE_RESNET)
        else:
            sampler = "downsample" if side == "encoder.down" else "upsample"
            modules[m.group(0)[:-1]] = (f"{ldm_level}.{sampler}.conv", None)
    for part in ("encoder", "decoder"):
        modules[f"{part}.mid_block.resnets.0"] = (f"{part}.mid.block_1", _VAE_RESNET)
        modules[f"{part}.mid_block.resnets.1"] = (f"{part}.mid.block_2", _VAE_RESNET)
        modules[f"{part}.mid_block.attentions.0"] = (f"{part}.mid.attn_1", _VAE_ATTENTION)

    out = _rename_by_modules(vae_state_dict, modules, "VAE")
    for key, tensor in out.items():
        if _VAE_CONV_ATTENTION.fullmatch(key) and tensor.ndim == 2:
            out[key] = tensor[:, :, None, None]
    return out


# ------------------------------------------------------------------------------------ text encoders

_CLIP_TOP_LEVEL = ("embeddings.", "encoder.", "final_layer_norm.")


def _text_model_keys(state_dict: StateDict, what: str) -> dict[str, Tensor]:
    """Keys of a CLIP text model without the `text_model.` level, whichever transformers wrote them.

    transformers >= 5.6 flattened `CLIPTextModel` (keys start at `embeddings.`), older versions and
    `CLIPTextModelWithProjection` keep `text_model.`; `text_projection.weight` is kept as is.
    """
    out: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        bare = key.removeprefix("text_model.")
        if not bare.startswith(_CLIP_TOP_LEVEL) and bare != "text_projection.weight":
            raise ValueError(f"{what}: unexpected key {key!r} for a CLIP text model")
        out[bare] = tensor
    return out


def clip_l_to_ldm(text_encoder_state_dict: StateDict) -> dict[str, Tensor]:
    """A CLIP-L `CLIPTextModel` state dict as `transformer.text_model.*` (SD1, SDXL's first encoder).

    The original layout embeds the Hugging Face model itself, so names only gain the wrapper levels.
    """
    keys = _text_model_keys(text_encoder_state_dict, "CLIP-L text encoder")
    if "text_projection.weight" in keys:
        raise ValueError("CLIP-L text encoder: SD1/SDXL checkpoints have no text_projection for CLIP-L")
    return {f"transformer.text_model.{key}": tensor for key, tensor in keys.items()}


_OPEN_CLIP_FIXED = {
    "embeddings.token_embedding.weight": "model.token_embedding.weight",
    "embeddings.position_embedding.weight": "model.positional_embedding",
    "final_layer_norm.weight": "model.ln_final.weight",
    "final_layer_norm.bias": "model.ln_final.bias",
}
_OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_CLIP_LAYER_KEY = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
_QKV = re.compile(r"self_attn\.([qkv])_proj")


def open_clip_to_ldm(text_encoder_state_dict: StateDict, *, with_projection: bool) -> dict[str, Tensor]:
    """An OpenCLIP-style `CLIPTextModel[WithProjection]` state dict in OpenCLIP names (`model.*`).

    q, k and v are fused into `attn.in_proj_weight/bias` (rows in that order), and the projection is
    stored transposed as the bare parameter `model.text_projection` ([width, embed_dim]).
    `with_projection=True` (SDXL's ViT-bigG, whose pooled output feeds the UNet) requires the projection;
    `False` (SD2's ViT-H, pooled output unused) writes none even if present. All given layers are kept:
    diffusers' SD2 encoder has 23 of the original 24 (A1111 uses the penultimate layer anyway).
    """
    keys = _text_model_keys(text_encoder_state_dict, "OpenCLIP text encoder")
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, tensor in keys.items():
        if key in _OPEN_CLIP_FIXED:
            out[_OPEN_CLIP_FIXED[key]] = tensor
        elif key == "text_projection.weight":
            if with_projection:
                out["model.text_projection"] = tensor.T.contiguous()
        elif key == "embeddings.position_ids":
            continue  # a transformers buffer; OpenCLIP has none
        elif (m := _CLIP_LAYER_KEY.fullmatch(key)) is None:
            raise ValueError(f"OpenCLIP text encoder: no OpenCLIP name for {key!r}")
        elif q := _QKV.fullmatch(m.group(2)):
            qkv.setdefault((int(m.group(1)), m.group(3)), {})[q.group(1)] = tensor
        elif m.group(2) in _OPEN_CLIP_LAYER:
            name = _OPEN_CLIP_LAYER[m.group(2)]
            out[f"model.transformer.resblocks.{m.group(1)}.{name}.{m.group(3)}"] = tensor
        else:
            raise ValueError(f"OpenCLIP text encoder: no OpenCLIP name for {key!r}")
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"OpenCLIP text encoder: layer {layer} lacks one of q/k/v {kind}")
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[f"model.transformer.resblocks.{layer}.attn.in_proj_{kind}"] = fused
    if with_projection and "model.text_projection" not in out:
        raise ValueError("OpenCLIP text encoder: with_projection=True but the model has no text_projection")
    return out


# --------------------------------------------------------------------------------------- assembling


def _state_dict(component: Component) -> dict[str, Tensor]:
    if isinstance(component, Mapping):
        return dict(component)
    return {key: tensor.detach() for key, tensor in component.state_dict().items()}


def pipeline_to_single_file(
    *,
    family: Family,
    unet: Component,
    vae: Component,
    text_encoder: Component,
    text_encoder_2: Component | None = None,
    unet_config: Mapping[str, Any] | None = None,
) -> dict[str, Tensor]:
    """One checkpoint state dict in the original layout of `family`, ready for `save_single_file`.

    Components are diffusers/transformers modules or their state dicts; `unet_config` is needed
    only when `unet` is a bare state dict (the block structure decides the LDM numbering).
    SDXL needs `text_encoder_2` (the ViT-bigG with projection); SD1/SD2 take none.
    """
    if family not in TEXT_ENCODER_PREFIXES:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(TEXT_ENCODER_PREFIXES)}")
    if (family == "sdxl") != (text_encoder_2 is not None):
        raise ValueError(
            f"family {family!r}: text_encoder_2 is {'required' if family == 'sdxl' else 'not used'}"
        )
    if unet_config is None:
        unet_config = getattr(unet, "config", None)
        if unet_config is None:
            raise ValueError("unet is a state dict: pass unet_config (the UNet2DConditionModel config)")

    result: dict[str, Tensor] = {}
    result.update({UNET_PREFIX + k: v for k, v in unet_to_ldm(_state_dict(unet), unet_config).items()})
    result.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(_state_dict(vae)).items()})
    prefixes = TEXT_ENCODER_PREFIXES[family]
    if family == "sd1":
        encoders = [clip_l_to_ldm(_state_dict(text_encoder))]
    elif family == "sd2":
        encoders = [open_clip_to_ldm(_state_dict(text_encoder), with_projection=False)]
    else:
        assert text_encoder_2 is not None
        encoders = [
            clip_l_to_ldm(_state_dict(text_encoder)),
            open_clip_to_ldm(_state_dict(text_encoder_2), with_projection=True),
        ]
    for prefix, encoder in zip(prefixes, encoders, strict=True):
        result.update({prefix + k: v for k, v in encoder.items()})
    return result


def save_single_file(
    state_dict: StateDict,
    path: str | os.PathLike[str],
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a checkpoint: `.safetensors` (with `metadata` in its header) or `.ckpt` (`{"state_dict": sd}`).

    `dtype` casts floating-point tensors only (integer buffers such as `position_ids` keep theirs).
    The file is written beside its destination and renamed into place, so a crash never leaves a
    half-written checkpoint in a model folder. A pickled `.ckpt` has no header for metadata: passing
    some is an error rather than a silent drop.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".ckpt"):
        raise ValueError(f"{path.name}: expected a .safetensors or .ckpt file name")
    if suffix == ".ckpt" and metadata:
        raise ValueError(f"{path.name}: a .ckpt cannot hold metadata; save as .safetensors")
    tensors: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[key] = tensor.contiguous()

    partial = path.with_name(path.name + ".partial")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(partial), metadata={"format": "pt", **(metadata or {})})
        else:
            torch.save({"state_dict": tensors}, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
