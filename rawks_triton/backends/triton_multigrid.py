"""Launcher of the multigrid cycle's Triton kernels: the preconditioner of backend="triton".

The hierarchy is built by :func:`rawks_triton.multigrid.build_hierarchy` (torch ops, on
the tensors' device) once per forward pass and kept by the backend for the adjoint solve.
The cycle is the one of :class:`rawks_triton.multigrid.MultigridPreconditioner`, with its
four grid primitives (residual, Jacobi step, restriction, prolongation) launched as the
kernels of :mod:`rawks_triton.kernels.multigrid`; the coarsest level is one batched dense
product (cuBLAS on CUDA).
"""

from __future__ import annotations

import torch
import triton

from ..kernels.multigrid import mg_jacobi_kernel, mg_prolong_kernel, mg_residual_kernel, mg_restrict_kernel
from ..solve.multigrid import Level, MultigridCycle, MultigridOptions, build_hierarchy

FRAME = 1
from ..systems import Stencil

BLOCK = 1024
NUM_WARPS = 4


class TritonMultigridPreconditioner(MultigridCycle):
    """z = M r for the [S, H, W] vectors of :class:`rawks_triton.backends.triton_cg.TritonPCG`."""

    def __init__(self, levels: list[Level], image_index: torch.Tensor, options: MultigridOptions = MultigridOptions()):
        super().__init__(levels, image_index, options)
        new = dict(dtype=self.levels[0].diag.dtype, device=self.levels[0].diag.device)
        self.framed_rhs = torch.zeros(self.num_systems, self.frame_size, **new)
        self.framed_out = torch.zeros(self.num_systems, self.frame_size, **new)
        self.framed_scratch = torch.zeros(self.num_systems, self.frame_size, **new)

    def apply(self, r: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out = M r for contiguous [S, H, W] vectors; returns out."""
        inside = lambda t: t.view(-1, self.frame.height + 2 * FRAME, self.frame.width + 2 * FRAME)[:, FRAME:-FRAME, FRAME:-FRAME]  # noqa: E731
        inside(self.framed_rhs).copy_(r)
        MultigridCycle.apply(self, self.framed_rhs, self.framed_out, self.framed_scratch)
        out.copy_(inside(self.framed_out))
        return out

    def _grid(self, size: int):
        return (self.groups * self.per_group, triton.cdiv(size, BLOCK))

    def _residual(self, level: Level, out, rhs, x):
        mg_residual_kernel[self._grid(level.size)](
            rhs, x, out, level.diag, level.right, level.down,
            level.size, level.width + 2 * FRAME, self.per_group,
            BLOCK=BLOCK, num_warps=NUM_WARPS,
        )
        return out

    def _jacobi(self, level: Level, x, r, first: bool = False) -> None:
        mg_jacobi_kernel[self._grid(level.size)](
            x, r, level.inv_diag, level.size, self.per_group, float(self.options.jacobi_weight),
            FIRST=first, BLOCK=BLOCK, num_warps=NUM_WARPS,
        )

    def _restrict(self, l: int, res, coarse_rhs) -> None:
        level, coarse = self.levels[l], self.levels[l + 1]
        mg_restrict_kernel[self._grid(coarse.size)](
            res, level.prolongation, coarse_rhs,
            level.size, level.width + 2 * FRAME, coarse.size, coarse.width + 2 * FRAME, coarse.height, coarse.width,
            self.per_group, BLOCK=BLOCK, num_warps=NUM_WARPS,
        )

    def _prolong(self, l: int, coarse_x, x) -> None:
        level, coarse = self.levels[l], self.levels[l + 1]
        mg_prolong_kernel[self._grid(level.size)](
            x, coarse_x, level.prolongation,
            level.size, level.width + 2 * FRAME, level.height, level.width, coarse.size, coarse.width + 2 * FRAME,
            self.per_group, float(self.options.correction_scale),
            BLOCK=BLOCK, num_warps=NUM_WARPS,
        )


def multigrid_preconditioner(stencil: Stencil, image_index: torch.Tensor, options: MultigridOptions = MultigridOptions()):
    """The hierarchy of every image of ``stencil`` and the cycle for the systems ``image_index``."""
    return TritonMultigridPreconditioner(build_hierarchy(stencil, options), image_index, options)


def aot_specs():
    """Every kernel of this launcher with every dtype and constexpr choice it makes (rawks_triton.aot)."""
    from ..aot import kernel_spec

    specs = []
    for ty in ("fp32", "fp64"):
        tiles = dict(BLOCK=BLOCK)
        specs.append(kernel_spec("mg_residual", mg_residual_kernel, ty, tiles, NUM_WARPS))
        for first in (True, False):
            specs.append(kernel_spec("mg_jacobi", mg_jacobi_kernel, ty, dict(FIRST=first, **tiles), NUM_WARPS, weight="fp32"))
        specs.append(kernel_spec("mg_restrict", mg_restrict_kernel, ty, tiles, NUM_WARPS))
        specs.append(kernel_spec("mg_prolong", mg_prolong_kernel, ty, tiles, NUM_WARPS, scale="fp32"))
    return specs
