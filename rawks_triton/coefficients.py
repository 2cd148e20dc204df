"""Boundary scores -> stencil coefficients of the random-walk systems (5-point on images,
7-point on volumes).

Both models give, per image, tensors of the shape of the grid, (N, H, W) or (N, D, H, W):

* ``diag``  d_i, the diagonal of A = diag(d) - W,
* ``right`` W_{i, i+1}, the weight of the edge to the next pixel along x (0 in the last column),
* ``down``  W_{i, i+W}, the weight of the edge to the next pixel along y (0 in the last row),
* ``deep``  (volumes only) W_{i, i+HW}, the edge to the next slice along z (0 in the last slice).

They are returned as ``(diag, right, down)`` or ``(diag, right, down, deep)``: the edges
in the order of :attr:`rawks_triton.systems.Stencil.edges`. They are plain differentiable
torch expressions, so autograd chains the solver's coefficient gradients back to the
boundary scores. Seeds are applied later (:mod:`rawks_triton.systems`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _dim_of_axis(t: torch.Tensor, axis: int, ndim: int) -> int:
    """The tensor dimension of edge axis ``axis`` (0: x, the last; 1: y; 2: z) of an ndim-D grid."""
    return t.dim() - 1 - axis


def zero_last(t: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    """``t`` with its last position along edge axis ``axis`` set to 0 (no edge behind it)."""
    dim = _dim_of_axis(t, axis, ndim)
    size = t.shape[dim]
    return torch.cat([t.narrow(dim, 0, size - 1), torch.zeros_like(t.narrow(dim, 0, 1))], dim=dim)


def shifted_pair(t: torch.Tensor, axis: int):
    """(t_i, t_{i+1}) along edge axis ``axis``, each one shorter along it."""
    dim = t.dim() - 1 - axis
    size = t.shape[dim]
    return t.narrow(dim, 0, size - 1), t.narrow(dim, 1, size - 1)


def pad_last(t: torch.Tensor, axis: int) -> torch.Tensor:
    """Append one zero along edge axis ``axis`` (an edge array one shorter -> full size)."""
    pad = [0, 0] * (axis + 1)
    pad[-1] = 1
    return F.pad(t, pad)


def grid_edges(like: torch.Tensor, ndim: int = 2) -> tuple[torch.Tensor, ...]:
    """Unit weights on every in-grid edge, per axis, shaped like ``like`` (N, *grid)."""
    ones = torch.ones_like(like)
    return tuple(zero_last(ones, axis, ndim) for axis in range(ndim))


def rawks_coefficients(boundary: torch.Tensor, ndim: int = 2):
    """RAWKS node costs (paper eqs. 3-8): W_ij = 1 on the grid's edges, d_i = 2 ndim exp(B_i).

    ``boundary`` (N, *grid), B >= 0; 4 exp(B) on images, 6 exp(B) on volumes, so that B = 0
    is free movement (the walk survives a step with probability 1) in both. Paths that leave
    the grid have weight 0, so for B >= 0 the restricted matrix is strictly diagonally
    dominant on the border rows and irreducible: positive definite.
    """
    return (2.0 * ndim * torch.exp(boundary),) + grid_edges(boundary, ndim)


def degree(*edges: torch.Tensor) -> torch.Tensor:
    """d_i = sum of the weights of the in-grid edges at i (reflecting border)."""
    total = None
    for axis, weight in enumerate(edges):
        first, _ = shifted_pair(weight, axis)
        behind = pad_last(first, axis).roll(1, dims=weight.dim() - 1 - axis)  # w(i - 1, i)
        total = weight + behind if total is None else total + weight + behind
    return total


def grady_node_coefficients(boundary: torch.Tensor, ndim: int = 2):
    """Grady conductances from node scores: W_ij = exp(-(B_i + B_j) / 2), d = row sums."""
    edges = []
    for axis in range(ndim):
        a, b = shifted_pair(boundary, axis)
        edges.append(pad_last(torch.exp(-0.5 * (a + b)), axis))
    return (degree(*edges),) + tuple(edges)


def grady_edge_coefficients(edges: torch.Tensor):
    """Grady conductances given per edge: ``edges`` (N, ndim, *grid) = (right, down[, deep])
    weights. The weight at the last position along each axis has no edge behind it and is
    ignored."""
    ndim = edges.dim() - 2
    weights = tuple(zero_last(edges[:, axis], axis, ndim) for axis in range(ndim))
    return (degree(*weights),) + weights
