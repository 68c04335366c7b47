"""gif2gif through the job API: an animation in, every frame through img2img, the frames and the
animation (same frame count, durations and loop) out; bad files refused at submission."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from server_helpers import TINY, running_server

from sfumato.imaging.files import read_frames


@pytest.fixture
def url(data_dir):
    with running_server(data_dir) as base:
        yield base


def animation_bytes(count=3, durations=(80, 160, 240), loop=2) -> bytes:
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="GIF", save_all=True, append_images=frames[1:], duration=list(durations), loop=loop
    )
    return buffer.getvalue()


def submit(url, request):
    return httpx.post(f"{url}/sfumato/v1/jobs", json={"kind": "gif2gif", "request": request}, timeout=60)


def test_gif2gif_job_makes_every_frame_and_the_animation(url, tmp_path):
    request = {**TINY, "animation": base64.b64encode(animation_bytes()).decode(), "denoising_strength": 0.5}
    submitted = submit(url, request)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert submitted.json()["request"]["inputs"] == {"animation": True, "suffix": True}
    for _ in range(600):
        job = httpx.get(f"{url}/sfumato/v1/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    assert job["state"] == "done", job
    assert [image["index"] for image in job["images"]] == [0, 1, 2, 3]
    response = httpx.get(f"{url}/sfumato/v1/jobs/{job_id}/images/3")
    assert response.headers["content-type"] == "image/gif"
    (tmp_path / "out.gif").write_bytes(response.content)
    frames, durations, loop = read_frames(tmp_path / "out.gif", "animation")
    assert len(frames) == 3 and durations == [80, 160, 240] and loop == 2
    first = httpx.get(f"{url}/sfumato/v1/jobs/{job_id}/images/0")
    assert Image.open(io.BytesIO(first.content)).size == (64, 64)  # the request's width and height


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"animation": ""}, "animation"),
        ({"animation": "%%%"}, "animation"),
        ({"animation": base64.b64encode(b"not an animation").decode()}, "animation"),
        ({"animation_format": "exe"}, "animation_format"),
        ({"batch_size": 2}, "batch_size"),
    ],
)
def test_bad_gif2gif_submissions_are_422_naming_the_field(url, extra, field):
    request = {**TINY, "animation": base64.b64encode(animation_bytes()).decode(), **extra}
    response = submit(url, request)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
