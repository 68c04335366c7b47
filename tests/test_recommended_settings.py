"""A checkpoint's recommended settings (safetensors metadata `sfumato.recommended`) fill the request
fields a user leaves unset, through the CLI, the API and the evaluator; a value the user gives wins."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from server_helpers import TINY, decode_png, running_server

from sfumato import infotext
from sfumato.cli import main
from sfumato.models.recommended import RECOMMENDED_KEY, recommended_fields


def stamp(path: Path, recommended: str) -> None:
    """Rewrite the checkpoint at `path` with `recommended` (raw JSON text) as its recommendation."""
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={**metadata, RECOMMENDED_KEY: recommended})


def tiny_checkpoint(data_dir: Path) -> Path:
    return data_dir / "models" / "Stable-diffusion" / "tiny-sd1.safetensors"


def test_only_valid_numeric_fields_are_taken(tmp_path, tiny_models):
    path = tmp_path / "model.safetensors"
    shutil.copy(tiny_models["sd1"][0], path)
    assert recommended_fields(path) == {}
    stamp(path, json.dumps({"cfg_scale": 3.5, "steps": 0, "clip_skip": 2, "sampler_name": "Euler", "x": 1}))
    assert recommended_fields(path) == {"cfg_scale": 3.5, "clip_skip": 2}  # steps 0 is out of range
    stamp(path, "{not json")
    assert recommended_fields(path) == {}
    stamp(path, json.dumps([4]))
    assert recommended_fields(path) == {}


def _cli_infotext(data_dir: Path, capsys, *flags: str) -> dict[str, str]:
    argv = ["txt2img", "a cat", "--data-dir", str(data_dir), "--width", "64", "--height", "64", *flags]
    assert main(argv) == 0
    out, _ = capsys.readouterr()
    with Image.open(out.strip()) as image:
        return infotext.parse(image.text["parameters"])


def test_cli_uses_the_recommendation_unless_a_flag_gives_the_field(data_dir, capsys):
    stamp(tiny_checkpoint(data_dir), json.dumps({"cfg_scale": 3.5, "steps": 3}))
    chosen = _cli_infotext(data_dir, capsys, "--seed", "1")
    assert (chosen["CFG scale"], chosen["Steps"]) == ("3.5", "3")
    given = _cli_infotext(data_dir, capsys, "--seed", "1", "--cfg", "7", "--steps", "2")
    assert (given["CFG scale"], given["Steps"]) == ("7", "2")


def test_api_uses_the_recommendation_unless_the_body_gives_the_field(data_dir):
    stamp(tiny_checkpoint(data_dir), json.dumps({"cfg_scale": 3.5}))
    with running_server(data_dir) as url:
        for body, expected in ((TINY, 3.5), ({**TINY, "cfg_scale": 7}, 7.0)):
            response = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)
            assert response.status_code == 200, response.text
            result = response.json()
            assert json.loads(result["info"])["cfg_scale"] == expected
            assert result["parameters"]["cfg_scale"] == expected
            parameters = decode_png(result["images"][0]).info["parameters"]
            assert float(infotext.parse(parameters)["CFG scale"]) == expected
