"""Model upscalers (ESRGAN family through spandrel): files in the layouts people download, tiling, the
Extras CLI, hires fix, and bad files refused with one clear message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sfumato.cli import main
from sfumato.errors import ModelFileError, UserError
from sfumato.models.registry import ModelEntry
from sfumato.settings import Settings
from sfumato.tasks.extras import ResizeTarget, Tiling, upscale, upscaler_names
from sfumato.testing.tiny_image_models import build_esrgan, build_swinir, write_esrgan
from sfumato.testing.tiny_models import write_malicious_ckpt, write_truncated
from sfumato.upscalers.models import ImageModels, image_to_tensor, load_image_model, tensor_to_image
from sfumato.upscalers.tiling import run_tiled

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def esrgan():
    return build_esrgan()


def picture(width=40, height=28, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def reference(network, image: Image.Image) -> Image.Image:
    """The network itself, run directly: what loading through files and spandrel must reproduce."""
    with torch.no_grad():
        return tensor_to_image(network(image_to_tensor(image, CPU, torch.float32)).clamp(0, 1))


@pytest.mark.parametrize(
    ("layout", "name"),
    [("esrgan", "4x-old.pth"), ("realesrgan", "RealESRGAN_x4plus.pth"), ("realesrgan", "x4.safetensors")],
)
def test_each_file_layout_loads_and_runs_the_same_network(tmp_path, esrgan, layout, name):
    write_esrgan(tmp_path / name, esrgan, layout)
    model = load_image_model(ModelEntry(tmp_path / name, tmp_path), CPU)
    assert (model.architecture, model.scale, model.is_inpainting) == ("ESRGAN", 4, False)
    image = picture()
    out = model.upscale_once(image)
    assert out.size == (160, 112)
    assert out.tobytes() == reference(esrgan, image).tobytes()


def test_tiles_with_enough_context_equal_the_untiled_result(esrgan):
    pixels = image_to_tensor(picture(100, 72, seed=1), CPU, torch.float32)
    with torch.no_grad():
        whole = run_tiled(esrgan, pixels, 4, tile=0)
        tiled = run_tiled(esrgan, pixels, 4, tile=40, overlap=32)
        bare = run_tiled(esrgan, pixels, 4, tile=40, overlap=0)
    assert tiled.shape == whole.shape == (1, 3, 288, 400)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    # without context the tiles differ at their seams, yet not deep inside a tile
    assert (bare - whole).abs().max() > 1e-2
    torch.testing.assert_close(bare[..., :64, :64], whole[..., :64, :64], atol=1e-5, rtol=0)


def folder_with_model(tmp_path, esrgan, name="4x-tiny.pth") -> Settings:
    (tmp_path / "models" / "ESRGAN").mkdir(parents=True)
    write_esrgan(tmp_path / "models" / "ESRGAN" / name, esrgan)
    return Settings(data_dir=tmp_path)


def test_extras_by_model_name_runs_the_model_then_lanczos_to_the_size(tmp_path, esrgan):
    models = ImageModels(folder_with_model(tmp_path, esrgan), "upscalers")
    assert upscaler_names(models) == ["None", "Lanczos", "Nearest", "4x-tiny"]
    image = picture()
    twice = upscale(image, ResizeTarget(scale=2), upscaler_1="4x-tiny", models=models)
    expected = reference(esrgan, image).resize((80, 56), Image.Resampling.LANCZOS)
    assert twice.tobytes() == expected.tobytes()
    eight = upscale(image, ResizeTarget(scale=8), upscaler_1="4x-tiny", models=models, tiling=Tiling(32, 8))
    assert eight.size == (320, 224)  # two passes of a 4x model, as A1111 runs it
    boxed = upscale(image, ResizeTarget(width=64, height=64), upscaler_1="4x-tiny", models=models)
    assert boxed.size == (64, 64)
    with pytest.raises(UserError, match="4x-tiny"):
        upscale(image, ResizeTarget(scale=2), upscaler_1="4x-tiyn", models=models)


def test_upscale_cli_with_a_model(tmp_path, esrgan, capsys):
    folder_with_model(tmp_path, esrgan)
    picture().save(tmp_path / "in.png")
    argv = ["upscale", str(tmp_path / "in.png"), "--data-dir", str(tmp_path), "--upscaler", "4x-tiny"]
    assert main([*argv, "--scale", "4", "--tile", "16"]) == 0
    with Image.open(capsys.readouterr().out.strip()) as out:
        assert out.size == (160, 112)
        assert out.text["parameters"] == "Postprocess upscale by: 4, Postprocess upscaler: 4x-tiny"
        assert out.convert("RGB").tobytes() == reference(esrgan, picture()).tobytes()
    assert main([*argv, "--tile", "-1"]) == 2


def test_bad_upscaler_files_give_one_clear_message(tmp_path, esrgan):
    write_esrgan(tmp_path / "good.safetensors", esrgan, "realesrgan")
    write_truncated(tmp_path / "cut.safetensors", tmp_path / "good.safetensors")
    write_malicious_ckpt(tmp_path / "evil.pth", tmp_path / "pwned")
    torch.save({"weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    for name, message in [
        ("cut.safetensors", "truncated"),
        ("evil.pth", "refused"),
        ("other.pth", "not an image-model architecture"),
    ]:
        with pytest.raises(ModelFileError, match=message):
            load_image_model(ModelEntry(tmp_path / name, tmp_path), CPU)
    assert not (tmp_path / "pwned").exists()


def test_hires_fix_with_a_model_upscaler(tmp_path, tiny_models, esrgan, capsys):
    folder_with_model(tmp_path, esrgan)
    checkpoint = tiny_models["sd1"][0]
    argv = ["txt2img", "a cat", "--model", str(checkpoint), "--data-dir", str(tmp_path), "--steps", "2"]
    argv += ["--width", "64", "--height", "64", "--hires", "--hires-scale", "2", "--hires-steps", "1"]
    assert main([*argv, "--hires-upscaler", "4x-tiny"]) == 0
    with Image.open(capsys.readouterr().out.strip()) as out:
        assert out.size == (128, 128) and "Hires upscaler: 4x-tiny" in out.text["parameters"]
    assert main([*argv, "--hires-upscaler", "4x-tiyn"]) == 2
    assert "4x-tiny" in capsys.readouterr().err


def test_a_transformer_upscaler_swinir_loads_and_runs_in_tiles(tmp_path):
    network = build_swinir()
    save_file(
        {k: v.contiguous() for k, v in network.state_dict().items()}, tmp_path / "2x-swinir.safetensors"
    )
    model = load_image_model(ModelEntry(tmp_path / "2x-swinir.safetensors", tmp_path), CPU)
    assert (model.architecture, model.scale) == ("SwinIR", 2)
    image = picture(30, 20)  # smaller than its 16-pixel minimum in tiles, not a multiple of its window
    assert model.upscale_once(image, tile=0).tobytes() == reference(network, image).tobytes()
    tiled = np.asarray(model.upscale_once(image, tile=16, overlap=8)).astype(float)
    assert tiled.shape == (40, 60, 3)
    assert np.abs(tiled - np.asarray(reference(network, image)).astype(float)).mean() < 4  # windows shift
