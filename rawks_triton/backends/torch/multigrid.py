"""The torch grid primitives of the multigrid cycle (:mod:`rawks_triton.solve.multigrid.cycle`):
each a handful of in-place torch ops over contiguous framed memory, on [G, k, size] views."""

from __future__ import annotations

import itertools

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
        """coarse_rhs = P^T res: the sum of p * res over the positions of each block (4 of a 2x2
        block, 8 of a 2x2x2 one, 4 of a 2x2x1 one)."""
        level, coarse = self.levels[depth], self.levels[depth + 1]
        corners = _corners(level, coarse)
        res_c, p_c = corners(res), corners(level.prolongation)
        out = coarse.frame.interior(coarse_rhs)
        torch.mul(res_c[0], p_c[0], out=out)
        for k in range(1, len(res_c)):
            out.addcmul_(res_c[k], p_c[k])

    def _prolong(self, depth: int, coarse_x, x) -> None:
        """x += correction_scale * P coarse_x."""
        level, coarse = self.levels[depth], self.levels[depth + 1]
        corners = _corners(level, coarse)
        x_c, p_c = corners(x), corners(level.prolongation)
        e = coarse.frame.interior(coarse_x)
        scale = self.options.correction_scale
        for k in range(len(x_c)):
            x_c[k].addcmul_(p_c[k], e, value=scale)


def _corners(level: Level, coarse: Level):
    """t [G, m, size] -> its strided [G, m, *coarse shape] views, one per position of the
    aggregation blocks (``level.block``), in C order (top-left, top-right, bottom-left,
    bottom-right for 2x2). An odd last row, column or slice pairs with the border."""
    block, shape = level.block, coarse.frame.shape
    frame = level.frame
    inside = tuple(slice(BORDER, BORDER + factor * extent) for factor, extent in zip(block, shape, strict=True))

    def views(t):
        blocks = frame.grid(t)[(slice(None), slice(None)) + inside]
        for i, (extent, factor) in enumerate(zip(shape, block, strict=True)):
            blocks = blocks.unflatten(2 + 2 * i, (extent, factor))  # [G, m, D', bz, H', by, W', bx]
        return [
            blocks[(slice(None), slice(None)) + tuple(v for k in position for v in (slice(None), k))]
            for position in itertools.product(*(range(factor) for factor in block))
        ]

    return views
