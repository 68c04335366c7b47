"""The tiny-model factory writes what real files contain, deterministically, and the bad files it
writes are bad in exactly the intended way."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from sfumato.testing.tiny_models import (
    VARIANTS,
    build_components,
    write_corrupt_header,
    write_diffusers_folder,
    write_malicious_ckpt,
    write_single_file,
    write_truncated,
)

# The component prefixes of real single files: A1111 and ComfyUI recognise the family by them.
REAL_PREFIXES = {
    "sd1": {"model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."},
    "sd2": {"model.diffusion_model.", "first_stage_model.", "cond_stage_model.model."},
    "sdxl": {
        "model.diffusion_model.",
        "first_stage_model.",
        "conditioner.embedders.0.transformer.",
        "conditioner.embedders.1.model.",
    },
}
TOKENS = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat" in the real CLIP vocabulary


def prefix_of(key: str) -> str:
    parts = key.split(".")
    depth = {"conditioner": 4, "model": 2, "cond_stage_model": 2}.get(parts[0], 1)
    return ".".join(parts[:depth]) + "."


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_single_file_has_exactly_the_real_top_level_prefixes(tmp_path: Path, variant: str) -> None:
    started = time.perf_counter()
    components = write_single_file(tmp_path / "m.safetensors", variant)
    assert time.perf_counter() - started < 5  # "fast": ~0.5 s here; generous for shared CI machines
    keys = load_file(tmp_path / "m.safetensors").keys()
    assert {prefix_of(k) for k in keys} == REAL_PREFIXES[components.family]
    conv_in = load_file(tmp_path / "m.safetensors")["model.diffusion_model.input_blocks.0.0.weight"]
    assert conv_in.shape[1] == VARIANTS[variant].in_channels


def test_same_seed_same_tensors_other_seed_other_tensors_global_rng_untouched() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_components("sdxl", seed=7).single_file_state_dict()
    assert torch.equal(torch.rand(3), expected_next)
    b = build_components("sdxl", seed=7).single_file_state_dict()
    c = build_components("sdxl", seed=8).single_file_state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    key = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
    assert not torch.equal(a[key], c[key])


def test_sd2_and_sd2_v_files_are_indistinguishable_only_the_scheduler_differs() -> None:
    eps, v = build_components("sd2"), build_components("sd2-v")
    a, b = eps.single_file_state_dict(), v.single_file_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (eps.scheduler_config["prediction_type"], v.scheduler_config["prediction_type"]) == (
        "epsilon",
        "v_prediction",
    )


@pytest.mark.parametrize("variant", ["sd1", "sd2", "sdxl-inpaint"])
def test_components_fit_together_like_the_real_families(variant: str) -> None:
    """Text encoders feed the UNet's cross-attention (and SDXL's pooled size embedding); the VAE maps
    64 px to 8x8 latents (factor 8); the tokenizer gives the real CLIP ids with the family's padding."""
    c = build_components(variant)
    ids = c.tokenizer("a photo of a cat", padding="max_length", return_tensors="pt").input_ids
    assert ids.shape == (1, 77) and ids[0, :7].tolist() == TOKENS
    assert ids[0, -1].item() == (0 if c.family == "sd2" else 49407)
    with torch.no_grad():
        hidden = c.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        added = None
        if c.text_encoder_2 is not None:
            assert c.tokenizer_2 is not None
            ids_2 = c.tokenizer_2("a photo of a cat", padding="max_length", return_tensors="pt").input_ids
            assert ids_2[0, -1].item() == 0
            out_2 = c.text_encoder_2(ids_2, output_hidden_states=True)
            hidden = torch.cat([hidden, out_2.hidden_states[-2]], dim=-1)
            time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])
            added = {"text_embeds": out_2.text_embeds, "time_ids": time_ids}
        latents = c.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
        assert latents.shape == (1, 4, 8, 8)
        extra = torch.zeros(1, c.unet.config.in_channels - 4, 8, 8)
        out = c.unet(
            torch.cat([latents, extra], 1), 999, encoder_hidden_states=hidden, added_cond_kwargs=added
        )
    assert out.sample.shape == (1, 4, 8, 8) and torch.isfinite(out.sample).all()


def test_fp16_single_file_stores_half_precision(tmp_path: Path) -> None:
    components = write_single_file(tmp_path / "h.safetensors", "sd1", dtype=torch.float16)
    loaded = load_file(tmp_path / "h.safetensors")
    assert {t.dtype for t in loaded.values()} == {torch.float16}
    weight = components.unet.state_dict()["conv_in.weight"]
    assert torch.equal(loaded["model.diffusion_model.input_blocks.0.0.weight"], weight.half())


def test_ckpt_loads_with_weights_only(tmp_path: Path) -> None:
    write_single_file(tmp_path / "m.ckpt", "sd1", fmt="ckpt")
    reference = build_components("sd1").single_file_state_dict()
    loaded = torch.load(tmp_path / "m.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    with pytest.raises(ValueError, match="fmt"):
        write_single_file(tmp_path / "m.safetensors", "sd1", fmt="ckpt")


def test_unknown_variant_is_named() -> None:
    with pytest.raises(ValueError, match="sd3"):
        build_components("sd3")  # type: ignore[arg-type]


def test_malicious_ckpt_is_refused_by_weights_only_and_really_is_malicious(tmp_path: Path) -> None:
    path, marker = tmp_path / "evil.ckpt", tmp_path / "marker"
    write_malicious_ckpt(path, marker)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not marker.exists()
    # Control: the payload does run when unpickled unsafely (it only creates the empty marker file).
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_truncated_safetensors_keeps_its_header_and_loses_tensor_data(tmp_path: Path) -> None:
    source = tmp_path / "m.safetensors"
    write_single_file(source, "sd1")
    cut = tmp_path / "cut.safetensors"
    write_truncated(cut, source)
    header_len = int.from_bytes(source.read_bytes()[:8], "little")
    data_len = source.stat().st_size - 8 - header_len
    assert cut.stat().st_size == 8 + header_len + data_len // 2
    assert cut.read_bytes()[: 8 + header_len] == source.read_bytes()[: 8 + header_len]
    with pytest.raises(SafetensorError):
        load_file(cut)


def test_corrupt_header_is_rejected_by_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    write_corrupt_header(path)
    with pytest.raises(SafetensorError):
        safe_open(path, framework="pt")


@pytest.mark.parametrize(("variant", "pad_ids"), [("sd1", [49407]), ("sd2-v", [0]), ("sdxl", [49407, 0])])
def test_diffusers_folder_loads_offline_like_a_real_repo(tmp_path: Path, variant: str, pad_ids: list) -> None:
    folder = tmp_path / variant
    components = write_diffusers_folder(folder, variant, seed=4)
    assert sorted(p.name for p in (folder / "tokenizer").iterdir()) == [
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == VARIANTS[variant].pipeline_class
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert type(pipe).__name__ == VARIANTS[variant].pipeline_class
    assert pipe.scheduler.config.prediction_type == VARIANTS[variant].prediction_type
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if components.text_encoder_2 is not None else [])
    assert [t.pad_token_id for t in tokenizers] == pad_ids
    assert {t.model_max_length for t in tokenizers} == {77}
    assert tokenizers[0]("a photo of a cat").input_ids == TOKENS
    names = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if components.text_encoder_2 else [])
    for name in names:
        expected, got = getattr(components, name).state_dict(), getattr(pipe, name).state_dict()
        assert expected.keys() == got.keys(), name
        assert all(torch.equal(expected[k], got[k]) for k in expected), name


def test_stable_diffusion_pipeline_class_loads_the_sd1_folder(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    write_diffusers_folder(tmp_path / "sd1", "sd1")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "sd1", local_files_only=True)
    image = pipe("a cat", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3)
