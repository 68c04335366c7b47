"""A1111's runtime options (`/sdapi/v1/options`), persisted in `<data-dir>/.sfumato/options.json`.

The options a generation depends on are checked when they are set (an unknown checkpoint is a 422
naming `sd_model_checkpoint`) and turned into request fields when a job is submitted, so a queued job
keeps the options it was submitted under even if they change before it runs. Options we do not use are
kept as given (extensions' clients read back what they wrote), like A1111 does. The file is not A1111's
`config.json`: a data dir shared with an A1111 install must not have its config rewritten.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sfumato.errors import UserError

DEFAULTS: dict[str, Any] = {
    "sd_model_checkpoint": None,  # None: the default model (first checkpoint found, else the embedded one)
    "sd_vae": "Automatic",
    "CLIP_stop_at_last_layers": 1,
    "samples_save": True,
    "samples_format": "png",
    "outdir_samples": "",
    "emphasis": "Original",
    "pad_cond_uncond": False,
    "s_min_uncond": 0.0,
    "s_min_uncond_all": False,
    "token_merging_ratio": 0.0,
    "token_merging_ratio_hr": 0.0,
    "token_merging_ratio_img2img": 0.0,  # img2img's own ratio when not 0 (A1111's rule)
    "deepcache_interval": 0,
    "sd_vae_decode_method": "Full",
    "sd_checkpoint_hash": None,
}


def _clip_skip(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise UserError(
            "CLIP_stop_at_last_layers: must be a whole number from 1 to 12", field="CLIP_stop_at_last_layers"
        )
    if not 1 <= int(value) <= 12:
        raise UserError("CLIP_stop_at_last_layers: must be from 1 to 12", field="CLIP_stop_at_last_layers")
    return int(value)


def _boolean(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise UserError(f"{name}: must be true or false", field=name)
        return value

    return check


def _sigma(name: str) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1000:
            raise UserError(f"{name}: must be a number from 0 to 1000 (0: off)", field=name)
        return float(value)

    return check


def _ratio(name: str) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 0.9:
            raise UserError(f"{name}: must be a number from 0 to 0.9 (0: off)", field=name)
        return float(value)

    return check


def _interval(name: str) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise UserError(f"{name}: must be a whole number from 0 to 1000 (0 or 1: off)", field=name)
        if not 0 <= value <= 1000:
            raise UserError(f"{name}: must be from 0 to 1000 (0 or 1: off)", field=name)
        return int(value)

    return check


def _choice(name: str, allowed: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in allowed:
            raise UserError(f"{name}: must be one of {', '.join(allowed)} (got {value!r})", field=name)
        return value

    return check


class OptionsStore:
    """Thread-safe options with validation; `resolve_checkpoint`/`resolve_vae` turn what the user
    typed into the canonical title (or raise UserError), so bad names fail when set, not later."""

    def __init__(
        self,
        path: Path,
        *,
        resolve_checkpoint: Callable[[str], str],
        resolve_vae: Callable[[str], str],
    ) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._validators: dict[str, Callable[[Any], Any]] = {
            "sd_model_checkpoint": lambda v: resolve_checkpoint(self._text("sd_model_checkpoint", v)),
            "sd_vae": lambda v: resolve_vae(self._text("sd_vae", v)),
            "CLIP_stop_at_last_layers": _clip_skip,
            "samples_save": _boolean("samples_save"),
            "pad_cond_uncond": _boolean("pad_cond_uncond"),
            "s_min_uncond": _sigma("s_min_uncond"),
            "s_min_uncond_all": _boolean("s_min_uncond_all"),
            "token_merging_ratio": _ratio("token_merging_ratio"),
            "token_merging_ratio_hr": _ratio("token_merging_ratio_hr"),
            "token_merging_ratio_img2img": _ratio("token_merging_ratio_img2img"),
            "deepcache_interval": _interval("deepcache_interval"),
            "samples_format": _choice("samples_format", ("png",)),
            "emphasis": _choice("emphasis", ("Original", "No norm", "None")),
            "sd_vae_decode_method": _choice("sd_vae_decode_method", ("Full", "TAESD")),
        }
        self._values = dict(DEFAULTS)
        if path.is_file():
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(stored, dict):
                    self._values.update(stored)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                pass  # a damaged options file falls back to the defaults; the next save rewrites it

    @staticmethod
    def _text(name: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{name}: must be a non-empty name", field=name)
        return value.strip()

    def validated(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """The changes with known options checked and canonicalised (read-only ones refused)."""
        if "sd_checkpoint_hash" in changes:
            raise UserError(
                "sd_checkpoint_hash: is read-only (set sd_model_checkpoint)", field="sd_checkpoint_hash"
            )
        return {key: self._validators.get(key, lambda v: v)(value) for key, value in changes.items()}

    def update(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        checked = self.validated(changes)
        with self._lock:
            self._values.update(checked)
            self._save()
        return checked

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)

    def _save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self._values, handle, indent=2)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise UserError(f"could not save the options in {self.path}: {exc.strerror or exc}") from exc


OPTION_FIELDS = {
    "CLIP_stop_at_last_layers": "clip_skip",
    "emphasis": "emphasis",
    "pad_cond_uncond": "pad_conds",
    "s_min_uncond": "s_min_uncond",
    "s_min_uncond_all": "s_min_uncond_all",
    "token_merging_ratio": "token_merging_ratio",
    "token_merging_ratio_hr": "token_merging_ratio_hr",
    "deepcache_interval": "deepcache_interval",
    "sd_vae_decode_method": "sd_vae_decode_method",
    "sd_model_checkpoint": "model",
    "sd_vae": "vae",
}


def request_fields(options: Mapping[str, Any], *, img2img: bool = False) -> dict[str, Any]:
    """The GenerationRequest fields the given options decide (only those present and set). For an
    img2img job, a non-zero `token_merging_ratio_img2img` is its token merging ratio (as in A1111)."""
    fields = {field: options[key] for key, field in OPTION_FIELDS.items() if options.get(key) is not None}
    if img2img and options.get("token_merging_ratio_img2img"):
        fields["token_merging_ratio"] = options["token_merging_ratio_img2img"]
    if fields.get("vae") == "Automatic":
        del fields["vae"]
    return fields
