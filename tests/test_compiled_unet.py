"""torch.compile for the UNet (`torch_compile`, `sfumato serve --compile`): the compiled forward gives
the eager forward's pixels within fp32 rounding, compiles once per shape, is rebuilt when a LoRA changes
the weights, and steps aside for whatever hooks the UNet."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from sfumato.models.registry import ModelManager
from sfumato.request import build_request
from sfumato.settings import load_settings
from sfumato.tasks.sampling_run import compiled_forward
from sfumato.tasks.txt2img import generate
from sfumato.testing.tiny_networks import a1111_hypernetwork, kohya_lora, write_network

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def manager(tmp_path_factory, tiny_models) -> ModelManager:
    """A manager with `torch_compile` on, over the tiny SD1 model, a LoRA and a hypernetwork."""
    data_dir = tmp_path_factory.mktemp("compile")
    path, components = tiny_models["sd1"]
    (data_dir / "models/Stable-diffusion").mkdir(parents=True)
    (data_dir / "models/Stable-diffusion/tiny-sd1.safetensors").write_bytes(path.read_bytes())
    (data_dir / "models/Lora").mkdir(parents=True)
    write_network(data_dir / "models/Lora/strong.safetensors", kohya_lora(components, alpha=4.0, seed=1))
    (data_dir / "models/hypernetworks").mkdir(parents=True)
    widths = sorted({m.to_k.in_features for m in components.unet.modules() if isinstance(m, Attention)})
    torch.save(a1111_hypernetwork(widths), data_dir / "models/hypernetworks/anime.pt")
    settings = load_settings({"data_dir": data_dir, "torch_compile": True}, env={})
    return ModelManager(settings, device=CPU, dtype=torch.float32)


def pixels(model, prompt: str) -> np.ndarray:
    request = build_request(prompt=prompt, width=64, height=64, steps=3, seed=5, sampler_name="Euler")
    return np.asarray(generate(model, request).images[0].image).astype(np.int16)


@contextmanager
def eager(model) -> Iterator[None]:
    """The same loaded model without its compiled forward: the reference."""
    compiled, model.compiled = model.compiled, None
    try:
        yield
    finally:
        model.compiled = compiled


def test_compiled_images_match_eager_and_each_shape_compiles_once(manager, capsys):
    model = manager.load("tiny-sd1")
    compiled = pixels(model, "a red circle")
    assert len(model.compiled.compile_seconds) == 1
    assert "compiled the UNet for 2×4×8×8 latents" in capsys.readouterr().err
    pixels(model, "a blue square")  # another prompt, same shape: the graph is reused
    assert len(model.compiled.compile_seconds) == 1
    with eager(model):
        reference = pixels(model, "a red circle")
    assert np.abs(compiled - reference).max() <= 1  # fp32 rounding may move a channel by one level
    assert manager.settings.compile_cache_dir.is_dir()


def test_a_lora_rebuilds_the_graph_on_the_new_weights(manager):
    model = manager.load("tiny-sd1")
    plain = pixels(model, "a red circle")
    compiles = len(model.compiled.compile_seconds)
    with_lora = pixels(model, "a red circle <lora:strong:1>")
    assert len(model.compiled.compile_seconds) == compiles + 1
    with eager(model):
        reference = pixels(model, "a red circle <lora:strong:1>")
    assert np.abs(with_lora - plain).max() > 10  # the LoRA shows
    assert np.abs(with_lora - reference).max() <= 1
    # off again: rebuilt on the restored weights, the plain picture again
    assert np.abs(pixels(model, "a red circle") - plain).max() <= 1


def test_a_hypernetwork_runs_eagerly(manager):
    model = manager.load("tiny-sd1")
    compiles = len(model.compiled.compile_seconds)
    hooked = pixels(model, "a red circle <hypernet:anime:1>")
    assert model.networks.hooks_unet and compiled_forward(model, exact=True) is None
    assert len(model.compiled.compile_seconds) == compiles
    with eager(model):
        assert np.array_equal(hooked, pixels(model, "a red circle <hypernet:anime:1>"))
    model.networks.activate([])


def test_token_merging_and_deepcache_calls_run_eagerly(manager):
    model = manager.load("tiny-sd1")
    assert compiled_forward(model, exact=False) is None
    assert compiled_forward(model, exact=True) is not None


def test_low_memory_mode_does_not_compile(tmp_path, tiny_models, capsys):
    folder = tmp_path / "models/Stable-diffusion"
    folder.mkdir(parents=True)
    (folder / "tiny.safetensors").write_bytes(Path(tiny_models["sd1"][0]).read_bytes())
    settings = load_settings({"data_dir": tmp_path, "torch_compile": True, "low_memory": True}, env={})
    model = ModelManager(settings, device=CPU, dtype=torch.float32).load("tiny")
    assert model.compiled is None
    assert "torch_compile is off in low-memory mode" in capsys.readouterr().err


def test_serve_compile_turns_the_setting_on(tmp_path, monkeypatch):
    import uvicorn

    from sfumato.cli import main
    from sfumato.server import app

    made = []
    monkeypatch.setattr(app, "create_app", lambda settings, options: made.append(settings))
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    assert main(["serve", "--compile", "--data-dir", str(tmp_path)]) == 0
    assert main(["serve", "--data-dir", str(tmp_path)]) == 0
    assert [settings.torch_compile for settings in made] == [True, False]
