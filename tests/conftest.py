"""Test-session settings shared by every test module (fixtures only; helpers live in helpers.py)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

# Deterministic property tests: a fixed seed per test (CI must not depend on luck), no wall-clock
# deadline (CI's 2 cores are shared with node processes), and no failure just for filtering a lot.
settings.register_profile("swarmlm", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.load_profile("swarmlm")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One torch thread in the test process: the tensors here are small, and CI has 2 cores shared
    with the node processes some tests start."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
