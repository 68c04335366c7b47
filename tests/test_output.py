import datetime as dt
import errno
import os
import stat

import pytest
from PIL import Image

from sfumato.errors import UserError
from sfumato.output import images_folder, next_sequence_number, save_png
from sfumato.output_files import OUTPUT_MODE


def test_a1111_names_and_numbering(tmp_path):
    folder = images_folder(tmp_path / "outputs", "txt2img", today=dt.date(2026, 11, 24))
    assert folder == tmp_path / "outputs/txt2img-images/2026-11-24"
    image = Image.new("RGB", (8, 8), "red")
    first = save_png(image, folder, 42, "a cat\nSteps: 20, Sampler: Euler, Seed: 42")
    second = save_png(image, folder, 7, "x\nSteps: 1, Sampler: Euler, Seed: 7")
    assert first.name == "00000-42.png" and second.name == "00001-7.png"
    (folder / "00017-3.png").write_bytes(b"")  # numbering continues after the largest existing number
    assert next_sequence_number(folder) == 18
    with Image.open(first) as reopened:
        assert reopened.text["parameters"].startswith("a cat\nSteps: 20")
    assert not [p for p in folder.iterdir() if p.name.startswith(".saving-")]


def test_existing_files_are_never_overwritten(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "00000-1.png").write_bytes(b"precious")
    path = save_png(Image.new("RGB", (8, 8)), folder, 1, "p\nSteps: 1, Sampler: Euler, Seed: 1")
    assert path.name == "00001-1.png"
    assert (folder / "00000-1.png").read_bytes() == b"precious"


def test_full_disk_is_a_user_error_and_leaves_nothing_behind(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "00000-1.png").write_bytes(b"precious")

    def save_then_fail(self, fp, *args, **kwargs):
        fp.write(b"half a png")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", save_then_fail)
    with pytest.raises(UserError, match="No space left"):
        save_png(Image.new("RGB", (8, 8)), folder, 1, "p")
    assert sorted(p.name for p in folder.iterdir()) == ["00000-1.png"]
    assert (folder / "00000-1.png").read_bytes() == b"precious"


@pytest.mark.parametrize("suffix", [".png", ".gif", ".mp4"])
def test_saved_files_get_the_mode_a_plain_open_gives_not_mkstemps_owner_only(tmp_path, suffix):
    """A web server or another user of a shared outputs folder can read them, as A1111's."""
    from sfumato.imaging.animation import save_animation

    mask = os.umask(0o022)
    os.umask(mask)  # reading the umask means setting it; this puts it back
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue")]
    if suffix == ".png":
        path = save_png(frames[0], tmp_path, 1, "p\nSteps: 1, Sampler: Euler, Seed: 1")
    else:
        path = save_animation(frames, [100, 100], 0, tmp_path / f"clip{suffix}")
    assert stat.S_IMODE(path.stat().st_mode) == OUTPUT_MODE == 0o666 & ~mask  # 0644 under umask 022
