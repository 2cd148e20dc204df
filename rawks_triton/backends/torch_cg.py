"""The plain-torch backend: matrix-free stencil products and batched Jacobi-PCG.

Memory layout. Every solver vector is stored as [S, M] with M = (H + 2) (W + 2): the
image with a one-pixel zero border, flattened. The four neighbours of a flat position k
are then k -+ 1 and k -+ (W + 2), so the stencil product is five elementwise torch ops on
contiguous slices (no shifted copies, no per-iteration allocation), and the border and
the seeds (where the coefficients are 0) need no masks. Coefficients are kept per image,
[N, M], and broadcast over the labels of the image when every image has the same number
of systems (the vectors are then viewed as [N, K, M]); otherwise they are gathered per
system, as they are for the shrinking working set of :class:`rawks_triton.cg.TorchPCG`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cg import SolverOptions, TorchPCG, finish_stats, run_pcg, tolerances
from ..systems import LabelSystems, Stencil, coefficient_gradients


def _padded(t: torch.Tensor) -> torch.Tensor:
    """[B, H, W] -> [B, (H + 2) (W + 2)], zero border, contiguous."""
    return F.pad(t, (1, 1, 1, 1)).flatten(1)


class PaddedStencil:
    """A 5-point operator on padded flat vectors, ``y = d x - sum_j w_ij x_j``, for a set of systems.

    The products are written to the interior range [lo, hi) of the flat vectors, which holds
    every pixel; the border positions inside that range have d = w = 0, so y = 0 there, and
    the positions outside it are never written (they stay 0 in buffers that start at 0).
    """

    def __init__(self, per_image: dict, image_index: torch.Tensor, height: int, width: int):
        self.per_image = per_image  # name -> [N, M] padded coefficients
        self.image_index = image_index  # [S] image of each system
        self.height, self.width = height, width
        self.row = width + 2
        self.size = (height + 2) * self.row
        self.lo, self.hi = self.row + 1, self.size - self.row - 1
        n_images = next(iter(per_image.values())).shape[0]
        counts = torch.bincount(image_index, minlength=n_images)
        k = int(counts[0]) if n_images else 0
        sorted_by_image = bool((image_index[1:] >= image_index[:-1]).all()) if image_index.numel() > 1 else True
        # Systems sorted by image, K per image: [S, M] views as [N, K, M] against [N, 1, M].
        self.group = k if k > 0 and sorted_by_image and bool((counts == k).all()) else None
        if self.group is None:
            coefficients = {name: c.index_select(0, image_index) for name, c in per_image.items()}
        else:
            coefficients = {name: c.unsqueeze(1) for name, c in per_image.items()}
        lo, hi, row = self.lo, self.hi, self.row
        self.inv_diag = coefficients["inv_diag"]
        self.diag = coefficients["diag"][..., lo:hi]
        # w(k, k+1) is the right weight of k, w(k, k-1) the right weight of k-1 ("left"), etc.
        self.terms = tuple(
            (coefficients[name][..., lo:hi], shift)
            for name, shift in (("right", 1), ("left", -1), ("down", row), ("up", -row))
        )
        self._view_cache = {}

    @classmethod
    def from_stencil(cls, stencil: Stencil, image_index: torch.Tensor) -> "PaddedStencil":
        _, height, width = stencil.shape
        left = F.pad(stencil.right[:, :, :-1], (1, 0))
        up = F.pad(stencil.down[:, :-1, :], (0, 0, 1, 0))
        per_image = {
            "diag": stencil.diag, "right": stencil.right, "left": left,
            "down": stencil.down, "up": up, "inv_diag": stencil.inv_diag,
        }
        return cls({name: _padded(t) for name, t in per_image.items()}, image_index, height, width)

    def restrict(self, rows: torch.Tensor) -> "PaddedStencil":
        """The operator of the systems ``rows`` only."""
        return PaddedStencil(self.per_image, self.image_index.index_select(0, rows), self.height, self.width)

    def grouped(self, v: torch.Tensor) -> torch.Tensor:
        """[S, M] -> the layout the coefficients broadcast against."""
        return v.view(-1, self.group, self.size) if self.group is not None else v

    def _views(self, x: torch.Tensor, out: torch.Tensor):
        """The interior of ``out`` and the shifted interiors of ``x``, made once per buffer pair."""
        key = (x.data_ptr(), out.data_ptr(), tuple(x.shape))
        views = self._view_cache.get(key)
        if views is None:
            lo, hi = self.lo, self.hi
            xg = self.grouped(x)
            shifted = tuple(xg[..., lo + shift : hi + shift] for _, shift in self.terms)
            views = (self.grouped(out)[..., lo:hi], xg[..., lo:hi], shifted)
            if len(self._view_cache) >= 2:  # a solve uses two pairs, (p, Ap) and (x, Ax)
                self._view_cache.clear()
            self._view_cache[key] = views
        return views

    def release_views(self):
        """Drop the cached views (they keep the solver's buffers alive)."""
        self._view_cache.clear()

    def matvec(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out = A x for [S, M] vectors; out's positions outside [lo, hi) are left as they are."""
        y, center, shifted = self._views(x, out)
        torch.mul(self.diag, center, out=y)
        for (weight, _), neighbour in zip(self.terms, shifted):
            y.addcmul_(weight, neighbour, value=-1.0)
        return out

    def precondition(self, r: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        torch.mul(self.inv_diag, self.grouped(r), out=self.grouped(out))
        return out

    def pad(self, v: torch.Tensor) -> torch.Tensor:
        return _padded(v)

    def unpad(self, v: torch.Tensor) -> torch.Tensor:
        """[S, M] -> [S, H, W] (a copy)."""
        return v.view(-1, self.height + 2, self.row)[:, 1:-1, 1:-1].contiguous()


class TorchBackend:
    name = "torch"

    def __init__(self, stencil: Stencil, systems: LabelSystems, options: SolverOptions, rhs: torch.Tensor):
        self.op = PaddedStencil.from_stencil(stencil, systems.image_index)
        if options.preconditioner == "multigrid":  # the V-cycle of rawks_triton.multigrid replaces Jacobi
            from ..multigrid import MultigridOperator, build_hierarchy

            self.op = MultigridOperator(self.op, build_hierarchy(stencil, framed=self.op.per_image))
        self.systems = systems
        self.options = options
        self.maxiter = options.maxiter_for(*stencil.shape[1:])

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """A x for [S, H, W] vectors (tests and diagnostics; the solver uses the padded layout)."""
        xp = self.op.pad(x)
        out = self.op.matvec(xp, torch.zeros_like(xp))
        self.op.release_views()
        return self.op.unpad(out)

    def solve(self, rhs: torch.Tensor):
        b_norm, tol = tolerances(rhs, self.options)
        pcg = TorchPCG(self.op, self.op.pad(rhs), tol)
        try:
            done = run_pcg(pcg, self.maxiter, self.options.check_every)
        finally:
            self.op.release_views()
        x = self.op.unpad(pcg.solution)
        return x, finish_stats(pcg.iterations, pcg.true_rr, b_norm, tol, self.maxiter, done)

    def coefficient_gradients(self, adjoint, x, Z, edges: bool):
        return coefficient_gradients(adjoint, x, Z, self.systems, edges)
