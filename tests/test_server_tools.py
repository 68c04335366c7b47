"""Model tools over the API (merge, merge-lora, extract-lora) on a real uvicorn with tiny SD1 models:
exact maths in the written files, new models listed and usable at once, LoRAs baked in equal to their
tags, extraction's round trip, and every bad request a 422 naming its field with nothing written."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load_file, save_file
from server_helpers import TINY, decode_png, running_server

from sfumato.testing.tiny_models import write_single_file
from sfumato.testing.tiny_networks import kohya_lora, write_network

KEY = "model.diffusion_model.out.2.weight"  # one UNet tensor to check the maths on


@pytest.fixture
def tools_dir(data_dir: Path, tiny_models) -> Path:
    """tiny-sd1 (seed 0) plus a, b, c (SD1, seeds 1-3), an SDXL checkpoint, a VAE and a LoRA."""
    checkpoints = data_dir / "models" / "Stable-diffusion"
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        write_single_file(checkpoints / f"{name}.safetensors", "sd1", seed=seed)
    (checkpoints / "xl.safetensors").write_bytes(tiny_models["sdxl"][0].read_bytes())
    (data_dir / "models" / "VAE").mkdir(parents=True)
    vae = tiny_models["sd1"][1].vae.state_dict()  # diffusers layout: converted when baked in
    save_file({k: v.contiguous() for k, v in vae.items()}, data_dir / "models" / "VAE" / "soft.safetensors")
    (data_dir / "models" / "Lora").mkdir(parents=True)
    write_network(
        data_dir / "models" / "Lora" / "style.safetensors", kohya_lora(tiny_models["sd1"][1], seed=7)
    )
    return data_dir


@pytest.fixture
def url(tools_dir):
    with running_server(tools_dir) as base:
        yield base


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=300)


def get(url: str, path: str):
    response = httpx.get(f"{url}{path}", timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def generate(url: str, prompt: str, model: str) -> bytes:
    response = post(url, "/sdapi/v1/txt2img", {**TINY, "prompt": prompt, "seed": 5, "model": model})
    assert response.status_code == 200, response.text
    return decode_png(response.json()["images"][0]).tobytes()


def folder_files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and ".sfumato" not in p.parts
    }


def test_weighted_merge_is_exact_listed_and_generates(url, tools_dir):
    titles = {m["model_name"]: m["title"] for m in get(url, "/sdapi/v1/sd-models")}
    body = {"models": ["a", titles["b"]], "mode": "weighted", "alpha": 0.3, "dtype": "fp32", "name": "ab"}
    response = post(url, "/sfumato/v1/merge", body)  # B by its title, as the UI sends it
    assert response.status_code == 200, response.text
    made = response.json()
    out = tools_dir / "models" / "Stable-diffusion" / "ab.safetensors"
    assert made["path"] == str(out.resolve())
    assert re.fullmatch(r"ab\.safetensors \[[0-9a-f]{10}\]", made["title"]), made["title"]

    folder = tools_dir / "models" / "Stable-diffusion"
    a, b, merged = (load_file(folder / f"{n}.safetensors") for n in ("a", "b", "ab"))
    assert merged[KEY].dtype == a[KEY].dtype
    assert merged[KEY].equal(a[KEY].float() * (1 - 0.3) + b[KEY].float() * 0.3)
    listed = get(url, "/sdapi/v1/sd-models")
    assert made["title"] in [m["title"] for m in listed]
    assert next(m for m in listed if m["model_name"] == "ab")["family"] == "sd1"

    response = post(
        url,
        "/sdapi/v1/txt2img",
        {**TINY, "prompt": "a red circle", "override_settings": {"sd_model_checkpoint": made["title"]}},
    )
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["sd_model_name"] == "ab"
    assert generate(url, "a red circle", "ab") != generate(url, "a red circle", "a")


def test_a_new_first_checkpoint_does_not_change_the_one_in_use(url):
    in_use = get(url, "/sdapi/v1/options")["sd_model_checkpoint"]
    assert in_use.startswith("a.safetensors")  # none chosen: the first in the folder
    response = post(url, "/sfumato/v1/merge", {"models": ["b", "c"], "name": "0-first"})
    assert response.status_code == 200, response.text
    assert get(url, "/sdapi/v1/sd-models")[0]["model_name"] == "0-first"
    assert get(url, "/sdapi/v1/options")["sd_model_checkpoint"] == in_use
    info = json.loads(post(url, "/sdapi/v1/txt2img", {**TINY, "prompt": "x"}).json()["info"])
    assert info["sd_model_name"] == "a"


def test_add_difference_with_a_baked_vae(url, tools_dir, tiny_models):
    body = {"models": ["a", "b", "c"], "mode": "add-diff", "alpha": 0.5, "dtype": "fp32", "name": "abc",
            "vae": "soft"}  # fmt: skip
    response = post(url, "/sfumato/v1/merge", body)
    assert response.status_code == 200, response.text
    folder = tools_dir / "models" / "Stable-diffusion"
    a, b, c, merged = (load_file(folder / f"{n}.safetensors") for n in ("a", "b", "c", "abc"))
    assert merged[KEY].equal(a[KEY] + (b[KEY] - c[KEY]) * 0.5)
    vae = tiny_models["sd1"][1].vae.state_dict()
    assert merged["first_stage_model.decoder.conv_out.weight"].equal(vae["decoder.conv_out.weight"])
    assert generate(url, "a blue star", "abc")  # loads and runs


def test_merge_refusals_name_the_field_and_write_nothing(url, tools_dir, tiny_models):
    sub = tools_dir / "models" / "Stable-diffusion" / "sub"
    sub.mkdir()
    (sub / "dup.safetensors").write_bytes(tiny_models["sd1"][0].read_bytes())
    before = folder_files(tools_dir)
    good = {"models": ["a", "b"], "alpha": 0.5, "name": "fine"}
    cases = [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "../evil"}, "name"),
        ({"name": "sub/inside"}, "name"),
        ({"name": "..\\evil"}, "name"),
        ({"name": ".."}, "name"),
        ({"name": ".hidden"}, "name"),
        ({"name": "/tmp/evil"}, "name"),
        ({"name": "x" * 300}, "name"),
        ({"name": "line\nbreak"}, "name"),
        ({"name": "mine.vae"}, "name"),  # would be taken for a VAE beside mine.safetensors
        ({"name": "a"}, "name"),  # exists
        ({"name": "a.safetensors"}, "name"),
        ({"name": "dup", "overwrite": True}, "name"),  # sub/dup already answers to "dup"
        ({"models": ["a", "nope"]}, "models.1"),
        ({"models": ["x" * 5000, "b"]}, "models.0"),  # longer than a path: still just an unknown name
        ({"models": ["~nosuchuser0/m", "b"]}, "models.0"),  # no home to expand: an unknown name too
        ({"models": ["a", str(tiny_models["sd1"][0])]}, "models.1"),  # a file outside the folders
        ({"models": ["a", "xl"]}, "models"),  # SD1 and SDXL
        ({"models": ["a", "b"], "mode": "add-diff"}, "models"),  # add-diff takes three
        ({"models": ["a"]}, "models"),
        ({"mode": "average"}, "mode"),
        ({"alpha": "lots"}, "alpha"),
        ({"dtype": "int8"}, "dtype"),
        ({"vae": "nope"}, "vae"),
    ]
    for change, field in cases:
        response = post(url, "/sfumato/v1/merge", {**good, **change})
        assert response.status_code == 422, (change, response.text)
        assert response.json()["field"] == field, (change, response.json())
    assert folder_files(tools_dir) == before  # nothing written, in the folders or beside them
    assert not (tools_dir.parent / "evil.safetensors").exists()

    response = post(url, "/sfumato/v1/merge", {**good, "name": "a", "overwrite": True})  # A over itself
    assert response.status_code == 200, response.text
    names = [m["model_name"] for m in get(url, "/sdapi/v1/sd-models")]
    assert names.count("a") == 1 and "fine" not in names


def test_tools_run_one_at_a_time_and_the_server_keeps_answering(url, tools_dir):
    bodies = [{"models": ["a", "b"], "alpha": i / 4, "dtype": "fp32", "name": f"m{i}"} for i in range(4)]
    with ThreadPoolExecutor(5) as pool:
        merges = [pool.submit(post, url, "/sfumato/v1/merge", body) for body in bodies]
        assert get(url, "/sdapi/v1/progress")["progress"] == 0.0  # answered while they run
        responses = [m.result() for m in merges]
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    folder = tools_dir / "models" / "Stable-diffusion"
    a = load_file(folder / "a.safetensors")[KEY]
    for i in range(4):
        assert load_file(folder / f"m{i}.safetensors")[KEY].equal(
            a * (1 - i / 4) + load_file(folder / "b.safetensors")[KEY] * (i / 4)
        )
    assert not list(folder.glob("*.partial"))


def test_baked_loras_generate_as_their_tag_and_extraction_gives_them_back(url, tools_dir):
    plain = generate(url, "a cat", "tiny-sd1")
    tagged = generate(url, "a cat <lora:style:0.8>", "tiny-sd1")  # the LoRA is on the loaded model now
    body = {"model": "tiny-sd1", "loras": ["style:0.8"], "dtype": "fp32", "name": "baked"}
    response = post(url, "/sfumato/v1/merge-lora", body)
    assert response.status_code == 200, response.text
    made = response.json()
    assert made["notes"] == [] and made["path"].endswith("/models/Stable-diffusion/baked.safetensors")
    assert made["title"] in [m["title"] for m in get(url, "/sdapi/v1/sd-models")]
    assert generate(url, "a cat", "tiny-sd1") == plain  # the loaded model was restored
    assert generate(url, "a cat", "baked") == tagged
    assert generate(url, "a cat <lora:style:0.8>", "tiny-sd1") == tagged

    refusals = [
        ({"loras": ["nope:1"]}, "loras.0"),
        ({"loras": ["style:1", "style:heavy"]}, "loras.1"),
        ({"loras": ["style:1> <hypernet:x"]}, "loras.0"),
        ({"loras": []}, "loras"),
        ({"model": "nope"}, "model"),
        ({"name": "../baked2"}, "name"),
        ({"name": "baked"}, "name"),  # exists
    ]
    for change, field in refusals:
        response = post(url, "/sfumato/v1/merge-lora", {**body, "name": "baked2", **change})
        assert response.status_code == 422, (change, response.text)
        assert response.json()["field"] == field, (change, response.json())

    extract = {"tuned": "baked", "base": "tiny-sd1", "dim": 4, "name": "extracted"}  # the LoRA's rank
    response = post(url, "/sfumato/v1/extract-lora", extract)
    assert response.status_code == 200, response.text
    report = response.json()
    lora_dir = tools_dir / "models" / "Lora"
    assert report["path"] == str((lora_dir / "extracted.safetensors").resolve())
    assert report["name"] == "extracted" and report["layers"] == len(report["report"]) > 0
    assert report["max_error"] < 1e-3 and report["mean_error"] <= report["max_error"]
    assert report["worst_layer"] in {row["layer"] for row in report["report"]}
    assert {row["rank"] for row in report["report"]} == {4}
    listed = {lora["name"]: lora for lora in get(url, "/sdapi/v1/loras")}
    assert listed["extracted"]["rank"] == 4 and listed["extracted"]["family"] == "sd1"
    assert generate(url, "a cat <lora:extracted:0.5>", "tiny-sd1") != plain  # usable by its tag

    refusals = [
        ({"name": "extracted"}, "name"),  # exists
        ({"name": "style"}, "name"),
        ({"name": "x/y"}, "name"),
        ({"base": "baked"}, "base"),  # the same file
        ({"base": "xl"}, "base"),  # another family
        ({"tuned": "nope"}, "tuned"),
        ({"dim": 0}, "dim"),
        ({"conv_dim": -1}, "conv_dim"),
    ]
    for change, field in refusals:
        response = post(url, "/sfumato/v1/extract-lora", {**extract, "name": "again", **change})
        assert response.status_code == 422, (change, response.text)
        assert response.json()["field"] == field, (change, response.json())
    assert sorted(p.name for p in lora_dir.iterdir()) == ["extracted.safetensors", "style.safetensors"]
    response = post(url, "/sfumato/v1/extract-lora", {**extract, "dim": 2, "overwrite": True})
    assert response.status_code == 200, response.text
    assert response.json()["max_error"] > 1e-3  # rank 2 of a rank-4 difference: the report says so
