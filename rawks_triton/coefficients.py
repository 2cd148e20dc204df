"""Boundary scores -> 5-point stencil coefficients of the random-walk systems.

Both models give, per image, three (N, H, W) tensors on the full pixel grid:

* ``diag``  d_i, the diagonal of A = diag(d) - W,
* ``right`` W_{i, i+1}, the weight of the edge to the right neighbour (0 in the last column),
* ``down``  W_{i, i+W}, the weight of the edge to the neighbour below (0 in the last row).

They are plain differentiable torch expressions, so autograd chains the solver's
coefficient gradients back to the boundary scores. Seeds are applied later
(:mod:`rawks_triton.systems`).
"""

from __future__ import annotations

import torch


def _zero_last_column(t: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(t[..., :, :-1], (0, 1))


def _zero_last_row(t: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(t[..., :-1, :], (0, 0, 0, 1))


def grid_edges(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit weights on every in-image 4-neighbour edge, shaped like ``like`` (N, H, W)."""
    ones = torch.ones_like(like)
    return _zero_last_column(ones), _zero_last_row(ones)


def rawks_coefficients(boundary: torch.Tensor):
    """RAWKS node costs (paper eqs. 3-8): W_ij = 1 on 4-neighbour edges, d_i = 4 exp(B_i).

    ``boundary`` (N, H, W), B >= 0. Paths that leave the image have weight 0, so for
    B >= 0 the restricted matrix is strictly diagonally dominant on the border rows and
    irreducible: positive definite.
    """
    right, down = grid_edges(boundary)
    return 4.0 * torch.exp(boundary), right, down


def degree(right: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """d_i = sum of the weights of the in-image edges at i (reflecting border)."""
    left = torch.nn.functional.pad(right[..., :, :-1], (1, 0))
    up = torch.nn.functional.pad(down[..., :-1, :], (0, 0, 1, 0))
    return right + left + down + up


def grady_node_coefficients(boundary: torch.Tensor):
    """Grady conductances from node scores: W_ij = exp(-(B_i + B_j) / 2), d = row sums."""
    right = torch.exp(-0.5 * (boundary[..., :, :-1] + boundary[..., :, 1:]))
    down = torch.exp(-0.5 * (boundary[..., :-1, :] + boundary[..., 1:, :]))
    right = torch.nn.functional.pad(right, (0, 1))
    down = torch.nn.functional.pad(down, (0, 0, 0, 1))
    return degree(right, down), right, down


def grady_edge_coefficients(edges: torch.Tensor):
    """Grady conductances given per edge: ``edges`` (N, 2, H, W) = (right, down) weights.

    The right weight of the last column and the down weight of the last row have no
    edge behind them and are ignored.
    """
    right = _zero_last_column(edges[:, 0])
    down = _zero_last_row(edges[:, 1])
    return degree(right, down), right, down
