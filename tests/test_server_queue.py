"""The persistent queue: job API, progress with previews, interrupt/skip/cancel, and kill -9 recovery."""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest
from server_helpers import TINY, decode_png, free_port, running_server, start_server_process, wait_until_up

from sfumato.server.jobs import JobStore


@pytest.fixture
def url(data_dir):
    with running_server(data_dir) as base:
        yield base


def submit(url: str, **fields) -> dict:
    response = httpx.post(f"{url}/sfumato/v1/jobs", json={"request": {**TINY, **fields}}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()


def wait_job(url: str, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/sfumato/v1/jobs/{job_id}", timeout=30).json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def wait_running(url: str, job_id: str) -> None:
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/sfumato/v1/jobs/{job_id}").json()["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_submit_poll_and_fetch_the_image(url):
    job = submit(url, prompt="queued", n_iter=2)
    assert (job["state"], job["queue_position"]) in (("queued", 1), ("running", 0), ("done", None))
    done = wait_job(url, job["id"])
    assert done["state"] == "done" and [i["index"] for i in done["images"]] == [0, 1]
    assert done["info"]["all_seeds"] == [1, 2]
    # the job API follows `samples_save` (on by default), as A1111's UI does: saved in outputs/
    assert all("/outputs/txt2img-images/" in image["path"] for image in done["images"]), done["images"]
    file = httpx.get(f"{url}/sfumato/v1/jobs/{job['id']}/images/1")
    assert file.status_code == 200 and file.headers["content-type"] == "image/png"
    assert httpx.get(f"{url}/sfumato/v1/jobs/{job['id']}/images/7").status_code == 404
    assert httpx.get(f"{url}/sfumato/v1/jobs/nope").status_code == 404
    assert httpx.get(f"{url}/sfumato/v1/jobs/..%2F..%2Fetc/images/0").status_code == 404


def test_failed_job_records_the_error_and_the_worker_goes_on(url, data_dir):
    (data_dir / "models" / "Stable-diffusion" / "zz-broken.safetensors").write_bytes(b"\0" * 100)
    bad = submit(url, model="zz-broken")
    good = submit(url)
    failed = wait_job(url, bad["id"])
    assert failed["state"] == "failed" and "broken" in failed["error"]
    assert wait_job(url, good["id"])["state"] == "done"


def test_progress_moves_with_a_preview_then_interrupt_keeps_the_image(url):
    job = submit(url, steps=400)
    wait_running(url, job["id"])
    seen = []
    deadline = time.monotonic() + 60
    while len({s["state"]["sampling_step"] for s in seen}) < 3 and time.monotonic() < deadline:
        seen.append(httpx.get(f"{url}/sdapi/v1/progress").json())
        time.sleep(0.05)
    steps = [s["state"]["sampling_step"] for s in seen]
    assert steps == sorted(steps) and len(set(steps)) >= 3
    assert all(s["state"]["job"] == job["id"] for s in seen)
    latest = seen[-1]
    assert 0 < latest["progress"] < 1 and latest["eta_relative"] > 0
    preview = decode_png(latest["current_image"])
    assert preview.size == (64, 64)  # the tiny VAE is small, so previews are its real decodings
    assert httpx.post(f"{url}/sdapi/v1/interrupt").status_code == 200
    finished = wait_job(url, job["id"])
    assert finished["state"] == "interrupted" and len(finished["images"]) == 1
    assert httpx.get(f"{url}/sdapi/v1/progress").json()["progress"] == 0.0


def test_skip_ends_the_batch_and_goes_on(url):
    job = submit(url, steps=300, n_iter=2)
    wait_running(url, job["id"])
    time.sleep(0.3)
    httpx.post(f"{url}/sdapi/v1/skip")
    done = wait_job(url, job["id"])
    assert done["state"] == "done" and len(done["images"]) == 2


def test_cancel_queued_and_running_jobs(url):
    running = submit(url, steps=400)
    queued = submit(url)
    wait_running(url, running["id"])
    assert httpx.post(f"{url}/sfumato/v1/jobs/{queued['id']}/cancel").json()["state"] == "cancelled"
    assert httpx.post(f"{url}/sfumato/v1/jobs/{running['id']}/cancel").json()["state"] == "cancelled"
    again = httpx.post(f"{url}/sfumato/v1/jobs/{queued['id']}/cancel")
    assert again.status_code == 422 and again.json()["field"] == "job_id"
    assert wait_job(url, submit(url)["id"])["state"] == "done"


def test_kill_9_with_jobs_queued_then_restart_runs_them_all_once(data_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server_process(data_dir, port)
    try:
        wait_until_up(url)
        first = submit(url, steps=200, n_iter=3)  # long enough to be killed mid-way
        queued = [submit(url, seed=50 + i) for i in range(4)]
        deadline = time.monotonic() + 120
        while not httpx.get(f"{url}/sfumato/v1/jobs/{first['id']}").json()["images"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)  # killed after the first image of the first job was saved
        server.send_signal(signal.SIGKILL)
        server.wait(30)
        server = start_server_process(data_dir, port)
        wait_until_up(url)
        for job in [first, *queued]:
            assert wait_job(url, job["id"], timeout=300)["state"] == "done"
        again = httpx.get(f"{url}/sfumato/v1/jobs/{first['id']}").json()
        assert [i["index"] for i in again["images"]] == [0, 1, 2] and again["attempts"] == 2
        assert again["info"]["all_seeds"] == [1, 2, 3]
    finally:
        server.kill()
        server.wait(30)
    store = JobStore(data_dir / ".sfumato" / "server.sqlite3")
    images = store.recent_images(limit=100)
    assert len(images) == 3 + 4 and len({(i.job_id, i.index) for i in images}) == 7
    assert all(json.dumps(i.public()) for i in images)
    store.close()
