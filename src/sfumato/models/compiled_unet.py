"""The UNet through torch.compile (inductor with freezing), for processes where compile time amortises.

Why opt-in (`torch_compile` setting, `sfumato serve --compile`): compiling takes a minute or more per
image shape (latent size, batch) and extra memory, and pays back only over many images of one shape,
as in a server; a one-shot CLI run would spend longer compiling than it saves.

Why freezing: it lets inductor treat the weights as constants, fold them and prepack the convolution
and linear weights for oneDNN, which is where most of the gain over eager comes from on CPU. The price
is that the compiled graph holds its own copies of the weights, so anything that changes or hooks the
UNet must not go through it:
- LoRA/LyCORIS change weights in place: the compiled graph is rebuilt when the applied networks change
  (`weights_key`). Inductor's FX graph cache (kept in `cache_dir` between runs) makes the rebuild and
  the next process's first compile cheaper; freezing still runs against the current weights.
- hypernetworks, token merging, DeepCache and low-memory mode hook or patch UNet modules: such calls
  run eagerly on the same UNet (`CompiledUNet.call_for` returns None).

Layout: inductor converts convolutions to channels_last on its own ("layout optimization"); that is
only kept when the UNet is channels_last anyway (`sfumato.models.memory_format`'s choice), because on
a CPU in fp32 NCHW is faster. Measured on SD1.5 at 512² (2-core Sapphire Rapids, torch 2.13, one UNet
call with CFG): eager 6.1–6.4 s; compiled with freezing and inductor's channels_last 6.5–6.6 s; with
freezing in NCHW 5.6–5.8 s. The first call, compile included, took 72–79 s; 35 s with the kept cache.

Each compile's wall time (tracing + inductor + the first run) is printed and kept in `compile_seconds`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import torch
from torch._dynamo.utils import counters

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


class CompiledUNet:
    """One UNet's compiled forward, rebuilt when its weights change; times every compile."""

    def __init__(
        self, unet: torch.nn.Module, cache_dir: Path | None = None, *, channels_last: bool = False
    ) -> None:
        self.unet = unet
        self.options = {"freezing": True, "layout_optimization": channels_last}
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            # inductor reads the variable at each compile; a user's own setting wins
            os.environ.setdefault(CACHE_ENV, str(cache_dir))
        self._compiled: torch.nn.Module | None = None
        self._weights_key: Hashable = None
        self.compile_seconds: list[float] = []

    def call_for(self, weights_key: Hashable, *, exact: bool) -> CompiledCall | None:
        """The compiled forward for a call with these applied weights, or None when the call must run
        eagerly (`exact` False: something hooks or patches the UNet)."""
        if not exact:
            return None
        if self._compiled is None or weights_key != self._weights_key:
            # dynamo's guards do not look at weight values: drop every graph built on the old weights
            torch.compiler.reset()
            self._compiled = torch.compile(self.unet, dynamic=False, options=self.options)
            self._weights_key = weights_key
        return CompiledCall(self._compiled, self.compile_seconds)


class CompiledCall:
    """Calls the compiled UNet; a call that compiled a new graph is timed and reported."""

    def __init__(self, compiled: torch.nn.Module, compile_seconds: list[float]) -> None:
        self.compiled = compiled
        self.compile_seconds = compile_seconds

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        graphs = counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        out = self.compiled(*args, **kwargs)
        if counters["stats"]["unique_graphs"] != graphs:
            seconds = time.perf_counter() - start
            self.compile_seconds.append(seconds)
            shape = "×".join(str(n) for n in args[0].shape)
            print(f"sfumato: compiled the UNet for {shape} latents in {seconds:.1f} s", file=sys.stderr)
        return out
