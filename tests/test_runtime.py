import sys

import pytest

from sfumato import runtime


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning only exists on Linux")
def test_allocator_tuning_is_accepted_by_glibc():
    assert runtime.tune_allocator() is True
    runtime.release_memory()  # must not raise


def test_configure_sets_threads():
    import torch

    before = torch.get_num_threads()
    try:
        runtime.configure(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
