"""Checkpoint merging (A1111's Checkpoint Merger): weighted sum and add difference, tensor by tensor.

- weighted sum:   A·(1 − α) + B·α
- add difference: A + (B − C)·α
Every tensor is computed in float32 from the sources' tensors and written in the output dtype as soon
as it is made (`models.safetensors_stream`). Sources are opened lazily (safetensors are memory-mapped),
so the merge holds one tensor of each source at a time: its own memory stays far below one model's
size (the sources' pages it reads are the page cache's, and go when memory is needed). Keys only A has are kept as they are (EMA copies,
a baked VAE B lacks); integer buffers come from A. A VAE file can be baked in (LDM or diffusers layout).

The output carries A1111's merge metadata (`sd_merge_recipe`, `sd_merge_models`: the recipe and each
source's hash), so A1111, civitai and we show where a merge came from.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from sfumato.errors import UserError
from sfumato.models.detect import detect_checkpoint, detect_vae_file
from sfumato.models.files import LazyStateDict, open_state_dict, tensor_shape
from sfumato.models.hashes import HashCache
from sfumato.models.ldm_export import VAE_PREFIX, vae_to_ldm
from sfumato.models.safetensors_stream import TORCH_DTYPES, write_streamed

MergeMode = Literal["weighted", "add-diff"]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class MergeRecipe:
    mode: MergeMode
    alpha: float
    dtype: str = "fp16"


def _family(state: Mapping[str, torch.Tensor], path: Path) -> str:
    info = detect_checkpoint(state, name=path.name)
    return f"{info.family} {info.variant}"


def _vae_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A VAE file's tensors under the checkpoint's `first_stage_model.` prefix, in LDM names."""
    state = open_state_dict(path)
    _, prefix = detect_vae_file(state, "sd1", name=path.name)
    own = {k.removeprefix(prefix): state[k] for k in state if k.startswith(prefix)}
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in own:  # diffusers layout
        own = vae_to_ldm(own)
    return {
        VAE_PREFIX + k: v
        for k, v in own.items()
        if k.startswith(("encoder.", "decoder.", "quant_conv", "post_quant_conv"))
    }


def _combine(recipe: MergeRecipe, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    a32, b32 = a.float(), b.float()
    if recipe.mode == "weighted":
        return a32 * (1 - recipe.alpha) + b32 * recipe.alpha
    assert c is not None
    return a32 + (b32 - c.float()) * recipe.alpha


def merge_checkpoints(
    sources: list[Path],
    out: Path,
    recipe: MergeRecipe,
    *,
    vae: Path | None = None,
    hashes: HashCache | None = None,
) -> Path:
    """Merge `sources` (A, B for weighted; A, B, C for add-diff) into `out` (.safetensors)."""
    needed = 2 if recipe.mode == "weighted" else 3
    if len(sources) != needed:
        raise UserError(
            f"{recipe.mode} merging takes {needed} checkpoints, not {len(sources)}", field="models"
        )
    if recipe.dtype not in DTYPES:
        raise UserError(f"unknown dtype {recipe.dtype!r} (fp16, bf16 or fp32)", field="dtype")
    if out.suffix.lower() != ".safetensors":
        raise UserError(f"{out.name}: the merge is written as .safetensors", field="out")
    states = [open_state_dict(path) for path in sources]
    families = [_family(state, path) for state, path in zip(states, sources, strict=True)]
    if len(set(families)) > 1:
        listing = ", ".join(f"{p.name} is {f}" for p, f in zip(sources, families, strict=True))
        raise UserError(f"these checkpoints cannot be merged: {listing}", field="models")
    a, b = states[0], states[1]
    c = states[2] if needed == 3 else None
    baked = _vae_tensors(vae) if vae is not None else {}
    out_dtype = DTYPES[recipe.dtype]
    keys = [key for key in a if key not in baked]
    for key in keys:  # every shape checked before anything is written
        shape = tensor_shape(a, key)
        if any(key in other and tensor_shape(other, key) != shape for other in states[1:]):
            raise UserError(f"{key}: shapes differ between the checkpoints", field="models")
    layout = [(key, tensor_shape(a, key), _output_dtype(a, key, out_dtype)) for key in keys]
    layout += [(key, tuple(t.shape), out_dtype) for key, t in baked.items()]

    def merged() -> Iterator[torch.Tensor]:
        for key in tqdm(keys, desc="merge", unit="tensor", leave=False):
            tensor = a[key]
            if tensor.is_floating_point() and key in b and (c is None or key in c):
                tensor = _combine(recipe, tensor, b[key], c[key] if c is not None else None)
            yield tensor.to(out_dtype) if tensor.is_floating_point() else tensor
        yield from (t.to(out_dtype) for t in baked.values())

    try:
        return write_streamed(out, layout, merged(), _metadata(sources, recipe, vae, hashes))
    except OSError as exc:
        raise UserError(f"could not write {out}: {exc.strerror or exc}", field="out") from exc


def _output_dtype(state: Mapping[str, torch.Tensor], key: str, float_dtype: torch.dtype) -> torch.dtype:
    """The merged tensor's dtype: `float_dtype` for weights, the source's own for integer buffers."""
    dtype = TORCH_DTYPES[state.dtype_name(key)] if isinstance(state, LazyStateDict) else state[key].dtype
    return float_dtype if dtype.is_floating_point else dtype


def _metadata(
    sources: list[Path], recipe: MergeRecipe, vae: Path | None, hashes: HashCache | None
) -> dict[str, str]:
    hashes = hashes or HashCache(None)
    digests = [hashes.sha256(path) for path in sources]
    recipe_json = {
        "type": "webui",
        "primary_model_hash": digests[0],
        "secondary_model_hash": digests[1],
        "tertiary_model_hash": digests[2] if len(digests) > 2 else None,
        "interp_method": "Weighted sum" if recipe.mode == "weighted" else "Add difference",
        "multiplier": recipe.alpha,
        "save_as_half": recipe.dtype == "fp16",
        "bake_in_vae": vae.name if vae else None,
        "custom_name": None,
        "is_inpainting": False,
        "discard_weights": "",
    }
    models = {
        d: {"name": p.name, "legacy_hash": None, "sd_merge_recipe": None}
        for p, d in zip(sources, digests, strict=True)
    }
    return {"sd_merge_recipe": json.dumps(recipe_json), "sd_merge_models": json.dumps(models)}
