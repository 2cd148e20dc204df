"""The ``"scipy"`` backend: sparse LU per image in float64, reused for the adjoint solve."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from ...reference import assemble_matrix, solvable_pixels
from ...solve.options import SolverOptions, SolveStats, relative_residual
from ...systems import LabelSystems, Stencil, coefficient_gradients


class DirectBackend:
    """Exact solves; the factorisation is made at the first (forward) solve, whose right-hand
    sides also tell which pixels touch a seed, and reused by the adjoint solve."""

    name = "scipy"

    def __init__(self, stencil: Stencil, systems: LabelSystems, options: SolverOptions):
        self.systems = systems
        self.options = options
        self.stencil = stencil
        self.shape = stencil.shape
        self.factors = None

    def _factorise(self, rhs: torch.Tensor) -> None:
        stencil, systems = self.stencil, self.systems
        d = stencil.diag.detach().double().cpu().numpy()
        edges = [e.detach().double().cpu().numpy() for e in stencil.edges]
        free = systems.free.cpu().numpy()
        seed_adjacent = systems.per_image_sum(rhs.detach().abs()).cpu().numpy() > 0
        image_index = systems.image_index.cpu().numpy()
        self.factors = {}
        for n in np.unique(image_index):
            A = assemble_matrix(d[n], *(e[n] for e in edges))
            keep = np.flatnonzero(solvable_pixels([e[n] for e in edges], free[n], seed_adjacent[n]))
            sub = A[keep][:, keep].tocsc()
            lu = _factor(sub) if keep.size else None
            if lu is None and keep.size:
                # Exactly singular: a degree computed in the input's dtype lost the share of an
                # edge too weak beside the others (a Grady contrast beyond the dtype), so a
                # region joined to the seeds by it has no excess. Factorised with a relative
                # shift of the dtype's rounding instead; the region then comes out cut off,
                # which propagate's partition-of-unity check reports (docs/numerics.md,
                # "Grady contrast").
                shift = 16 * float(torch.finfo(stencil.diag.dtype).eps)
                lu = _factor((sub + sp.diags(shift * sub.diagonal())).tocsc())
                if lu is None:
                    raise RuntimeError(f"scipy backend: the system of image {n} is singular")
            self.factors[int(n)] = (A, keep, lu)

    def solve(self, rhs):
        rhs = rhs() if callable(rhs) else rhs
        if self.factors is None:
            self._factorise(rhs)
        b = rhs.detach().double().cpu().numpy().reshape(rhs.shape[0], -1)
        x = np.zeros_like(b)
        image_index = self.systems.image_index.cpu().numpy()
        rr = np.zeros(b.shape[0])
        for n, (A, keep, lu) in self.factors.items():
            rows = np.flatnonzero(image_index == n)
            if lu is not None:
                x[np.ix_(rows, keep)] = lu.solve(np.ascontiguousarray(b[np.ix_(rows, keep)].T)).T
            residual = b[rows] - (A @ x[rows].T).T
            rr[rows] = np.sum(residual * residual, axis=1)
        if not np.all(np.isfinite(x)):
            raise RuntimeError("scipy backend: the direct solve produced non-finite values (degenerate weights)")
        count = b.shape[0]
        residual = relative_residual(torch.from_numpy(rr), torch.from_numpy(np.linalg.norm(b, axis=1)))
        stats = SolveStats(
            iterations=torch.zeros(count, dtype=torch.int64),  # a direct solve has none
            error=torch.zeros(count, dtype=torch.float64),  # exact up to the rounding of one LU solve
            residual=residual,
            converged=torch.ones(count, dtype=torch.bool),
            stalled=torch.zeros(count, dtype=torch.bool),
        ).to(rhs.device)
        return torch.from_numpy(x).to(device=rhs.device, dtype=rhs.dtype).view(rhs.shape), stats

    def solve_adjoint(self, rhs, x_forward: torch.Tensor):
        return self.solve(rhs)

    def coefficient_gradients(self, adjoint, x, Z, edges: bool):
        return coefficient_gradients(adjoint, x, Z, self.systems, edges)


def _factor(sub):
    """Sparse LU of a symmetric matrix (None when it is exactly singular)."""
    try:
        return spla.splu(sub, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    except RuntimeError:
        return None
