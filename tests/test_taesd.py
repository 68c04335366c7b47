"""TAESD: the original decoder files (A1111's models/VAE-taesd) loaded into diffusers' AutoencoderTiny,
for A1111's "TAESD" step previews and its opt-in fast final decode (`sd_vae_decode_method`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sfumato.app import Txt2ImgJob
from sfumato.cli import main
from sfumato.errors import ModelFileError, UserError
from sfumato.generation_params import infotext_params, request_fields_from_infotext
from sfumato.infotext import parse
from sfumato.models.loader import load_single_file
from sfumato.models.taesd import TaesdDecoders, find_decoder, load_decoder
from sfumato.request import build_request
from sfumato.server import preview
from sfumato.server.options import OptionsStore, request_fields
from sfumato.settings import load_settings
from sfumato.tasks.common import RunControl
from sfumato.tasks.txt2img import generate

CPU = torch.device("cpu")


# The reference architecture, as madebyollin/taesd (and A1111's sd_vae_taesd.py) define the decoder.
def conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            conv(n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out)
        )
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


def reference_decoder(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        Clamp(), conv(4, 64), nn.ReLU(),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64, 64), conv(64, 3),
    ).eval()  # fmt: skip


def write_decoder(folder: Path, name: str = "taesd_decoder.pth") -> nn.Sequential:
    reference = reference_decoder()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), folder / name)
    return reference


@pytest.fixture(scope="module")
def sd1(tiny_models):
    return load_single_file(tiny_models["sd1"][0], device=CPU, dtype=torch.float32)


def test_our_autoencoder_tiny_decodes_as_the_reference_module(tmp_path):
    reference = write_decoder(tmp_path)
    tiny = load_decoder(tmp_path / "taesd_decoder.pth", CPU, torch.float32)
    latents = torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad():
        ours = tiny.decode(latents).sample
        expected = reference(latents) * 2 - 1  # taesd returns [0, 1]; diffusers [-1, 1]
    assert ours.shape == (2, 3, 48, 40)
    assert expected.abs().max() > 0.01  # not a trivially zero network
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-5)


def test_files_are_found_per_family_in_a1111s_and_comfyuis_folders(tmp_path):
    a1111, comfy = tmp_path / "models" / "VAE-taesd", tmp_path / "models" / "vae_approx"
    write_decoder(comfy, "taesdxl_decoder.pth")
    folders = [a1111, comfy]
    assert find_decoder(folders, "sdxl") == comfy / "taesdxl_decoder.pth"
    assert find_decoder(folders, "sd1") is None
    write_decoder(a1111)
    assert find_decoder(folders, "sd2") == a1111 / "taesd_decoder.pth"  # SD2 shares SD1's latent space


@pytest.mark.parametrize(
    "contents",
    [
        b"not a pickle at all",
        b"broken",  # read as pickle opcodes: an IndexError inside torch's unpickler
        {"encoder.weight": torch.zeros(1)},  # another layout
        {"1.weight": torch.zeros(64, 4, 3, 3)},  # tensors missing
    ],
)
def test_a_missing_or_broken_file_is_one_clear_user_error(tmp_path, contents):
    folder = tmp_path / "VAE-taesd"
    decoders = TaesdDecoders([folder], CPU, torch.float32)
    with pytest.raises(UserError) as caught:
        decoders.get("sd1")
    assert caught.value.field == "sd_vae_decode_method" and "taesd_decoder.pth" in str(caught.value)
    folder.mkdir()
    path = folder / "taesd_decoder.pth"
    if isinstance(contents, bytes):
        path.write_bytes(contents)
    else:
        torch.save(contents, path)
    for _ in range(2):  # the failure is remembered, and said the same way again
        with pytest.raises(ModelFileError) as caught:
            decoders.get("sd1")
        assert caught.value.field == "sd_vae_decode_method" and str(path) in str(caught.value)


def test_the_loaded_decoder_is_reused_until_its_file_changes(tmp_path):
    write_decoder(tmp_path)
    decoders = TaesdDecoders([tmp_path], CPU, torch.float32)
    first = decoders.get("sd1")
    assert decoders.get("sd1") is first
    torch.save(reference_decoder(seed=1).state_dict(), tmp_path / "taesd_decoder.pth")
    assert decoders.get("sd1") is not first


def request(**fields):
    return build_request(
        prompt="a red circle", width=64, height=64, steps=3, seed=2, sampler_name="Euler", **fields
    )


def test_the_final_decode_option_decodes_the_last_latents_with_taesd(sd1, tmp_path):
    reference = write_decoder(tmp_path)
    with_taesd = dataclasses.replace(
        sd1, taesd=load_decoder(tmp_path / "taesd_decoder.pth", CPU, torch.float32)
    )
    steps: list[torch.Tensor] = []
    fast = generate(
        with_taesd,
        request(sd_vae_decode_method="TAESD"),
        RunControl(on_step=lambda p: steps.append(p.denoised)),
    )
    full = generate(with_taesd, request()).images[0].image
    image = np.asarray(fast.images[0].image, dtype=np.int16)
    assert fast.images[0].image.size == full.size == (64, 64)
    assert not np.array_equal(image, np.asarray(full))
    with torch.no_grad():  # Euler's last step lands on its last prediction
        expected = ((reference(steps[-1]) * 255).clamp(0, 255).round()[0].permute(1, 2, 0)).numpy()
    assert np.abs(image - expected).max() <= 1
    with pytest.raises(UserError) as caught:
        generate(sd1, request(sd_vae_decode_method="TAESD"))  # nothing attached
    assert caught.value.field == "sd_vae_decode_method"


def test_jobs_and_cli_attach_the_file_or_refuse_before_sampling(data_dir, capsys):
    settings = load_settings({"data_dir": data_dir, "threads": 1}, env={})
    fields = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 1}
    job = Txt2ImgJob(settings, {**fields, "sd_vae_decode_method": "TAESD"})
    steps: list[object] = []
    with pytest.raises(UserError) as caught:
        job.run(on_step=steps.append)
    assert caught.value.field == "sd_vae_decode_method" and steps == []
    argv = ["txt2img", "--data-dir", str(data_dir), "--steps", "1", "--vae-decode-method", "TAESD", "x"]
    assert main(argv) == 2
    assert "taesd_decoder.pth" in capsys.readouterr().err
    write_decoder(data_dir / "models" / "VAE-taesd")
    assert main(argv) == 0
    with Image.open(capsys.readouterr().out.strip()) as saved:
        assert "VAE Decoder: TAESD" in saved.text["parameters"]
    plain = Txt2ImgJob(settings, fields).run()
    with Image.open(plain[0]) as saved:
        assert "VAE Decoder" not in saved.text["parameters"]


def test_previews_use_taesd_when_its_file_is_there_else_the_linear_map(sd1, tmp_path, monkeypatch):
    monkeypatch.setattr(preview, "FULL_DECODE_PARAMETERS", 0)  # treat the tiny VAE as a large one
    folder = tmp_path / "VAE-taesd"
    previewer = preview.LatentPreviewer(TaesdDecoders([folder], CPU, torch.float32))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert previewer(sd1, latents).size == (8, 8)  # no file: the linear map, at latent size
    folder.mkdir()
    (folder / "taesd_decoder.pth").write_bytes(b"broken")
    assert previewer(sd1, latents).size == (8, 8)  # a broken file is no error for a preview
    reference = write_decoder(folder)
    shown = previewer(sd1, latents)
    assert shown.size == (64, 64)
    with torch.no_grad():
        expected = ((reference(latents[:1]) * 255).clamp(0, 255).round()[0].permute(1, 2, 0)).numpy()
    assert np.abs(np.asarray(shown, dtype=np.int16) - expected).max() <= 1


def params(**fields) -> dict:
    where = {"seed": 1, "subseed": 1, "width": 64, "height": 64, "model_name": None, "model_hash": None}
    return infotext_params(build_request(prompt="a cat", **fields).model_dump(), **where)


def test_infotext_and_options():
    assert params(sd_vae_decode_method="TAESD")["VAE Decoder"] == "TAESD"
    assert "VAE Decoder" not in params()
    text = "a cat\nSteps: 20, Sampler: Euler, Seed: 1, Size: 64x64, VAE Decoder: TAESD"
    assert request_fields_from_infotext(parse(text))["sd_vae_decode_method"] == "TAESD"
    store = OptionsStore(Path("/nonexistent/options.json"), resolve_checkpoint=str, resolve_vae=str)
    checked = store.validated({"sd_vae_decode_method": "TAESD"})
    assert request_fields(checked) == {"sd_vae_decode_method": "TAESD"}
    with pytest.raises(UserError) as caught:
        store.validated({"sd_vae_decode_method": "Approx NN"})
    assert caught.value.field == "sd_vae_decode_method"
