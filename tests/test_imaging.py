"""Image groundwork for img2img: A1111's resize modes, mask preparation, outpaint canvases, and the
denoiser layers for image conditioning (inpainting channels, pix2pix guidance, latent blending)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sfumato.errors import UserError
from sfumato.imaging.masks import (
    binary_mask,
    blur_mask,
    crop_region,
    fill_masked,
    latent_mask,
    mask_from_alpha,
    match_aspect,
    overlay_mask,
    paste_over,
)
from sfumato.imaging.outpaint import Margins, extend_canvas
from sfumato.imaging.resize import resize_image
from sfumato.prompts.encode import Conditioning
from sfumato.sampling.denoiser import GuidedDenoiser, MaskBlend, UNetExtras


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    return Image.fromarray(np.concatenate([x + 0 * y, y + 0 * x, 0 * x + 0 * y + 128], 2).astype(np.uint8))


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_resize_modes_give_the_target_size(mode: int) -> None:
    wide = _gradient(200, 100)
    assert resize_image(mode, wide, 64, 64).size == (64, 64)


def test_crop_and_fill_keep_the_aspect_ratio() -> None:
    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 100, 100))  # left half blue, right half red
    cropped = np.asarray(resize_image(1, wide, 64, 64))
    # covering 64×64 from 2:1 keeps the middle: left part blue, right part red
    assert tuple(cropped[32, 2]) == (0, 0, 255) and tuple(cropped[32, 61]) == (255, 0, 0)
    filled = np.asarray(resize_image(2, wide, 64, 64))
    # fitting inside leaves bands above and below, filled by stretching the edge rows: same colours
    assert tuple(filled[1, 2]) == tuple(filled[32, 2]) == (0, 0, 255)
    assert tuple(filled[62, 61]) == (255, 0, 0)


def test_mask_preparation() -> None:
    painted = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    painted.paste((255, 255, 255, 255), (8, 8, 16, 16))
    mask = binary_mask(painted)  # a sketch layer counts by its alpha
    assert mask.getbbox() == (8, 8, 16, 16) and set(mask.getdata()) == {0, 255}
    blurred = blur_mask(mask, 2, 2)
    assert blurred.getbbox()[0] < 8 and blurred.getpixel((12, 12)) > 200
    assert crop_region(mask, 4) == (4, 4, 20, 20)
    assert crop_region(Image.new("L", (8, 8)), 4) is None
    # widened to a 2:1 output without leaving the image
    assert match_aspect((4, 4, 20, 20), 128, 64, (32, 32)) == (0, 4, 32, 20)
    init = Image.new("RGBA", (16, 16), (10, 20, 30, 255))
    assert mask_from_alpha(init) is None
    init.putpixel((3, 3), (0, 0, 0, 0))
    assert mask_from_alpha(init).getpixel((3, 3)) == 255 and mask_from_alpha(init).getpixel((0, 0)) == 0


def test_fill_and_paste_back_keep_unmasked_pixels() -> None:
    image = _gradient(48, 48)
    mask = Image.new("L", (48, 48))
    mask.paste(255, (16, 16, 32, 32))
    filled = fill_masked(image, mask)
    original, result = np.asarray(image).astype(int), np.asarray(filled).astype(int)
    assert (result[mask_array(mask) == 0] == original[mask_array(mask) == 0]).all()
    # a smooth image's hole is filled close to what was there
    assert np.abs(result[16:32, 16:32] - original[16:32, 16:32]).mean() < 25
    overlay = overlay_mask(blur_mask(mask, 2, 2), whole_picture=True)
    pasted = np.asarray(paste_over(image, Image.new("RGB", (48, 48), (255, 0, 255)), overlay))
    untouched = np.asarray(overlay) == 0
    assert (pasted[untouched] == np.asarray(image)[untouched]).all()
    assert tuple(pasted[24, 24]) == (255, 0, 255)
    assert latent_mask(mask, (6, 6)).tolist()[3] == [0, 0, 1, 1, 0, 0]


def mask_array(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask)


@pytest.mark.parametrize("fill", ["edge", "mirror", "noise", "colour"])
def test_outpaint_canvas(fill: str) -> None:
    image = _gradient(40, 24)
    canvas, mask = extend_canvas(image, Margins(left=8, top=0, right=16, bottom=8), fill, "#00ff00", seed=1)
    assert canvas.size == (64, 32) and mask.size == (64, 32)
    assert (np.asarray(canvas)[0:24, 8:48] == np.asarray(image)).all()
    assert mask.getbbox() == (0, 0, 64, 32) and np.asarray(mask)[0:24, 8:48].max() == 0
    assert np.asarray(mask)[30, 2] == 255
    if fill == "edge":
        assert tuple(np.asarray(canvas)[10, 0]) == tuple(np.asarray(image)[10, 0])
    if fill == "colour":
        assert tuple(np.asarray(canvas)[31, 63]) == (0, 255, 0)


def test_outpaint_rejects_bad_settings() -> None:
    with pytest.raises(UserError):
        Margins(left=-1)
    with pytest.raises(UserError, match="fill"):
        extend_canvas(_gradient(8, 8), Margins(left=8), "smear")
    with pytest.raises(UserError, match="colour"):
        extend_canvas(_gradient(8, 8), Margins(left=8), "colour", "not-a-colour")


def _cond(value: float) -> Conditioning:
    return Conditioning(cross=torch.full((1, 77, 4), value))


class _RecordingModel:
    """A fake UNet-denoiser: output = x + text value + mean of the image channels, so each
    combination of (text, image) gives a distinct, known result."""

    def __call__(self, x, sigma, cond, extras):
        text = cond.cross[:, 0, 0].view(-1, 1, 1, 1)
        image = extras.c_concat.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
        return x + text + 10 * image


def test_pix2pix_three_way_guidance_closed_form() -> None:
    x = torch.zeros(1, 4, 2, 2)
    image = torch.full((1, 4, 2, 2), 0.5)
    guided = GuidedDenoiser(
        _RecordingModel(), torch.tensor([1.0, 0.0]), lambda step: (_cond(1.0), [(_cond(3.0), 1.0)]),
        7.5, UNetExtras(c_concat=image), image_cfg_scale=1.5,
    )  # fmt: skip
    both, image_only, neither = 3.0 + 5.0, 1.0 + 5.0, 1.0
    expected = neither + 7.5 * (both - image_only) + 1.5 * (image_only - neither)
    assert torch.allclose(guided(x, torch.tensor([1.0])), torch.full_like(x, expected))


def test_mask_blend_keeps_the_init() -> None:
    init = torch.full((1, 4, 2, 2), 5.0)
    keep = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    blend = MaskBlend(lambda x, sigma: torch.zeros_like(x), init, keep)
    out = blend(torch.ones(1, 4, 2, 2), torch.tensor([1.0]))
    assert out[0, :, 0, 0].eq(5).all() and out[0, :, 0, 1].eq(0).all()


def test_txt2img_runs_an_inpainting_checkpoint(tiny_models) -> None:
    """A 9-channel checkpoint gets A1111's "nothing to keep" conditioning instead of failing."""
    from sfumato.models.loader import load_single_file
    from sfumato.request import build_request
    from sfumato.tasks.txt2img import generate

    model = load_single_file(tiny_models["sd1-inpaint"][0], device=torch.device("cpu"), dtype=torch.float32)
    request = build_request(prompt="a red circle", steps=2, width=64, height=64, seed=3)
    images = generate(model, request).images
    assert len(images) == 1 and images[0].image.size == (64, 64)
