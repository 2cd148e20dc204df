"""The exact reference: the 5-point systems assembled as scipy.sparse matrices in float64.

Tests and benchmarks import these functions; the ``"scipy"`` backend is built on them.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from .solve.stencil import stencil_entries


def _edge_lists(height: int, width: int):
    """Flat pixel indices of every right edge (i, i+1) and down edge (i, i+W)."""
    idx = np.arange(height * width).reshape(height, width)
    right = idx[:, :-1].ravel()
    down = idx[:-1, :].ravel()
    return right, right + 1, down, down + width


def assemble_matrix(diag: np.ndarray, right: np.ndarray, down: np.ndarray) -> sp.csr_array:
    """A = diag(d) - W on the full H x W grid as a symmetric CSR matrix (float64).

    ``right[i, j]`` weights the edge (i, j)-(i, j+1) and ``down[i, j]`` the edge
    (i, j)-(i+1, j); the last column of ``right`` and the last row of ``down`` are unused.
    The entries are those of :func:`rawks_triton.solve.stencil.stencil_entries`.
    """
    height, width = np.shape(diag)
    as_batch = lambda t: torch.from_numpy(np.asarray(t, dtype=np.float64)).reshape(1, height, width)  # noqa: E731
    rows, cols, values = stencil_entries(as_batch(diag), as_batch(right), as_batch(down))
    n = height * width
    return sp.coo_array((values[0].numpy(), (rows.numpy(), cols.numpy())), shape=(n, n)).tocsr()


def solvable_pixels(right: np.ndarray, down: np.ndarray, free: np.ndarray, seed_adjacent: np.ndarray) -> np.ndarray:
    """Free pixels whose component (over positive free-free edges) touches a seed.

    ``right``/``down`` are the stencil's edges (already cut at seeds). A component with no
    positive edge to any seed has b = 0 for every label, so its solution is 0; in the Grady
    model its matrix is a singular Laplacian, so it must be left out of a direct solve.
    Returns a flat bool mask.
    """
    height, width = free.shape
    r0, r1, d0, d1 = _edge_lists(height, width)
    w = np.concatenate([right[:, :-1].ravel(), down[:-1, :].ravel()])
    a = np.concatenate([r0, d0])[w > 0]
    b = np.concatenate([r1, d1])[w > 0]
    n = height * width
    graph = sp.coo_array((np.ones(a.size), (a, b)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    touching = np.zeros(component.max() + 1, dtype=bool)
    touching[component[seed_adjacent.ravel()]] = True
    return free.ravel() & touching[component]


def dense_solve(diag, right, down, free, rhs):
    """Dense float64 solve on the free pixels, for the smallest tests: [H, W] x [L, H, W]."""
    A = assemble_matrix(diag, right, down).toarray()
    f = free.ravel()
    out = np.zeros((rhs.shape[0], f.size))
    out[:, f] = np.linalg.solve(A[np.ix_(f, f)], rhs.reshape(rhs.shape[0], -1)[:, f].T).T
    return out.reshape(rhs.shape)
