"""TAESD, the Tiny AutoEncoder for Stable Diffusion (madebyollin/taesd): a 1.2 M-parameter decoder
distilled from SD's VAE, for A1111's "TAESD" live previews and its opt-in fast final decode
(`sd_vae_decode_method` "TAESD").

The files are A1111's, in its folder models/VAE-taesd (ComfyUI's models/vae_approx is searched too):
`taesd_decoder.pth` for SD1 and SD2 (one latent space), `taesdxl_decoder.pth` for SDXL, or the same
names as .safetensors. They hold the original `nn.Sequential` state dict (keys `1.weight`,
`3.conv.0.weight` …), read weights-only, and go into diffusers' `AutoencoderTiny` decoder, whose layer
list is the same minus the first entry (the clamp, which diffusers applies in `forward`).
The decoder takes the UNet's (scaled) latents directly and returns pixels in [-1, 1].
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from diffusers import AutoencoderTiny

from sfumato.errors import ModelFileError, UserError
from sfumato.models.detect import Family
from sfumato.models.files import open_state_dict

DECODER_FILES: dict[str, str] = {"sd1": "taesd_decoder", "sd2": "taesd_decoder", "sdxl": "taesdxl_decoder"}
SUFFIXES = (".pth", ".safetensors")
FIELD = "sd_vae_decode_method"


def find_decoder(folders: list[Path], family: Family) -> Path | None:
    """The family's decoder file in the first folder that has one."""
    for folder in folders:
        for suffix in SUFFIXES:
            path = folder / f"{DECODER_FILES[family]}{suffix}"
            if path.is_file():
                return path
    return None


def diffusers_decoder_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original `nn.Sequential` keys (`N.rest`) -> `AutoencoderTiny.decoder` keys (`layers.N-1.rest`)."""
    converted = {}
    for key, tensor in state.items():
        index, _, rest = key.partition(".")
        if not index.isdigit() or int(index) < 1 or not rest:
            raise ModelFileError(f"unexpected tensor {key!r}: not a TAESD decoder in its original layout")
        converted[f"layers.{int(index) - 1}.{rest}"] = tensor
    return converted


def load_decoder(path: Path, device: torch.device, dtype: torch.dtype) -> AutoencoderTiny:
    """A TAESD decoder file as an `AutoencoderTiny` (its encoder is left untrained and never used)."""
    try:
        state = diffusers_decoder_keys(dict(open_state_dict(path)))
        tiny = AutoencoderTiny()
        tiny.decoder.load_state_dict(state, strict=True)
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}", field=FIELD) from exc
    except RuntimeError as exc:  # missing, unexpected or misshapen tensors
        first = str(exc).strip().splitlines()[0]
        raise ModelFileError(f"{path}: not a TAESD decoder ({first})", field=FIELD) from exc
    return tiny.to(device, dtype).eval()


class TaesdDecoders:
    """The TAESD decoders found in `folders`, each loaded on first use and again when its file changes;
    a file that failed to load fails again without being read until it changes."""

    def __init__(self, folders: list[Path], device: torch.device, dtype: torch.dtype) -> None:
        self.folders = folders
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, int, int], AutoencoderTiny | ModelFileError] = {}

    def get(self, family: Family) -> AutoencoderTiny:
        """The family's decoder; a UserError naming `sd_vae_decode_method` when missing or unreadable."""
        path = find_decoder(self.folders, family)
        if path is None:
            where = " or ".join(str(folder) for folder in self.folders[:2])
            raise UserError(
                f"{FIELD}: TAESD needs {DECODER_FILES[family]}.pth (madebyollin/taesd) in {where}",
                field=FIELD,
            )
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key not in self._loaded:
                self._loaded = {k: v for k, v in self._loaded.items() if k[0] != key[0]}
                try:
                    self._loaded[key] = load_decoder(path, self.device, self.dtype)
                except ModelFileError as exc:
                    self._loaded[key] = exc
            found = self._loaded[key]
        if isinstance(found, ModelFileError):
            raise ModelFileError(str(found), field=FIELD)
        return found
