"""The CLI as a user drives it: files named like A1111's, infotext inside, one-line errors with exit 2."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal

import numpy as np
import pytest
from PIL import Image

from sfumato import infotext
from sfumato.app import Txt2ImgJob
from sfumato.cli import _interrupt_flag, main
from sfumato.models import registry
from sfumato.settings import load_settings

FAST = ["--steps", "2", "--sampler", "Euler", "--width", "64", "--height", "64"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_txt2img_saves_a1111_named_png_with_infotext(data_dir, capsys):
    code, lines, err = run(
        capsys, "txt2img", "a red circle", "--negative", "blurry", "--seed", 5, "--data-dir", data_dir, *FAST
    )
    assert code == 0, err
    folder = data_dir / "outputs" / "txt2img-images" / dt.date.today().isoformat()
    assert lines == [str(folder / "00000-5.png")]
    with Image.open(lines[0]) as image:
        assert image.size == (64, 64)
        params = infotext.parse(image.text["parameters"])
    assert params["Prompt"] == "a red circle" and params["Negative prompt"] == "blurry"
    assert (params["Steps"], params["Sampler"], params["Seed"], params["Size-1"]) == ("2", "Euler", "5", "64")
    assert params["Model"] == "tiny-sd1" and len(params["Model hash"]) == 10


def test_from_png_rebuilds_the_same_pixels(data_dir, capsys):
    common = ["--data-dir", data_dir, *FAST]
    code, (first,), _ = run(capsys, "txt2img", "a (blue:1.1) square", "--seed", 77, "--cfg", 5.5, *common)
    assert code == 0
    code, (again,), err = run(capsys, "txt2img", "--from-png", first, "--data-dir", data_dir)
    assert code == 0, err
    assert again != first
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    with Image.open(again) as image:
        assert infotext.parse(image.text["parameters"])["CFG scale"] == "5.5"
    code, (changed,), _ = run(capsys, "txt2img", "--from-png", first, "--seed", 78, "--data-dir", data_dir)
    assert not np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(changed)))


def test_batches_count_seeds_up(data_dir, capsys):
    code, lines, _ = run(
        capsys,
        "txt2img",
        "x",
        "--seed",
        10,
        "--batch-size",
        2,
        "--batch-count",
        2,
        "--data-dir",
        data_dir,
        *FAST,
    )
    assert code == 0
    assert [p.rsplit("/", 1)[1] for p in lines] == [
        "00000-10.png",
        "00001-11.png",
        "00002-12.png",
        "00003-13.png",
    ]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["txt2img", "x", "--sampler", "Eulr a"], "did you mean 'Euler a'"),
        (["txt2img", "x", "--width", "65"], "width: must be a multiple of 8"),
        (["txt2img", "x", "--model", "tiny-sd2"], "did you mean 'tiny-sd1'"),
        (["txt2img", "x", "--steps", "many"], "invalid int value"),
        (["txt2img"], "a prompt is needed"),
        (["txt2img", "x", "--device", "quantum"], "device"),
        (["txt2img", "x", "--scheduler", "Karas"], "did you mean 'Karras'"),
        (["png-info", "no-such.png"], "no-such.png"),
    ],
)
def test_user_errors_exit_2_with_one_line(data_dir, capsys, args, needle):
    code, out, err = run(capsys, *args, *(["--data-dir", data_dir] if args[0] == "txt2img" else []))
    assert code == 2
    assert out == []
    assert len(err.strip().splitlines()) == 1 and needle in err


def test_png_info_prints_parameters_and_json(data_dir, capsys, tmp_path):
    code, (path,), _ = run(capsys, "txt2img", "hello", "--seed", 3, "--data-dir", data_dir, *FAST)
    code, lines, _ = run(capsys, "png-info", path)
    assert code == 0 and lines[0] == "hello" and lines[1].startswith("Steps: 2, Sampler: Euler")
    code, lines, _ = run(capsys, "png-info", path, "--json")
    assert json.loads("\n".join(lines))["parsed"]["Seed"] == "3"
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(os.urandom(300))
    code, _, err = run(capsys, "png-info", garbage)
    assert code == 2 and str(garbage) in err


def test_models_list(data_dir, capsys):
    code, lines, _ = run(capsys, "models", "list", "--data-dir", data_dir)
    assert code == 0
    assert lines[0].split() == ["name", "family", "dtype", "size", "hash"]
    assert lines[1].split()[:3] == ["tiny-sd1", "sd1", "float32"]


def test_interrupt_stops_after_the_current_step_and_keeps_the_image(data_dir):
    settings = load_settings({"data_dir": data_dir}, env={})
    job = Txt2ImgJob(
        settings,
        {
            "prompt": "x",
            "steps": 6,
            "seed": 1,
            "n_iter": 3,
            "sampler_name": "Euler",
            "width": 64,
            "height": 64,
        },
    )
    steps_seen = []

    def stop_after_two() -> bool:
        steps_seen.append(1)
        return len(steps_seen) >= 2

    paths = job.run(should_stop=stop_after_two)
    assert job.interrupted
    assert len(paths) == 1 and paths[0].is_file()  # the interrupted image is saved, later batches never start
    assert len(steps_seen) == 2


def test_ctrl_c_sets_the_flag_then_stops_hard():
    should_stop, restore = _interrupt_flag()
    try:
        assert not should_stop()
        os.kill(os.getpid(), signal.SIGINT)
        assert should_stop()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        restore()


def test_without_any_checkpoint_nor_the_embedded_model_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(registry, "embedded_default_model", lambda: None)  # a broken install
    code, lines, err = run(capsys, "txt2img", "a red circle", "--data-dir", tmp_path, *FAST)
    assert code == 2 and lines == []
    assert err.count("\n") == 1 and "embedded default model" in err and "--model" in err


def test_each_image_is_saved_as_soon_as_it_is_made(data_dir):
    settings = load_settings({"data_dir": data_dir}, env={})
    fields = {
        "prompt": "x",
        "steps": 2,
        "seed": 1,
        "n_iter": 2,
        "sampler_name": "Euler",
        "width": 64,
        "height": 64,
    }
    job = Txt2ImgJob(settings, fields)
    folder = data_dir / "outputs" / "txt2img-images" / dt.date.today().isoformat()
    on_disk = []

    def count_files() -> bool:
        on_disk.append(len(list(folder.glob("*.png"))) if folder.is_dir() else 0)
        return False

    paths = job.run(should_stop=count_files)
    assert on_disk == [0, 0, 1, 1]  # the first image was on disk before the second batch sampled
    assert [p.name for p in paths] == ["00000-1.png", "00001-2.png"]
