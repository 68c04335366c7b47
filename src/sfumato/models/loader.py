"""Load checkpoints (single files and diffusers folders) into ready components, offline.

diffusers supplies the networks and the LDM -> diffusers key converters; transformers the text
encoders. We supply what the hub would have: configs inferred from the file's shapes (models.detect)
and the CLIP tokenizer files shipped as package data. Networks are created on the meta device and
the converted tensors are assigned into them, so loading holds one copy of the weights, not two.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sfumato.errors import ModelFileError
from sfumato.models.detect import (
    CheckpointInfo,
    Family,
    Prediction,
    TextEncoderSpec,
    Variant,
    detect_checkpoint,
    detect_vae_file,
    native_resolution,
)
from sfumato.models.files import open_state_dict, prefetch
from sfumato.models.memory_format import apply_memory_format, memory_layout, wants_channels_last
from sfumato.models.stored_weights import compute_device, compute_dtype, keep_weights_stored

TOKENIZER_PACKAGE = "sfumato.models.data"


@dataclass
class LoadedModel:
    """A checkpoint's components on one device, plus what the sampler needs to know about it."""

    name: str
    path: Path
    family: Family
    variant: Variant
    prediction: Prediction
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: list[CLIPTextModel | CLIPTextModelWithProjection]
    tokenizers: list[CLIPTokenizer]
    device: torch.device
    dtype: torch.dtype
    alphas_cumprod: torch.Tensor
    native_size: tuple[int, int]  # (width, height) it was trained at: the default output size
    vae_path: Path | None = None
    networks: Any = None  # the adapters.patcher.NetworkPatcher the ModelManager attaches
    taesd: Any = None  # the TAESD decoder (diffusers AutoencoderTiny), attached for jobs that decode with it
    compiled: Any = None  # the models.compiled_unet.CompiledUNet the ModelManager attaches (torch_compile)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


@lru_cache(maxsize=2)
def clip_tokenizer(pad_with_zero: bool) -> CLIPTokenizer:
    """The CLIP BPE tokenizer from our package data (built by scripts/build_clip_tokenizer.py).

    SD1's CLIP-L pads with <|endoftext|>; the OpenCLIP encoders (SD2, SDXL's second) pad with id 0.
    """
    folder = resources.files(TOKENIZER_PACKAGE) / "clip_tokenizer"
    with resources.as_file(folder) as path:
        return CLIPTokenizer(
            str(path / "vocab.json"),
            str(path / "merges.txt"),
            model_max_length=77,
            pad_token="!" if pad_with_zero else "<|endoftext|>",
        )


def sd_alphas_cumprod(
    num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """Stable Diffusion's training noise schedule ("scaled_linear" betas), the same for SD1, SD2 and SDXL."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def _assign(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    dtype: torch.dtype | None,
    what: str,
    layout: torch.memory_format = torch.preserve_format,
) -> None:
    """Load converted tensors into a meta-initialised module, casting as we go (one copy in RAM).
    `layout` puts 4-D weights in their compute layout in that same copy (a channels_last VAE would
    otherwise be copied twice). `dtype` None keeps each tensor as the file has it (memory-mapped, no
    copy: low-memory mode; the layout is then set later, by `_prepare_for_compute`)."""
    if dtype is not None:
        for key in list(state):
            tensor = state[key]
            state[key] = tensor.to(dtype, memory_format=layout if tensor.ndim == 4 else torch.preserve_format)
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelFileError(f"{what}: weights do not fit the inferred architecture ({detail})")


def _build(cls: type, config: Any) -> torch.nn.Module:
    with init_empty_weights():
        return cls(config) if not isinstance(config, dict) else cls(**config)


def _load_unet(sd: Mapping[str, torch.Tensor], info: CheckpointInfo, dtype: torch.dtype | None, name: str):
    unet = _build(UNet2DConditionModel, info.unet_config)
    state = convert_ldm_unet_checkpoint(sd, dict(unet.config))
    _assign(unet, state, dtype, f"{name} (UNet)")
    return unet


def load_vae_weights(
    sd: Mapping[str, torch.Tensor],
    config: dict,
    prefix: str,
    dtype: torch.dtype | None,
    name: str,
    layout: torch.memory_format = torch.preserve_format,
) -> AutoencoderKL:
    """An AutoencoderKL from LDM-layout (`encoder.down.*`) or diffusers-layout (`encoder.down_blocks.*`)
    keys, its 4-D weights in `layout`."""
    vae = _build(AutoencoderKL, config)
    keys = [k for k in sd if k.startswith(prefix)]
    if any(k.startswith(prefix + "encoder.down_blocks.") for k in keys):
        state = {k.removeprefix(prefix): sd[k] for k in keys}
    else:
        view = {k: sd[k] for k in keys}
        state = convert_ldm_vae_checkpoint(view, dict(vae.config))
    _assign(vae, state, dtype, f"{name} (VAE)", layout)
    return vae


def _text_encoder_class(spec: TextEncoderSpec) -> type:
    return CLIPTextModelWithProjection if spec.with_projection else CLIPTextModel


def _fit_text_model_keys(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers >= 5.6 flattened CLIPTextModel (no `text_model.` level); the WithProjection model and
    older versions keep it. Converters give `text_model.*`: adapt to whichever this model has."""
    wants_prefix = any(k.startswith("text_model.") for k in model.state_dict())
    out = {}
    for key, value in state.items():
        bare = key.removeprefix("text_model.")
        if key.startswith("text_projection") or bare.startswith("text_projection"):
            if isinstance(model, CLIPTextModelWithProjection):
                out["text_projection.weight"] = value
            continue
        out[f"text_model.{bare}" if wants_prefix else bare] = value
    return out


def _load_text_encoder(
    sd: Mapping[str, torch.Tensor], spec: TextEncoderSpec, dtype: torch.dtype | None, name: str
):
    cls = _text_encoder_class(spec)
    model = _build(cls, CLIPTextConfig(**spec.config))
    if spec.kind == "clip_l":
        state = {}
        for key in sd:
            if key.startswith(spec.prefix):
                bare = key.removeprefix(spec.prefix).removeprefix("text_model.")
                if bare.endswith("position_ids"):
                    continue
                state[f"text_model.{bare}"] = sd[key]
    else:
        kept = spec.config["num_hidden_layers"]
        view = {
            k: sd[k]
            for k in sd
            if k.startswith(spec.prefix) and not _is_resblock_at_or_after(k, spec.prefix, kept)
        }
        state = convert_open_clip_checkpoint(model, view, prefix=spec.prefix)
    _assign(model, _fit_text_model_keys(model, state), dtype, f"{name} (text encoder)")
    return model


def _is_resblock_at_or_after(key: str, prefix: str, index: int) -> bool:
    head = prefix + "transformer.resblocks."
    if not key.startswith(head):
        return False
    return int(key[len(head) :].split(".", 1)[0]) >= index


@torch.no_grad()
def guess_sd2_prediction(unet: UNet2DConditionModel) -> Prediction:
    """SD2 768-v and 512-eps share one architecture. As A1111 does, run the UNet once on a flat grey
    input at the noisiest timestep: a v-model's output then sits far below its input, an eps-model's not."""
    device, dtype = compute_device(unet), compute_dtype(unet)
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, device=device, dtype=dtype)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, device=device, dtype=dtype)
    out = unet(x, torch.tensor([999], device=device), encoder_hidden_states=context).sample
    return "v_prediction" if (out - x[:, :4]).float().mean().item() < -1 else "epsilon"


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype, low_memory: bool) -> None:
    """Put a loaded network where it computes: whole on `device`, or in low-memory mode with its large
    weights left where they rest, brought in layer by layer (`sfumato.models.stored_weights`)."""
    if low_memory:
        keep_weights_stored(module, dtype, device)
    else:
        module.to(device)


def _prepare_for_compute(
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    encoders: list[Any],
    device: torch.device,
    dtype: torch.dtype,
    low_memory: bool,
    channels_last: bool | None,
) -> None:
    """What every loader does once the weights are in: placement (low-memory hooks), memory layouts."""
    for module in (unet, vae, *encoders):
        _place(module, device, dtype, low_memory)
        module.eval()
    apply_memory_format([unet], wants_channels_last(device, dtype, channels_last, "unet"))
    apply_memory_format([vae], wants_channels_last(device, dtype, channels_last, "vae"))


def load_single_file(
    path: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    prediction: Prediction | None = None,
    low_memory: bool = False,
    channels_last: bool | None = None,
) -> LoadedModel:
    """Load an A1111/CompVis single-file checkpoint (.safetensors, or a weights-only .ckpt).
    `low_memory`: weights stay as the file stores them (`sfumato.models.stored_weights`);
    `channels_last`: the UNet's and VAE's layout (None: each `memory_format.wants_channels_last`)."""
    prefetch(path)
    sd = open_state_dict(path)
    info = detect_checkpoint(sd, name=str(path))
    if info.vae_config is None:
        raise ModelFileError(f"{path}: has no VAE baked in; put one in models/VAE and choose it with --vae")
    load_dtype = None if low_memory else dtype
    unet = _load_unet(sd, info, load_dtype, str(path))
    vae_layout = memory_layout(wants_channels_last(device, dtype, channels_last, "vae"))
    vae = load_vae_weights(sd, info.vae_config, "first_stage_model.", load_dtype, str(path), vae_layout)
    encoders = [_load_text_encoder(sd, spec, load_dtype, str(path)) for spec in info.text_encoders]
    tokenizers = [clip_tokenizer(spec.kind == "open_clip") for spec in info.text_encoders]
    del sd
    _prepare_for_compute(unet, vae, encoders, device, dtype, low_memory, channels_last)
    pred = prediction or info.prediction or guess_sd2_prediction(unet)
    return LoadedModel(
        name=path.stem,
        path=path,
        family=info.family,
        variant=info.variant,
        prediction=pred,
        unet=unet,
        vae=vae,
        text_encoders=encoders,
        tokenizers=tokenizers,
        device=device,
        dtype=dtype,
        alphas_cumprod=sd_alphas_cumprod(),
        native_size=native_resolution(info.family, pred, info.resolution),
    )


def _family_of_diffusers(unet_config: Mapping[str, Any], has_second_encoder: bool) -> Family:
    if has_second_encoder or unet_config.get("addition_embed_type") == "text_time":
        return "sdxl"
    return (
        "sd2"
        if unet_config.get("cross_attention_dim") == 1024 or unet_config.get("use_linear_projection")
        else "sd1"
    )


def _stored_half_dtype(folder: Path) -> torch.dtype | None:
    """fp16/bf16 when a diffusers component's safetensors weights are stored so (low-memory mode keeps
    them), else None."""
    halves = {"F16": torch.float16, "BF16": torch.bfloat16}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            names: list[str] = weights.keys()
            for key in names:
                kind = str(weights.get_slice(key).get_dtype())
                if kind.startswith(("F", "BF")):
                    return halves.get(kind)
    return None


def load_diffusers_folder(
    path: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    prediction: Prediction | None = None,
    low_memory: bool = False,
    channels_last: bool | None = None,
) -> LoadedModel:
    """Load a diffusers folder (`model_index.json`) with its own configs, strictly offline."""
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: unreadable model_index.json ({exc})") from exc

    def kw(subfolder: str) -> dict[str, Any]:
        stored = _stored_half_dtype(path / subfolder) if low_memory else None
        return {"subfolder": subfolder, "local_files_only": True, "torch_dtype": stored or dtype}

    try:
        unet = UNet2DConditionModel.from_pretrained(path, **kw("unet"))
        vae = AutoencoderKL.from_pretrained(path, **kw("vae"))
        encoders: list[Any] = [CLIPTextModel.from_pretrained(path, **kw("text_encoder"))]
        if "text_encoder_2" in index:
            encoders.append(CLIPTextModelWithProjection.from_pretrained(path, **kw("text_encoder_2")))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: not a loadable diffusers Stable Diffusion folder ({exc})") from exc
    _prepare_for_compute(unet, vae, encoders, device, dtype, low_memory, channels_last)
    family = _family_of_diffusers(unet.config, len(encoders) > 1)
    tokenizers = [clip_tokenizer(family == "sd2"), clip_tokenizer(True)][: len(encoders)]
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    scheduler_pred = None
    if scheduler_file.is_file():
        scheduler_pred = json.loads(scheduler_file.read_text(encoding="utf-8")).get("prediction_type")
    pred: Prediction = prediction or ("v_prediction" if scheduler_pred == "v_prediction" else "epsilon")
    variant = {4: "base", 9: "inpaint", 8: "pix2pix"}.get(unet.config.in_channels)
    if variant is None:
        raise ModelFileError(
            f"{path}: UNet takes {unet.config.in_channels} input channels; expected 4, 8 or 9"
        )
    return LoadedModel(
        name=path.name,
        path=path,
        family=family,
        variant=variant,
        prediction=pred,
        unet=unet,
        vae=vae,
        text_encoders=encoders,
        tokenizers=tokenizers,
        device=device,
        dtype=dtype,
        alphas_cumprod=sd_alphas_cumprod(),
        native_size=(unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1),) * 2,
    )


def load_checkpoint(
    path: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    prediction: Prediction | None = None,
    low_memory: bool = False,
    channels_last: bool | None = None,
) -> LoadedModel:
    """Load whatever `path` is: a diffusers folder or a single-file checkpoint."""
    options = {
        "device": device,
        "dtype": dtype,
        "prediction": prediction,
        "low_memory": low_memory,
        "channels_last": channels_last,
    }
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelFileError(f"{path}: a folder without model_index.json is not a diffusers model")
        return load_diffusers_folder(path, **options)
    return load_single_file(path, **options)


def load_vae_file(
    path: Path,
    family: Family,
    *,
    device: torch.device,
    dtype: torch.dtype,
    low_memory: bool = False,
    channels_last: bool | None = None,
) -> AutoencoderKL:
    """A standalone VAE (models/VAE, or `x.vae.safetensors` beside a checkpoint)."""
    sd = open_state_dict(path)
    config, prefix = detect_vae_file(sd, family, name=str(path))
    wanted = wants_channels_last(device, dtype, channels_last, "vae")
    load_dtype = None if low_memory else dtype
    vae = load_vae_weights(sd, config, prefix, load_dtype, str(path), memory_layout(wanted))
    _place(vae, device, dtype, low_memory)
    apply_memory_format([vae], wanted)
    return vae.eval()
