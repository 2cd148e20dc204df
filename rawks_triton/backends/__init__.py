"""Solver backends. Each takes a checked problem and returns solutions and statistics.

A backend class is built once per forward pass from the per-image :class:`Stencil`
and the :class:`LabelSystems`, and is kept by the autograd op for the adjoint solve:

* ``solve(rhs) -> (x, SolveStats)`` with ``rhs`` and ``x`` [S, H, W], x = 0 on seeds;
* ``coefficient_gradients(adjoint, x, Z, edges)`` -> per-image gradients of (d, right, down).
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "scipy", "torch", "triton")


def triton_available(device: torch.device) -> bool:
    """Triton runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(name: str, device: torch.device) -> str:
    if name == "auto":
        return "triton" if device.type == "cuda" and triton_available(device) else "torch"
    if name == "triton" and not triton_available(device):
        raise ValueError(
            f"`backend`='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors) and an "
            f"installed triton; got tensors on {device}. Use backend='torch' or 'scipy' on this device."
        )
    return name


def get_backend(name: str):
    if name == "scipy":
        from .scipy_direct import DirectBackend

        return DirectBackend
    if name == "torch":
        from .torch_cg import TorchBackend

        return TorchBackend
    if name == "triton":
        from .triton_cg import TritonBackend

        return TritonBackend
    raise ValueError(f"`backend` must be one of {list(BACKENDS)}, got {name!r}")
