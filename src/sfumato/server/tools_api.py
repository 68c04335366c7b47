"""Model tools over HTTP: `POST /sfumato/v1/merge`, `/merge-lora` and `/extract-lora`.

The web UI's Merge and Extract LoRA tabs, and scripts, make new model files from the ones in the model
folders, as `sfumato merge`, `merge-lora` and `extract-lora` do on the command line (A1111's Checkpoint
Merger tab, kohya's LoRA extraction). The rules that make this safe on a server:

- sources are named as everywhere else (name, title or hash) and must lie in the model folders;
- the output is a plain file name (no separators, no `..`, no leading dot), written as
  `<name>.safetensors` in the first checkpoints folder (merges) or the first LoRA folder (extraction),
  never anywhere else; an existing file is replaced only when the request says `overwrite`, and a name
  another model already answers to in another file is refused (it would make the name ambiguous);
- the work (minutes of CPU for a full-size model) runs in a worker thread, one tool at a time, so the
  event loop keeps answering (progress, listings, the queue) meanwhile;
- baking LoRAs uses the engine's loaded model, so it holds the engine's lock: a generation is never
  run on a model with LoRAs half baked in, and the model is restored before the lock is let go.

Each response names the file written and how the listings will show it (`/sdapi/v1/sd-models`' title,
`/sdapi/v1/loras`' name), which they do at once: the folders are read on every listing.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from sfumato.adapters.network_registry import find_network, network_entries
from sfumato.errors import UserError, unknown_name
from sfumato.models.registry import selectable_checkpoints
from sfumato.prompts.extra_networks import ExtraNetworkCall
from sfumato.server.listings import checkpoint_title
from sfumato.server.state import ServerState

router = APIRouter(prefix="/sfumato/v1", tags=["sfumato tools"])

Dtype = Literal["fp16", "bf16", "fp32"]
SUFFIX = ".safetensors"
MAX_NAME_BYTES = 200  # a file name holds 255 bytes, with .safetensors.partial


class OutputFile(BaseModel):
    """Where a tool's result goes: a file name in its model folder."""

    model_config = ConfigDict(extra="ignore")
    name: str = Field(description="the new file's name, without folders (.safetensors is added)")
    overwrite: bool = Field(False, description="replace an existing file of that name")


class MergeBody(OutputFile):
    models: list[str] = Field(
        min_length=2, max_length=3, description="[A, B] (weighted) or [A, B, C] (add-diff): checkpoints"
    )
    mode: Literal["weighted", "add-diff"] = Field(
        "weighted", description="weighted: A·(1 − α) + B·α; add-diff: A + (B − C)·α"
    )
    alpha: float = Field(0.5, ge=-10.0, le=10.0, allow_inf_nan=False, description="α, B's share")
    vae: str | None = Field(None, description='a VAE from models/VAE to bake in ("None" or empty: keep A\'s)')
    dtype: Dtype = "fp16"


class MergeLoraBody(OutputFile):
    model: str = Field(description="the checkpoint to bake the LoRAs into")
    loras: list[str] = Field(
        min_length=1, description='LoRAs as in a prompt tag without the brackets: "name" or "name:weight"'
    )
    dtype: Dtype = "fp16"


class ExtractLoraBody(OutputFile):
    tuned: str = Field(description="the fine-tuned checkpoint")
    base: str = Field(description="the checkpoint it was tuned from")
    dim: int = Field(32, ge=1, le=4096, description="rank of the linear layers")
    conv_dim: int | None = Field(None, ge=1, le=4096, description="also the 3x3 convolutions, at this rank")


class CheckpointMade(BaseModel):
    path: str = Field(description="the file written")
    title: str = Field(description="the new checkpoint's title, as /sdapi/v1/sd-models lists it")


class LorasBaked(CheckpointMade):
    notes: list[str] = Field(description="LoRAs that were left out, and why")


class LayerReport(BaseModel):
    layer: str
    rank: int
    relative_error: float


class LoraExtracted(BaseModel):
    path: str = Field(description="the file written")
    name: str = Field(description="the LoRA's name, as /sdapi/v1/loras lists it and a prompt tag uses it")
    layers: int = Field(description="how many layers the LoRA holds")
    mean_error: float = Field(description="mean of the layers' relative errors ‖ΔW − up·down‖ / ‖ΔW‖")
    max_error: float
    worst_layer: str = Field(description="the layer with the largest relative error")
    report: list[LayerReport]


def _tools_lock(app: FastAPI) -> asyncio.Lock:
    """One model tool at a time (each can take a model's worth of memory). An asyncio lock, so a
    waiting request holds no thread; created on first use, inside the server's event loop."""
    lock = getattr(app.state, "model_tools_lock", None)
    if lock is None:
        lock = app.state.model_tools_lock = asyncio.Lock()
    return lock


def _encoded_length(text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: no file can have this name
        return MAX_NAME_BYTES + 1


def plain_name(name: str) -> str:
    """The file stem a client asked for, if it is a plain file name (a 422 naming `name` if not)."""
    stem = name.strip()
    if stem.lower().endswith(SUFFIX):
        stem = stem[: -len(SUFFIX)].rstrip()
    problem = None
    if not stem:
        problem = "is empty"
    elif "/" in stem or "\\" in stem:
        problem = "must be a file name, without folders"
    elif ".." in stem:
        problem = "must not contain '..'"
    elif stem.startswith("."):
        problem = "must not start with '.' (the model folders' hidden files are not listed)"
    elif not stem.isprintable() or _encoded_length(stem) > MAX_NAME_BYTES:
        problem = f"must be printable and at most {MAX_NAME_BYTES} bytes long in UTF-8"
    if problem:
        raise UserError(f"name: {name!r} {problem}", field="name")
    return stem


def _output_path(folder: Path, stem: str, overwrite: bool, others: list[Path]) -> Path:
    """`folder/<stem>.safetensors`, checked to stay in `folder`; `others` are the files the name
    already stands for (a model of that name elsewhere makes the name ambiguous: refused)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {folder}: {exc.strerror or exc}", field="name") from exc
    root = folder.resolve()
    out = root / f"{stem}{SUFFIX}"
    if out.resolve().parent != root:  # a symlink in the folder pointing elsewhere
        raise UserError(f"name: {stem!r} would be written outside {root}", field="name")
    for other in others:
        if other.resolve() != out.resolve():
            raise UserError(
                f"name: {stem!r} is already the name of {other}; choose another name", field="name"
            )
    if out.exists() and not overwrite:
        raise UserError(
            f"name: {out.name} already exists in {root}; choose another name or set overwrite", field="name"
        )
    if out.exists() and not out.is_file():
        raise UserError(f"name: {out} exists and is not a file", field="name")
    return out


def _checkpoint_output(state: ServerState, name: str, overwrite: bool) -> Path:
    stem = plain_name(name)
    if stem.lower().endswith(".vae"):  # x.vae.safetensors: the VAE beside x (VAE_SIDE_SUFFIXES)
        raise UserError(
            f"name: {stem!r} ends in '.vae': that is how a VAE beside a checkpoint is named", field="name"
        )
    wanted = stem.lower()
    same = [
        e.path
        for e in selectable_checkpoints(state.settings)
        if wanted in (e.name.lower(), e.path.stem.lower())
    ]
    return _output_path(state.settings.model_dirs("checkpoints")[0], stem, overwrite, same)


def _keep_the_checkpoint_in_use(state: ServerState) -> None:
    """With no checkpoint chosen, the default is the first one in the folders, which a new file may
    precede: name the one in use in the options first (A1111's option always names it), so adding a
    model never changes what generates."""
    if state.options.snapshot().get("sd_model_checkpoint") or state.settings.default_model:
        return  # chosen already, or the settings' default_model: a new file changes neither
    try:
        current = state.engine.manager.default_checkpoint()
    except UserError:
        return  # no checkpoint at all: the new one becomes the default, as any added file would
    state.options.update({"sd_model_checkpoint": str(current)})


def _title_of(state: ServerState, path: Path) -> str:
    """The new file's title in the listings, with its hash (computed now, as A1111 does for a merge:
    the file was just written, so it is read from the page cache)."""
    state.hashes.sha256(path)
    for entry in selectable_checkpoints(state.settings):
        if entry.path.resolve() == path.resolve():
            return checkpoint_title(entry, state.hashes)
    return path.name  # not reached: the file is in the first checkpoints folder


def _merge(state: ServerState, body: MergeBody) -> dict[str, Any]:
    from sfumato.tools.merge import MergeRecipe, merge_checkpoints

    sources = [state.checkpoint_in_folders(model, f"models.{i}") for i, model in enumerate(body.models)]
    vae = None
    if body.vae and body.vae.strip().lower() not in ("none", ""):
        vae = state.vae_in_folders(body.vae, "vae")
    out = _checkpoint_output(state, body.name, body.overwrite)
    recipe = MergeRecipe(body.mode, body.alpha, body.dtype)
    _keep_the_checkpoint_in_use(state)
    merge_checkpoints(sources, out, recipe, vae=vae, hashes=state.hashes)
    return {"path": str(out), "title": _title_of(state, out)}


def lora_calls(settings: Any, specs: list[str]) -> list[ExtraNetworkCall]:
    """`name[:weight[:unet weight]]` entries as the LoRA tags' calls; each name must be a LoRA in the
    folders and each weight a number (a 422 naming `loras.N` otherwise)."""
    calls = []
    for i, spec in enumerate(specs):
        field = f"loras.{i}"
        if not spec.strip() or "<" in spec or ">" in spec:
            raise UserError(f"{field}: {spec!r} is not a LoRA as 'name' or 'name:weight'", field=field)
        call = ExtraNetworkCall("lora", tuple(part.strip() for part in spec.strip().split(":")))
        if not call.positional:
            raise UserError(f"{field}: {spec!r} names no LoRA", field=field)
        if find_network(settings, call.name) is None:
            known = [entry.path.stem for entry in network_entries(settings)]
            raise unknown_name("LoRA", call.name, known, field=field)
        for weight in (*call.positional[1:], *call.named.values()):
            try:
                number = float(weight)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise UserError(f"{field}: the weight {weight!r} is not a number", field=field)
        calls.append(call)
    return calls


def _merge_lora(state: ServerState, body: MergeLoraBody) -> dict[str, Any]:
    from sfumato.tools.lora_tools import merge_loras
    from sfumato.tools.merge import DTYPES

    source = state.checkpoint_in_folders(body.model, "model")
    calls = lora_calls(state.settings, body.loras)
    out = _checkpoint_output(state, body.name, body.overwrite)
    _keep_the_checkpoint_in_use(state)
    engine = state.engine
    with engine.lock:  # between jobs; merge_loras restores the model before we let go
        model = engine.manager.load(str(source))
        notes = merge_loras(model, calls, out, dtype=DTYPES[body.dtype])
    return {"path": str(out), "title": _title_of(state, out), "notes": notes}


def _extract_lora(state: ServerState, body: ExtractLoraBody) -> dict[str, Any]:
    import torch

    from sfumato.models.loader import load_checkpoint
    from sfumato.tools.lora_tools import extract_lora

    tuned_path = state.checkpoint_in_folders(body.tuned, "tuned")
    base_path = state.checkpoint_in_folders(body.base, "base")
    if tuned_path.resolve() == base_path.resolve():
        raise UserError("base: the tuned and the base model are the same file", field="base")
    stem = plain_name(body.name)
    existing = find_network(state.settings, stem)
    out = _output_path(
        state.settings.model_dirs("lora")[0], stem, body.overwrite, [existing] if existing else []
    )
    device = state.engine.manager.device  # its own fp32 copies: differences need full precision
    tuned = load_checkpoint(tuned_path, device=device, dtype=torch.float32)
    base = load_checkpoint(base_path, device=device, dtype=torch.float32)
    report = extract_lora(tuned, base, out, dim=body.dim, conv_dim=body.conv_dim)
    del tuned, base
    errors = [layer.relative_error for layer in report]
    worst = max(report, key=lambda layer: layer.relative_error)
    return {
        "path": str(out),
        "name": stem,
        "layers": len(report),
        "mean_error": sum(errors) / len(errors),
        "max_error": worst.relative_error,
        "worst_layer": worst.name,
        "report": [{"layer": r.name, "rank": r.rank, "relative_error": r.relative_error} for r in report],
    }


async def _run(request: Request, work: Any, body: BaseModel) -> dict[str, Any]:
    async with _tools_lock(request.app):
        return await run_in_threadpool(work, request.app.state.sfumato, body)


@router.post("/merge", response_model=CheckpointMade)
async def merge(body: MergeBody, request: Request) -> dict[str, Any]:
    """Merge checkpoints from the model folders into a new one (A1111's Checkpoint Merger)."""
    return await _run(request, _merge, body)


@router.post("/merge-lora", response_model=LorasBaked)
async def merge_lora(body: MergeLoraBody, request: Request) -> dict[str, Any]:
    """Bake LoRAs into a checkpoint, as their prompt tags would apply them, as a new checkpoint."""
    return await _run(request, _merge_lora, body)


@router.post("/extract-lora", response_model=LoraExtracted)
async def extract_lora(body: ExtractLoraBody, request: Request) -> dict[str, Any]:
    """A fine-tune's difference from its base as a LoRA (truncated SVD per layer), in models/Lora."""
    return await _run(request, _extract_lora, body)
