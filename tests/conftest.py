"""Fixtures and settings of the test suite; the helpers are importable from rawks_triton.testing."""

from __future__ import annotations

import os
import warnings
import zlib

import numpy as np
import pytest
import torch
from hypothesis import settings

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors. The switch
# must be set before any @triton.jit function is created, that is before rawks_triton's
# kernels are imported (tests import them lazily); setdefault keeps an explicit choice.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# CI draws the same examples every run; HYPOTHESIS_PROFILE=explore searches new ones.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, max_examples=500, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small problems (faster, and steady on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
