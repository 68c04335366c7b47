"""A1111 hypernetworks: the file's MLPs rebuilt from their own layout, applied to every attention's key
and value inputs by width, changing the picture, and taken off exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from sfumato.adapters.hypernetwork import load_hypernetwork
from sfumato.testing.tiny_networks import a1111_hypernetwork


def mlp_by_hand(state, x, activation, layer_norm, activate_output):
    """x + mlp(x) for structure [1, 2, 1], from the raw state dict (the independent reference)."""
    weights = sorted((k for k in state if k.endswith(".weight")), key=lambda k: int(k.split(".")[1]))
    linears = [k for k in weights if state[k].dim() == 2]
    norms = [k for k in weights if state[k].dim() == 1]
    h = x
    for i, key in enumerate(linears):
        h = F.linear(h, state[key], state[key.replace("weight", "bias")])
        if i < len(linears) - 1 or activate_output:
            h = activation(h)
        if layer_norm:
            norm = norms[i]
            h = F.layer_norm(h, h.shape[-1:], state[norm], state[norm.replace("weight", "bias")])
    return x + h


@pytest.mark.parametrize(
    ("options", "activation"),
    [
        ({}, torch.relu),
        ({"activation": "linear", "layer_norm": False, "dropout": None}, lambda h: h),
        (
            {
                "activation": "tanh",
                "activate_output": True,
                "dropout": (0, 0.3, 0.3, 0),
                "layer_structure": (1, 2, 2, 1),
            },
            torch.tanh,
        ),
    ],
)
def test_modules_are_rebuilt_from_the_file_layout(tmp_path, options, activation):
    data = a1111_hypernetwork([8, 16], **options)
    torch.save(data, tmp_path / "h.pt")
    network = load_hypernetwork(tmp_path / "h.pt")
    assert sorted(network.layers) == [8, 16]
    x = torch.randn(2, 5, 16)
    for module, state in zip(network.layers[16], data[16], strict=True):
        expected = mlp_by_hand(
            state, x, activation, options.get("layer_norm", True), options.get("activate_output", False)
        )
        torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=1e-5)


def test_a_hypernetwork_tag_changes_the_picture_and_comes_off(data_dir, tiny_models, cli_txt2img):
    unet = tiny_models["sd1"][1].unet
    widths = sorted({m.to_k.in_features for m in unet.modules() if isinstance(m, Attention)})
    folder = data_dir / "models" / "hypernetworks"
    folder.mkdir(parents=True)
    torch.save(a1111_hypernetwork(widths), folder / "anime.pt")
    torch.save({"weight": torch.zeros(2)}, folder / "notone.pt")

    def generate(prompt):
        image, _, err = cli_txt2img(prompt, seed=2)
        return image, err

    plain, _ = generate("a cat")
    strong, err = generate("a cat <hypernet:anime:1>")
    weak, _ = generate("a cat <hypernet:anime:0.2>")
    assert strong != plain and weak not in (plain, strong) and "hypernet" not in err
    _, err = generate("a cat <hypernet:notone:1> <hypernet:missing:1>")
    assert "'notone' skipped" in err and "'missing' not found" in err


def test_taking_a_hypernetwork_off_gives_the_base_unet_output_exactly(tmp_path, tiny_models):
    from sfumato.adapters.patcher import NetworkPatcher
    from sfumato.models.loader import load_checkpoint
    from sfumato.prompts.extra_networks import extract_extra_networks

    model = load_checkpoint(tiny_models["sd1"][0], device=torch.device("cpu"), dtype=torch.float32)
    widths = sorted({m.to_k.in_features for m in model.unet.modules() if isinstance(m, Attention)})
    torch.save(a1111_hypernetwork(widths, seed=3), tmp_path / "h.pt")
    patcher = NetworkPatcher(model, lambda name: None, lambda n: "", {"h": tmp_path / "h.pt"}.get)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(
        1, 77, model.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1)
    )

    def unet():
        with torch.no_grad():
            return model.unet(latents, 500, context).sample

    base = unet()
    assert patcher.activate(extract_extra_networks("<hypernet:h:0.7>")[1]).notes == []
    assert not torch.allclose(unet(), base)
    patcher.activate([])
    assert torch.equal(unet(), base)
