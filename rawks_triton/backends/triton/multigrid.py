"""The multigrid cycle with Triton primitives: the preconditioner of backend="triton".

The hierarchy is built by :func:`rawks_triton.solve.multigrid.build_hierarchy` (torch ops,
on the tensors' device) once per forward pass and kept by the backend for the adjoint solve.
The cycle is the one of :class:`rawks_triton.solve.multigrid.MultigridCycle`; its
primitives (residual, Jacobi step, restriction, prolongation) are launches of the kernels
of :mod:`rawks_triton.kernels.multigrid`, the coarsest level is one batched dense product
(cuBLAS on CUDA). Level 0 is the CG's framed layout, so :meth:`apply` reads the CG's r and
writes its z with no copy.
"""

from __future__ import annotations

import torch
import triton

from ...kernels import mg_jacobi_kernel, mg_prolong_kernel, mg_residual_kernel, mg_restrict_kernel
from ...solve.layout import Frame
from ...solve.multigrid import Level, MultigridCycle, MultigridOptions, build_hierarchy
from ...systems import Stencil

BLOCK = 1024
NUM_WARPS = 4
DEFAULT_OPTIONS = MultigridOptions()


class TritonMultigrid(MultigridCycle):
    """z = M r for framed [S, size] vectors (:class:`rawks_triton.solve.layout.Frame`)."""

    def __init__(self, levels: list[Level], image_index: torch.Tensor, options: MultigridOptions = DEFAULT_OPTIONS):
        super().__init__(levels, image_index, options)
        top = self.levels[0]
        # The row of the (possibly gathered) level coefficients that system s reads: its
        # image when every image has the same number of systems, else its own row.
        rows = torch.arange(self.num_systems, device=top.diag.device) // self.per_group
        self.coefficient_row = rows.to(torch.int64)
        self.frames = [Frame(level.height, level.width) for level in self.levels]
        # The level-0 residual of the cycle; zeros, as mg_residual_kernel writes [lo, hi) only.
        self._scratch = None

    def apply(self, r: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """out = M r for contiguous framed [S, size] vectors; returns out (border written 0).

        The cycle's level-0 residual is a buffer of its own (a caller's ``scratch`` is not
        used): mg_residual_kernel writes [lo, hi) only, so the buffer must start at zero."""
        if self._scratch is None:
            self._scratch = torch.zeros_like(r)
        return super().apply(r, out, self._scratch)

    def release(self) -> None:
        super().release()
        self._scratch = None

    def _grid(self, positions: int):
        return (self.num_systems, triton.cdiv(positions, BLOCK))

    def _frame(self, level: Level) -> Frame:
        return Frame(level.height, level.width)

    def _residual(self, level: Level, out, rhs, x):
        frame = self._frame(level)
        mg_residual_kernel[self._grid(frame.hi)](
            rhs, x, out, level.diag, level.right, level.down, self.coefficient_row,
            frame.size, frame.row, frame.lo, frame.hi,
            BLOCK=BLOCK, num_warps=NUM_WARPS,
        )  # fmt: skip
        return out

    def _jacobi(self, level: Level, x, r, first: bool = False) -> None:
        mg_jacobi_kernel[self._grid(level.size)](
            x, r, level.inv_diag, self.coefficient_row, level.size, float(self.options.jacobi_weight),
            FIRST=first, BLOCK=BLOCK, num_warps=NUM_WARPS,
        )  # fmt: skip

    def _restrict(self, k: int, res, coarse_rhs) -> None:
        fine, coarse = self.frames[k], self.frames[k + 1]
        mg_restrict_kernel[self._grid(coarse.size)](
            res, self.levels[k].prolongation, coarse_rhs, self.coefficient_row,
            fine.size, fine.row, coarse.size, coarse.row, coarse.height, coarse.width,
            BLOCK=BLOCK, num_warps=NUM_WARPS,
        )  # fmt: skip

    def _prolong(self, k: int, coarse_x, x) -> None:
        fine, coarse = self.frames[k], self.frames[k + 1]
        mg_prolong_kernel[self._grid(fine.size)](
            x, coarse_x, self.levels[k].prolongation, self.coefficient_row,
            fine.size, fine.row, fine.height, fine.width, coarse.size, coarse.row,
            float(self.options.correction_scale),
            BLOCK=BLOCK, num_warps=NUM_WARPS,
        )  # fmt: skip


def multigrid_preconditioner(
    stencil: Stencil,
    image_index: torch.Tensor,
    options: MultigridOptions = DEFAULT_OPTIONS,
    framed: dict | None = None,
):
    """The hierarchy of every image of ``stencil`` and the cycle for the systems ``image_index``.

    ``framed``: the operator's framed [N, size] coefficients, which level 0 then shares.
    """
    return TritonMultigrid(build_hierarchy(stencil, options, framed), image_index, options)
