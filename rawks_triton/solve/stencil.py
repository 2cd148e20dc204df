"""The 5-point operator A = diag(d) - W in torch: the one stencil product of every torch solver
path (the CG operator and every multigrid level), on the framed layout of
:mod:`rawks_triton.solve.layout`, and the one list of matrix entries that every assembled
form (the exact scipy reference, the dense coarsest level of the multigrid) is built from.

Coefficients: ``diag`` d_i; ``right`` the weight of the edge (i, i + 1), 0 in the last
column; ``down`` the weight of the edge (i, i + row), 0 in the last row.
"""

from __future__ import annotations

import torch


class StencilProduct:
    """out = A x, or out = rhs - A x, for framed vectors [..., size] (see the module docstring).

    ``diag``, ``right``, ``down`` are framed coefficients that broadcast against the vectors
    (per image [N, 1, size] against [N, k, size] when the k systems of an image share them).
    The neighbours of flat position k are k -+ 1 and k -+ ``row``; the coefficients are 0 on
    the border and ``right`` is 0 in the last column, so no mask is needed and every
    position of ``out`` is written (0 on the border for a finite x). The views of a pair of
    buffers are made once (``cache=True``) and kept until :meth:`release`.
    """

    def __init__(self, diag: torch.Tensor, right: torch.Tensor, down: torch.Tensor, row: int, cache: bool = False):
        self.diag = diag
        self.row = row
        # (weight, slice of out, slice of x): y_k -= w(k, k+1) x_{k+1}, w(k-1, k) x_{k-1},
        # w(k, k+row) x_{k+row} and w(k-row, k) x_{k-row}, in this order.
        ahead, behind = slice(None, -1), slice(1, None)
        up, below = slice(None, -row), slice(row, None)
        self.terms = (
            (right[..., :-1], ahead, behind),
            (right[..., :-1], behind, ahead),
            (down[..., :-row], up, below),
            (down[..., :-row], below, up),
        )
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


def stencil_entries(diag: torch.Tensor, right: torch.Tensor, down: torch.Tensor):
    """The nonzero pattern and values of A for [N, h, w] coefficients on the unframed grid.

    Returns (rows [E], cols [E], values [N, E] float64) over the h w unknowns (flat index
    i = y w + x): the diagonal, then every right and every down edge in both directions.
    """
    n, height, width = diag.shape
    idx = torch.arange(height * width, device=diag.device).view(height, width)
    r0, d0 = idx[:, :-1].reshape(-1), idx[:-1, :].reshape(-1)
    r1, d1 = r0 + 1, d0 + width
    w_r = right[:, :, :-1].reshape(n, -1).double()
    w_d = down[:, :-1, :].reshape(n, -1).double()
    rows = torch.cat([idx.reshape(-1), r0, r1, d0, d1])
    cols = torch.cat([idx.reshape(-1), r1, r0, d1, d0])
    values = torch.cat([diag.reshape(n, -1).double(), -w_r, -w_r, -w_d, -w_d], dim=1)
    return rows, cols, values


def dense_matrix(diag: torch.Tensor, right: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """The [N, h w, h w] float64 matrix diag(d) - W of [N, h, w] coefficients."""
    n, height, width = diag.shape
    rows, cols, values = stencil_entries(diag, right, down)
    A = torch.zeros(n, height * width, height * width, dtype=torch.float64, device=diag.device)
    A[:, rows, cols] = values
    return A
