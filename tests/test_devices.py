"""Device and dtype choice."""

from __future__ import annotations

import pytest
import torch

from sfumato.devices import bf16_autocast_helps


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"),
    [(False, False, False), (True, False, True), (False, True, True)],
)
def test_bf16_autocast_helps_only_cpus_with_bf16_matrix_units(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert bf16_autocast_helps(torch.device("cpu")) is expected


def test_bf16_autocast_is_not_chosen_when_torch_cannot_probe_the_cpu(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert bf16_autocast_helps(torch.device("cpu")) is False
    assert bf16_autocast_helps(torch.device("mps")) is False
