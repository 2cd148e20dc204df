"""The multigrid cycle with Triton primitives: the preconditioner of backend="triton".

The hierarchy is built by :func:`rawks_triton.solve.multigrid.build_hierarchy` (torch ops,
on the tensors' device) once per forward pass and kept by the backend for the adjoint solve.
The cycle is the one of :class:`rawks_triton.solve.multigrid.MultigridCycle`; its
primitives (residual, Jacobi step, restriction, prolongation) are launches of the kernels
of :mod:`rawks_triton.kernels.multigrid`, the coarsest level is one batched dense product
(cuBLAS on CUDA). Level 0 is the CG's framed layout, so :meth:`apply` reads the CG's r and
writes its z with no copy. Images take the 5-point kernels and 2x2 blocks; volumes the
7-point ones (``THREE_D``) with each level's block factors (``Level.block``: 2x2x2, or
semi-coarsened blocks such as 1x2x2), the same hierarchy and cycle as the torch backend.
"""

from __future__ import annotations

import torch
import triton

from ...kernels import mg_jacobi_kernel, mg_prolong_kernel, mg_residual_kernel, mg_restrict_kernel
from ...solve.multigrid import Level, MultigridCycle, MultigridOptions, build_hierarchy
from ...systems import Stencil

BLOCK = 1024
NUM_WARPS = 4
# Volumes: at 8 elements per thread the 7-point residual took 128 registers on sm_90 in both
# dtypes and the 8-position restriction 80 (fp32) and 114 (fp64) (aot table); 8 warps (4 per
# thread) take 64 and 80, and 48 and 60. The position-wise Jacobi step keeps NUM_WARPS.
# Not tuned on a GPU.
VOLUME_NUM_WARPS = 8
DEFAULT_OPTIONS = MultigridOptions()


def grid_warps(three_d: bool) -> int:
    """The warps of the kernels that follow the grid (residual, restriction, prolongation)."""
    return VOLUME_NUM_WARPS if three_d else NUM_WARPS


class TritonMultigrid(MultigridCycle):
    """z = M r for framed [S, size] vectors (:class:`rawks_triton.solve.layout.Frame`)."""

    def __init__(self, levels: list[Level], image_index: torch.Tensor, options: MultigridOptions = DEFAULT_OPTIONS):
        super().__init__(levels, image_index, options)
        top = self.levels[0]
        # The row of the (possibly gathered) level coefficients that system s reads: its
        # image when every image has the same number of systems, else its own row.
        rows = torch.arange(self.num_systems, device=top.diag.device) // self.per_group
        self.coefficient_row = rows.to(torch.int64)
        self.frames = [level.frame for level in self.levels]
        self.three_d = self.frame.ndim == 3
        self.num_warps = grid_warps(self.three_d)  # of the residual, restriction and prolongation
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

    def _block(self, k: int) -> tuple[int, int, int]:
        """The (z, y, x) block factors of level k (the kernels read them on volumes only)."""
        block = self.levels[k].block
        return (1,) * (3 - len(block)) + tuple(block)

    def _residual(self, level: Level, out, rhs, x):
        frame = level.frame
        # ``deep_ptr`` on images: any coefficient (the 5-point kernel does not read it)
        deep = level.deep if self.three_d else level.down
        mg_residual_kernel[self._grid(frame.hi)](
            rhs, x, out, level.diag, level.right, level.down, deep, self.coefficient_row,
            frame.size, frame.row, frame.plane, frame.lo, frame.hi,
            THREE_D=self.three_d, BLOCK=BLOCK, num_warps=self.num_warps,
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
            fine.size, fine.row, fine.plane,
            coarse.size, coarse.row, coarse.plane, coarse.depth, coarse.height, coarse.width, *self._block(k),
            THREE_D=self.three_d, BLOCK=BLOCK, num_warps=self.num_warps,
        )  # fmt: skip

    def _prolong(self, k: int, coarse_x, x) -> None:
        fine, coarse = self.frames[k], self.frames[k + 1]
        mg_prolong_kernel[self._grid(fine.size)](
            x, coarse_x, self.levels[k].prolongation, self.coefficient_row,
            fine.size, fine.row, fine.plane, fine.depth, fine.height, fine.width,
            coarse.size, coarse.row, coarse.plane, *self._block(k),
            float(self.options.correction_scale),
            THREE_D=self.three_d, BLOCK=BLOCK, num_warps=self.num_warps,
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
