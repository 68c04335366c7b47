"""Finding models in the A1111/ComfyUI folders, resolving the names users type, and caching loads.

A checkpoint can be named by path, by file name with or without extension, by its path relative to a
models folder (A1111's `sd_model_checkpoint`), by A1111's title (`name.safetensors [hash]`), or by its
AutoV2 / old short hash. The ModelManager keeps the loaded checkpoint so consecutive jobs reuse it.
"""

from __future__ import annotations

import gc
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sfumato.errors import ModelFileError, UserError, unknown_name
from sfumato.models.detect import Prediction
from sfumato.models.files import MODEL_SUFFIXES, PICKLE_SUFFIXES
from sfumato.models.hashes import HashCache, old_a1111_hash
from sfumato.models.loader import LoadedModel, load_checkpoint, load_vae_file
from sfumato.models.recommended import recommended_fields
from sfumato.models.taesd import TaesdDecoders
from sfumato.runtime import release_memory
from sfumato.settings import Settings

if TYPE_CHECKING:
    from sfumato.adapters.patcher import NetworkPatcher
    from sfumato.models.compiled_unet import CompiledUNet

VAE_SIDE_SUFFIXES = (".vae.safetensors", ".vae.pt", ".vae.ckpt")
TITLE_HASH = re.compile(r"^(?P<name>.*?)\s*\[(?P<hash>[0-9a-fA-F]{8,10})\]$")


@dataclass(frozen=True)
class ModelEntry:
    """A model file (or diffusers folder) found in a models folder."""

    path: Path
    root: Path

    @property
    def relative(self) -> str:
        return self.path.relative_to(self.root).as_posix()

    @property
    def name(self) -> str:
        rel = self.relative
        for suffix in MODEL_SUFFIXES:
            if rel.lower().endswith(suffix):
                return rel[: -len(suffix)]
        return rel


def _is_vae_side_file(path: Path) -> bool:
    return path.name.lower().endswith(VAE_SIDE_SUFFIXES)


def scan_folder(root: Path, *, allow_diffusers_dirs: bool) -> list[ModelEntry]:
    """Model files below `root`, sorted by relative path; a diffusers folder counts as one model."""
    if not root.is_dir():
        return []
    paths = [
        p
        for p in sorted(root.rglob("*"))
        if not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    diffusers_dirs = {p.parent for p in paths if p.name == "model_index.json"}
    found: list[ModelEntry] = []
    for path in paths:
        if path in diffusers_dirs:
            if allow_diffusers_dirs:
                found.append(ModelEntry(path, root))
        elif (
            path.is_file()
            and path.suffix.lower() in MODEL_SUFFIXES
            and not _is_vae_side_file(path)
            and not diffusers_dirs.intersection(path.parents)
        ):
            found.append(ModelEntry(path, root))
    return found


def list_checkpoints(settings: Settings) -> list[ModelEntry]:
    entries: list[ModelEntry] = []
    for folder in settings.model_dirs("checkpoints"):
        entries.extend(scan_folder(folder, allow_diffusers_dirs=True))
    return entries


def list_vaes(settings: Settings) -> list[ModelEntry]:
    entries: list[ModelEntry] = []
    for folder in settings.model_dirs("vae"):
        entries.extend(scan_folder(folder, allow_diffusers_dirs=False))
    return entries


def _match(entries: list[ModelEntry], query: str, hashes: HashCache | None) -> ModelEntry | None:
    title = TITLE_HASH.match(query)
    wanted = title.group("name") if title else query
    lowered = wanted.lower().replace("\\", "/")
    for entry in entries:
        if lowered in (
            entry.relative.lower(),
            entry.name.lower(),
            entry.path.name.lower(),
            entry.path.stem.lower(),
        ):
            return entry
    short = (title.group("hash") if title else query).lower()
    if hashes and re.fullmatch(r"[0-9a-f]{8}|[0-9a-f]{10}", short):
        for entry in entries:
            if entry.path.is_file() and (
                hashes.autov2(entry.path) == short
                or (len(short) == 8 and old_a1111_hash(entry.path) == short)
            ):
                return entry
    return None


def resolve_model_path(
    query: str, entries: list[ModelEntry], kind: str, hashes: HashCache | None = None, *, field: str = "model"
) -> Path:
    """Path for what the user typed: an existing path, or a name/title/hash among `entries`."""
    try:
        candidate = Path(query).expanduser()
        exists = candidate.exists()
    except RuntimeError:  # "~nosuchuser/...": no home to expand, so only a name can mean something
        candidate, exists = Path(query), False
    except OSError:  # longer than a path can be (ENAMETOOLONG): only a name can mean something
        exists = False
    if exists:
        return candidate
    entry = _match(entries, query, hashes)
    if entry is None:
        raise unknown_name(kind, query, [e.name for e in entries], field=field)
    return entry.path


def side_vae_for(checkpoint: Path) -> Path | None:
    """A1111's "Automatic" VAE: `x.vae.safetensors` (or .pt/.ckpt) beside `x.safetensors`."""
    stem = checkpoint.name
    for suffix in MODEL_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    for suffix in VAE_SIDE_SUFFIXES:
        side = checkpoint.with_name(stem + suffix)
        if side.is_file():
            return side
    return None


EMBEDDED_MODEL = "sfumato-shapes.safetensors"


def embedded_default_model() -> Path | None:
    """The small model sfumato ships (trained by scripts/train_default_model.py), if this build has it."""
    path = Path(__file__).parent / "data" / "default" / EMBEDDED_MODEL
    return path if path.is_file() else None


def selectable_checkpoints(settings: Settings) -> list[ModelEntry]:
    """Every checkpoint a user can choose: the model folders' ones, then the embedded default model
    (listed by the CLI and the API's sd-models like any other, so it can be chosen back by name)."""
    entries = list_checkpoints(settings)
    embedded = embedded_default_model()
    if embedded is not None:
        entries.append(ModelEntry(embedded, embedded.parent))
    return entries


def _searched(settings: Settings) -> str:
    """The first checkpoint folders, for messages saying where we looked."""
    return ", ".join(str(p) for p in settings.model_dirs("checkpoints")[:2])


class ModelManager:
    """Resolves names to files and keeps the last loaded checkpoint (with its VAE choice) ready."""

    def __init__(self, settings: Settings, *, device: torch.device, dtype: torch.dtype) -> None:
        self.settings = settings
        self.device = device
        self.dtype = dtype
        self.hashes = HashCache(settings.hash_cache_file)
        self.taesd = TaesdDecoders(settings.model_dirs("taesd"), device, dtype)
        self._loaded: LoadedModel | None = None
        self._loaded_key: tuple | None = None

    def default_checkpoint(self) -> Path:
        if self.settings.default_model:
            return self.checkpoint_path(self.settings.default_model)
        entries = list_checkpoints(self.settings)
        if entries:
            return entries[0].path
        embedded = embedded_default_model()
        if embedded is None:
            raise UserError(
                f"no checkpoint found (looked in {_searched(self.settings)} …) and this install lacks sfumato's embedded "
                f"default model ({EMBEDDED_MODEL}); reinstall sfumato or pass --model PATH"
            )
        return embedded

    def checkpoint_path(self, query: str | None) -> Path:
        if not query:
            return self.default_checkpoint()
        return resolve_model_path(query, selectable_checkpoints(self.settings), "checkpoint", self.hashes)

    def recommended_fields(self, query: str | None) -> dict[str, Any]:
        """The request fields the checkpoint `query` names recommends (`models.recommended`)."""
        return recommended_fields(self.checkpoint_path(query))

    def vae_path(self, query: str | None, checkpoint: Path) -> Path | None:
        """None/"Automatic": the side file if any, else the baked-in VAE; "None": always baked-in."""
        if query is None or query.lower() == "automatic":
            return side_vae_for(checkpoint) if checkpoint.is_file() else None
        if query.lower() == "none":
            return None
        return resolve_model_path(query, list_vaes(self.settings), "VAE", self.hashes, field="vae")

    def load(
        self, model: str | None, vae: str | None = None, prediction: Prediction | None = None
    ) -> LoadedModel:
        path = self.checkpoint_path(model)
        vae_file = self.vae_path(vae, path)
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime, str(vae_file), prediction)
        if self._loaded is not None and self._loaded_key == key:
            return self._loaded
        self.unload()
        if path.suffix.lower() in PICKLE_SUFFIXES:
            print(f"sfumato: loading {path.name} with torch's weights-only unpickler", file=sys.stderr)
        compute = {
            "device": self.device,
            "dtype": self.dtype,
            "low_memory": self.settings.low_memory,
            "channels_last": self.settings.channels_last,
        }
        loaded = load_checkpoint(path, prediction=prediction, **compute)
        if vae_file is not None:
            loaded.vae = load_vae_file(vae_file, loaded.family, **compute)
            loaded.vae_path = vae_file
        loaded.networks = self._network_patcher(loaded)
        loaded.compiled = self._compiled_unet(loaded)
        self._loaded, self._loaded_key = loaded, key
        return loaded

    def _compiled_unet(self, loaded: LoadedModel) -> CompiledUNet | None:
        if not self.settings.torch_compile:
            return None
        if self.settings.low_memory:
            print(
                "sfumato: torch_compile is off in low-memory mode (its weights are upcast by hooks)",
                file=sys.stderr,
            )
            return None
        from sfumato.models.compiled_unet import CompiledUNet
        from sfumato.models.memory_format import wants_channels_last

        channels_last = wants_channels_last(self.device, self.dtype, self.settings.channels_last)
        return CompiledUNet(loaded.unet, self.settings.compile_cache_dir, channels_last=channels_last)

    def _network_patcher(self, loaded: LoadedModel) -> NetworkPatcher:
        """LoRA/LyCORIS and hypernetworks from the prompt's tags, looked up in this manager's folders."""
        from sfumato.adapters.network_registry import find_network, short_hash
        from sfumato.adapters.patcher import NetworkPatcher

        return NetworkPatcher(
            loaded,
            lambda name: find_network(self.settings, name),
            lambda network: short_hash(network, self.hashes),
            lambda name: find_network(self.settings, name, kind="hypernetworks"),
        )

    @property
    def loaded(self) -> LoadedModel | None:
        """The model in memory, if any."""
        return self._loaded

    def unload(self) -> None:
        had_model = self._loaded is not None
        self._loaded = None
        self._loaded_key = None
        if had_model:
            gc.collect()
            release_memory()  # the allocator keeps freed blocks (sfumato.runtime); hand them back now

    def model_hash(self, path: Path) -> str | None:
        if not path.is_file():
            return None
        try:
            return self.hashes.autov2(path)
        except OSError as exc:
            raise ModelFileError(f"{path}: cannot be read for hashing ({exc})") from exc
