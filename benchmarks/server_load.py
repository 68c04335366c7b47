"""Load on the server's queue: many clients at once against a real uvicorn, with a tiny model.

    python benchmarks/server_load.py [--clients 20] [--requests 100] [--steps 1]

Writes a tiny random-weight SD1 checkpoint (sfumato.testing.tiny_models) into a fresh data dir under
benchmarks/out/, serves it with `sfumato.server` on a loopback port, and sends `--requests` txt2img
requests (64×64, Euler) from `--clients` threads through A1111's synchronous endpoint. Prints one JSON
object: jobs per second over the whole run, and the p50/p95/max of the client-seen latency (submit to
response) and of the queue wait (job created -> started, from the job records).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from server_helpers import running_server  # the tests' real-uvicorn helper

from sfumato.testing.tiny_models import write_single_file

OUT = Path(__file__).resolve().parent / "out" / "server-load"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    shutil.rmtree(OUT, ignore_errors=True)
    folder = OUT / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    write_single_file(folder / "tiny-sd1.safetensors", "sd1", seed=0)
    body = {"prompt": "load", "steps": args.steps, "width": 64, "height": 64, "sampler_name": "Euler"}

    with running_server(OUT) as url:
        httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120).raise_for_status()  # load the model

        def one(seed: int) -> float:
            start = time.perf_counter()
            response = httpx.post(f"{url}/sdapi/v1/txt2img", json={**body, "seed": seed}, timeout=600)
            response.raise_for_status()
            return time.perf_counter() - start

        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            latencies = list(pool.map(one, range(args.requests)))
        elapsed = time.perf_counter() - started
        jobs = httpx.get(f"{url}/sfumato/v1/jobs", params={"limit": args.requests}).json()
    waits = [job["started"] - job["created"] for job in jobs]
    print(
        json.dumps(
            {
                "clients": args.clients,
                "requests": args.requests,
                "steps": args.steps,
                "jobs_per_second": round(args.requests / elapsed, 2),
                "latency_s": {
                    "p50": round(statistics.median(latencies), 3),
                    "p95": round(percentile(latencies, 0.95), 3),
                    "max": round(max(latencies), 3),
                },
                "queue_wait_s": {
                    "p50": round(statistics.median(waits), 3),
                    "p95": round(percentile(waits, 0.95), 3),
                },
                "threads": torch.get_num_threads(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
