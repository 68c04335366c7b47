"""A real uvicorn on a loopback port, for the server tests (in-process thread or a child process)."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from PIL import Image

from sfumato.server.app import ServeOptions, create_app
from sfumato.settings import load_settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(data_dir: Path, options: ServeOptions | None = None) -> Iterator[str]:
    """Serve `data_dir` from a uvicorn thread; yields the base URL."""
    port = free_port()
    options = options or ServeOptions(port=port)
    options = ServeOptions(**{**options.__dict__, "port": port})
    app = create_app(load_settings({"data_dir": data_dir, "threads": 1}, env={}), options)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def start_server_process(data_dir: Path, port: int) -> subprocess.Popen:
    """`sfumato serve` as a child process (so it can be killed with SIGKILL)."""
    env = {**os.environ, "SFUMATO_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "sfumato", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_until_up(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/sdapi/v1/samplers", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no server at {url}")


def b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode_png(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


TINY = {"steps": 2, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 1}
