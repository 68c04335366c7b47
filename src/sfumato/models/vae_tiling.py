"""VAE decoding and encoding in tiles, only where the image needs it.

diffusers' `AutoencoderKL.tiled_decode` decodes overlapping tiles of `tile_latent_min_size` latents
(64 for SD's VAE) and blends their seams, so it holds one tile's activations instead of the whole
image's. It costs time (+56 % at 512², issue 8) and the blended seams change pixels slightly, so an
image is decoded whole unless its estimated working set does not fit in the memory the device has
free, or the device runs out anyway (then that image is decoded again in tiles, as ComfyUI does).

The estimate: the decoder's peak is at full resolution, where a few activations of the widest
full-resolution width (`block_out_channels[1]`: 256 for SD's VAE, right after the last upsampling)
are alive at once. Measured for SD's VAE in fp32 (benchmarks/vae_memory.py, 2026-12-04): the
peak RSS growth of a whole decode was 4.7, 4.6 and 6.5 such activations at 256², 512² and 768² (it
grows faster than the pixels at large sizes: the mid-block attention over every latent pixel), so
`PEAK_ACTIVATIONS` is 7. The same run timed tiles at 1.47× a whole decode at 512² and 0.93× at 768².

Encoding (img2img sources, hires fix's upscaled images, inpainting's masked image) works the same way
with the encoder's own estimate: its peak is in the first, full-resolution block, whose width is
`block_out_channels[0]` (128 for SD's VAE). Measured by the same benchmark (2026-12-04, fp32): 5.8 and
6.0 such activations at 256² and 512², 7.0 and 9.0 in two runs at 768², 9.0 at 1024², so
`PEAK_ENCODE_ACTIVATIONS` is 9. Tiled encoding is diffusers' own (`use_tiling` during one `encode` call:
tiles of `sample_size` pixels, so images up to 512² stay whole); its latents differ from the whole
encode's by up to 0.07, and at 768² and 1024² it took 0.60× and 0.64× the whole encode's time (the
whole encode's mid-block attention is over every latent pixel).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import psutil
import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

PEAK_ACTIVATIONS = 7.0  # measured: see above
PEAK_ENCODE_ACTIVATIONS = 9.0  # measured: see above
HEADROOM = 0.8  # use at most this share of the free memory: the rest is the process's other needs


def decode_bytes(vae: AutoencoderKL, latents: torch.Tensor) -> int:
    """Estimated peak working set of decoding `latents` whole with `vae`."""
    batch, _, height, width = latents.shape
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    widest = vae.config.block_out_channels[min(1, len(vae.config.block_out_channels) - 1)]
    return int(PEAK_ACTIVATIONS * batch * widest * height * scale * width * scale * latents.element_size())


def free_bytes(device: torch.device) -> int:
    """Memory the device has free now (CUDA: the driver's free memory; else the host's available RAM)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(psutil.virtual_memory().available)


def is_out_of_memory(error: BaseException) -> bool:
    """A failed allocation (CUDA's OutOfMemoryError, or the CPU/MPS allocator's RuntimeError)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def encode_bytes(vae: AutoencoderKL, pixels: torch.Tensor) -> int:
    """Estimated peak working set of encoding `pixels` whole with `vae`."""
    batch, _, height, width = pixels.shape
    widest = vae.config.block_out_channels[0]
    return int(PEAK_ENCODE_ACTIVATIONS * batch * widest * height * width * pixels.element_size())


def decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Pixels of unscaled `latents`: decoded whole when they fit, else (or on running out) in tiles."""
    return _whole_or_tiled(
        lambda: vae.decode(latents).sample,
        lambda: vae.tiled_decode(latents).sample,
        decode_bytes(vae, latents),
        latents.device,
        "decode",
    )


def encode(vae: AutoencoderKL, pixels: torch.Tensor) -> DiagonalGaussianDistribution:
    """The posterior of `pixels` in [-1, 1]: encoded whole when they fit, else (or on running out) in tiles."""
    return _whole_or_tiled(
        lambda: vae.encode(pixels).latent_dist,
        lambda: _tiled_encode(vae, pixels),
        encode_bytes(vae, pixels),
        pixels.device,
        "encode",
    )


def _tiled_encode(vae: AutoencoderKL, pixels: torch.Tensor) -> DiagonalGaussianDistribution:
    previous = vae.use_tiling
    vae.use_tiling = True
    try:
        return vae.encode(pixels).latent_dist
    finally:
        vae.use_tiling = previous


Result = TypeVar("Result")


def _whole_or_tiled(
    whole: Callable[[], Result], tiled: Callable[[], Result], needed: int, device: torch.device, verb: str
) -> Result:
    """`whole()` unless `needed` bytes do not fit in the device's free memory or it runs out; else `tiled()`.
    `verb` ("decode", "encode") names the work in the messages."""
    doing = verb.removesuffix("e") + "ing"
    free = free_bytes(device)
    if needed > HEADROOM * free:
        _say(
            f"{doing} in tiles: a whole {verb} needs about {needed / 2**30:.1f} GiB, "
            f"{free / 2**30:.1f} GiB is free"
        )
        return tiled()
    try:
        return whole()
    except (RuntimeError, torch.OutOfMemoryError) as error:
        if not is_out_of_memory(error):
            raise
    # out of the except block, so the failed attempt's tensors are freed before the tiles start
    _say(f"the device ran out of memory {doing} the whole image; {doing} it again in tiles")
    return tiled()


def _say(message: str) -> None:
    print(f"sfumato: {message}", file=sys.stderr)
