"""Loading real file formats offline: family detection, exact weights, and every way a file can be bad."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from sfumato.errors import ModelFileError, UserError
from sfumato.models.catalog import describe_checkpoints
from sfumato.models.files import open_state_dict
from sfumato.models.loader import load_checkpoint, load_single_file
from sfumato.models.registry import ModelManager, list_checkpoints, side_vae_for
from sfumato.settings import load_settings
from sfumato.testing.tiny_models import (
    write_corrupt_header,
    write_diffusers_folder,
    write_malicious_ckpt,
    write_single_file,
    write_truncated,
)

CPU = torch.device("cpu")
TOKENS = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 70])


def _same_weights(reference: torch.nn.Module, loaded: torch.nn.Module, atol: float = 0.0) -> None:
    ref, got = reference.state_dict(), loaded.state_dict()
    assert set(ref) == set(got)
    for key, value in ref.items():
        torch.testing.assert_close(got[key].float(), value.float(), atol=atol, rtol=0, msg=key)


@pytest.mark.parametrize(
    ("variant", "family", "kind"),
    [
        ("sd1", "sd1", "base"),
        ("sd2-v", "sd2", "base"),
        ("sdxl", "sdxl", "base"),
        ("sd1-inpaint", "sd1", "inpaint"),
    ],
)
def test_single_file_loads_exact_weights(tiny_models, variant, family, kind):
    path, built = tiny_models[variant]
    model = load_single_file(path, device=CPU, dtype=torch.float32, prediction="epsilon")
    assert (model.family, model.variant) == (family, kind)
    _same_weights(built.unet, model.unet)
    _same_weights(built.vae, model.vae)
    # Text encoders: same outputs from the layers the family uses (SD2 is built without its unused last layer).
    with torch.no_grad():
        ref = built.text_encoder(TOKENS, output_hidden_states=True).hidden_states
        got = model.text_encoders[0](TOKENS, output_hidden_states=True).hidden_states
        torch.testing.assert_close(got[-1] if family == "sd2" else got[-2], ref[-2])
        if family == "sdxl":
            ref2 = built.text_encoder_2(TOKENS, output_hidden_states=True)
            got2 = model.text_encoders[1](TOKENS, output_hidden_states=True)
            torch.testing.assert_close(got2.hidden_states[-2], ref2.hidden_states[-2])
            torch.testing.assert_close(got2.text_embeds, ref2.text_embeds)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files_load_into_fp32(tmp_path, dtype):
    path = tmp_path / "half.safetensors"
    built = write_single_file(path, "sd1", seed=1, dtype=dtype)
    assert open_state_dict(path)["model.diffusion_model.input_blocks.0.0.weight"].dtype == dtype
    model = load_single_file(path, device=CPU, dtype=torch.float32)
    assert next(model.unet.parameters()).dtype == torch.float32
    _same_weights(built.unet.to(dtype), model.unet)


def test_weights_only_ckpt_loads(tmp_path):
    path = tmp_path / "old.ckpt"
    built = write_single_file(path, "sd1", seed=2, fmt="ckpt")
    model = load_single_file(path, device=CPU, dtype=torch.float32)
    _same_weights(built.unet, model.unet)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    path, marker = tmp_path / "evil.ckpt", tmp_path / "pwned"
    write_malicious_ckpt(path, marker)
    with pytest.raises(ModelFileError, match="refused") as info:
        load_checkpoint(path, device=CPU, dtype=torch.float32)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_truncated_and_corrupt_files_give_one_clear_error(tmp_path, tiny_models):
    truncated = tmp_path / "cut.safetensors"
    write_truncated(truncated, tiny_models["sd1"][0])
    with pytest.raises(ModelFileError, match="truncated") as info:
        load_checkpoint(truncated, device=CPU, dtype=torch.float32)
    assert str(truncated) in str(info.value)
    corrupt = tmp_path / "corrupt.safetensors"
    write_corrupt_header(corrupt)
    with pytest.raises(ModelFileError, match=str(corrupt)):
        load_checkpoint(corrupt, device=CPU, dtype=torch.float32)
    with pytest.raises(ModelFileError, match="no such file"):
        load_checkpoint(tmp_path / "missing.safetensors", device=CPU, dtype=torch.float32)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="unsupported file type"):
        load_checkpoint(text, device=CPU, dtype=torch.float32)


def test_other_kinds_of_file_are_named(tmp_path):
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, str(lora))
    with pytest.raises(ModelFileError, match="LoRA"):
        load_checkpoint(lora, device=CPU, dtype=torch.float32)
    unknown = tmp_path / "what.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(unknown))
    with pytest.raises(ModelFileError, match="unknown architecture"):
        load_checkpoint(unknown, device=CPU, dtype=torch.float32)


def test_diffusers_folder_loads(tmp_path):
    folder = tmp_path / "tiny-xl"
    built = write_diffusers_folder(folder, "sdxl", seed=3)
    model = load_checkpoint(folder, device=CPU, dtype=torch.float32)
    assert (model.family, model.variant, model.prediction) == ("sdxl", "base", "epsilon")
    assert len(model.text_encoders) == 2
    _same_weights(built.unet, model.unet)


def test_sd2_prediction_is_guessed_or_overridden(tiny_models):
    path, _ = tiny_models["sd2-v"]
    assert load_single_file(path, device=CPU, dtype=torch.float32, prediction="v_prediction").prediction == (
        "v_prediction"
    )
    guessed = load_single_file(path, device=CPU, dtype=torch.float32).prediction
    assert guessed in ("epsilon", "v_prediction")


def test_names_titles_and_hashes_resolve(data_dir):
    settings = load_settings({"data_dir": data_dir}, env={})
    manager = ModelManager(settings, device=CPU, dtype=torch.float32)
    path = data_dir / "models/Stable-diffusion/tiny-sd1.safetensors"
    short = manager.model_hash(path)
    assert len(short) == 10
    for query in ("tiny-sd1", "tiny-sd1.safetensors", f"tiny-sd1.safetensors [{short}]", short, str(path)):
        assert manager.checkpoint_path(query) == path
    with pytest.raises(UserError, match="did you mean 'tiny-sd1'"):
        manager.checkpoint_path("tiny-sd2")


def test_side_vae_and_named_vae_replace_the_baked_one(data_dir, tiny_models):
    settings = load_settings({"data_dir": data_dir}, env={})
    checkpoint = data_dir / "models/Stable-diffusion/tiny-sd1.safetensors"
    other = write_single_file(data_dir / "other.safetensors", "sd1", seed=9)
    vae_sd = {
        k: v
        for k, v in open_state_dict(data_dir / "other.safetensors").items()
        if k.startswith("first_stage_model.")
    }
    bare = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_sd.items()}
    (data_dir / "models/VAE").mkdir(parents=True)
    save_file(bare, str(data_dir / "models/VAE/my-vae.safetensors"))
    manager = ModelManager(settings, device=CPU, dtype=torch.float32)
    model = manager.load("tiny-sd1", vae="my-vae")
    _same_weights(other.vae, model.vae)
    assert model.vae_path == data_dir / "models/VAE/my-vae.safetensors"
    shutil.copy(data_dir / "models/VAE/my-vae.safetensors", checkpoint.with_name("tiny-sd1.vae.safetensors"))
    assert side_vae_for(checkpoint) == checkpoint.with_name("tiny-sd1.vae.safetensors")
    automatic = manager.load("tiny-sd1")
    _same_weights(other.vae, automatic.vae)
    baked = manager.load("tiny-sd1", vae="None")
    _same_weights(tiny_models["sd1"][1].vae, baked.vae)
    assert [e.name for e in list_checkpoints(settings)] == ["tiny-sd1"]  # the .vae file is not a checkpoint


def test_models_list_describes_each_checkpoint(data_dir, tiny_models):
    shutil.copy(tiny_models["sdxl"][0], data_dir / "models/Stable-diffusion/xl.safetensors")
    (data_dir / "models/Stable-diffusion/broken.safetensors").write_bytes(b"\x00" * 20)
    rows = {r["name"]: r for r in describe_checkpoints(load_settings({"data_dir": data_dir}, env={}))}
    assert rows["tiny-sd1"]["family"] == "sd1" and rows["tiny-sd1"]["dtype"] == "float32"
    assert rows["xl"]["family"] == "sdxl" and len(rows["xl"]["hash"]) == 10
    assert rows["broken"]["family"] == "unreadable"


def test_diffusers_layout_vae_file_loads(data_dir):
    other = write_single_file(data_dir / "other.safetensors", "sd1", seed=4)
    (data_dir / "models/VAE").mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in other.vae.state_dict().items()},
        str(data_dir / "models/VAE/diffusers-vae.safetensors"),
    )
    manager = ModelManager(load_settings({"data_dir": data_dir}, env={}), device=CPU, dtype=torch.float32)
    _same_weights(other.vae, manager.load("tiny-sd1", vae="diffusers-vae").vae)


def test_modelspec_metadata_declares_native_size_and_prediction(tmp_path):
    path = tmp_path / "declared.safetensors"
    write_single_file(
        path, "sd2-v", seed=0, metadata={"modelspec.resolution": "96x128", "modelspec.prediction_type": "v"}
    )
    model = load_single_file(path, device=CPU, dtype=torch.float32)
    assert model.native_size == (96, 128) and model.prediction == "v_prediction"


def test_a_declared_vae_scaling_factor_is_used(tmp_path):
    path = tmp_path / "scaled.safetensors"
    write_single_file(path, "sd1", seed=0, metadata={"sfumato.vae_scaling_factor": "0.5"})
    assert load_single_file(path, device=CPU, dtype=torch.float32).vae.config.scaling_factor == 0.5


def test_a_declared_vae_norm_group_count_is_used_and_a_wrong_one_refused(tmp_path):
    """Shapes cannot tell GroupNorm's group count; models trained here declare it."""
    path = tmp_path / "groups.safetensors"
    write_single_file(path, "sd1", seed=0, metadata={"sfumato.vae_norm_num_groups": "4"})
    assert load_single_file(path, device=CPU, dtype=torch.float32).vae.config.norm_num_groups == 4
    write_single_file(path, "sd1", seed=0, metadata={"sfumato.vae_norm_num_groups": "7"})
    with pytest.raises(ModelFileError, match="vae_norm_num_groups '7'"):
        load_single_file(path, device=CPU, dtype=torch.float32)


def test_the_embedded_model_is_the_default_when_no_checkpoint_is_found(tmp_path, monkeypatch, tiny_models):
    from sfumato.models import registry

    monkeypatch.setattr(registry, "embedded_default_model", lambda: tiny_models["sd1"][0])
    manager = ModelManager(load_settings({"data_dir": tmp_path}, env={}), device=CPU, dtype=torch.float32)
    assert manager.default_checkpoint() == tiny_models["sd1"][0]
    (tmp_path / "models/Stable-diffusion").mkdir(parents=True)
    shutil.copy(tiny_models["sd1"][0], tmp_path / "models/Stable-diffusion/mine.safetensors")
    assert manager.default_checkpoint().name == "mine.safetensors"  # a user's checkpoint comes first


def test_prefetch_is_only_advice_and_never_fails(tmp_path):
    """The loader asks the OS to read a checkpoint ahead; a path that cannot be opened is left to the
    real open to report, and the file's contents are untouched."""
    from sfumato.models.files import prefetch

    prefetch(tmp_path / "missing.safetensors")
    prefetch(tmp_path)  # a folder
    path = tmp_path / "weights.bin"
    path.write_bytes(b"0123")
    prefetch(path)
    assert path.read_bytes() == b"0123"
