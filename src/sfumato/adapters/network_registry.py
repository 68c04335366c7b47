"""LoRA/LyCORIS files in the model folders (A1111's models/Lora and models/LyCORIS, ComfyUI's
models/loras), found by the name a prompt tag uses, listed with what their metadata says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sfumato.adapters.network_files import NetworkFile, family_of, read_network
from sfumato.models.hashes import HashCache, addnet_hash
from sfumato.models.registry import ModelEntry, scan_folder
from sfumato.settings import Settings


def network_entries(settings: Settings, kind: str = "lora") -> list[ModelEntry]:
    """The files of one network folder kind ("lora" or "hypernetworks"), first of a name winning."""
    found: dict[str, ModelEntry] = {}
    for root in settings.model_dirs(kind):
        for entry in scan_folder(root, allow_diffusers_dirs=False):
            found.setdefault(entry.name, entry)
    return list(found.values())


def find_network(settings: Settings, name: str, kind: str = "lora") -> Path | None:
    """A1111's lookup: the file's name without extension (or its path below the folder), exactly,
    then ignoring case."""
    entries = network_entries(settings, kind)
    for matches in (
        lambda e: name in (e.name, e.path.stem),
        lambda e: name.lower() in (e.name.lower(), e.path.stem.lower()),
    ):
        for entry in entries:
            if matches(entry):
                return entry.path
    return None


def short_hash(network: NetworkFile, hashes: HashCache | None = None) -> str:
    """The 12-digit hash A1111 writes in "Lora hashes": kohya's own (`sshs_model_hash`) when the file
    records it, else the hash of the tensor data of a safetensors file (addnet), else of the file."""
    recorded = network.metadata.get("sshs_model_hash")
    if recorded:
        return recorded[:12]
    if network.path.suffix.lower() == ".safetensors":
        return addnet_hash(network.path)
    return (hashes.sha256(network.path) if hashes else "")[:12]


def _tag_frequency(metadata: dict[str, str]) -> dict[str, int]:
    """kohya's `ss_tag_frequency` ({folder: {tag: count}}) summed over folders, most used first."""
    try:
        folders = json.loads(metadata.get("ss_tag_frequency") or "{}")
    except json.JSONDecodeError:
        return {}
    totals: dict[str, int] = {}
    for tags in folders.values() if isinstance(folders, dict) else []:
        for tag, count in (tags or {}).items():
            totals[tag.strip()] = totals.get(tag.strip(), 0) + int(count)
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def describe_network(entry: ModelEntry, hashes: HashCache | None = None) -> dict[str, Any]:
    """One row of `sfumato loras list` (and the API's /loras): name, family, kinds, rank, alpha, hash
    and the training metadata people look at (base model, trigger words = the most frequent tags)."""
    network = read_network(entry.path)
    metadata = network.metadata
    tags = _tag_frequency(metadata)
    return {
        "name": entry.name,
        "alias": metadata.get("ss_output_name") or entry.path.stem,
        "path": str(entry.path),
        "family": family_of(network),
        "kinds": sorted(network.kinds() - {"unsupported"}),
        "rank": network.rank(),
        "alpha": network.alpha(),
        "hash": short_hash(network, hashes),
        "base_model": metadata.get("ss_sd_model_name") or metadata.get("ss_base_model_version"),
        "trigger_words": list(tags)[:10],
        "metadata": {k: v for k, v in metadata.items() if k.startswith(("ss_", "modelspec."))},
    }
