"""Server time to first image: `sfumato serve` started cold on the full-size SD1.5 checkpoint.

A data folder in benchmarks/out/ttfi holds only a link to the cached random SD1.5 single file, so the
server's default model is that checkpoint. Measured from the moment the process is spawned: `ready_s`
(the API answers), `first_image_s` (first /sdapi/v1/txt2img returned: model load + job), and the warm
`second_image_s`; `server_peak_rss_gib` is the server process's VmHWM.

    python benchmarks/server_ttfi.py STEPS SIZE
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from checkpoints import SD15
from harness import OUT_DIR, child_env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _peak_rss_gib(pid: int) -> float | None:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return None


def main(steps: int, size: int) -> dict[str, Any]:
    import httpx

    data = OUT_DIR / "ttfi"
    shutil.rmtree(data, ignore_errors=True)
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    (folder / SD15.path.name).symlink_to(SD15.path)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "sfumato", "serve", "--data-dir", str(data), "--port", str(port)]
    body = {
        "prompt": "a lighthouse",
        "steps": steps,
        "width": size,
        "height": size,
        "sampler_name": "Euler a",
        "seed": 1,
    }
    started = time.perf_counter()
    server = subprocess.Popen(command, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"server exited with code {server.returncode}")
            try:
                if httpx.get(f"{url}/sdapi/v1/progress", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        ready_s = time.perf_counter() - started
        httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=3600).raise_for_status()
        first_s = time.perf_counter() - started
        start = time.perf_counter()
        httpx.post(f"{url}/sdapi/v1/txt2img", json={**body, "seed": 2}, timeout=3600).raise_for_status()
        second_s = time.perf_counter() - start
        peak = _peak_rss_gib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {
        "steps": steps,
        "size": size,
        "ready_s": round(ready_s, 3),
        "first_image_s": round(first_s, 3),
        "second_image_s": round(second_s, 3),
        "server_peak_rss_gib": round(peak, 3) if peak is not None else None,
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]))))
