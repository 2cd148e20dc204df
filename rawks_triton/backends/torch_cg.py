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

from ..cg import AdjointRule, ForwardRule, SolverOptions, TorchPCG, run_pcg
from ..solve.layout import ImageGroups
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
        self.groups = ImageGroups(image_index, n_images)
        lo, hi, row = self.lo, self.hi, self.row
        coefficients = {name: self.groups.spread(c) for name, c in per_image.items()}
        self.inv_diag = coefficients["inv_diag"]
        self.diag = coefficients["diag"][..., lo:hi]
        # w(k, k+1) is the right weight of k, w(k, k-1) the right weight of k-1 (a view one
        # position back), w(k, k+row) the down weight of k, w(k, k-row) that of k-row.
        right, down = coefficients["right"], coefficients["down"]
        self.terms = (
            (right[..., lo:hi], 1), (right[..., lo - 1 : hi - 1], -1),
            (down[..., lo:hi], row), (down[..., lo - row : hi - row], -row),
        )
        self._view_cache = {}

    @classmethod
    def from_stencil(cls, stencil: Stencil, image_index: torch.Tensor) -> "PaddedStencil":
        _, height, width = stencil.shape
        names = ("diag", "right", "down", "inv_diag")
        return cls({name: _padded(getattr(stencil, name)) for name in names}, image_index, height, width)

    def restrict(self, rows: torch.Tensor) -> "PaddedStencil":
        """The operator of the systems ``rows`` only."""
        return PaddedStencil(self.per_image, self.image_index.index_select(0, rows), self.height, self.width)

    def grouped(self, v: torch.Tensor) -> torch.Tensor:
        """[S, M] -> the layout the coefficients broadcast against."""
        return self.groups.grouped(v)

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

    def precondition(self, r: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
        torch.mul(self.inv_diag, self.grouped(r), out=self.grouped(out))
        return out

    def release(self) -> None:
        """No work buffers to free (the protocol of the multigrid operator)."""

    def pad(self, v: torch.Tensor) -> torch.Tensor:
        return _padded(v)

    def unpad(self, v: torch.Tensor) -> torch.Tensor:
        """[S, M] -> [S, H, W] (a copy)."""
        return v.view(-1, self.height + 2, self.row)[:, 1:-1, 1:-1].contiguous()


class TorchBackend:
    name = "torch"

    def __init__(self, stencil: Stencil, systems: LabelSystems, options: SolverOptions):
        self.op = PaddedStencil.from_stencil(stencil, systems.image_index)
        self.stencil = stencil
        self.certifier = None
        if options.preconditioner == "multigrid":  # the V-cycle of rawks_triton.multigrid replaces Jacobi
            self.op = self._multigrid(self.op)
            self.stencil = None  # the padded coefficients and the hierarchy hold all that is needed
        self.shape = stencil.shape
        self.systems = systems
        self.options = options
        self.maxiter = options.maxiter_for(*self.shape[1:])

    def _multigrid(self, op):
        from ..multigrid import MultigridOperator, build_hierarchy

        return MultigridOperator(op, build_hierarchy(self.stencil, framed=op.per_image))  # (stencil of __init__)

    def _certify(self):
        """The error estimator of the final test: the preconditioner itself for multigrid; for
        Jacobi a multigrid cycle (built on first use), since r / d misses errors behind walls."""
        if self.options.preconditioner == "multigrid":
            return None
        if self.certifier is None:
            self.certifier = self._multigrid(PaddedStencil.from_stencil(self.stencil, self.systems.image_index))
        return self.certifier.precondition

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """A x for [S, H, W] vectors (tests and diagnostics; the solver uses the padded layout)."""
        xp = self.op.pad(x)
        out = self.op.matvec(xp, torch.zeros_like(xp))
        self.op.release_views()
        return self.op.unpad(out)

    def _solve(self, rhs, rule):
        """Solve in the padded layout; ``rhs`` is an [S, H, W] tensor or a function that makes
        one (then no unpadded copy outlives the padding). Returns the padded solution."""
        b = self.op.pad(rhs() if callable(rhs) else rhs)
        rhs = None
        rhs_norm = torch.linalg.vector_norm(b.flatten(1), dim=1)
        pcg = TorchPCG(self.op, b, rule, self.options, certify=self._certify(), grid_shape=self.shape[1:])
        del b
        try:
            done = run_pcg(pcg, self.maxiter, self.options.checks_every(rhs_norm.device))
        finally:
            self.op.release_views()
            self.op.release()  # the cycle's work buffers are made again for the next solve
        stats = pcg.stats(rhs_norm, self.maxiter, done)
        x = pcg.solution
        del pcg  # r, p, z, A p and b go before the caller unpads x
        return x, stats

    def solve(self, rhs):
        """The forward solve A x = b of every system: [S, H, W] -> ([S, H, W], SolveStats)."""
        x, stats = self._solve(rhs, ForwardRule(self.options, self.op.groups))
        return self.op.unpad(x), stats

    def solve_adjoint(self, rhs, x_forward: torch.Tensor):
        """The adjoint solve A lambda = g with the same operator (A is symmetric);
        ``x_forward`` [S, H, W] is the forward solution (for the stopping rule)."""
        rule = AdjointRule(self.options, self.op.groups, self.op.pad(x_forward), self.op.per_image["diag"])
        x, stats = self._solve(rhs, rule)
        return self.op.unpad(x), stats

    def coefficient_gradients(self, adjoint, x, Z, edges: bool):
        return coefficient_gradients(adjoint, x, Z, self.systems, edges)
