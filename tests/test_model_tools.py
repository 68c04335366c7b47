"""Model tools: checkpoint merging (exact maths, families, baked VAE, A1111 metadata), LoRAs baked into
a checkpoint, and LoRA extraction's round trip."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from sfumato.cli import main
from sfumato.testing.tiny_models import write_single_file
from sfumato.testing.tiny_networks import kohya_lora, write_network


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("merge") / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        write_single_file(folder / f"{name}.safetensors", "sd1", seed=seed)
    write_single_file(folder / "xl.safetensors", "sdxl", seed=0)
    return folder.parent.parent


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out.strip(), err


@pytest.mark.parametrize("mode", ["weighted", "add-diff"])
def test_merge_maths_is_exact(checkpoints, tmp_path, capsys, mode):
    models = ["a", "b"] if mode == "weighted" else ["a", "b", "c"]
    out = tmp_path / "m.safetensors"
    code, printed, err = run(
        capsys, "merge", *models, "--mode", mode, "--alpha", 0.3, "--dtype", "fp32", "--out", out,
        "--data-dir", checkpoints,
    )  # fmt: skip
    assert code == 0, err
    assert printed == str(out)
    folder = checkpoints / "models" / "Stable-diffusion"
    a, b, c = (load_file(folder / f"{n}.safetensors") for n in "abc")
    merged = load_file(out)
    assert set(merged) == set(a)
    for key, value in merged.items():
        if not a[key].is_floating_point():
            assert torch.equal(value, a[key])
            continue
        if mode == "weighted":
            expected = a[key].float() * 0.7 + b[key].float() * 0.3
        else:
            expected = a[key].float() + (b[key].float() - c[key].float()) * 0.3
        assert torch.equal(value, expected), key
    with safe_open(out, framework="pt") as f:
        recipe = json.loads(f.metadata()["sd_merge_recipe"])
    assert recipe["multiplier"] == 0.3 and recipe["interp_method"].startswith(
        "Weighted" if mode == "weighted" else "Add"
    )


def test_merge_fp16_with_a_baked_vae_and_refusals(checkpoints, tmp_path, capsys, tiny_models):
    vae = tiny_models["sd1"][1].vae  # a diffusers-layout VAE file, converted to LDM names when baked
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, tmp_path / "my.vae.safetensors")
    out = tmp_path / "baked.safetensors"
    argv = ["--data-dir", checkpoints, "--out", out]
    code, _, err = run(capsys, "merge", "a", "b", "--vae", tmp_path / "my.vae.safetensors", *argv)
    assert code == 0, err
    merged = load_file(out)
    assert merged["model.diffusion_model.out.2.weight"].dtype == torch.float16
    expected = vae.state_dict()["decoder.conv_out.weight"].half()
    assert torch.equal(merged["first_stage_model.decoder.conv_out.weight"], expected)
    code, _, err = run(capsys, "merge", "a", "xl", *argv)
    assert code == 2 and "cannot be merged" in err and "sdxl" in err
    code, _, err = run(capsys, "merge", "a", "b", "--mode", "add-diff", *argv)
    assert code == 2 and "takes 3 checkpoints" in err


def weights(path):
    return {k: v for k, v in load_file(path).items() if v.is_floating_point()}


def test_merge_lora_bakes_what_the_tag_applies(checkpoints, tmp_path, capsys, tiny_models):
    lora_dir = tmp_path / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    write_network(lora_dir / "style.safetensors", kohya_lora(tiny_models["sd1"][1], seed=7))
    model_dir = tmp_path / "models" / "Stable-diffusion"
    model_dir.mkdir(parents=True)
    (model_dir / "base.safetensors").write_bytes(
        (checkpoints / "models/Stable-diffusion/a.safetensors").read_bytes()
    )
    baked = model_dir / "baked.safetensors"
    code, _, err = run(
        capsys, "merge-lora", "base", "style:0.8", "--dtype", "fp32", "--out", baked, "--data-dir", tmp_path
    )
    assert code == 0, err
    gen = ["txt2img", "--data-dir", tmp_path, "--steps", 2, "--seed", 3, "--width", 64, "--height", 64]
    _, with_tag, _ = run(capsys, *gen, "--model", "base", "a cat <lora:style:0.8>")
    _, from_baked, _ = run(capsys, *gen, "--model", "baked", "a cat")
    with Image.open(with_tag) as x, Image.open(from_baked) as y:
        assert x.tobytes() == y.tobytes()
    code, _, err = run(
        capsys, "merge-lora", "base", "nope", "--out", tmp_path / "x.safetensors", "--data-dir", tmp_path
    )
    assert code == 2 and "'nope' not found" in err


def test_extract_lora_round_trip(checkpoints, tmp_path, capsys, tiny_models):
    """base + a known rank-2 delta (LoRA and LoCon layers) -> extracted at dim 4 -> base with the extracted
    LoRA equals the tuned model."""
    lora_dir = tmp_path / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    write_network(
        lora_dir / "known.safetensors", kohya_lora(tiny_models["sd1"][1], rank=2, seed=9, conv=True)
    )
    model_dir = tmp_path / "models" / "Stable-diffusion"
    model_dir.mkdir(parents=True)
    (model_dir / "base.safetensors").write_bytes(
        (checkpoints / "models/Stable-diffusion/a.safetensors").read_bytes()
    )
    common = ["--data-dir", tmp_path]
    code, _, err = run(
        capsys,
        "merge-lora",
        "base",
        "known",
        "--dtype",
        "fp32",
        "--out",
        model_dir / "tuned.safetensors",
        *common,
    )
    assert code == 0, err
    extracted = lora_dir / "extracted.safetensors"
    report = tmp_path / "report.json"
    code, _, err = run(
        capsys, "extract-lora", "tuned", "base", "--dim", 4, "--conv-dim", 4, "--out", extracted, "--report", report, *common
    )  # fmt: skip
    assert code == 0, err
    rows = json.loads(report.read_text())
    assert rows and max(row["relative_error"] for row in rows) < 1e-4 and {row["rank"] for row in rows} == {4}
    with safe_open(extracted, framework="pt") as f:
        assert f.metadata()["ss_network_dim"] == "4" and f.metadata()["ss_base_model_version"] == "sd_v1"
    code, _, err = run(
        capsys,
        "merge-lora",
        "base",
        "extracted",
        "--dtype",
        "fp32",
        "--out",
        model_dir / "again.safetensors",
        *common,
    )
    assert code == 0, err
    tuned, again = weights(model_dir / "tuned.safetensors"), weights(model_dir / "again.safetensors")
    for key, value in tuned.items():
        torch.testing.assert_close(again[key], value, atol=2e-5, rtol=1e-4, msg=key)
    code, _, err = run(
        capsys, "extract-lora", "base", "base", "--dim", 4, "--out", lora_dir / "none.safetensors", *common
    )
    assert code == 2 and "nothing to extract" in err


def test_streamed_safetensors_read_back_exactly(tmp_path):
    from sfumato.models.safetensors_stream import write_streamed

    tensors = {
        "a.weight": torch.randn(3, 4),
        "b.half": torch.randn(5).half(),
        "c.bf16": torch.randn(2, 2, 2).bfloat16(),
        "ids": torch.arange(7),
        "flag": torch.tensor(True),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    layout = [(name, tuple(t.shape), t.dtype) for name, t in tensors.items()]
    write_streamed(tmp_path / "s.safetensors", layout, iter(tensors.values()), {"note": "hi"})
    with safe_open(tmp_path / "s.safetensors", framework="pt") as f:
        assert f.metadata() == {"note": "hi"} and list(f.keys()) == sorted(tensors)
        for name, tensor in tensors.items():
            assert torch.equal(f.get_tensor(name), tensor) and f.get_tensor(name).dtype == tensor.dtype
    with pytest.raises(ValueError, match="header says"):
        write_streamed(tmp_path / "bad.safetensors", layout, iter([torch.zeros(1)] * 7))
    assert not list(tmp_path.glob("bad*"))  # nothing half-written left behind
