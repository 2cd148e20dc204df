"""The torch grid primitives of the multigrid cycle (:mod:`rawks_triton.solve.multigrid.cycle`):
each a handful of in-place torch ops over contiguous framed memory, on [G, k, size] views."""

from __future__ import annotations

import torch

from ...solve.layout import BORDER
from ...solve.multigrid import Level, MultigridCycle, MultigridOptions
from ...solve.multigrid.hierarchy import DEFAULT_OPTIONS
from ...solve.stencil import StencilProduct


class TorchMultigrid(MultigridCycle):
    """z = M r in plain torch (CPU or CUDA); the preconditioner of backend="torch"."""

    def __init__(self, levels: list[Level], image_index: torch.Tensor, options: MultigridOptions = DEFAULT_OPTIONS):
        super().__init__(levels, image_index, options)
        self._products = {}
        self._smoothers = {}

    def _residual(self, level: Level, out, rhs, x):
        """out = rhs - A x (the stencil product of every solver path)."""
        product = self._products.get(id(level))
        if product is None:
            product = self._products[id(level)] = StencilProduct(level.diag, level.edges, level.frame.offsets)
        return product(x, out, rhs=rhs)

    def _jacobi(self, level: Level, x, r, first: bool = False) -> None:
        """x += weight D^-1 r (x = weight D^-1 r when ``first``)."""
        smoother = self._smoothers.get(id(level))
        if smoother is None:  # weight D^-1 of the level, formed once (a coefficient-sized array)
            smoother = self._smoothers[id(level)] = level.inv_diag * self.options.jacobi_weight
        if first:
            torch.mul(smoother, r, out=x)
        else:
            x.addcmul_(smoother, r)

    def _restrict(self, depth: int, res, coarse_rhs) -> None:
        """coarse_rhs = P^T res: the sum of p * res over the four pixels of each 2x2 block."""
        level, coarse = self.levels[depth], self.levels[depth + 1]
        corners = _corners(level, coarse)
        res_c, p_c = corners(res), corners(level.prolongation)
        out = coarse.frame.interior(coarse_rhs)
        torch.mul(res_c[0], p_c[0], out=out)
        for k in (1, 2, 3):
            out.addcmul_(res_c[k], p_c[k])

    def _prolong(self, depth: int, coarse_x, x) -> None:
        """x += correction_scale * P coarse_x."""
        level, coarse = self.levels[depth], self.levels[depth + 1]
        corners = _corners(level, coarse)
        x_c, p_c = corners(x), corners(level.prolongation)
        e = coarse.frame.interior(coarse_x)
        scale = self.options.correction_scale
        for k in range(4):
            x_c[k].addcmul_(p_c[k], e, value=scale)


def _corners(level: Level, coarse: Level):
    """t [G, m, size] -> its four [G, m, H', W'] strided views, one per corner of the 2x2 blocks."""
    rows, cols = 2 * coarse.height, 2 * coarse.width
    frame = level.frame

    def views(t):
        blocks = frame.grid(t)[:, :, BORDER : BORDER + rows, BORDER : BORDER + cols]
        blocks = blocks.unflatten(2, (coarse.height, 2)).unflatten(4, (coarse.width, 2))  # [G, m, H', 2, W', 2]
        return [blocks[:, :, :, a, :, b] for a in (0, 1) for b in (0, 1)]

    return views
