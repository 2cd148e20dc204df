"""The multigrid cycle over abstract grid primitives: z = M r, one symmetric V-cycle (or
W-cycle) per system, for vectors in the framed layout of level 0.

A backend supplies the four grid primitives, on [G, k, size] views of framed vectors
(:class:`rawks_triton.solve.layout.ImageGroups` gives G and k):

* ``_residual(level, out, rhs, x)``: out = rhs - A x;
* ``_jacobi(level, x, r, first)``: x += w D^-1 r (x = w D^-1 r when ``first``);
* ``_restrict(depth, res, coarse_rhs)``: coarse_rhs = P^T res;
* ``_prolong(depth, coarse_x, x)``: x += correction_scale P coarse_x.

The coarsest level is one batched dense product with its precomputed inverse (here).
The torch primitives are :mod:`rawks_triton.backends.torch.multigrid`, the Triton ones
:mod:`rawks_triton.backends.triton.multigrid`; both run exactly this order of operations.
"""

from __future__ import annotations

import torch

from ..layout import ImageGroups
from .hierarchy import DEFAULT_OPTIONS, Level, MultigridOptions, select_images


class MultigridCycle:
    """z = M r for framed [S, size] vectors, M one cycle per system (see the module docstring).

    ``levels`` are per image (:func:`rawks_triton.solve.multigrid.build_hierarchy`);
    ``image_index`` [S] maps systems to images. The levels are selected (or gathered per
    system) as :class:`ImageGroups` says, once. Work buffers are allocated on first use and
    freed by :meth:`release`.
    """

    def __init__(self, levels: list[Level], image_index: torch.Tensor, options: MultigridOptions = DEFAULT_OPTIONS):
        self.options = options
        self.num_systems = int(image_index.numel())
        self.image_groups = ImageGroups(image_index, levels[0].diag.shape[0])
        groups = self.image_groups
        self.per_group = groups.per_image if groups.per_image is not None else 1
        self.groups = self.num_systems // self.per_group if self.num_systems else 0
        self.levels = levels if groups.covers_every_image else [select_images(level, groups) for level in levels]
        self.frame = self.levels[0].frame
        self._buffers = None
        self._source = (levels, image_index)

    def restrict(self, rows: torch.Tensor) -> MultigridCycle:
        """The cycle of the systems ``rows`` only (on the same per-image hierarchy)."""
        levels, image_index = self._source
        return type(self)(levels, image_index.index_select(0, rows), self.options)

    @property
    def frame_size(self) -> int:
        return self.frame.size

    def _allocate(self) -> None:
        """The work buffers of the coarse levels (about a third of a level-0 vector in all);
        level 0 works in the caller's right-hand side, output and scratch. Borders stay 0."""
        top = self.levels[0]
        new = dict(dtype=top.diag.dtype, device=top.diag.device)
        shape = lambda level: (self.groups, self.per_group, level.size)  # noqa: E731
        coarse = self.levels[1:]
        second = self.options.cycle == "W"
        self._buffers = dict(
            rhs=[None] + [torch.zeros(shape(level), **new) for level in coarse],
            x=[None] + [torch.zeros(shape(level), **new) for level in coarse],
            residual=[None] + [torch.zeros(shape(level), **new) for level in coarse[:-1]],
            # W-cycle: the second coarse cycle's right-hand side and result
            rhs2=[None] + [torch.zeros(shape(level), **new) if second else None for level in coarse],
            x2=[None] + [torch.zeros(shape(level), **new) if second else None for level in coarse],
        )

    def release(self) -> None:
        """Free the work buffers (they are made again at the next application)."""
        self._buffers = None

    def _buffer(self, name: str, depth: int) -> torch.Tensor:
        if self._buffers is None:
            self._allocate()
        return self._buffers[name][depth]

    def apply(self, r: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """out = M r for framed [S, size] vectors (zero border); returns out.

        ``scratch``: a vector of the same shape whose contents may be overwritten (the
        level-0 residual of the cycle); without it one is allocated for this call.
        """
        shape = (self.groups, self.per_group, self.frame_size)
        work = torch.empty_like(r) if scratch is None else scratch
        self._level0_residual = work.view(shape)
        try:
            self._cycle(0, r.view(shape), out.view(shape))
        finally:
            self._level0_residual = None
        return out

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        """M r for unframed [S, H, W] vectors (a new tensor; for tests and diagnostics)."""
        framed = self.frame.frame(r)
        out = torch.empty_like(framed)
        self.apply(framed, out)
        return self.frame.unframe(out)

    def _cycle(self, depth: int, rhs: torch.Tensor, x: torch.Tensor) -> None:
        """x = cycle of level ``depth`` applied to rhs ([G, k, n]; x is overwritten)."""
        level = self.levels[depth]
        if level.coarsest_inverse is not None:
            self._coarsest(level, rhs, x)
            return
        res = self._level0_residual if depth == 0 else self._buffer("residual", depth)
        steps = self.options.smoothing_steps
        # pre-smoothing from x = 0
        self._jacobi(level, x, rhs, first=True)
        for _ in range(steps - 1):
            self._jacobi(level, x, self._residual(level, res, rhs, x))
        coarse_rhs, coarse_x = self._buffer("rhs", depth + 1), self._buffer("x", depth + 1)
        self._restrict(depth, self._residual(level, res, rhs, x), coarse_rhs)
        coarse = self.levels[depth + 1]
        self._cycle(depth + 1, coarse_rhs, coarse_x)
        if self.options.cycle == "W" and coarse.coarsest_inverse is None:
            # a second cycle on the coarse residual: x_c += B_c (r_c - A_c x_c), symmetric as
            # the map r_c -> (2 B_c - B_c A_c B_c) r_c
            rhs2, x2 = self._buffer("rhs2", depth + 1), self._buffer("x2", depth + 1)
            self._residual(coarse, rhs2, coarse_rhs, coarse_x)
            self._cycle(depth + 1, rhs2, x2)
            coarse_x.add_(x2)
        self._prolong(depth, coarse_x, x)
        # post-smoothing
        for _ in range(steps):
            self._jacobi(level, x, self._residual(level, res, rhs, x))

    def _coarsest(self, level: Level, rhs, x) -> None:
        torch.matmul(rhs, level.coarsest_inverse, out=x)

    # ---- the grid primitives of a backend ---------------------------------------------------

    def _residual(self, level: Level, out, rhs, x):
        raise NotImplementedError

    def _jacobi(self, level: Level, x, r, first: bool = False) -> None:
        raise NotImplementedError

    def _restrict(self, depth: int, res, coarse_rhs) -> None:
        raise NotImplementedError

    def _prolong(self, depth: int, coarse_x, x) -> None:
        raise NotImplementedError
