"""`sfumato img2img` as a user drives it: A1111's output folder and infotext, --from-png, outpainting,
folder batches that survive a broken file, and one-line errors with exit 2."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sfumato import infotext
from sfumato.cli import main

FAST = ["--steps", "4", "--sampler", "Euler"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def picture(path, size=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_img2img_saves_in_img2img_images_with_its_infotext(data_dir, capsys):
    init = picture(data_dir / "init.png")
    mask = data_dir / "mask.png"
    canvas = Image.new("L", (64, 64), 0)
    canvas.paste(255, (16, 16, 48, 48))
    canvas.save(mask)
    code, lines, err = run(
        capsys, "img2img", "a cat", "--init", init, "--mask", mask, "--strength", 0.6, "--seed", 9,
        "--masked-content", "latent-noise", "--inpaint-area", "masked", "--padding", 4,
        "--data-dir", data_dir, *FAST,
    )  # fmt: skip
    assert code == 0, err
    folder = data_dir / "outputs" / "img2img-images" / dt.date.today().isoformat()
    assert lines == [str(folder / "00000-9.png")]
    with Image.open(lines[0]) as image:
        params = infotext.parse(image.text["parameters"])
    assert params["Denoising strength"] == "0.6" and params["Mask blur"] == "4"
    assert params["Masked content"] == "latent noise" and params["Inpaint area"] == "Only masked"
    assert params["Masked area padding"] == "4"

    code, (again,), err = run(
        capsys, "img2img", "--from-png", lines[0], "--init", init, "--mask", mask, "--data-dir", data_dir,
        "--masked-content", "latent-noise", "--inpaint-area", "masked", "--padding", 4,
    )  # fmt: skip
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(lines[0])), np.asarray(Image.open(again)))


def test_outpaint_extends_the_canvas_with_the_picture_in_place(data_dir, capsys):
    init = picture(data_dir / "init.png", (48, 40))
    code, (path,), err = run(
        capsys, "img2img", "a field", "--init", init, "--outpaint", 16, "--outpaint-sides", "left,down",
        "--strength", 1.0, "--masked-content", "fill", "--mask-blur", 2, "--data-dir", data_dir, *FAST,
    )  # fmt: skip
    assert code == 0, err
    out = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert out.shape == (56, 64, 3)
    original = np.asarray(Image.open(init)).astype(int)
    # away from the seam (the blur reaches 2·⌊2.5·2+0.5⌋+1 = 11 px wide → 5 px, doubled overlay: 3)
    np.testing.assert_array_equal(out[:34, 22:], original[:34, 6:])
    assert np.abs(out[:, :10] - out[:, :10].mean()).mean() > 0  # the new margin was painted


def test_outpaint_fills(data_dir, capsys):
    init = picture(data_dir / "init.png", (32, 32))
    for fill in ("edge", "mirror", "noise", "colour"):
        code, _, err = run(
            capsys, "img2img", "x", "--init", init, "--outpaint", 8, "--outpaint-fill", fill,
            "--strength", 0.5, "--data-dir", data_dir, *FAST,
        )  # fmt: skip
        assert code == 0, (fill, err)


def test_folder_batch_keeps_going_past_a_broken_file(data_dir, capsys):
    folder = data_dir / "inits"
    folder.mkdir()
    picture(folder / "a.png", seed=1)
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    picture(folder / "c.jpg", seed=2)
    out = data_dir / "out"
    code, lines, err = run(
        capsys, "img2img", "x", "--init", folder, "--out", out, "--seed", 1, "--data-dir", data_dir, *FAST
    )
    assert code == 2
    assert len(lines) == 2 and all(line.startswith(str(out)) for line in lines)
    assert "b.png" in err and err.count("\n") == 1


def test_folder_batch_takes_masks_by_name(data_dir, capsys):
    inits, masks = data_dir / "inits", data_dir / "masks"
    inits.mkdir(), masks.mkdir()
    original = np.asarray(Image.open(picture(inits / "a.png")))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 16, 16))
    mask.save(masks / "a.png")
    code, (path,), err = run(
        capsys,
        "img2img",
        "x",
        "--init",
        inits,
        "--mask",
        masks,
        "--mask-blur",
        0,
        "--data-dir",
        data_dir,
        *FAST,
    )
    assert code == 0, err
    out = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(out[20:], original[20:])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--init", "missing.png"], "init"),
        (["--init", "broken.png"], "not a readable image"),
        (["--init", "init.png", "--strength", "1.5"], "denoising_strength"),
        (["--init", "init.png", "--mask", "init.png", "--outpaint", "8"], "--outpaint"),
        (["--init", "init.png", "--outpaint", "8", "--outpaint-sides", "north"], "--outpaint-sides"),
        (["--init", "init.png", "--sampler", "Eulr"], "sampler"),
    ],
)
def test_bad_input_exits_2_with_one_line(data_dir, capsys, args, needle):
    picture(data_dir / "init.png")
    (data_dir / "broken.png").write_bytes(b"not an image")
    argv = [a if not a.endswith(".png") else str(data_dir / a) for a in args]
    code, _, err = run(capsys, "img2img", "x", "--data-dir", data_dir, *FAST, *argv)
    assert code == 2
    assert needle in err and err.count("\n") == 1


def animation(path, count=3, durations=(80, 160, 240), loop=0):
    frames = [Image.open(picture(path.with_name(f"frame{i}.png"), (32, 32), seed=i)) for i in range(count)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=list(durations), loop=loop)
    return path


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".png"])
def test_gif2gif_keeps_frame_count_durations_and_loop(data_dir, capsys, suffix):
    from sfumato.imaging.files import read_frames

    source = animation(data_dir / f"in{suffix}", loop=3)
    # A fixed seed: libwebp merges consecutive identical frames (summing their durations), and the tiny
    # random model turns some seeds' frames into the same flat picture.
    code, lines, err = run(
        capsys, "gif2gif", source, "a cat", "--strength", 0.5, "--seed", 3, "--data-dir", data_dir, *FAST
    )
    assert code == 0, err
    frames, durations, loop = read_frames(lines[-1], "animation")
    assert len(frames) == 3 and durations == [80, 160, 240] and loop == 3
    assert len(list((data_dir / lines[-1]).parent.glob("0000?-*.png"))) == 3  # each frame saved too


def test_gif2gif_a_failing_frame_keeps_its_source_and_the_others(data_dir, capsys, monkeypatch):
    from sfumato import app
    from sfumato.errors import UserError
    from sfumato.imaging.files import read_frames

    real_init, calls = app.Img2ImgJob.__init__, []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise UserError("frame trouble")
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(app.Img2ImgJob, "__init__", flaky)
    source = animation(data_dir / "in.gif")
    code, lines, err = run(capsys, "gif2gif", source, "x", "--data-dir", data_dir, *FAST)
    assert code == 0 and "frame 2: frame trouble" in err
    frames, _, _ = read_frames(lines[-1], "animation")
    original, _, _ = read_frames(source, "animation")
    assert len(frames) == 3
    assert np.abs(np.asarray(frames[1], int) - np.asarray(original[1], int)).mean() < 8  # GIF palette


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_gif2gif_runs_a_video_and_keeps_its_frame_timing(data_dir, capsys, suffix):
    from sfumato.imaging.files import read_frames
    from sfumato.imaging.video import write_video

    frames = [Image.open(picture(data_dir / f"f{i}.png", (32, 24), seed=i)) for i in range(3)]
    source = write_video(frames, [80, 40, 40], data_dir / f"clip{suffix}")  # variable frame rate
    code, lines, err = run(
        capsys, "gif2gif", source, "a cat", "--strength", 0.5, "--data-dir", data_dir, *FAST
    )
    assert code == 0, err
    assert lines[-1].endswith(f"clip{suffix}")
    out, durations, loop = read_frames(Path(lines[-1]), "animation")
    assert len(out) == 3 and durations == [80, 40, 40] and loop == 0 and out[0].size == (32, 24)
    assert len(list(Path(lines[-1]).parent.glob("0000?-*.png"))) == 3  # each frame saved too
    (data_dir / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    code, _, err = run(capsys, "gif2gif", data_dir / "bad.mp4", "x", "--data-dir", data_dir, *FAST)
    assert code == 2 and "cannot be read as a video" in err
