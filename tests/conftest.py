"""Test-session settings shared by every test module (fixtures only; helpers live in helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One torch thread in the test process: the tensors here are small, and CI has 2 cores shared
    with the node processes some tests start."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
