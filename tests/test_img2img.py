"""img2img and inpainting as a user sees them: strength, A1111's step counts, pixels that must come back
unchanged, the only-masked box, outpainting, masked content, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sfumato.imaging.masks import blur_mask
from sfumato.models.loader import load_single_file
from sfumato.request import build_img2img_request, build_request
from sfumato.sampling import DiscreteSchedule, make_sigmas
from sfumato.sampling.schedules import ddim_timesteps, img2img_sigmas
from sfumato.tasks.common import RunControl
from sfumato.tasks.img2img import img2img
from sfumato.tasks.img2img_inputs import Img2ImgInputs, PasteBack, prepare_init
from sfumato.tasks.txt2img import generate


@pytest.fixture(scope="module")
def models(tiny_models):
    cpu = torch.device("cpu")
    return {
        name: load_single_file(tiny_models[name][0], device=cpu, dtype=torch.float32)
        for name in ("sd1", "sd1-inpaint")
    }


def noisy_picture(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def box_mask(size=(64, 64), box=(24, 24, 40, 40)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def run(model, image, mask=None, **fields):
    request = build_img2img_request(**{"prompt": "a cat", "steps": 6, "seed": 3, **fields})
    result = img2img(model, request, Img2ImgInputs(image, mask))
    return result, [np.asarray(g.image.convert("RGB")).astype(int) for g in result.images]


def test_strength_zero_returns_the_input(models):
    picture = noisy_picture()
    result, (out,) = run(models["sd1"], picture, denoising_strength=0.0)
    np.testing.assert_array_equal(out, np.asarray(picture))
    assert result.params["Denoising strength"] == 0.0


def test_strength_one_ignores_the_input(models):
    # Two opposite inits (mean pixel distance 170) give the same image at strength 1, and that image is
    # the txt2img one of the same seed; at 0.5 the init still shows.
    model = models["sd1"]
    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    _, (from_red,) = run(model, red, denoising_strength=1.0)
    _, (from_blue,) = run(model, blue, denoising_strength=1.0)
    txt2img = generate(model, build_request(prompt="a cat", steps=6, seed=3, width=64, height=64))
    plain = np.asarray(txt2img.images[0].image).astype(int)
    assert np.abs(from_red - from_blue).mean() < 1.0
    assert np.abs(from_red - plain).mean() < 1.0
    _, (half_red,) = run(model, red, denoising_strength=0.5)
    _, (half_blue,) = run(model, blue, denoising_strength=0.5)
    assert np.abs(half_red - half_blue).mean() > 0.5


def a1111_steps(sampler: str, steps: int, strength: float) -> int:
    """Model-call steps A1111 1.10 runs in img2img, written from its code: t_enc = int(min(s, .999)·n);
    k-diffusion walks sigmas[n - t_enc - 1:]; DDIM loops len(timesteps[:t_enc]) - 1 times; UniPC
    samples len(timesteps[:t_enc]) steps."""
    t_enc = int(min(strength, 0.999) * steps)
    if sampler == "DDIM":
        return max(t_enc, 1) - 1
    if sampler == "UniPC":
        return max(t_enc, 1)
    return t_enc + 1


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "DPM2", "DDIM", "UniPC"])
@pytest.mark.parametrize(("steps", "strength"), [(20, 0.75), (10, 0.3), (30, 0.5), (12, 1.0)])
def test_steps_run_follow_a1111(models, sampler, steps, strength):
    model = models["sd1"]
    totals: list[int] = []
    request = build_img2img_request(
        prompt="x", steps=steps, seed=1, sampler_name=sampler, denoising_strength=strength
    )
    img2img(
        model, request, Img2ImgInputs(noisy_picture()), RunControl(on_step=lambda p: totals.append(p.total))
    )
    expected = a1111_steps(sampler, steps, strength)
    assert len(totals) == expected and set(totals) <= {expected}


def test_timestep_samplers_noise_the_init_one_level_above_their_first_step(models):
    schedule = DiscreteSchedule(models["sd1"].alphas_cumprod)
    full = make_sigmas("Automatic", 20, schedule, sampler="DDIM")
    sigmas, noise_sigma = img2img_sigmas(full, 20, 0.75, "DDIM", schedule)
    timesteps = ddim_timesteps(20)  # 1, 51, ..., 951
    assert noise_sigma == pytest.approx(float(schedule.sigmas[timesteps[15]]))  # t = 751
    assert float(sigmas[0]) == pytest.approx(float(schedule.sigmas[timesteps[14]]))  # first step at 701


@pytest.mark.parametrize("model_name", ["sd1", "sd1-inpaint"])
@pytest.mark.parametrize("content", [0, 1, 2, 3])
def test_whole_picture_inpainting_keeps_unmasked_pixels(models, model_name, content):
    picture, mask = noisy_picture(), box_mask()
    result, (out,) = run(
        models[model_name],
        picture,
        mask,
        denoising_strength=0.9,
        inpaint_full_res=False,
        inpainting_fill=content,
    )
    touched = np.asarray(blur_mask(mask, 4, 4)) > 0
    np.testing.assert_array_equal(out[~touched], np.asarray(picture)[~touched])
    assert np.abs(out[24:40, 24:40] - np.asarray(picture)[24:40, 24:40]).mean() > 5
    assert result.params["Mask blur"] == 4
    assert ("Masked content" in result.params) == (content != 1)


def test_only_masked_paints_the_padded_box_and_pastes_it_back(models):
    picture, mask = noisy_picture(96, 64), box_mask((96, 64), (60, 20, 72, 36))
    result, (out,) = run(
        models["sd1"], picture, mask, inpaint_full_res=True, inpaint_full_res_padding=8, mask_blur=2
    )
    assert out.shape == (64, 96, 3)
    changed = np.argwhere(np.abs(out - np.asarray(picture)).max(2) > 0)
    # blurred mask: the box grown by the blur's kernel radius (2·⌊2.5·2+0.5⌋+1 = 11 → 5 px)
    assert changed.min(0).tolist() >= [20 - 5, 60 - 5] and changed.max(0).tolist() <= [35 + 5, 71 + 5]
    assert result.params["Inpaint area"] == "Only masked" and result.params["Masked area padding"] == 8


def test_only_masked_box_is_painted_at_the_processing_size():
    # The box around a 12×16 mask with padding 8 is widened to the processing aspect (96:64) and
    # painted at 96×64; what the model returns is resized back into the box.
    request = build_img2img_request(inpaint_full_res=True, inpaint_full_res_padding=8, mask_blur=0)
    prepared = prepare_init(
        Img2ImgInputs(noisy_picture(96, 64), box_mask((96, 64), (60, 20, 72, 36))), request, 8
    )
    assert prepared.image.size == (96, 64) and prepared.mask is not None
    left, top, right, bottom = prepared.paste.box
    assert (right - left) / (bottom - top) == pytest.approx(96 / 64, abs=0.05)
    assert left <= 52 and right >= 80 and top <= 12 and bottom >= 44
    green = prepared.paste.apply(Image.new("RGB", (96, 64), (0, 255, 0)))
    assert np.asarray(green)[28, 66].tolist() == [0, 255, 0]
    assert np.asarray(green)[5, 5].tolist() == np.asarray(noisy_picture(96, 64))[5, 5].tolist()


def test_paste_back_without_mask_resizes_to_the_output():
    paste = PasteBack(Image.new("RGB", (70, 60)), None)
    assert paste.apply(Image.new("RGB", (72, 64), (9, 9, 9))).size == (70, 60)


def test_init_size_not_a_multiple_of_8_comes_back_at_its_size(models):
    result, (out,) = run(models["sd1"], noisy_picture(70, 60), denoising_strength=0.5)
    assert out.shape == (60, 70, 3) and result.size == (72, 64)


def test_transparent_init_is_its_own_mask(models):
    picture = noisy_picture().convert("RGBA")
    alpha = Image.new("L", (64, 64), 255)
    alpha.paste(0, (24, 24, 40, 40))
    picture.putalpha(alpha)
    result, (out,) = run(models["sd1"], picture, inpaint_full_res=False, mask_blur=0)
    assert result.params["Mask blur"] == 0
    np.testing.assert_array_equal(out[:20], np.asarray(picture.convert("RGB"))[:20])


def test_mask_of_another_size_is_resized_with_a_note(models):
    result, (out,) = run(models["sd1"], noisy_picture(), box_mask((32, 32), (12, 12, 20, 20)))
    assert any("resized" in note for note in result.notes)
    assert out.shape == (64, 64, 3)


def test_inverted_mask_repaints_the_outside(models):
    picture = noisy_picture()
    result, (out,) = run(
        models["sd1"], picture, box_mask(), inpaint_full_res=False, inpainting_mask_invert=1, mask_blur=0
    )
    np.testing.assert_array_equal(out[24:40, 24:40], np.asarray(picture)[24:40, 24:40])
    assert result.params["Mask mode"] == "Inpaint not masked"


def test_latent_upscale_mode_gives_the_requested_size(models):
    _, (out,) = run(models["sd1"], noisy_picture(32, 32), width=64, height=48, resize_mode=3)
    assert out.shape == (48, 64, 3)
