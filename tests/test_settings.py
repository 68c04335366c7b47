import json

import pytest

from sfumato.errors import UserError
from sfumato.settings import load_settings


def test_precedence_defaults_file_env_cli(tmp_path):
    (tmp_path / "sfumato.json").write_text(json.dumps({"device": "cpu", "threads": 3, "dtype": "fp32"}))
    env = {"SFUMATO_THREADS": "2", "SFUMATO_DTYPE": "bf16"}
    settings = load_settings({"data_dir": tmp_path, "dtype": "fp16"}, env=env)
    assert settings.device == "cpu"  # from the file
    assert settings.threads == 2  # env beats file
    assert settings.dtype == "fp16"  # CLI beats env
    assert settings.outputs == tmp_path / "outputs"


def test_model_dirs_follow_a1111_then_comfyui_then_extra_installs(tmp_path):
    extra = tmp_path / "ComfyUI"
    settings = load_settings({"data_dir": tmp_path}, env={"SFUMATO_EXTRA_MODEL_DIRS": str(extra)})
    dirs = settings.model_dirs("checkpoints")
    assert dirs == [
        tmp_path / "models/Stable-diffusion",
        tmp_path / "models/checkpoints",
        extra / "models/Stable-diffusion",
        extra / "models/checkpoints",
    ]
    assert tmp_path / "models/loras" in settings.model_dirs("lora")


def test_bad_settings_file_is_a_user_error(tmp_path):
    (tmp_path / "sfumato.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_settings({"data_dir": tmp_path}, env={})
    (tmp_path / "sfumato.json").write_text(json.dumps({"threads": "many"}))
    with pytest.raises(UserError, match="threads"):
        load_settings({"data_dir": tmp_path}, env={})
    (tmp_path / "sfumato.json").write_text(json.dumps({"no_such_setting": 1}))
    with pytest.raises(UserError, match="no_such_setting"):
        load_settings({"data_dir": tmp_path}, env={})
