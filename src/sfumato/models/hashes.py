"""The hashes users see on civitai and in A1111 infotexts, cached so a big file is read once.

- AutoV2 ("Model hash"): sha256 of the whole file, first 10 hex digits.
- Old A1111 hash: sha256 of 64 KiB at offset 1 MiB, first 8 hex digits (still found in old PNGs).
- "addnet" short hash (LoRA, embeddings): sha256 of a safetensors file's tensor data, first 12 digits.
The full sha256 is cached in `<data-dir>/.sfumato/hashes.json` keyed by path, size and mtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import threading
from pathlib import Path

BLOCK = 1 << 20


class HashCache:
    """sha256 of files keyed by resolved path + size + mtime; survives restarts in a JSON file.
    Safe to share between threads (the server's request threads and its worker)."""

    def __init__(self, cache_file: Path | None) -> None:
        self.cache_file = cache_file
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        if cache_file and cache_file.is_file():
            try:
                loaded = json.loads(cache_file.read_text(encoding="utf-8"))
                self._entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, json.JSONDecodeError):
                self._entries = {}  # a damaged cache only costs a re-hash

    def sha256(self, path: Path) -> str:
        cached = self.cached_sha256(path)
        if cached is not None:
            return cached
        stat = path.stat()
        key = str(path.resolve())
        digest = sha256_file(path)  # outside the lock: other threads' cached lookups need not wait
        with self._lock:
            self._entries[key] = {"size": stat.st_size, "mtime": stat.st_mtime, "sha256": digest}
            self._save()
        return digest

    def cached_sha256(self, path: Path) -> str | None:
        """The sha256 if the cache knows this file as it is now, without reading the file."""
        stat = path.stat()
        with self._lock:
            entry = self._entries.get(str(path.resolve()))
        if entry and entry.get("size") == stat.st_size and entry.get("mtime") == stat.st_mtime:
            return entry["sha256"]
        return None

    def autov2(self, path: Path) -> str:
        return self.sha256(path)[:10]

    def _save(self) -> None:
        if not self.cache_file:
            return
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_file.parent, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._entries, f)
            os.replace(tmp, self.cache_file)
        except OSError:
            pass  # a cache that cannot be written (read-only or full disk) is only slower


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def old_a1111_hash(path: Path) -> str:
    with path.open("rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def addnet_hash(path: Path) -> str:
    """sha256 of a safetensors file's data section (skipping its 8-byte length and JSON header)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + header_len)
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()[:12]
