"""Volumes ([N, D, H, W]) through propagate: the 7-point systems against a dense float64
solve, the backends against each other, gradients against finite differences and gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rawks_triton as rt
from rawks_triton.coefficients import grady_edge_coefficients, grady_node_coefficients, rawks_coefficients
from rawks_triton.reference import dense_solve
from rawks_triton.systems import build_stencil, compact_labels, right_hand_sides
from rawks_triton.testing import assert_close, random_scores

SHAPES = [(1, 1, 1), (2, 3, 4), (3, 1, 5), (4, 5, 3), (5, 6, 7)]


def volume_problem(rng, n, shape, num_labels=3, density=0.08, spread=2.0, dtype=torch.float64):
    d, h, w = shape
    scores = random_scores(rng, n * d, h, w, spread=spread, dtype=dtype).view(n, d, h, w)
    labels = rng.integers(0, num_labels, size=(n, d, h, w))
    seeds = np.where(rng.random((n, d, h, w)) < density, labels, -1)
    seeds.reshape(n, -1)[:, 0] = 0  # every volume has a seed
    return scores, torch.from_numpy(seeds)


def exact_Z(model, scores, seeds, num_labels, edges=None):
    """Z [N, L, D, H, W] from a dense solve of the 7-point systems, assembled independently."""
    n, d, h, w = seeds.shape
    out = np.zeros((n, num_labels, d, h, w))
    for i in range(n):
        s = scores[i : i + 1]
        if model == "rawks":
            coeffs = rawks_coefficients(s, 3)
        elif edges is None:
            coeffs = grady_node_coefficients(s - s.min(), 3)
        else:
            coeffs = grady_edge_coefficients(edges[i : i + 1])
        systems = compact_labels(seeds[i : i + 1], num_labels, -1)
        unit = model == "rawks"
        st = build_stencil(
            coeffs[0], *(None, None) if unit else coeffs[1:3], systems.free, unit, deep=None if unit else coeffs[3]
        )
        b = right_hand_sides(
            None if unit else coeffs[1], None if unit else coeffs[2], systems, s.dtype, deep=None if unit else coeffs[3]
        )
        free = systems.free[0].numpy()
        z = dense_solve(*(t[0].numpy() for t in (st.diag, st.right, st.down)), free, b.numpy(), deep=st.deep[0].numpy())
        seeded = systems.seed_indicator(torch.float64).numpy()
        for k, label in enumerate(systems.label_index.tolist()):
            out[i, label] = z[k] + seeded[k]
    return torch.from_numpy(out)


@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("model", ["rawks", "grady"])
@pytest.mark.parametrize("backend,preconditioner", [("scipy", "auto"), ("torch", "jacobi")])
def test_volume_matches_a_dense_solve(rng, shape, model, backend, preconditioner):
    scores, seeds = volume_problem(rng, 2, shape)
    result = rt.propagate(scores, seeds, 3, model, backend=backend, preconditioner=preconditioner, rtol=1e-8)
    assert result.P.shape == (2, 3) + shape
    expected = exact_Z(model, scores, seeds, 3)
    scale = expected.abs().amax(dim=(1, 2, 3, 4), keepdim=True).clamp(min=1e-300)
    assert_close(result.Z / scale, expected / scale, atol=1e-6, name=f"{model} {backend} Z")
    assert bool(result.converged.all())


def test_grady_edge_weights_of_a_volume(rng):
    scores, seeds = volume_problem(rng, 1, (3, 4, 5))
    edges = torch.from_numpy(rng.random((1, 3, 3, 4, 5)))
    result = rt.propagate(edges, seeds, 3, "grady", backend="torch", preconditioner="jacobi", rtol=1e-9)
    assert_close(result.Z, exact_Z("grady", scores, seeds, 3, edges), atol=1e-6, name="Z")


@pytest.mark.parametrize("model", ["rawks", "grady"])
def test_volume_gradcheck(rng, model):
    scores, seeds = volume_problem(rng, 1, (2, 3, 3), num_labels=2, density=0.2)
    scores = scores.requires_grad_()
    weights = torch.from_numpy(rng.standard_normal((1, 2, 2, 3, 3)))

    def loss(b):
        return (rt.propagate(b, seeds, 2, model, backend="scipy").P * weights).sum()

    assert torch.autograd.gradcheck(loss, (scores,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("model", ["rawks", "grady"])
def test_volume_gradients_agree_across_backends(rng, model):
    scores, seeds = volume_problem(rng, 2, (3, 4, 5))
    weights = torch.from_numpy(rng.standard_normal((2, 3, 3, 4, 5)))
    grads = {}
    for backend, preconditioner in (("scipy", "auto"), ("torch", "jacobi")):
        b = scores.clone().requires_grad_()
        result = rt.propagate(b, seeds, 3, model, backend=backend, preconditioner=preconditioner, rtol=1e-9)
        (result.P * weights).sum().backward()
        grads[backend] = b.grad
    scale = grads["scipy"].abs().max()
    assert_close(grads["torch"] / scale, grads["scipy"] / scale, atol=1e-6, name="gradient")


def test_volume_shapes_are_checked():
    seeds = torch.full((1, 3, 4, 5), -1)
    with pytest.raises(ValueError, match=r"\(N, D, H, W\)"):
        rt.propagate(torch.zeros(1, 4, 5), seeds, 2)
    with pytest.raises(ValueError, match=r"`seeds` must have shape \(N, D, H, W\)"):
        rt.propagate(torch.zeros(1, 3, 4, 6), seeds, 2)
