"""Low-memory mode: fp16 checkpoints stay fp16 in RAM, brought to the compute dtype and device per layer,
with the normal mode's pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sfumato.cli import main
from sfumato.models.loader import load_checkpoint
from sfumato.models.stored_weights import UPCAST_LAYERS, compute_device, compute_dtype, stored_bytes
from sfumato.request import build_request
from sfumato.tasks.txt2img import generate
from sfumato.testing.tiny_models import write_diffusers_folder, write_single_file

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def half_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("half") / "tiny-fp16.safetensors"
    write_single_file(path, "sd1", seed=0, dtype=torch.float16)
    return path


def pixels(model, prompt: str = "a red circle") -> np.ndarray:
    request = build_request(prompt=prompt, width=64, height=64, steps=3, seed=5, sampler_name="Euler")
    return np.asarray(generate(model, request).images[0].image)


def test_weights_stay_half_and_images_are_bit_identical(half_file):
    normal = load_checkpoint(half_file, device=CPU, dtype=torch.float32)
    low = load_checkpoint(half_file, device=CPU, dtype=torch.float32, low_memory=True)
    assert low.unet.conv_in.weight.dtype == torch.float16
    assert low.unet.conv_in.weight.data_ptr() != normal.unet.conv_in.weight.data_ptr()
    for module in (low.unet, low.vae, *low.text_encoders):
        assert compute_dtype(module) == torch.float32
    low_bytes = sum(stored_bytes(m) for m in (low.unet, low.vae, *low.text_encoders))
    normal_bytes = sum(stored_bytes(m) for m in (normal.unet, normal.vae, *normal.text_encoders))
    assert low_bytes < 0.55 * normal_bytes  # norms and a few small tensors are fp32
    assert np.array_equal(pixels(low), pixels(normal))
    assert low.unet.conv_in.weight.dtype == torch.float16  # the upcast copy was dropped after the call


def test_a_lora_applies_to_the_stored_weights_and_comes_off_exactly(half_file, tmp_path):
    from sfumato.adapters.kohya_names import kohya_layers
    from sfumato.adapters.patcher import NetworkPatcher
    from sfumato.prompts.extra_networks import extract_extra_networks
    from sfumato.testing.tiny_networks import lora_pair, write_network

    low = load_checkpoint(half_file, device=CPU, dtype=torch.float32, low_memory=True)
    layers = kohya_layers(low.unet, list(low.text_encoders), conv=True)
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, module in list(layers.items())[:20]:
        down, up = lora_pair(module, 2, generator)
        tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up * 0.5}
    write_network(tmp_path / "l.safetensors", tensors)
    before = {k: v.clone() for k, v in low.unet.state_dict().items()}
    plain = pixels(low)
    patcher = NetworkPatcher(low, {"l": tmp_path / "l.safetensors"}.get, lambda network: "")
    report = patcher.activate(extract_extra_networks("<lora:l:1>")[1])
    assert report.notes == []
    changed = pixels(low)
    assert not np.array_equal(changed, plain)
    patcher.activate([])
    assert all(torch.equal(v, before[k]) for k, v in low.unet.state_dict().items())
    assert low.unet.conv_in.weight.dtype == torch.float16


def test_a_diffusers_folder_loads_in_low_memory_mode_too(tmp_path):
    folder = tmp_path / "model"
    components = write_diffusers_folder(folder, "sd1")
    components.unet.half()  # rewrite the UNet in half precision, as downloaded fp16 variants are
    components.unet.save_pretrained(folder / "unet")
    low = load_checkpoint(folder, device=CPU, dtype=torch.float32, low_memory=True)
    normal = load_checkpoint(folder, device=CPU, dtype=torch.float32)
    assert low.unet.conv_in.weight.dtype == torch.float16
    assert np.array_equal(pixels(low), pixels(normal))


def test_cli_flag_gives_the_same_image(tmp_path, half_file, capsys):
    models = tmp_path / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    (models / half_file.name).write_bytes(half_file.read_bytes())
    outputs = []
    for extra in ([], ["--low-memory"]):
        out = tmp_path / f"out{len(extra)}"
        args = ["txt2img", "a cat", "--steps", "2", "--width", "64", "--height", "64", "--seed", "3"]
        assert main([*args, "--data-dir", str(tmp_path), "--out", str(out), *extra]) == 0
        (png,) = sorted(out.glob("*.png"))
        outputs.append(np.asarray(Image.open(png).convert("RGB")))
    capsys.readouterr()
    assert np.array_equal(outputs[0], outputs[1])


def test_on_another_device_weights_rest_in_ram_and_visit_it_one_layer_at_a_time(half_file):
    """The GPU form (offload), run here with the meta device standing in for the GPU: every network
    computes there, while its large weights stay the file's fp16 tensors in RAM between calls."""
    meta = torch.device("meta")
    low = load_checkpoint(half_file, device=meta, dtype=torch.float32, low_memory=True)
    networks = (low.unet, low.vae, *low.text_encoders)
    layers = [m for net in networks for m in net.modules() if isinstance(m, UPCAST_LAYERS)]
    resting = {id(m): m.weight.data_ptr() for m in layers}
    assert {(m.weight.device, m.weight.dtype) for m in layers} == {(CPU, torch.float16)}
    hooked = {id(p) for m in layers for p in m.parameters()}
    others = [t for net in networks for t in [*net.parameters(), *net.buffers()] if id(t) not in hooked]
    assert others and {t.device for t in others} == {meta}
    assert {compute_device(net) for net in networks} == {meta}

    visits: list[tuple[torch.device, torch.dtype]] = []
    for layer in layers:  # registered after the loader's hook: sees what the layer computes with
        layer.register_forward_pre_hook(lambda m, args: visits.append((m.weight.device, m.weight.dtype)))
    context = low.text_encoders[0](torch.zeros(1, 77, dtype=torch.long, device=meta)).last_hidden_state
    latents = torch.randn(2, 4, 8, 8, device=meta)
    timestep = torch.tensor([10.0], device=meta)
    denoised = low.unet(latents, timestep, encoder_hidden_states=context.expand(2, -1, -1)).sample
    decoded = low.vae.decode(denoised).sample
    assert decoded.device == meta and decoded.shape == (2, 3, 64, 64)
    assert low.vae.encode(decoded).latent_dist.mean.shape == latents.shape
    assert len(visits) >= len(layers) and set(visits) == {(meta, torch.float32)}
    assert all(m.weight.device == CPU and m.weight.data_ptr() == resting[id(m)] for m in layers)
