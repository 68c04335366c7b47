"""LoRA extraction (a fine-tune's difference from its base as a LoRA) and LoRAs baked into a checkpoint.

Extraction, as kohya's `extract_lora_from_models` does it: for each layer a LoRA would train
(`adapters.kohya_names`, with `conv_dim` also the ResNet convolutions), the weight difference
tuned − base is factored by a truncated SVD, ΔW ≈ (U·S)[:, :r] · Vᵀ[:r], and stored as kohya's
`lora_up`/`lora_down` with alpha = r (scale 1). Layers whose difference is below `min_diff` are left
out. Unlike kohya we do not clamp the factors' outliers: the result is the best rank-r approximation,
and the report gives each layer's relative error ‖ΔW − up·down‖ / ‖ΔW‖ so the user can pick a rank.

Baking (`merge_loras`) applies LoRAs to a loaded checkpoint exactly as a prompt tag would and writes the
patched model as a new single file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from sfumato.adapters.kohya_names import kohya_layers
from sfumato.errors import UserError
from sfumato.models.ldm_export import pipeline_to_single_file, save_single_file
from sfumato.models.loader import LoadedModel
from sfumato.prompts.extra_networks import ExtraNetworkCall

BASE_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


@dataclass(frozen=True)
class LayerError:
    name: str
    rank: int
    relative_error: float


def _factor(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(down, up) of the best rank-`rank` approximation of a layer's ΔW, and its relative error."""
    flat = delta.reshape(delta.shape[0], -1).float()
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    rank = min(rank, s.numel())
    up, down = u[:, :rank] * s[:rank], vh[:rank]
    error = float(torch.linalg.norm(flat - up @ down) / torch.linalg.norm(flat).clamp_min(1e-12))
    if delta.dim() == 4:  # conv: down keeps the kernel, up is 1×1 (kohya's LoCon layout)
        down = down.reshape(rank, *delta.shape[1:])
        up = up.reshape(delta.shape[0], rank, 1, 1)
    return down.contiguous(), up.contiguous(), error


def _same_architecture(tuned: LoadedModel, base: LoadedModel) -> None:
    if (tuned.family, tuned.variant) != (base.family, base.variant):
        raise UserError(
            f"the models are of different kinds ({tuned.family} {tuned.variant} vs {base.family} {base.variant})",
            field="base",
        )


def extract_lora(
    tuned: LoadedModel,
    base: LoadedModel,
    out: Path,
    *,
    dim: int,
    conv_dim: int | None = None,
    min_diff: float = 1e-6,
) -> list[LayerError]:
    """Write the LoRA of `tuned` − `base` to `out`; returns each extracted layer's relative error."""
    if dim < 1 or (conv_dim is not None and conv_dim < 1):
        raise UserError("--dim and --conv-dim must be at least 1", field="dim")
    _same_architecture(tuned, base)
    conv = conv_dim is not None
    tuned_layers = kohya_layers(tuned.unet, list(tuned.text_encoders), conv=conv)
    base_layers = kohya_layers(base.unet, list(base.text_encoders), conv=conv)
    tensors: dict[str, torch.Tensor] = {}
    report: list[LayerError] = []
    for name, module in tqdm(tuned_layers.items(), desc="extract", unit="layer", leave=False):
        delta = module.weight.detach().float() - base_layers[name].weight.detach().float()
        if delta.abs().max() <= min_diff:
            continue
        is_3x3 = delta.dim() == 4 and delta.shape[-1] > 1
        rank = conv_dim if is_3x3 and conv_dim else dim
        down, up, error = _factor(delta, rank)
        tensors[f"{name}.lora_down.weight"] = down
        tensors[f"{name}.lora_up.weight"] = up
        tensors[f"{name}.alpha"] = torch.tensor(float(down.shape[0]))
        report.append(LayerError(name, int(down.shape[0]), error))
    if not tensors:
        raise UserError("the two models are the same: there is nothing to extract", field="tuned")
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(dim),
        "ss_network_alpha": str(dim),
        "ss_network_args": json.dumps({"conv_dim": conv_dim, "conv_alpha": conv_dim} if conv else {}),
        "ss_base_model_version": BASE_VERSIONS[base.family],
        "ss_sd_model_name": base.name,
        "ss_training_comment": f"extracted by sfumato from {tuned.name} - {base.name}",
    }
    _save(tensors, out, metadata)
    return report


def _save(tensors: dict[str, torch.Tensor], out: Path, metadata: dict[str, str]) -> None:
    if out.suffix.lower() != ".safetensors":
        raise UserError(f"{out.name}: LoRAs are written as .safetensors", field="out")
    partial = out.with_name(out.name + ".partial")
    try:
        save_file(tensors, str(partial), metadata=metadata)
        partial.replace(out)
    except OSError as exc:
        raise UserError(f"could not write {out}: {exc.strerror or exc}", field="out") from exc
    finally:
        partial.unlink(missing_ok=True)


def merge_loras(
    model: LoadedModel, calls: list[ExtraNetworkCall], out: Path, *, dtype: torch.dtype
) -> list[str]:
    """Bake the LoRAs `calls` name into `model` and write it as a single file; returns the notes
    (a LoRA that did not fit is named there and left out, as at generation)."""
    activation = model.networks.activate(calls)
    if not activation.hashes:
        raise UserError("none of the LoRAs could be applied: " + "; ".join(activation.notes), field="loras")
    encoders = list(model.text_encoders)
    state = pipeline_to_single_file(
        family=model.family,
        unet=model.unet,
        vae=model.vae,
        text_encoder=encoders[0],
        text_encoder_2=encoders[1] if len(encoders) > 1 else None,
    )
    metadata = {"sfumato.merged_loras": json.dumps(activation.hashes), "sfumato.base_model": model.name}
    try:
        save_single_file(state, out, dtype=dtype, metadata=metadata)
    except OSError as exc:
        raise UserError(f"could not write {out}: {exc.strerror or exc}", field="out") from exc
    finally:
        model.networks.restore()
    return activation.notes
