"""Shared fixtures. Without CUDA, Triton kernels run in the interpreter (TRITON_INTERPRET=1)."""

import os

import numpy as np
import pytest

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a dependency
    HAS_CUDA = False

if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastret  # noqa: E402  (after TRITON_INTERPRET is set)
from fastret import _core  # noqa: E402

needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(params=_core.simd_paths_compiled())
def simd_path(request):
    """Runs the test once per SIMD path of this build, restoring the active path afterwards."""
    if request.param not in fastret.available_simd_paths():
        pytest.skip(f"this CPU cannot run the {request.param} path")
    before = fastret.simd_path()
    fastret.set_simd_path(request.param)
    yield request.param
    fastret.set_simd_path(before)


def unit_rows(rng, n, d, dtype=np.float32):
    """n random unit vectors of dimension d."""
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(dtype)
