"""The exact reference: the 5-point systems assembled as scipy.sparse matrices in float64.

Tests and benchmarks import these functions; the ``"scipy"`` backend is built on them.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from .solve.stencil import stencil_entries


def assemble_matrix(diag: np.ndarray, *edges: np.ndarray) -> sp.csr_array:
    """A = diag(d) - W on the full grid (H x W, or D x H x W) as a symmetric CSR matrix (float64).

    ``edges`` are right, down (and deep, for a volume): ``right[..., i, j]`` weights the edge
    to (i, j+1), ``down[..., i, j]`` the edge to (i+1, j), ``deep[k, i, j]`` the edge to
    (k+1, i, j); the last position along each edge's axis is unused. The entries are those
    of :func:`rawks_triton.solve.stencil.stencil_entries`.
    """
    shape = np.shape(diag)
    as_batch = lambda t: torch.from_numpy(np.asarray(t, dtype=np.float64)).reshape((1,) + shape)  # noqa: E731
    rows, cols, values = stencil_entries(as_batch(diag), *(as_batch(e) for e in edges))
    n = int(np.prod(shape))
    return sp.coo_array((values[0].numpy(), (rows.numpy(), cols.numpy())), shape=(n, n)).tocsr()


def solvable_pixels(edges, free: np.ndarray, seed_adjacent: np.ndarray) -> np.ndarray:
    """Free pixels whose component (over positive free-free edges) touches a seed.

    ``edges`` (right, down[, deep]) are the stencil's edges (already cut at seeds). A
    component with no positive edge to any seed has b = 0 for every label, so its solution
    is 0; in the Grady model its matrix is a singular Laplacian, so it must be left out of a
    direct solve. Returns a flat bool mask.
    """
    n = free.size
    graph = assemble_matrix(np.zeros(free.shape), *edges)  # -W off the diagonal
    graph.data = (graph.data != 0).astype(np.float64)
    graph.eliminate_zeros()
    _, component = connected_components(graph, directed=False)
    touching = np.zeros(component.max() + 1, dtype=bool)
    touching[component[seed_adjacent.ravel()]] = True
    return free.ravel() & touching[component[:n]]


def dense_solve(diag, right, down, free, rhs, deep=None):
    """Dense float64 solve on the free pixels, for the smallest tests: [*grid] x [L, *grid]."""
    A = assemble_matrix(diag, right, down, *(() if deep is None else (deep,))).toarray()
    f = free.ravel()
    out = np.zeros((rhs.shape[0], f.size))
    out[:, f] = np.linalg.solve(A[np.ix_(f, f)], rhs.reshape(rhs.shape[0], -1)[:, f].T).T
    return out.reshape(rhs.shape)
