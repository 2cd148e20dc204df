"""The only backend and preconditioner policy: what ``backend="auto"`` and
``preconditioner="auto"`` mean (docs/multigrid.md, "Choosing the solver", gives the
measurements behind the rule). Names only: :func:`rawks_triton.backends.get_backend` maps
a name to its class."""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "scipy", "torch", "triton")

# CPU, Grady model: the sparse direct factorisation up to this many pixels per image, CG above
# (fastest with 3 and with 21 labels at every measured size up to 512 x 512). RAWKS: CG with
# the multigrid preconditioner at every size; on learned boundaries Jacobi-PCG cannot meet
# the stopping rule in any reasonable number of iterations (docs/benchmarks.md).
DIRECT_MAX_PIXELS = 512 * 512
# Volumes: multigrid as on images (2x2x2 or semi-coarsened 2x2x1 aggregates, docs/multigrid.md).
volume_multigrid = True

TRITON_MISSING = (
    "`backend`='triton' needs the triton package, which is not installed: CUDA builds of torch bring it, "
    "or install the extra with `pip install rawks-triton[triton]`. Use backend='torch' or 'auto' without it."
)


def triton_installed() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_available(device: torch.device) -> bool:
    """Triton runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1."""
    if not triton_installed():
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"


def choose_solver(
    backend: str,
    preconditioner: str,
    device: torch.device,
    height: int,
    width: int,
    model: str = "grady",
    depth: int = 1,
) -> tuple[str, str]:
    """(backend, preconditioner) for ``backend`` and ``preconditioner`` that may be "auto".

    * backend "auto": on CUDA "triton" (or "torch" without triton). On the CPU "scipy" (the
      direct factorisation, float64) for the "grady" model when the image has at most
      ``DIRECT_MAX_PIXELS`` pixels and the preconditioner is left to "auto", else "torch".
    * preconditioner "auto": "multigrid" for the CG backends, "none" for the direct solver.
    """
    pixels = depth * height * width  # voxels, for a volume of ``depth`` slices
    direct = device.type == "cpu" and preconditioner == "auto" and model == "grady" and pixels <= DIRECT_MAX_PIXELS
    backend = "scipy" if backend == "auto" and direct else resolve_backend(backend, device)
    if backend == "scipy":
        return backend, "none"
    if preconditioner == "auto":
        preconditioner = "multigrid" if volume_multigrid or depth == 1 else "jacobi"
    return backend, preconditioner


def resolve_backend(name: str, device: torch.device) -> str:
    if name == "auto":
        return "triton" if device.type == "cuda" and triton_available(device) else "torch"
    if name == "triton" and not triton_installed():
        raise ValueError(TRITON_MISSING)
    if name == "triton" and not triton_available(device):
        raise ValueError(
            f"`backend`='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors); got tensors on "
            f"{device}. Use backend='torch' or 'scipy' on this device."
        )
    return name
