"""The 5-point operator A = diag(d) - W in torch: the one stencil product of every torch solver
path (the CG operator and every multigrid level), on the framed layout of
:mod:`rawks_triton.solve.layout`, and the one list of matrix entries that every assembled
form (the exact scipy reference, the dense coarsest level of the multigrid) is built from.

Coefficients: ``diag`` d_i; ``right`` the weight of the edge (i, i + 1), 0 in the last
column; ``down`` the weight of the edge (i, i + row), 0 in the last row; in a volume
``deep`` the weight of the edge (i, i + plane), 0 in the last slice.
"""

from __future__ import annotations

import torch


class StencilProduct:
    """out = A x, or out = rhs - A x, for framed vectors [..., size] (see the module docstring).

    ``diag`` and the ``edges`` (one array per axis, the weight of the edge from each position
    to the next one along the axis, ``offsets`` away: right, down and, in a volume, deep) are
    framed coefficients that broadcast against the vectors (per image [N, 1, size] against
    [N, k, size] when the k systems of an image share them). The coefficients are 0 on the
    border and every edge array is 0 at the last position along its axis, so no mask is
    needed and every position of ``out`` is written (0 on the border for a finite x). The
    views of a pair of buffers are made once (``cache=True``) and kept until :meth:`release`.
    """

    def __init__(self, diag: torch.Tensor | None, edges, offsets, cache: bool = False):
        self.diag = diag
        # (weight, slice of out, slice of x) per term: y_k -= w(k, k+o) x_{k+o} and
        # w(k-o, k) x_{k-o} for each axis offset o, in this order.
        self.terms = []
        for weight, o in zip(edges, offsets, strict=True):
            ahead, behind = slice(None, -o), slice(o, None)
            self.terms += [(weight[..., :-o], ahead, behind), (weight[..., :-o], behind, ahead)]
        self._cache = {} if cache else None

    def _views(self, x: torch.Tensor, out: torch.Tensor):
        if self._cache is None:
            return [(w, out[..., o], x[..., i]) for w, o, i in self.terms]
        key = (x.data_ptr(), out.data_ptr(), tuple(x.shape))
        views = self._cache.get(key)
        if views is None:
            if len(self._cache) >= 4:  # a solve uses two pairs, (p, Ap) and (x, Ax)
                self._cache.clear()
            views = self._cache[key] = [(w, out[..., o], x[..., i]) for w, o, i in self.terms]
        return views

    def __call__(self, x: torch.Tensor, out: torch.Tensor, rhs: torch.Tensor | None = None) -> torch.Tensor:
        if rhs is None:
            torch.mul(self.diag, x, out=out)
            sign = -1.0
        else:
            torch.addcmul(rhs, self.diag, x, value=-1.0, out=out)
            sign = 1.0
        for weight, target, neighbour in self._views(x, out):
            target.addcmul_(weight, neighbour, value=sign)
        return out

    def neighbours(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out = W x, the sum over the four neighbours j of w_ij x_j (``diag`` is not used)."""
        out.zero_()
        for weight, target, neighbour in self._views(x, out):
            target.addcmul_(weight, neighbour)
        return out

    def release(self) -> None:
        """Drop the cached views (they keep the vectors' buffers alive)."""
        if self._cache is not None:
            self._cache.clear()


def stencil_entries(diag: torch.Tensor, *edges: torch.Tensor):
    """The nonzero pattern and values of A for [N, *shape] coefficients on the unframed grid.

    ``edges`` are right, down (and deep, for a volume [N, d, h, w]). Returns (rows [E],
    cols [E], values [N, E] float64) over the unknowns (flat C-order index): the diagonal,
    then the edges of every axis in both directions.
    """
    n, shape = diag.shape[0], tuple(diag.shape[1:])
    idx = torch.arange(diag[0].numel(), device=diag.device).view(shape)
    rows, cols, values = [idx.reshape(-1)], [idx.reshape(-1)], [diag.reshape(n, -1).double()]
    for axis, weight in enumerate(edges):
        dim = len(shape) - 1 - axis  # right: the last dimension, down: the one before, deep: the first
        first = idx.narrow(dim, 0, shape[dim] - 1).reshape(-1)
        second = idx.narrow(dim, 1, shape[dim] - 1).reshape(-1)
        w = weight.narrow(dim + 1, 0, shape[dim] - 1).reshape(n, -1).double()
        rows += [first, second]
        cols += [second, first]
        values += [-w, -w]
    return torch.cat(rows), torch.cat(cols), torch.cat(values, dim=1)


def dense_matrix(diag: torch.Tensor, *edges: torch.Tensor) -> torch.Tensor:
    """The [N, n, n] float64 matrix diag(d) - W of [N, *shape] coefficients (n unknowns)."""
    n, size = diag.shape[0], diag[0].numel()
    rows, cols, values = stencil_entries(diag, *edges)
    A = torch.zeros(n, size, size, dtype=torch.float64, device=diag.device)
    A[:, rows, cols] = values
    return A
