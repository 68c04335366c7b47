"""LoRA and LyCORIS networks: kohya files applied as diffusers applies them, stacking, exact unpatching,
each LyCORIS kind against its closed form, wrong-family files skipped, and the prompt-tag path end to
end with A1111's "Lora hashes"."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

from sfumato.adapters.network_files import read_network
from sfumato.adapters.patcher import NetworkPatcher
from sfumato.cli import main
from sfumato.models.hashes import addnet_hash
from sfumato.models.loader import load_checkpoint
from sfumato.prompts.extra_networks import extract_extra_networks
from sfumato.testing.tiny_networks import kohya_lora, kohya_names, write_network

CPU = torch.device("cpu")


def load(path):
    return load_checkpoint(path, device=CPU, dtype=torch.float32)


def patcher_for(model, folder) -> NetworkPatcher:
    files = {p.stem: p for p in folder.glob("*.safetensors")}
    return NetworkPatcher(model, files.get, lambda network: "0123456789ab")


def activate(patcher: NetworkPatcher, prompt: str):
    return patcher.activate(extract_extra_networks(prompt)[1])


def weights(model) -> dict[str, torch.Tensor]:
    out = {f"unet.{k}": v.clone() for k, v in model.unet.state_dict().items()}
    for i, encoder in enumerate(model.text_encoders):
        out |= {f"te{i}.{k.removeprefix('text_model.')}": v.clone() for k, v in encoder.state_dict().items()}
    return out


def diffusers_fused(path, lora_path, scale):
    """diffusers' own LoRA path on a second copy of the model: load_lora_weights + fuse_lora."""
    model = load(path)
    scheduler = DDIMScheduler()
    if model.family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=model.vae, text_encoder=model.text_encoders[0], text_encoder_2=model.text_encoders[1],
            tokenizer=model.tokenizers[0], tokenizer_2=model.tokenizers[1], unet=model.unet, scheduler=scheduler,
        )  # fmt: skip
    else:
        pipe = StableDiffusionPipeline(
            vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0], unet=model.unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
    pipe.load_lora_weights(str(lora_path.parent), weight_name=lora_path.name)
    pipe.fuse_lora(lora_scale=scale)
    pipe.unload_lora_weights()  # keeps the fused weights, drops the PEFT wrappers
    return weights(model)


@pytest.mark.parametrize("variant", ["sd1", "sdxl"])
def test_kohya_lora_equals_diffusers_load_and_fuse(tmp_path, tiny_models, variant):
    path, components = tiny_models[variant]
    write_network(tmp_path / "style.safetensors", kohya_lora(components, rank=4, alpha=2.0))
    ours = load(path)
    base = weights(ours)
    report = activate(patcher_for(ours, tmp_path), "a cat <lora:style:0.7>")
    assert report.notes == [] and report.hashes == {"style": "0123456789ab"}
    got, expected = weights(ours), diffusers_fused(path, tmp_path / "style.safetensors", 0.7)
    changed = [k for k in got if not torch.equal(got[k], base[k])]
    assert len(changed) == len(kohya_names(components))  # every LoRA layer, nothing else
    for key in got:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5, msg=key)


def test_unpatching_restores_the_base_weights_bit_for_bit(tmp_path, tiny_models):
    path, components = tiny_models["sd1"]
    write_network(tmp_path / "a.safetensors", kohya_lora(components, seed=1, conv=True))
    model = load(path)
    base = weights(model)
    patcher = patcher_for(model, tmp_path)
    activate(patcher, "<lora:a:1.3>")
    assert any(not torch.equal(v, base[k]) for k, v in weights(model).items())
    activate(patcher, "<lora:a:-0.4>")  # other weights: restore, then apply
    assert activate(patcher, "no tags").changed
    assert all(torch.equal(v, base[k]) for k, v in weights(model).items())


def test_stacking_two_loras_equals_applying_their_sum(tmp_path, tiny_models):
    path, components = tiny_models["sd1"]
    first = kohya_lora(components, rank=2, alpha=None, seed=2)
    second = kohya_lora(components, rank=3, alpha=None, seed=3)
    summed = {}  # one rank-5 LoRA whose ΔW is the sum of both (alpha omitted: scale 1)
    for key in first:
        axis = 0 if key.endswith("lora_down.weight") else 1
        summed[key] = torch.cat([first[key], second[key]], dim=axis)
    for name, tensors in (("one", first), ("two", second), ("sum", summed)):
        write_network(tmp_path / f"{name}.safetensors", tensors)
    stacked, single = load(path), load(path)
    activate(patcher_for(stacked, tmp_path), "<lora:one:0.5> and <lora:two:0.5>")
    activate(patcher_for(single, tmp_path), "<lora:sum:0.5>")
    for key, value in weights(stacked).items():
        torch.testing.assert_close(value, weights(single)[key], atol=1e-6, rtol=1e-6)


def test_te_and_unet_weights_apply_separately(tmp_path, tiny_models):
    path, components = tiny_models["sd1"]
    write_network(tmp_path / "a.safetensors", kohya_lora(components))
    model = load(path)
    base = weights(model)
    activate(patcher_for(model, tmp_path), "<lora:a:0:1>")  # A1111: <lora:name:te:unet>
    changed = {k.split(".")[0] for k, v in weights(model).items() if not torch.equal(v, base[k])}
    assert changed == {"unet"}


def first_layer(components):
    """A UNet attention projection (Linear) and its kohya name."""
    name, module = next((n, m) for n, m in kohya_names(components).items() if n.endswith("attn1_to_q"))
    return name, module


@pytest.mark.parametrize("kind", ["loha", "lokr", "lokr-factored", "ia3", "full", "ia3-input"])
def test_each_lycoris_kind_changes_the_layer_as_its_maths_says(tmp_path, tiny_models, kind):
    path, components = tiny_models["sd1"]
    name, module = first_layer(components)
    out_ch, in_ch = module.weight.shape
    g = torch.Generator().manual_seed(5)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    base = module.weight.detach().clone()
    if kind == "loha":  # ΔW = (w1a w1b) ⊙ (w2a w2b) · alpha / rank
        w1a, w1b, w2a, w2b = rand(out_ch, 2), rand(2, in_ch), rand(out_ch, 2), rand(2, in_ch)
        tensors = {
            "hada_w1_a": w1a,
            "hada_w1_b": w1b,
            "hada_w2_a": w2a,
            "hada_w2_b": w2b,
            "alpha": torch.tensor(1.0),
        }
        expected = (w1a @ w1b) * (w2a @ w2b) * 0.5
    elif kind == "lokr":  # ΔW = w1 ⊗ w2 (no factor decomposed: scale 1)
        w1, w2 = rand(2, 2), rand(out_ch // 2, in_ch // 2)
        tensors = {"lokr_w1": w1, "lokr_w2": w2, "alpha": torch.tensor(3.0)}
        expected = torch.kron(w1, w2)
    elif kind == "lokr-factored":  # ΔW = w1 ⊗ (w2a w2b) · alpha / rank
        w1, w2a, w2b = rand(4, 4), rand(out_ch // 4, 3), rand(3, in_ch // 4)
        tensors = {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b, "alpha": torch.tensor(1.5)}
        expected = torch.kron(w1, w2a @ w2b) * 0.5
    elif kind.startswith("ia3"):  # ΔW = W ⊙ w, w along the outputs (or the inputs)
        on_input = kind == "ia3-input"
        w = rand(in_ch if on_input else out_ch)
        tensors = {"weight": w, "on_input": torch.tensor(on_input)}
        expected = base * (w[None, :] if on_input else w[:, None])
    else:  # full: ΔW = diff
        diff = rand(out_ch, in_ch)
        tensors = {"diff": diff}
        expected = diff
    write_network(tmp_path / "x.safetensors", {f"{name}.{role}": t for role, t in tensors.items()})
    assert read_network(tmp_path / "x.safetensors").layers[name].kind == kind.split("-")[0]
    model = load(path)
    target = dict(model.unet.named_modules())[
        next(n for n, m in components.unet.named_modules() if m is module)
    ]
    report = activate(patcher_for(model, tmp_path), "<lora:x:0.8>")
    assert report.notes == []
    torch.testing.assert_close(target.weight, base + 0.8 * expected, atol=1e-6, rtol=1e-6)


def test_a_lora_for_another_family_is_skipped_with_a_note(tmp_path, tiny_models):
    write_network(tmp_path / "xl.safetensors", kohya_lora(tiny_models["sdxl"][1]))
    model = load(tiny_models["sd1"][0])
    base = weights(model)
    report = activate(patcher_for(model, tmp_path), "<lora:xl:1> <lora:missing:1>")
    assert any("'xl' skipped" in note and "another model family" in note for note in report.notes)
    assert any("'missing' not found" in note for note in report.notes)
    assert report.hashes == {}
    assert all(torch.equal(v, base[k]) for k, v in weights(model).items())


def test_lora_tags_in_txt2img_change_the_image_record_hashes_and_come_off(data_dir, tiny_models, cli_txt2img):
    lora_dir = data_dir / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    write_network(
        lora_dir / "style.safetensors", kohya_lora(tiny_models["sd1"][1]), {"ss_output_name": "style"}
    )

    def generate(prompt):
        image, parameters, _ = cli_txt2img(prompt)
        return image, parameters

    plain, plain_text = generate("a cat")
    styled, styled_text = generate("a cat <lora:style:0.9>")
    assert styled != plain and "Lora hashes" not in plain_text
    assert 'Lora hashes: "style: ' in styled_text
    assert generate("a cat")[0] == plain  # a separate process each time here; the server test covers reuse


def test_loras_list_shows_family_rank_alpha_hash_and_training_metadata(tmp_path, tiny_models, capsys):
    folder = tmp_path / "models" / "Lora"
    folder.mkdir(parents=True)
    metadata = {
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_sd_model_name": "sd_xl_base_1.0.safetensors",
        "ss_tag_frequency": {"10_ohwx": {"ohwx": 40, "red hat": 12}, "2_reg": {"red hat": 30}},
    }
    write_network(folder / "hat.safetensors", kohya_lora(tiny_models["sdxl"][1], rank=8, alpha=4.0), metadata)
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert main(["loras", "list", "--json", "--data-dir", str(tmp_path)]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    hat = rows["hat"]
    assert (hat["family"], hat["kinds"], hat["rank"], hat["alpha"]) == ("sdxl", ["lora"], 8, 4.0)
    assert hat["hash"] == addnet_hash(folder / "hat.safetensors")
    assert hat["trigger_words"] == ["red hat", "ohwx"] and hat["base_model"] == "sd_xl_base_1.0.safetensors"
    assert "not a valid safetensors" in rows["broken"]["note"]
    assert main(["loras", "list", "--data-dir", str(tmp_path)]) == 0
    assert "sdxl" in capsys.readouterr().out


def test_diffusers_peft_and_processor_layouts_apply_like_kohya(tmp_path, tiny_models):
    path, components = tiny_models["sd1"]
    kohya = kohya_lora(components, rank=3, alpha=None, seed=4)
    unet_names = {f"lora_unet_{n.replace('.', '_')}": n for n, _ in components.unet.named_modules()}
    te_names = {
        f"lora_te_text_model_{n.replace('.', '_')}": n for n, _ in components.text_encoder.named_modules()
    }
    peft, processor = {}, {}
    for key, tensor in kohya.items():
        layer, role = key.split(".", 1)
        a_or_b = "lora_A" if role.startswith("lora_down") else "lora_B"
        if layer in unet_names:
            name = unet_names[layer]
            peft[f"unet.{name}.{a_or_b}.weight"] = tensor
            if ".attn1.to_" in name or ".attn2.to_" in name:  # diffusers' old attention-processor files
                attention, projection = (
                    name.rsplit(".", 1) if not name.endswith("to_out.0") else (name[:-9], "to_out")
                )
                updown = "down" if a_or_b == "lora_A" else "up"
                processor[f"{attention}.processor.{projection}_lora.{updown}.weight"] = tensor
        else:
            peft[f"text_encoder.text_model.{te_names[layer]}.{a_or_b}.weight"] = tensor
    write_network(tmp_path / "k.safetensors", kohya)
    write_network(tmp_path / "p.safetensors", peft)
    write_network(tmp_path / "o.safetensors", processor)
    results = {}
    for name in ("k", "p", "o"):
        model = load(path)
        report = activate(patcher_for(model, tmp_path), f"<lora:{name}:1>")
        assert report.notes == [], report.notes
        results[name] = weights(model)
    for key, value in results["k"].items():
        assert torch.equal(value, results["p"][key]), key
        if key.startswith("unet.") and (".attn1.to_" in key or ".attn2.to_" in key):
            assert torch.equal(value, results["o"][key]), key


def test_bad_lora_files_are_skipped_with_one_note_and_the_generation_goes_on(tmp_path, tiny_models):
    from sfumato.testing.tiny_models import write_malicious_ckpt, write_truncated

    path, components = tiny_models["sd1"]
    write_network(tmp_path / "good.safetensors", kohya_lora(components))
    write_truncated(tmp_path / "cut.safetensors", tmp_path / "good.safetensors")
    write_malicious_ckpt(tmp_path / "evil.pt", tmp_path / "pwned")
    write_network(tmp_path / "empty.safetensors", {"some.weight": torch.zeros(2)})
    model = load(path)
    files = {p.stem: p for p in tmp_path.iterdir()}
    patcher = NetworkPatcher(model, files.get, lambda network: "h")
    report = patcher.activate(
        extract_extra_networks("<lora:cut:1><lora:evil:1><lora:empty:1><lora:good:1>")[1]
    )
    notes = " | ".join(report.notes)
    assert "'cut' skipped" in notes and "truncated" in notes
    assert "'evil' skipped" in notes and "refused" in notes
    assert "'empty' skipped" in notes and "not a LoRA" in notes
    assert report.hashes == {"good": "h"} and not (tmp_path / "pwned").exists()
