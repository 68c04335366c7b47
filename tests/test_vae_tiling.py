"""VAE decoding and encoding in tiles only where the image needs it: work that fits is whole (bit for
bit diffusers' `decode`/`encode`), work whose estimate exceeds the free memory, or that runs out, is
diffusers' tiled version, and any other error is not mistaken for running out."""

from __future__ import annotations

import pytest
import torch

from sfumato.models import vae_tiling
from sfumato.request import build_request
from sfumato.tasks.txt2img import generate


@pytest.fixture
def vae(tiny_models):
    """The tiny SD1 VAE (sample_size 64: 8-latent tiles), and latents of a 128² image (4 × 4 tiles)."""
    return tiny_models["sd1"][1].vae.eval()


LATENTS = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
PIXELS = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1)) * 2 - 1


def encoded(vae, tiled: bool) -> torch.Tensor:
    """diffusers' own whole or tiled (`enable_tiling`) encode of `PIXELS`: the posterior mean."""
    if tiled:
        vae.enable_tiling()
    try:
        with torch.no_grad():
            return vae.encode(PIXELS).latent_dist.mean
    finally:
        vae.disable_tiling()


def reference(vae, tiled: bool) -> torch.Tensor:
    with torch.no_grad():
        return (vae.tiled_decode if tiled else vae.decode)(LATENTS).sample


def test_the_estimate_scales_with_pixels_and_element_size(vae):
    one = vae_tiling.decode_bytes(vae, LATENTS)
    assert one > 0
    assert vae_tiling.decode_bytes(vae, torch.zeros(1, 4, 32, 32)) == 4 * one
    assert vae_tiling.decode_bytes(vae, torch.zeros(2, 4, 16, 16)) == 2 * one
    assert vae_tiling.decode_bytes(vae, LATENTS.half()) == one // 2


def test_a_decode_that_fits_is_whole(vae, monkeypatch, capsys):
    monkeypatch.setattr(vae_tiling, "free_bytes", lambda device: 1 << 40)
    with torch.no_grad():
        pixels = vae_tiling.decode(vae, LATENTS)
    assert torch.equal(pixels, reference(vae, tiled=False))
    assert capsys.readouterr().err == ""


def test_a_decode_that_does_not_fit_is_tiled(vae, monkeypatch, capsys):
    monkeypatch.setattr(vae_tiling, "free_bytes", lambda device: vae_tiling.decode_bytes(vae, LATENTS) // 2)
    with torch.no_grad():
        pixels = vae_tiling.decode(vae, LATENTS)
    tiled, whole = reference(vae, tiled=True), reference(vae, tiled=False)
    assert not torch.equal(tiled, whole)  # tiles really were blended: the two paths can be told apart
    assert torch.equal(pixels, tiled)
    assert "decoding in tiles" in capsys.readouterr().err


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    ],
)
def test_running_out_anyway_decodes_again_in_tiles(vae, monkeypatch, capsys, error):
    monkeypatch.setattr(vae_tiling, "free_bytes", lambda device: 1 << 40)

    def out_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(vae, "decode", out_of_memory)
    with torch.no_grad():
        pixels = vae_tiling.decode(vae, LATENTS)
    assert torch.equal(pixels, reference(vae, tiled=True))
    assert "ran out of memory" in capsys.readouterr().err


def test_other_errors_are_not_taken_for_running_out(vae, monkeypatch):
    monkeypatch.setattr(vae_tiling, "free_bytes", lambda device: 1 << 40)

    def broken(*args, **kwargs):
        raise RuntimeError("Given groups=1, weight of size [64, 4, 3, 3], expected input to have 4 channels")

    monkeypatch.setattr(vae, "decode", broken)
    with pytest.raises(RuntimeError, match="expected input"):
        vae_tiling.decode(vae, LATENTS)


def test_the_encode_estimate_scales_with_pixels(vae):
    one = vae_tiling.encode_bytes(vae, PIXELS)
    assert one > 0
    assert vae_tiling.encode_bytes(vae, torch.zeros(2, 3, 256, 128)) == 4 * one
    assert vae_tiling.encode_bytes(vae, PIXELS.half()) == one // 2


def test_an_encode_that_fits_is_whole_and_one_that_does_not_is_tiled(vae, monkeypatch, capsys):
    monkeypatch.setattr(vae_tiling, "free_bytes", lambda device: 1 << 40)
    with torch.no_grad():
        whole = vae_tiling.encode(vae, PIXELS).mean
    assert torch.equal(whole, encoded(vae, tiled=False)) and capsys.readouterr().err == ""
    monkeypatch.setattr(vae_tiling, "free_bytes", lambda device: vae_tiling.encode_bytes(vae, PIXELS) // 2)
    with torch.no_grad():
        tiled = vae_tiling.encode(vae, PIXELS).mean
    assert not torch.equal(tiled, whole)  # the two paths can be told apart
    assert torch.equal(tiled, encoded(vae, tiled=True))
    assert "encoding in tiles" in capsys.readouterr().err
    assert vae.use_tiling is False  # tiling was on for that one call only


def test_an_encode_that_runs_out_is_done_again_in_tiles(vae, monkeypatch, capsys):
    monkeypatch.setattr(vae_tiling, "free_bytes", lambda device: 1 << 40)
    real_encode = vae.encode

    def out_of_memory_unless_tiled(pixels):
        if not vae.use_tiling:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_encode(pixels)

    monkeypatch.setattr(vae, "encode", out_of_memory_unless_tiled)
    with torch.no_grad():
        latents = vae_tiling.encode(vae, PIXELS).mean
    monkeypatch.setattr(vae, "encode", real_encode)
    assert torch.equal(latents, encoded(vae, tiled=True))
    assert "ran out of memory encoding" in capsys.readouterr().err


def test_a_generation_without_the_memory_still_gets_its_image(tiny_models, monkeypatch, capsys):
    from sfumato.models.loader import load_checkpoint

    model = load_checkpoint(tiny_models["sd1"][0], device=torch.device("cpu"), dtype=torch.float32)
    request = build_request(prompt="a cat", width=128, height=128, steps=2, seed=3, sampler_name="Euler")
    whole = generate(model, request).images[0].image
    monkeypatch.setattr(vae_tiling, "free_bytes", lambda device: 1)
    tiled = generate(model, request).images[0].image
    assert tiled.size == whole.size == (128, 128)
    assert "decoding in tiles" in capsys.readouterr().err


def test_an_img2img_without_the_memory_still_gets_its_image(tiny_models, monkeypatch, capsys):
    from PIL import Image

    from sfumato.models.loader import load_checkpoint
    from sfumato.request import build_img2img_request
    from sfumato.tasks.img2img import img2img
    from sfumato.tasks.img2img_inputs import Img2ImgInputs

    model = load_checkpoint(tiny_models["sd1"][0], device=torch.device("cpu"), dtype=torch.float32)
    source = Image.new("RGB", (128, 128), (200, 40, 40))
    request = build_img2img_request(
        prompt="a cat", width=128, height=128, steps=2, seed=3, sampler_name="Euler", denoising_strength=0.5
    )
    monkeypatch.setattr(vae_tiling, "free_bytes", lambda device: 1)
    image = img2img(model, request, Img2ImgInputs(source, None)).images[0].image
    assert image.size == (128, 128)
    err = capsys.readouterr().err
    assert "encoding in tiles" in err and "decoding in tiles" in err
