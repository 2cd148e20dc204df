"""Gradients: gradcheck in float64, central finite differences, and the adjoint formula."""

import numpy as np
import pytest
import torch

import rawks_triton as rt
from rawks_triton.testing import assert_close, random_scores

BACKENDS = ["scipy", "torch"]


def seeds_for(n, h, w):
    seeds = torch.full((n, h, w), -1)
    seeds[0, 0, 0], seeds[0, h - 1, w - 1], seeds[0, h // 2, 1] = 0, 2, 1
    if n > 1:
        seeds[1, 1, 1], seeds[1, h - 2, w - 2] = 1, 0
    return seeds


def inputs(rng, model, n=2, h=5, w=6):
    if model == "grady-edges":
        return torch.from_numpy(0.1 + rng.random((n, 2, h, w))), "grady"
    return random_scores(rng, n, h, w, spread=1.5), model


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", ["rawks", "grady", "grady-edges"])
def test_gradcheck_float64(rng, model, backend):
    boundary, model_name = inputs(rng, model)
    seeds = seeds_for(2, 5, 6)
    weights = torch.from_numpy(rng.standard_normal((2, 3, 5, 6)))

    def loss(b):
        r = rt.propagate(b, seeds, 3, model_name, backend=backend, rtol=1e-13)
        return (r.P * weights).sum(), (r.Z * weights).sum()

    assert torch.autograd.gradcheck(loss, (boundary.requires_grad_(),), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", ["rawks", "grady"])
def test_adjoint_gradient_matches_central_differences(rng, model, backend):
    """Every entry of dLoss/dB against (L(B + e) - L(B - e)) / 2e, to 5e-9 absolute."""
    n, h, w = 1, 7, 9
    scores = random_scores(rng, n, h, w, spread=1.0)
    seeds = seeds_for(n, h, w)
    target = torch.softmax(torch.from_numpy(rng.standard_normal((n, 3, h, w))), dim=1)

    def loss(b):
        P = rt.propagate(b, seeds, 3, model, backend=backend, rtol=1e-14, maxiter=5000).P
        return -(target * torch.log(P.clamp(min=1e-30))).sum()

    b = scores.clone().requires_grad_()
    loss(b).backward()
    eps = 1e-5
    fd = torch.zeros_like(scores)
    for idx in np.ndindex(*scores.shape):
        plus, minus = scores.clone(), scores.clone()
        plus[idx] += eps
        minus[idx] -= eps
        fd[idx] = (loss(plus) - loss(minus)) / (2 * eps)
    assert_close(b.grad, fd, atol=5e-9, rtol=1e-7, name="dLoss/dB")


def test_adjoint_is_one_batched_solve_per_backward():
    scores = torch.rand(2, 8, 8, dtype=torch.float64, requires_grad=True)
    seeds = seeds_for(2, 8, 8)
    r = rt.propagate(scores, seeds, 3, backend="torch")
    r.P.sum().backward()
    # one adjoint system per forward system, solved together
    assert r.adjoint_iterations.shape == r.iterations.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_zero_where_unreachable_and_finite(backend):
    """Grady region cut off by zero conductances: P uniform there, gradient 0, no NaN."""
    edges = torch.ones(1, 2, 6, 6, dtype=torch.float64)
    edges[0, 0, :, 2] = 0  # no edge between columns 2 and 3
    edges.requires_grad_()
    seeds = torch.full((1, 6, 6), -1)
    seeds[0, 0, 0], seeds[0, 5, 0] = 0, 1
    r = rt.propagate(edges, seeds, 2, "grady", backend=backend)
    assert r.reachable[0, :, :3].all() and not r.reachable[0, :, 3:].any()
    assert torch.all(r.P[0, :, :, 3:] == 0.5)
    (r.P[:, 0] * torch.arange(36.0, dtype=torch.float64).view(1, 6, 6)).sum().backward()
    assert torch.isfinite(edges.grad).all()
    assert torch.all(edges.grad[0, :, :, 4:] == 0) and torch.all(edges.grad[0, 1, :, 3] == 0)


def test_rawks_float32_underflow_is_flagged_with_zero_gradient():
    """Far from seeds with B = 3 the float32 weights underflow: flagged, uniform, no gradient."""
    scores = torch.full((1, 5, 80), 3.0, requires_grad=True)
    seeds = torch.full((1, 5, 80), -1)
    seeds[0, 2, 0], seeds[0, 2, 1] = 0, 1
    r = rt.propagate(scores, seeds, 3, backend="torch", min_weight=0.0)
    far = ~r.reachable[0]
    assert far[:, -1].all() and r.reachable[0, 2, :3].all()
    assert float(r.Z.detach().sum(1)[0][far].max()) <= rt.reach_threshold("rawks", torch.float32, 0.0)
    assert torch.all(r.P[0, :2][:, far] == 0.5) and torch.all(r.P[0, 2] == 0)
    # a loss on the flagged pixels alone has zero gradient; a loss on all pixels is finite
    (r.P[0, 0][far] * 3.0).sum().backward(retain_graph=True)
    assert torch.all(scores.grad == 0)
    (r.P[:, 0] ** 2).sum().backward()
    assert torch.isfinite(scores.grad).all() and bool((scores.grad != 0).any())


def test_min_weight_flags_unresolved_pixels():
    scores = torch.full((1, 5, 40), 1.0, dtype=torch.float64)
    seeds = torch.full((1, 5, 40), -1)
    seeds[0, 2, 0], seeds[0, 2, 1] = 0, 1
    for min_weight in (1e-4, 1e-8):
        r = rt.propagate(scores, seeds, 2, backend="scipy", min_weight=min_weight)
        total = r.Z.sum(1)
        assert torch.equal(r.reachable, total > min_weight)
