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
# Volumes: the direct solve's fill-in grows much faster in 3D; Grady, 3 labels, float64 LU
# against float32 Jacobi-CG, one thread: 24^3 0.41 s vs 0.30 s, 32^3 2.2 s vs 0.67 s, 48^3
# 22.9 s vs 2.5 s, an ACDC volume (10 x 256 x 216, 4 labels) 172 s: CG on every volume.
DIRECT_MAX_PIXELS = 512 * 512

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

    * backend "auto": on CUDA "triton" (or "torch" without triton), for images and volumes
      alike. On the CPU "scipy" (the direct factorisation, float64) for the "grady" model when
      the image has at most ``DIRECT_MAX_PIXELS`` pixels and the preconditioner is left to
      "auto", else "torch" (always "torch" for volumes).
    * preconditioner "auto": "multigrid" for the CG backends (images and volumes, the triton
      backend included), "none" for the direct solver.
    """
    pixels = depth * height * width  # voxels, for a volume of ``depth`` slices
    direct = device.type == "cpu" and preconditioner == "auto" and model == "grady" and pixels <= DIRECT_MAX_PIXELS
    direct = direct and depth == 1  # volumes: never (the LU's fill-in, see DIRECT_MAX_PIXELS)
    backend = "scipy" if backend == "auto" and direct else resolve_backend(backend, device)
    if backend == "scipy":
        return backend, "none"
    if preconditioner == "auto":
        preconditioner = "multigrid"
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


def random_walker_mode(device: torch.device, grid: tuple[int, ...], num_labels: int, backend: str = "auto") -> str:
    """The mode that ``random_walker(mode="auto")`` runs: "bf", "cg_mg" or "cg_j".

    * ``backend`` named (not "auto"): CG with multigrid on it (images and volumes, on the
      torch and triton backends alike); "scipy" is the direct solve.
    * CUDA: the same CG choice (the direct solve would run on the host).
    * CPU: the direct solve while the grid's separator, the product of all its sizes but
      the largest (min(H, W) for an image; what the fill-in of the sparse factorisation
      grows with), is at most 768 and the grid has at most 2^22 voxels; CG above.
      ``num_labels`` does not move the crossover (both methods pay about the same per label).
    """
    # Measured with `python -m bench.random_walker_bench --crossover --threads 1` (3 labels,
    # beta 130, median seconds of bf / CG; docs/benchmarks.md, "random_walker: images and
    # volumes"): images (cg_mg) 128^2 0.07 / 0.16, 256^2 0.9 / 1.5, 512^2 4.4 / 20 (4.7 / 7.4
    # in the comparison run), 1024^2 92 / 35 (27.9 / 21.4 in the comparison run); volumes
    # (cg_j) 16^3 0.06 / 0.22, 24^3 0.57 / 0.81, 10x64x64 2.9 / 4.8, 32^3 7.2 / 2.9,
    # 40^3 28.5 / 4.8, 10x128x128 35 / 35. The direct solve wins up to separators of 640
    # (512^2, 24^3, 10x64x64) and loses from 1024 (1024^2, 32^3), in 2D and 3D alike.
    max_separator, max_voxels = 768, 1 << 22
    if backend == "scipy":
        return "bf"
    if backend != "auto" or device.type != "cpu":
        return "cg_mg"
    sizes = sorted(int(n) for n in grid)
    separator = voxels = 1
    for n in sizes[:-1]:
        separator *= n
    for n in sizes:
        voxels *= n
    return "bf" if separator <= max_separator and voxels <= max_voxels else "cg_mg"
