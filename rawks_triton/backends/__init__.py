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


# The "auto" rule (docs/multigrid.md, "Choosing the solver", gives the measurement behind it).
# CPU, Grady model: the sparse direct factorisation up to this many pixels per image, CG above
# (fastest with 3 and with 21 labels at every measured size up to 512 x 512). RAWKS: CG with
# the multigrid preconditioner at every size; on learned boundaries Jacobi-PCG cannot meet
# the stopping rule in any reasonable number of iterations (docs/benchmarks.md).
DIRECT_MAX_PIXELS = 512 * 512


def choose_solver(
    backend: str, preconditioner: str, device: torch.device, height: int, width: int, model: str = "grady"
) -> tuple[str, str]:
    """(backend, preconditioner) for ``backend`` and ``preconditioner`` that may be "auto".

    * backend "auto": on CUDA "triton" (or "torch" without triton). On the CPU "scipy" (the
      direct factorisation, float64) for the "grady" model when the image has at most
      ``DIRECT_MAX_PIXELS`` pixels and the preconditioner is left to "auto", else "torch".
    * preconditioner "auto": "multigrid" for the CG backends, "none" for the direct solver.
    """
    pixels = height * width
    direct = device.type == "cpu" and preconditioner == "auto" and model == "grady" and pixels <= DIRECT_MAX_PIXELS
    backend = "scipy" if backend == "auto" and direct else resolve_backend(backend, device)
    if backend == "scipy":
        return backend, "none"
    if preconditioner == "auto":
        preconditioner = "multigrid"
    return backend, preconditioner


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
        from .triton import TritonBackend

        return TritonBackend
    raise ValueError(f"`backend` must be one of {list(BACKENDS)}, got {name!r}")
