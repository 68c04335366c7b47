"""Importing spandrel on a machine without torchvision.

spandrel imports torchvision at import time for two architectures only: LaMa (`rotate`, in a spatial
transform layer that spandrel never builds) and RestoreFormer (`normalize`). Everything else, ESRGAN and
the SR transformers included, is plain torch. A CPU-only torch cannot take the torchvision wheel from
PyPI (it is a CUDA build whose operators do not register), so where torchvision is absent we import
spandrel with a small stand-in for those three names, then take the stand-in out of `sys.modules` again
so no other library sees a fake torchvision. Where torchvision is installed, it is used as it is.
"""

from __future__ import annotations

import enum
import importlib
import sys
import types
from collections.abc import Sequence
from typing import Any

import torch

from sfumato.errors import UserError

INSTALL_HINT = (
    "model upscalers and LaMa need the spandrel package: pip install spandrel "
    "(beside a CPU-only torch: pip install --no-deps spandrel einops)"
)


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


def normalize(tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """torchvision's `normalize` for (…, C, H, W) tensors: (x - mean) / std per channel."""
    shape = (-1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(shape)
    std_t = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(shape)
    return (tensor - mean_t) / std_t


def rotate(*args: Any, **kwargs: Any) -> torch.Tensor:
    raise UserError("this model rotates images with torchvision: install torchvision to use it")


def _stand_in() -> dict[str, types.ModuleType]:
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = InterpolationMode  # type: ignore[attr-defined]
    functional.normalize = normalize  # type: ignore[attr-defined]
    functional.rotate = rotate  # type: ignore[attr-defined]
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional  # type: ignore[attr-defined]
    package = types.ModuleType("torchvision")
    package.transforms = transforms  # type: ignore[attr-defined]
    return {
        "torchvision": package,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
    }


def import_spandrel() -> types.ModuleType:
    """The spandrel module, imported with the stand-in where torchvision is missing."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    if importlib.util.find_spec("spandrel") is None:
        raise UserError(INSTALL_HINT)
    if importlib.util.find_spec("torchvision") is not None:
        return importlib.import_module("spandrel")
    stand_in = _stand_in()
    sys.modules.update(stand_in)
    try:
        return importlib.import_module("spandrel")
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)
