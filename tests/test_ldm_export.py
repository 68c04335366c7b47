"""The LDM export is the exact inverse of diffusers' single-file loading, for every family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from sfumato.models.ldm_export import (
    clip_l_to_ldm,
    open_clip_to_ldm,
    pipeline_to_single_file,
    save_single_file,
    unet_to_ldm,
    vae_to_ldm,
)
from sfumato.testing.tiny_models import (
    VARIANTS,
    TinyComponents,
    build_components,
    open_clip_config,
    write_config_folder,
    write_single_file,
)


def assert_same_tensors(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert torch.equal(actual[key], tensor), key


def without_text_model_level(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> dict:
    """diffusers' CLIP converters emit `text_model.*`; transformers >= 5.6 `CLIPTextModel` has no such level."""
    if hasattr(model, "text_model"):
        return state_dict
    return {k.removeprefix("text_model."): v for k, v in state_dict.items()}


def convert_back(components: TinyComponents, checkpoint: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Each component's state dict as diffusers' own single-file converters read it from `checkpoint`."""
    out = {
        "unet": convert_ldm_unet_checkpoint(checkpoint, dict(components.unet.config)),
        "vae": convert_ldm_vae_checkpoint(checkpoint, dict(components.vae.config)),
    }
    te = components.text_encoder
    if components.family == "sd2":
        text = convert_open_clip_checkpoint(te, checkpoint, prefix="cond_stage_model.model.")
    else:
        text = convert_ldm_clip_checkpoint(checkpoint)
    out["text_encoder"] = without_text_model_level(te, text)
    if components.text_encoder_2 is not None:
        te2 = components.text_encoder_2
        text_2 = convert_open_clip_checkpoint(te2, checkpoint, prefix="conditioner.embedders.1.model.")
        out["text_encoder_2"] = without_text_model_level(te2, text_2)
    return out


def expected_state_dicts(components: TinyComponents) -> dict[str, dict]:
    names = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if components.text_encoder_2 else [])
    return {name: getattr(components, name).state_dict() for name in names}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_saved_file_converts_back_bit_identical(tmp_path: Path, variant: str) -> None:
    components = write_single_file(tmp_path / "model.safetensors", variant)
    checkpoint = load_file(tmp_path / "model.safetensors")
    converted = convert_back(components, checkpoint)
    for name, expected in expected_state_dicts(components).items():
        assert_same_tensors(expected, converted[name])


@pytest.mark.parametrize("variant", ["sd1-inpaint", "sd2-v", "sdxl"])
def test_from_single_file_with_local_configs_loads_every_tensor(tmp_path: Path, variant: str) -> None:
    import diffusers

    components = write_single_file(tmp_path / "model.safetensors", variant)
    write_config_folder(tmp_path / "config", variant)
    pipeline_cls = getattr(diffusers, components.spec.pipeline_class)
    pipe = pipeline_cls.from_single_file(
        str(tmp_path / "model.safetensors"), config=str(tmp_path / "config"), local_files_only=True
    )
    for name, expected in expected_state_dicts(components).items():
        assert_same_tensors(expected, getattr(pipe, name).state_dict())


# Names taken from real SD1.5 / SD2.1 / SDXL-base checkpoints; the tiny models share the real block
# numbering, so each of these must exist in the export.
REAL_KEYS = {
    "common": [
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.time_embed.2.bias",
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
        "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
        "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight",
        "model.diffusion_model.input_blocks.1.0.out_layers.0.bias",
        "model.diffusion_model.input_blocks.1.0.out_layers.3.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.ff.net.0.proj.weight",
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.norm3.weight",
        "model.diffusion_model.input_blocks.4.1.proj_in.weight",
        "model.diffusion_model.middle_block.0.in_layers.0.weight",
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_out.0.weight",
        "model.diffusion_model.middle_block.2.out_layers.3.bias",
        "model.diffusion_model.output_blocks.0.0.skip_connection.weight",
        "model.diffusion_model.out.0.weight",
        "model.diffusion_model.out.2.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "first_stage_model.encoder.conv_in.weight",
        "first_stage_model.encoder.down.0.block.0.norm1.weight",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.encoder.mid.block_2.conv2.weight",
        "first_stage_model.encoder.norm_out.weight",
        "first_stage_model.decoder.mid.attn_1.q.weight",
        "first_stage_model.decoder.mid.attn_1.proj_out.bias",
        "first_stage_model.decoder.up.0.block.2.conv2.weight",
        "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.quant_conv.weight",
        "first_stage_model.post_quant_conv.bias",
    ],
    "sd1": [
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.11.0.out_layers.3.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.8.2.conv.weight",
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
        "model.diffusion_model.output_blocks.11.1.proj_out.weight",
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.bias",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ],
    "sd2": [
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.11.1.proj_out.weight",
        "cond_stage_model.model.token_embedding.weight",
        "cond_stage_model.model.positional_embedding",
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_bias",
        "cond_stage_model.model.transformer.resblocks.0.attn.out_proj.weight",
        "cond_stage_model.model.transformer.resblocks.1.ln_1.weight",
        "cond_stage_model.model.transformer.resblocks.1.ln_2.bias",
        "cond_stage_model.model.transformer.resblocks.1.mlp.c_fc.weight",
        "cond_stage_model.model.transformer.resblocks.1.mlp.c_proj.bias",
        "cond_stage_model.model.ln_final.weight",
    ],
    "sdxl": [
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.label_emb.0.2.bias",
        "model.diffusion_model.input_blocks.6.0.op.weight",
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.1.attn1.to_k.weight",
        "model.diffusion_model.middle_block.1.transformer_blocks.1.ff.net.2.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        "model.diffusion_model.output_blocks.8.0.out_layers.3.weight",
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        "conditioner.embedders.0.transformer.text_model.encoder.layers.1.self_attn.out_proj.weight",
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.bias",
        "conditioner.embedders.1.model.token_embedding.weight",
        "conditioner.embedders.1.model.positional_embedding",
        "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight",
        "conditioner.embedders.1.model.ln_final.bias",
        "conditioner.embedders.1.model.text_projection",
    ],
}


@pytest.mark.parametrize("variant", ["sd1", "sd2", "sdxl"])
def test_export_uses_names_real_checkpoints_have(variant: str) -> None:
    checkpoint = build_components(variant).single_file_state_dict()
    missing = [key for key in REAL_KEYS["common"] + REAL_KEYS[variant] if key not in checkpoint]
    assert missing == []
    assert not [key for key in checkpoint if "down_blocks" in key or "resnets" in key or "to_out.0.0" in key]


def test_vae_mid_attention_is_conv_1x1_and_sdxl_projection_transposed() -> None:
    components = build_components("sdxl")
    checkpoint = components.single_file_state_dict()
    q = checkpoint["first_stage_model.decoder.mid.attn_1.q.weight"]
    assert q.shape == (96, 96, 1, 1)
    assert torch.equal(
        q[:, :, 0, 0], components.vae.state_dict()["decoder.mid_block.attentions.0.to_q.weight"]
    )
    projection = components.text_encoder_2.state_dict()["text_projection.weight"]  # [embed 48, width 64]
    assert checkpoint["conditioner.embedders.1.model.text_projection"].shape == (64, 48)
    assert torch.equal(checkpoint["conditioner.embedders.1.model.text_projection"], projection.T)


def test_open_clip_fuses_q_k_v_in_that_order() -> None:
    encoder = build_components("sd2").text_encoder
    state = encoder.state_dict()
    exported = open_clip_to_ldm(state, with_projection=False)
    layer = "encoder.layers.1.self_attn"
    fused = exported["model.transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(fused, torch.cat([state[f"{layer}.{x}_proj.weight"] for x in "qkv"]))
    fused_bias = exported["model.transformer.resblocks.1.attn.in_proj_bias"]
    assert torch.equal(fused_bias, torch.cat([state[f"{layer}.{x}_proj.bias"] for x in "qkv"]))
    assert "model.text_projection" not in exported


def test_text_encoders_accept_keys_with_and_without_text_model_level() -> None:
    state = build_components("sd1").text_encoder.state_dict()
    assert not any(k.startswith("text_model.") for k in state)  # transformers >= 5.6 layout
    legacy = {f"text_model.{k}": v for k, v in state.items()}
    assert_same_tensors(clip_l_to_ldm(state), clip_l_to_ldm(legacy))
    assert_same_tensors(
        open_clip_to_ldm(state, with_projection=False), open_clip_to_ldm(legacy, with_projection=False)
    )
    assert "transformer.text_model.encoder.layers.0.mlp.fc1.weight" in clip_l_to_ldm(state)


def test_with_projection_requires_one_and_without_drops_it() -> None:
    torch.manual_seed(0)
    plain = CLIPTextModel(open_clip_config()).state_dict()
    with pytest.raises(ValueError, match="text_projection"):
        open_clip_to_ldm(plain, with_projection=True)
    projected = CLIPTextModelWithProjection(open_clip_config()).state_dict()
    assert "model.text_projection" not in open_clip_to_ldm(projected, with_projection=False)
    assert "model.text_projection" in open_clip_to_ldm(projected, with_projection=True)


def test_keys_without_an_ldm_name_are_errors_not_passed_through() -> None:
    components = build_components("sd1")
    unet_state = {**components.unet.state_dict(), "down_blocks.0.motion_modules.0.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="motion_modules"):
        unet_to_ldm(unet_state, components.unet.config)
    with pytest.raises(ValueError, match="VAE"):
        vae_to_ldm({**components.vae.state_dict(), "encoder.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected key"):
        clip_l_to_ldm({**components.text_encoder.state_dict(), "logit_scale": torch.zeros(())})
    broken = {
        k: v for k, v in components.text_encoder.state_dict().items() if "layers.0.self_attn.v_proj" not in k
    }
    with pytest.raises(ValueError, match="layer 0"):
        open_clip_to_ldm(broken, with_projection=False)


def test_pipeline_to_single_file_accepts_state_dicts_with_a_config() -> None:
    c = build_components("sdxl")
    from_modules = c.single_file_state_dict()
    states = {
        name: getattr(c, name).state_dict() for name in ("unet", "vae", "text_encoder", "text_encoder_2")
    }
    with pytest.raises(ValueError, match="unet_config"):
        pipeline_to_single_file(family="sdxl", **states)
    from_states = pipeline_to_single_file(family="sdxl", unet_config=c.unet.config, **states)
    assert_same_tensors(from_modules, from_states)


def test_pipeline_to_single_file_checks_the_encoders_against_the_family() -> None:
    c = build_components("sdxl")
    with pytest.raises(ValueError, match="required"):
        pipeline_to_single_file(family="sdxl", unet=c.unet, vae=c.vae, text_encoder=c.text_encoder)
    with pytest.raises(ValueError, match="not used"):
        pipeline_to_single_file(
            family="sd1", unet=c.unet, vae=c.vae, text_encoder=c.text_encoder, text_encoder_2=c.text_encoder_2
        )
    with pytest.raises(ValueError, match="unknown family"):
        pipeline_to_single_file(family="sd3", unet=c.unet, vae=c.vae, text_encoder=c.text_encoder)  # type: ignore[arg-type]


def test_fp16_save_rounds_floats_and_keeps_integer_buffers(tmp_path: Path) -> None:
    checkpoint = build_components("sd1").single_file_state_dict()
    position_ids = torch.arange(77, dtype=torch.int64)[None]
    checkpoint["cond_stage_model.transformer.text_model.embeddings.position_ids"] = position_ids
    save_single_file(checkpoint, tmp_path / "half.safetensors", dtype=torch.float16)
    loaded = load_file(tmp_path / "half.safetensors")
    assert loaded.keys() == checkpoint.keys()
    for key, original in checkpoint.items():
        if original.is_floating_point():
            assert loaded[key].dtype == torch.float16, key
            assert torch.equal(loaded[key], original.half()), key
            torch.testing.assert_close(loaded[key].float(), original, rtol=1e-3, atol=1e-4)
        else:
            assert torch.equal(loaded[key], original), key


def test_ckpt_is_a_plain_state_dict_loadable_with_weights_only(tmp_path: Path) -> None:
    checkpoint = build_components("sd2").single_file_state_dict()
    save_single_file(checkpoint, tmp_path / "model.ckpt")
    loaded = torch.load(tmp_path / "model.ckpt", weights_only=True, map_location="cpu")
    assert list(loaded) == ["state_dict"]
    assert_same_tensors(checkpoint, loaded["state_dict"])


def test_safetensors_metadata_is_written(tmp_path: Path) -> None:
    checkpoint = build_components("sd1").single_file_state_dict()
    save_single_file(checkpoint, tmp_path / "m.safetensors", metadata={"sfumato.merge": "a*0.5+b*0.5"})
    with safe_open(tmp_path / "m.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt", "sfumato.merge": "a*0.5+b*0.5"}


def test_save_refuses_what_it_cannot_write_and_leaves_no_partial_file(tmp_path: Path) -> None:
    tensor = torch.zeros(2)
    with pytest.raises(ValueError, match="metadata"):
        save_single_file({"a": tensor}, tmp_path / "m.ckpt", metadata={"k": "v"})
    with pytest.raises(ValueError, match=r"\.safetensors or \.ckpt"):
        save_single_file({"a": tensor}, tmp_path / "m.bin")
    with pytest.raises(RuntimeError):  # safetensors refuses two names for one storage
        save_single_file({"a": tensor, "b": tensor}, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []
