"""Shared fixtures: tiny random-weight checkpoints in real file formats, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sfumato.testing.tiny_models import write_single_file

torch.set_num_threads(1)  # CI machines have 2 cores; tests are many small ops


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One single-file checkpoint per variant, plus the factory's in-memory components."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        variant: root / f"{variant}.safetensors"
        for variant in ("sd1", "sd2-v", "sdxl", "sd1-inpaint", "sd1-pix2pix")
    }


@pytest.fixture(scope="session")
def tiny_models(tiny_files: dict[str, Path]):
    """variant -> (path, components) with the file written."""
    return {variant: (path, write_single_file(path, variant, seed=0)) for variant, path in tiny_files.items()}


@pytest.fixture
def data_dir(tmp_path: Path, tiny_models) -> Path:
    """An A1111-style data dir holding the tiny SD1 checkpoint as models/Stable-diffusion/tiny-sd1."""
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    source = tiny_models["sd1"][0]
    (folder / "tiny-sd1.safetensors").write_bytes(source.read_bytes())
    return tmp_path


@pytest.fixture
def cli_txt2img(data_dir, capsys):
    """`sfumato txt2img PROMPT` on the tiny data dir (64², 2 steps, a fixed seed): returns the image's
    RGB bytes, its infotext and what was said on stderr."""
    from PIL import Image

    from sfumato.cli import main

    def generate(prompt: str, seed: int = 1) -> tuple[bytes, str, str]:
        argv = ["txt2img", "--data-dir", str(data_dir), "--steps", "2", "--seed", str(seed)]
        assert main([*argv, "--width", "64", "--height", "64", prompt]) == 0
        out, err = capsys.readouterr()
        with Image.open(out.strip()) as image:
            return image.convert("RGB").tobytes(), image.text["parameters"], err

    return generate
