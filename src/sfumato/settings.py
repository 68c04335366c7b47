"""One explicit settings object, passed down (never a module-level dict everyone mutates).

Precedence, lowest first: built-in defaults < settings file (`<data-dir>/sfumato.json`, or
`--settings FILE`) < environment variables (`SFUMATO_<FIELD>`, e.g. `SFUMATO_DEVICE=cuda`) < CLI flags.

Folders follow A1111's layout under the data dir; `extra_model_dirs` adds other installs (an A1111
or ComfyUI folder), whose ComfyUI-style names (`models/checkpoints`, `models/loras` …) are searched too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sfumato.errors import UserError

SETTINGS_FILE_NAME = "sfumato.json"
ENV_PREFIX = "SFUMATO_"

# Model kinds -> folder names relative to a data dir: A1111's first, then ComfyUI's.
MODEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("models/Stable-diffusion", "models/checkpoints"),
    "vae": ("models/VAE", "models/vae"),
    "lora": ("models/Lora", "models/LyCORIS", "models/loras"),
    "embeddings": ("embeddings", "models/embeddings"),
    "hypernetworks": ("models/hypernetworks",),
    "controlnet": ("models/ControlNet", "models/controlnet"),
    "upscalers": ("models/ESRGAN", "models/RealESRGAN", "models/upscale_models"),
    "inpaint": ("models/inpaint",),  # LaMa/MAT-style object removers (ComfyUI's folder name)
    "taesd": ("models/VAE-taesd", "models/vae_approx"),  # TAESD decoders (sfumato.models.taesd)
}


class Settings(BaseModel):
    """Everything configurable about where files live and how we compute."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    data_dir: Path = Field(default_factory=Path.cwd)
    extra_model_dirs: list[Path] = Field(default_factory=list)
    outputs_dir: Path | None = None  # default: <data_dir>/outputs
    device: str | None = None  # None: best available (cuda > mps > cpu)
    dtype: str | None = None  # None: follows the device (fp16 on cuda/mps, fp32 on cpu)
    default_model: str | None = None  # name or path; None: the first checkpoint found, else the embedded one
    threads: int | None = None  # CPU threads for torch; None: torch's choice
    # Weights rest in RAM in the checkpoint's precision, brought to the compute dtype and device layer by
    # layer (sfumato.models.stored_weights): half the RAM on a CPU, offload on a GPU
    low_memory: bool = False
    # UNet/VAE memory layout; None: measured default per network, device and dtype
    # (sfumato.models.memory_format)
    channels_last: bool | None = None
    # the UNet through torch.compile with freezing, for servers (sfumato.models.compiled_unet)
    torch_compile: bool = False

    @property
    def outputs(self) -> Path:
        return self.outputs_dir or self.data_dir / "outputs"

    @property
    def cache_dir(self) -> Path:
        """sfumato's own files in the data dir (the hash cache)."""
        return self.data_dir / ".sfumato"

    @property
    def compile_cache_dir(self) -> Path:
        """torch.compile's (inductor's) cache, kept between runs so later compiles are quicker."""
        return self.cache_dir / "torch-compile"

    @property
    def hash_cache_file(self) -> Path:
        return self.cache_dir / "hashes.json"

    def model_dirs(self, kind: str) -> list[Path]:
        """Every folder searched for a model kind, data dir first, then the extra installs."""
        roots = [self.data_dir, *self.extra_model_dirs]
        return [root / sub for root in roots for sub in MODEL_FOLDERS[kind]]


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        raw = env.get(ENV_PREFIX + name.upper())
        if not raw:
            continue
        # pydantic converts the strings; only the list needs splitting (like PATH).
        values[name] = [p for p in raw.split(os.pathsep) if p] if name == "extra_model_dirs" else raw
    return values


def load_settings(
    cli_overrides: Mapping[str, Any] | None = None,
    *,
    settings_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from defaults, the settings file, the environment and CLI flags."""
    env = os.environ if env is None else env
    cli = {k: v for k, v in (cli_overrides or {}).items() if v is not None}
    env_values = _env_overrides(env)
    data_dir = Path(cli.get("data_dir") or env_values.get("data_dir") or Path.cwd())
    path = settings_file or data_dir / SETTINGS_FILE_NAME
    file_values: dict[str, Any] = {}
    if path.is_file():
        try:
            file_values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"settings file {path} is not valid JSON: {exc}") from exc
        if not isinstance(file_values, dict):
            raise UserError(f"settings file {path} must hold a JSON object")
    elif settings_file is not None:
        raise UserError(f"settings file {path} does not exist")
    merged = {**file_values, **env_values, **cli, "data_dir": data_dir}
    try:
        return Settings(**merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise UserError(f"invalid setting {field!r}: {first['msg']}", field=field) from exc
