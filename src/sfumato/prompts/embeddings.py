"""Textual-inversion embeddings, read and matched exactly as A1111 does, so users' folders work unchanged.

A1111's rules (modules/textual_inversion/textual_inversion.py), kept here:
- Every `.pt`, `.bin`, `.safetensors` file under the embeddings folders, subfolders included (os.walk,
  a folder's files before its subfolders), is one embedding whose trigger word is the file's stem.
  PNG images carrying an `sd-ti-embedding` text chunk are embeddings too, named by their stored `name`;
  `*.preview.png` and images without the chunk are previews.
- Formats: `{'string_to_param': {'*': tensor}}` (A1111 `.pt`), SDXL `{'clip_l', 'clip_g'}`, or a single
  tensor under any key (diffusers concepts, `emb_params`). A 1-D tensor is one vector.
- When two files share a name the one loaded last wins, but only among those that fit the model: an
  embedding whose width is not the model's ("expected shape", 768+1280 for SDXL) is skipped.
- The short hash shown in "TI hashes" is the sha256 of the whole file, first 12 hex digits.
- A prompt matches an embedding when the name's tokens (no start/end tokens) appear at a position; the
  longest name starting with that token wins.

Pickles are opened with torch's weights-only unpickler: a file needing code is skipped, never run.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import weakref
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sfumato.errors import ModelFileError
from sfumato.models.files import open_state_dict
from sfumato.models.hashes import HashCache

PICKLE_SUFFIXES = (".pt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
IMAGE_SUFFIX = ".png"
EMBEDDING_SUFFIXES = (*PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, IMAGE_SUFFIX)
IMAGE_CHUNK = "sd-ti-embedding"
# The largest real embeddings are well under a megabyte; a bigger pickle is a checkpoint dropped in the
# wrong folder, and loading it just to reject it would cost its whole size in RAM.
MAX_PICKLE_BYTES = 64 << 20

ENCODER_KINDS = ("clip_l", "open_clip")
# Which tensor of an SDXL embedding feeds which encoder (A1111's `textual_inversion_key`).
SDXL_KEYS = {"clip_l": "clip_l", "open_clip": "clip_g"}
PLAIN_KEY = "*"
FAMILY_BY_WIDTH = {768: "sd1", 1024: "sd2"}

Encoders = Sequence[tuple[str, int]]


class NotAnEmbedding(Exception):
    """A file that was read but holds no embedding; its message is the reason shown to the user."""


@dataclass(eq=False)
class Embedding:
    """One textual-inversion embedding: `tensors` is {"clip_l", "clip_g"} for SDXL files, else {"*"}."""

    name: str
    path: Path
    tensors: dict[str, torch.Tensor] = field(repr=False)
    sha256: str
    step: int | None = None
    sd_checkpoint_name: str | None = None

    @property
    def is_sdxl(self) -> bool:
        return PLAIN_KEY not in self.tensors

    @property
    def vectors(self) -> int:
        """How many prompt tokens the embedding takes (A1111 counts clip_g's rows for SDXL)."""
        return self.tensors["clip_g" if self.is_sdxl else PLAIN_KEY].shape[0]

    @property
    def shape(self) -> int:
        """A1111's `shape`: the width, summed over both encoders for SDXL; compared with the model's."""
        return sum(t.shape[-1] for t in self.tensors.values())

    @property
    def vectors_by_width(self) -> dict[int, torch.Tensor]:
        return {t.shape[-1]: t for t in self.tensors.values()}

    @property
    def family(self) -> str:
        """The model family the widths suggest, for listings only."""
        if self.is_sdxl:
            widths = (self.tensors["clip_l"].shape[-1], self.tensors["clip_g"].shape[-1])
            return "sdxl" if widths == (768, 1280) else "unknown"
        return FAMILY_BY_WIDTH.get(self.shape, "unknown")

    @property
    def shorthash(self) -> str:
        """A1111's "TI hashes" value."""
        return self.sha256[:12]

    def for_encoder(self, kind: str, width: int) -> torch.Tensor | None:
        """The [vectors, width] tensor for a text encoder ("clip_l", or "open_clip" for SD2 and SDXL's
        second encoder), or None when this embedding has none of that width."""
        if kind not in ENCODER_KINDS:
            raise ValueError(f"unknown text encoder kind {kind!r} (expected one of {ENCODER_KINDS})")
        tensor = self.tensors.get(SDXL_KEYS[kind]) if self.is_sdxl else self.tensors[PLAIN_KEY]
        return tensor if tensor is not None and tensor.shape[-1] == width else None

    def fits(self, encoders: Encoders) -> bool:
        """A1111's expected-shape test (the encoders' widths summed) plus a tensor for every encoder,
        so an SDXL file is not used on SD1 through its clip_l half."""
        return self.shape == sum(width for _, width in encoders) and all(
            self.for_encoder(kind, width) is not None for kind, width in encoders
        )


class EmbeddingLookup:
    """A1111's `ids_lookup`: embedding names as token ids, keyed by first token, longest first."""

    def __init__(self, embeddings: Iterable[Embedding], tokenizer: Any) -> None:
        self.embeddings = {e.name: e for e in embeddings}
        self.ids_lookup: dict[int, list[tuple[list[int], Embedding]]] = {}
        for embedding in self.embeddings.values():
            ids = list(tokenizer([embedding.name], add_special_tokens=False)["input_ids"][0])
            if ids:  # a blank name has no tokens and can never be typed
                self.ids_lookup.setdefault(ids[0], []).append((ids, embedding))
        for matches in self.ids_lookup.values():
            matches.sort(key=lambda match: len(match[0]), reverse=True)

    def find_embedding_at_position(
        self, tokens: Sequence[int], offset: int
    ) -> tuple[Embedding, int] | tuple[None, None]:
        """The embedding whose name starts at `offset` and how many tokens the name takes there."""
        for ids, embedding in self.ids_lookup.get(tokens[offset], ()):
            if list(tokens[offset : offset + len(ids)]) == ids:
                return embedding, len(ids)
        return None, None


class EmbeddingDatabase:
    """Every embedding in the users' folders; files that could not be used are in `skipped`."""

    def __init__(self, loaded: list[Embedding], skipped: dict[str, str]) -> None:
        self.loaded = loaded  # in A1111's load order, duplicates included
        self.skipped = skipped  # file path -> why it is not an embedding
        self.embeddings = {e.name: e for e in loaded}  # the last file of a name wins
        self._tables: weakref.WeakKeyDictionary[
            Any, dict[tuple[tuple[str, int], ...] | None, EmbeddingLookup]
        ] = weakref.WeakKeyDictionary()

    @classmethod
    def load(cls, folders: Iterable[Path], hash_cache: HashCache | None = None) -> EmbeddingDatabase:
        """Read every embedding file; nothing raises, a bad file is recorded in `skipped`."""
        hashes = hash_cache or HashCache(None)
        loaded: list[Embedding] = []
        skipped: dict[str, str] = {}
        for path in _walk(folders):
            try:
                embedding = _load_file(path, hashes)
            except (NotAnEmbedding, ModelFileError) as exc:
                skipped[str(path)] = str(exc).removeprefix(f"{path}: ")
            except Exception as exc:  # an untrusted file must never stop the others from loading
                skipped[str(path)] = f"cannot read it ({type(exc).__name__}: {exc})"
            else:
                if embedding is not None:
                    loaded.append(embedding)
        return cls(loaded, skipped)

    def usable(self, encoders: Encoders | None = None) -> dict[str, Embedding]:
        """Name -> embedding, the last loaded of a name that fits `encoders` (all when None), sorted
        by name as A1111 lists them."""
        chosen = {e.name: e for e in self.loaded if encoders is None or e.fits(encoders)}
        return dict(sorted(chosen.items(), key=lambda item: item[0].lower()))

    def lookup_table(self, tokenizer: Any, encoders: Encoders | None = None) -> EmbeddingLookup:
        """The token lookup for a tokenizer, built once per tokenizer and encoder set.

        Pass the model's encoders, e.g. [("clip_l", 768)] for SD1, [("open_clip", 1024)] for SD2,
        [("clip_l", 768), ("open_clip", 1280)] for SDXL, so that embeddings that do not fit stay plain
        words, as in A1111."""
        key = tuple(encoders) if encoders is not None else None
        per_tokenizer = self._tables.setdefault(tokenizer, {})
        if key not in per_tokenizer:
            per_tokenizer[key] = EmbeddingLookup(self.usable(encoders).values(), tokenizer)
        return per_tokenizer[key]

    def rows(self) -> list[dict[str, Any]]:
        """One row per file for `sfumato embeddings list`; `note` says why a file is not used."""
        rows: list[dict[str, Any]] = []
        for e in sorted(self.loaded, key=lambda e: e.name.lower()):
            winner = self.embeddings[e.name]
            note = "" if winner is e else f"a file of the same name loads later: {winner.path}"
            rows.append(
                {
                    "name": e.name,
                    "vectors": e.vectors,
                    "family": e.family,
                    "shorthash": e.shorthash,
                    "path": str(e.path),
                    "note": note,
                }
            )
        rows += [
            {
                "name": Path(path).stem,
                "vectors": None,
                "family": None,
                "shorthash": None,
                "path": path,
                "note": f"skipped: {reason}",
            }
            for path, reason in self.skipped.items()
        ]
        return rows


def _walk(folders: Iterable[Path]) -> Iterable[Path]:
    """Embedding files in A1111's order (a folder's files, then its subfolders), sorted so the winner
    among same-named files does not depend on the file system; each real folder is read once."""
    seen: set[str] = set()
    for folder in folders:
        for root, dirs, files in os.walk(folder, followlinks=True):
            real = os.path.realpath(root)
            if real in seen:  # a symlink loop, or a folder listed twice
                dirs.clear()
                continue
            seen.add(real)
            dirs.sort()
            for name in sorted(files):
                path = Path(root) / name
                if path.suffix.lower() in EMBEDDING_SUFFIXES and not _is_preview(path):
                    yield path


def _is_preview(path: Path) -> bool:
    """`x.preview.png` is the picture shown for embedding x (A1111 never reads it as an embedding)."""
    return path.suffix.lower() == IMAGE_SUFFIX and Path(path.stem).suffix.lower() == ".preview"


def _load_file(path: Path, hashes: HashCache) -> Embedding | None:
    """Read one file; None for an image that is only a preview."""
    if path.stat().st_size == 0:
        raise NotAnEmbedding("empty file")
    name = path.stem
    suffix = path.suffix.lower()
    if suffix == IMAGE_SUFFIX:
        data = _read_image(path)
        if data is None:
            return None
        stored_name = data.get("name")
        name = stored_name if isinstance(stored_name, str) and stored_name else name
    elif suffix == SAFETENSORS_SUFFIX:
        data = _read_safetensors(path)
    else:
        data = _read_pickle(path)
    tensors = _tensors_of(data)
    step = data.get("step")
    checkpoint_name = data.get("sd_checkpoint_name")
    return Embedding(
        name=name,
        path=path,
        tensors=tensors,
        sha256=hashes.sha256(path),
        step=step if isinstance(step, int) else None,
        sd_checkpoint_name=checkpoint_name if isinstance(checkpoint_name, str) else None,
    )


def _read_safetensors(path: Path) -> dict[str, Any]:
    """Only the tensors an embedding can have are read, so a checkpoint in the wrong folder costs nothing."""
    state_dict = open_state_dict(path)
    keys = list(state_dict)
    wanted = ["clip_l", "clip_g"] if {"clip_l", "clip_g"} <= set(keys) else keys
    if len(wanted) != 1 and wanted != ["clip_l", "clip_g"]:
        raise NotAnEmbedding(f"not an embedding: {len(keys)} tensors, no clip_l/clip_g")
    return {key: state_dict[key] for key in wanted}


def _read_pickle(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_PICKLE_BYTES:
        raise NotAnEmbedding(f"too large for an embedding ({path.stat().st_size:,} bytes)")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():  # torch's safe unpickler met a reference to code
            raise NotAnEmbedding(
                "refused to load: this pickle needs code to unpickle, which could run anything on your "
                "machine; get a .safetensors version of this embedding"
            ) from exc
        raise NotAnEmbedding("not a valid pickle; the file is corrupt or not an embedding") from exc
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NotAnEmbedding(f"cannot read it; it may be truncated or corrupt ({first_line})") from exc
    if not isinstance(data, dict):
        raise NotAnEmbedding(f"holds a {type(data).__name__}, not an embedding")
    return data


def _read_image(path: Path) -> dict[str, Any] | None:
    """A1111's PNG-embedded embedding: base64 JSON in a text chunk, tensors as {"TORCHTENSOR": rows}."""
    try:
        with Image.open(path) as image:
            chunk = getattr(image, "text", {}).get(IMAGE_CHUNK)
    except UnidentifiedImageError as exc:
        raise NotAnEmbedding("not an image that can be read") from exc
    if chunk is None:
        return None  # A1111 also looks for data hidden in the pixels; we treat such images as previews
    data = json.loads(base64.b64decode(chunk), object_hook=_decode_tensor)
    if not isinstance(data, dict):
        raise NotAnEmbedding(f"its {IMAGE_CHUNK} chunk holds no embedding")
    return data


def _decode_tensor(obj: dict[str, Any]) -> Any:
    if "TORCHTENSOR" in obj:
        return torch.from_numpy(np.array(obj["TORCHTENSOR"], dtype=np.float32))
    return obj


def _tensors_of(data: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The embedding's tensors in A1111's order of formats, as float32 [vectors, width]."""
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise NotAnEmbedding("string_to_param must hold exactly one term")
        return {PLAIN_KEY: _as_vectors(next(iter(params.values())), "string_to_param")}
    if "clip_l" in data and "clip_g" in data:
        tensors = {key: _as_vectors(data[key], key) for key in ("clip_l", "clip_g")}
        if tensors["clip_l"].shape[0] != tensors["clip_g"].shape[0]:
            raise NotAnEmbedding("clip_l and clip_g hold different numbers of vectors")
        return tensors
    if len(data) == 1:
        key, value = next(iter(data.items()))
        return {PLAIN_KEY: _as_vectors(value, key)}
    raise NotAnEmbedding(
        "not an embedding: no string_to_param, no clip_l/clip_g and not a single tensor "
        f"(keys: {', '.join(map(str, list(data)[:8]))})"
    )


def _as_vectors(value: Any, key: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise NotAnEmbedding(f"{key!r} holds a {type(value).__name__}, not a tensor")
    if value.ndim == 1:
        value = value.unsqueeze(0)
    if value.ndim != 2 or 0 in value.shape:
        raise NotAnEmbedding(f"{key!r} has shape {list(value.shape)}, not [n, width]")
    if not value.is_floating_point():
        raise NotAnEmbedding(f"{key!r} holds {value.dtype} numbers, not vectors of floats")
    return value.detach().to(torch.float32, copy=True)  # no tie to the file's storage
