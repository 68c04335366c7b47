"""What the model folders hold, in the shapes A1111's list endpoints return.

Folders are scanned on every call (they are small directory walks), so A1111's refresh-* endpoints
have nothing to invalidate. Hashes: a file's sha256 is read from the hash cache, or computed when the
file is small; a large checkpoint shows its hash once a generation (or `sfumato models list`) has
computed it, as A1111 shows titles without a hash until it knows one.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open

from sfumato.models.hashes import HashCache
from sfumato.models.registry import ModelEntry, list_vaes, scan_folder, selectable_checkpoints
from sfumato.prompts.embeddings import EmbeddingDatabase
from sfumato.settings import Settings

HASH_AT_ONCE_BYTES = 256 << 20


def known_sha256(path: Path, hashes: HashCache) -> str | None:
    if not path.is_file():
        return None
    cached = hashes.cached_sha256(path)
    if cached is None and path.stat().st_size <= HASH_AT_ONCE_BYTES:
        return hashes.sha256(path)
    return cached


def checkpoint_title(entry: ModelEntry, hashes: HashCache) -> str:
    """A1111's title: `relative/path.safetensors [abcdef1234]` (no hash part while it is unknown)."""
    sha = known_sha256(entry.path, hashes)
    return f"{entry.relative} [{sha[:10]}]" if sha else entry.relative


def sd_models(settings: Settings, hashes: HashCache) -> list[dict[str, Any]]:
    rows = []
    for entry in selectable_checkpoints(settings):
        sha = known_sha256(entry.path, hashes)
        rows.append(
            {
                "title": checkpoint_title(entry, hashes),
                "model_name": entry.name,
                "hash": sha[:10] if sha else None,
                "sha256": sha,
                "filename": str(entry.path),
                "config": None,
            }
        )
    return rows


def sd_vaes(settings: Settings) -> list[dict[str, Any]]:
    return [{"model_name": entry.name, "filename": str(entry.path)} for entry in list_vaes(settings)]


def _entries(settings: Settings, kind: str) -> list[ModelEntry]:
    return [
        e for folder in settings.model_dirs(kind) for e in scan_folder(folder, allow_diffusers_dirs=False)
    ]


def safetensors_metadata(path: Path) -> dict[str, Any]:
    """The `__metadata__` of a safetensors header (kohya's `ss_*` keys), JSON values decoded; {} when
    the file has none or is not safetensors."""
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (OSError, ValueError, RuntimeError):  # safetensors raises SafetensorError (a RuntimeError)
        return {}
    decoded: dict[str, Any] = {}
    for key, value in metadata.items():
        try:
            decoded[key] = json.loads(value) if value[:1] in "[{" else value
        except (json.JSONDecodeError, TypeError):
            decoded[key] = value
    return decoded


def loras(settings: Settings) -> list[dict[str, Any]]:
    rows = []
    for entry in _entries(settings, "lora"):
        metadata = safetensors_metadata(entry.path)
        rows.append(
            {
                "name": entry.path.stem,
                "alias": metadata.get("ss_output_name", entry.path.stem),
                "path": str(entry.path),
                "metadata": metadata,
            }
        )
    return rows


def hypernetworks(settings: Settings) -> list[dict[str, Any]]:
    return [{"name": e.path.stem, "path": str(e.path)} for e in _entries(settings, "hypernetworks")]


def embeddings(settings: Settings, hashes: HashCache) -> dict[str, Any]:
    """A1111's `{loaded: {name: {...}}, skipped: {name: {...}}}` (a file that cannot be read is skipped)."""
    database = EmbeddingDatabase.load(settings.model_dirs("embeddings"), hashes)
    loaded = {
        name: {
            "step": e.step,
            "sd_checkpoint": None,
            "sd_checkpoint_name": e.sd_checkpoint_name,
            "shape": e.shape,
            "vectors": e.vectors,
        }
        for name, e in sorted(database.embeddings.items())
    }
    skipped = {
        Path(path).stem: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None,
                          "vectors": None, "reason": reason}
        for path, reason in database.skipped.items()
    }  # fmt: skip
    return {"loaded": loaded, "skipped": skipped}


def prompt_styles(settings: Settings) -> list[dict[str, Any]]:
    """A1111's `styles.csv` (name, prompt, negative_prompt) from the data dir; [] when absent."""
    path = settings.data_dir / "styles.csv"
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return [
        {
            "name": r.get("name") or "",
            "prompt": r.get("prompt") or "",
            "negative_prompt": r.get("negative_prompt") or "",
        }
        for r in rows
        if r.get("name")
    ]


def memory() -> dict[str, Any]:
    """RAM of the machine and the process, and CUDA's when present (A1111's `/memory` shape)."""
    import torch

    page = os.sysconf("SC_PAGE_SIZE")
    total = os.sysconf("SC_PHYS_PAGES") * page
    free = os.sysconf("SC_AVPHYS_PAGES") * page
    body: dict[str, Any] = {"ram": {"free": free, "used": total - free, "total": total}}
    if torch.cuda.is_available():
        free_cuda, total_cuda = torch.cuda.mem_get_info()
        body["cuda"] = {
            "system": {"free": free_cuda, "used": total_cuda - free_cuda, "total": total_cuda},
            "active": {"current": torch.cuda.memory_allocated(), "peak": torch.cuda.max_memory_allocated()},
        }
    else:
        body["cuda"] = {"error": "CUDA is not available on this machine"}
    return body
