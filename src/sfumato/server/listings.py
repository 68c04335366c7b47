"""What the model folders hold, in the shapes A1111's list endpoints return.

Folders are scanned on every call (they are small directory walks), so A1111's refresh-* endpoints
have nothing to invalidate. Hashes: a file's sha256 is read from the hash cache, or computed when the
file is small; a large checkpoint shows its hash once a generation (or `sfumato models list`) has
computed it, as A1111 shows titles without a hash until it knows one. What else a listing reads from
inside a file (a checkpoint's family, a LoRA's rank and short hash) is kept in `FileFacts` while the
file is unchanged, so a listing reads each file once, not on every call.
"""

from __future__ import annotations

import csv
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sfumato.adapters.network_registry import describe_network, network_entries
from sfumato.errors import UserError
from sfumato.models.detect import detect_checkpoint
from sfumato.models.files import SAFETENSORS_SUFFIXES, open_state_dict, safetensors_metadata
from sfumato.models.hashes import HashCache
from sfumato.models.loader import LoadedModel, _family_of_diffusers
from sfumato.models.registry import ModelEntry, list_vaes, scan_folder, selectable_checkpoints
from sfumato.prompts.embeddings import EmbeddingDatabase
from sfumato.settings import Settings

HASH_AT_ONCE_BYTES = 256 << 20


class FileFacts:
    """What listings read from inside model files, remembered per file (by resolved path) while its
    size and mtime stay the same. Safe to share between the server's request threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str], tuple[int, int, Any]] = {}

    def get(self, kind: str, path: Path, read: Callable[[], Any]) -> Any:
        stat = path.stat()
        key = (kind, str(path.resolve()))
        with self._lock:
            known = self._known.get(key)
        if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2]
        value = read()  # outside the lock: a slow file does not hold up the other listings
        with self._lock:
            self._known[key] = (stat.st_size, stat.st_mtime_ns, value)
        return value


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


def checkpoint_family(path: Path) -> str | None:
    """sd1, sd2 or sdxl from a safetensors header (tensor names and shapes) or a diffusers folder's
    configs; None for a pickle (reading one means loading all of it) and for what cannot be read."""
    try:
        if path.is_dir():
            index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
            unet = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
            return _family_of_diffusers(unet, "text_encoder_2" in index)
        if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
            return None
        return detect_checkpoint(open_state_dict(path), name=str(path)).family
    except (UserError, OSError, ValueError, AttributeError):
        return None


def sd_models(
    settings: Settings, hashes: HashCache, facts: FileFacts, loaded: LoadedModel | None = None
) -> list[dict[str, Any]]:
    """A1111's rows, plus sfumato's `family` (sd1/sd2/sdxl, null when unknown); a pickled checkpoint's
    family is known once it is the loaded model."""
    rows = []
    for entry in selectable_checkpoints(settings):
        sha = known_sha256(entry.path, hashes)
        family = facts.get("family", entry.path, lambda e=entry: checkpoint_family(e.path))
        if family is None and loaded is not None and loaded.path.resolve() == entry.path.resolve():
            family = loaded.family
        rows.append(
            {
                "title": checkpoint_title(entry, hashes),
                "model_name": entry.name,
                "hash": sha[:10] if sha else None,
                "sha256": sha,
                "filename": str(entry.path),
                "config": None,
                "family": family,
            }
        )
    return rows


def sd_vaes(settings: Settings) -> list[dict[str, Any]]:
    return [{"model_name": entry.name, "filename": str(entry.path)} for entry in list_vaes(settings)]


def _entries(settings: Settings, kind: str) -> list[ModelEntry]:
    return [
        e for folder in settings.model_dirs(kind) for e in scan_folder(folder, allow_diffusers_dirs=False)
    ]


LORA_FIELDS = ("family", "kinds", "rank", "alpha", "hash", "trigger_words", "base_model")


def lora_row(entry: ModelEntry, hashes: HashCache) -> dict[str, Any]:
    """A1111's fields (name, alias, path, metadata) and sfumato's from `describe_network`; a file that
    cannot be read gets empty values and a `note` saying why."""
    metadata = safetensors_metadata(entry.path)
    row: dict[str, Any] = {
        "name": entry.path.stem,
        "alias": metadata.get("ss_output_name", entry.path.stem),
        "path": str(entry.path),
        "metadata": metadata,
    }
    try:
        described = describe_network(entry, hashes)
    except (UserError, OSError) as exc:
        return {**row, "family": None, "kinds": [], "rank": None, "alpha": None, "hash": None,
                "trigger_words": [], "base_model": None, "note": str(exc)}  # fmt: skip
    return {**row, **{field: described[field] for field in LORA_FIELDS}}


def loras(settings: Settings, hashes: HashCache, facts: FileFacts) -> list[dict[str, Any]]:
    """A1111's `/loras` rows (the files prompt tags can name), each file read once while unchanged."""
    return [
        facts.get("lora", entry.path, lambda e=entry: lora_row(e, hashes))
        for entry in network_entries(settings)
    ]


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
