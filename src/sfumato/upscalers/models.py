"""Image models in the upscaler folders (A1111's models/ESRGAN, models/RealESRGAN; ComfyUI's
models/upscale_models) and the inpainting folder (ComfyUI's models/inpaint), named by file as A1111
lists them, loaded safely and run in tiles.

The weights are read by our own safe reader (`torch.load(weights_only=True)` for pickles, lazy
safetensors), never by spandrel's file loader; spandrel then recognises the architecture (ESRGAN,
Real-ESRGAN, SwinIR, HAT, DAT, LaMa …) from the tensor names and shapes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sfumato.errors import ModelFileError, UserError, unknown_name
from sfumato.models.files import open_state_dict
from sfumato.models.registry import ModelEntry, scan_folder
from sfumato.settings import Settings
from sfumato.upscalers.spandrel_import import import_spandrel
from sfumato.upscalers.tiling import run_tiled

MAX_PASSES = 3  # A1111 runs a model at most three times to reach a requested scale


def image_to_tensor(image: Image.Image, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(array).permute(2, 0, 1)[None].to(device, dtype)


def tensor_to_image(pixels: torch.Tensor) -> Image.Image:
    array = pixels[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.round(array * 255.0).astype(np.uint8))


@dataclass
class ImageModel:
    """A loaded spandrel model (an upscaler/restorer, or a masked inpainting model such as LaMa)."""

    name: str
    path: Path
    descriptor: Any

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def is_inpainting(self) -> bool:
        return self.descriptor.purpose == "Inpainting"

    @property
    def architecture(self) -> str:
        return str(self.descriptor.architecture.id)

    def _parameters(self) -> tuple[torch.device, torch.dtype]:
        parameter = next(self.descriptor.model.parameters())
        return parameter.device, parameter.dtype

    @torch.inference_mode()
    def upscale_once(self, image: Image.Image, *, tile: int = 192, overlap: int = 16) -> Image.Image:
        """One pass of the model over an RGB image, tile by tile."""
        if self.is_inpainting:
            raise UserError(f"{self.name} is an inpainting model, not an upscaler", field="upscaler")
        device, dtype = self._parameters()
        pixels = image_to_tensor(image.convert("RGB"), device, dtype)
        return tensor_to_image(run_tiled(self.descriptor, pixels, self.scale, tile=tile, overlap=overlap))

    def upscale_to(
        self, image: Image.Image, width: int, height: int, *, tile: int = 192, overlap: int = 16
    ) -> Image.Image:
        """Run the model until the picture covers `width`×`height` (at most three passes, as A1111
        does); the caller resizes the result to the exact size."""
        result = image
        for _ in range(MAX_PASSES):
            if result.width >= width and result.height >= height:
                break
            result = self.upscale_once(result, tile=tile, overlap=overlap)
            if self.scale == 1:
                break
        return result

    @torch.inference_mode()
    def inpaint(self, image: Image.Image, mask: Image.Image) -> Image.Image:
        """The masked model's picture of `image` with the white part of `mask` filled in."""
        if not self.is_inpainting:
            raise UserError(f"{self.name} is not an inpainting model", field="method")
        device, dtype = self._parameters()
        pixels = image_to_tensor(image.convert("RGB"), device, dtype)
        holes = (image_to_tensor(mask.convert("L"), device, dtype) > 0.5).to(dtype)
        return tensor_to_image(self.descriptor(pixels, holes))


def load_image_model(entry: ModelEntry, device: torch.device) -> ImageModel:
    """Read the weights safely and let spandrel build the architecture they fit."""
    spandrel = import_spandrel()
    state = dict(open_state_dict(entry.path))
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except spandrel.UnsupportedModelError as exc:
        raise ModelFileError(
            f"{entry.path}: not an image-model architecture that spandrel recognises "
            "(ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, LaMa …)"
        ) from exc
    except (RuntimeError, KeyError, ValueError, IndexError) as exc:
        raise ModelFileError(f"{entry.path}: the weights do not fit their architecture ({exc})") from exc
    if not hasattr(descriptor, "purpose"):
        raise ModelFileError(f"{entry.path}: not an image-to-image model")
    descriptor.to(device).eval()
    if device.type == "cuda" and descriptor.supports_half:
        descriptor.half()
    return ImageModel(entry.name, entry.path, descriptor)


class ImageModels:
    """The model files of one folder kind, by name, with the last one used kept loaded."""

    def __init__(self, settings: Settings, kind: str, device: torch.device | None = None) -> None:
        self.settings = settings
        self.kind = kind
        self.device = device or torch.device("cpu")
        self._loaded: ImageModel | None = None
        self._lock = threading.Lock()  # a server's requests share one instance

    def entries(self) -> list[ModelEntry]:
        found: dict[str, ModelEntry] = {}
        for root in self.settings.model_dirs(self.kind):
            for entry in scan_folder(root, allow_diffusers_dirs=False):
                found.setdefault(entry.name, entry)
        return list(found.values())

    def names(self) -> list[str]:
        return [entry.name for entry in self.entries()]

    def find(self, name: str) -> ModelEntry | None:
        lowered = name.lower()
        for entry in self.entries():
            if lowered in (entry.name.lower(), entry.path.name.lower()):
                return entry
        return None

    def get(self, name: str, *, field: str, known: list[str] | None = None) -> ImageModel:
        entry = self.find(name)
        if entry is None:
            raise unknown_name(self.kind.rstrip("s"), name, known or self.names(), field=field)
        with self._lock:
            if self._loaded is None or self._loaded.path != entry.path:
                self._loaded = None  # free the previous model before loading the next
                self._loaded = load_image_model(entry, self.device)
            return self._loaded
