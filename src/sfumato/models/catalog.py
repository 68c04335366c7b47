"""`sfumato models list`: what each checkpoint in the model folders is, read from headers only."""

from __future__ import annotations

from typing import Any

from sfumato.errors import ModelFileError
from sfumato.models.detect import detect_checkpoint
from sfumato.models.files import open_state_dict
from sfumato.models.hashes import HashCache
from sfumato.models.registry import ModelEntry, selectable_checkpoints
from sfumato.settings import Settings


def _folder_size(entry: ModelEntry) -> int:
    if entry.path.is_file():
        return entry.path.stat().st_size
    return sum(p.stat().st_size for p in entry.path.rglob("*") if p.is_file())


def describe(entry: ModelEntry, hashes: HashCache) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": entry.name,
        "path": str(entry.path),
        "size_bytes": _folder_size(entry),
        "family": "diffusers",
        "dtype": "",
        "hash": None,
    }
    if entry.path.is_dir():
        return row
    try:
        info = detect_checkpoint(open_state_dict(entry.path), name=str(entry.path))
        variant = "" if info.variant == "base" else f"-{info.variant}"
        row["family"] = info.family + variant
        row["dtype"] = info.dtype
    except ModelFileError as exc:
        row["family"] = "unreadable"
        row["error"] = str(exc)
    row["hash"] = hashes.autov2(entry.path)
    return row


def describe_checkpoints(settings: Settings) -> list[dict[str, Any]]:
    hashes = HashCache(settings.hash_cache_file)
    return [describe(entry, hashes) for entry in selectable_checkpoints(settings)]
