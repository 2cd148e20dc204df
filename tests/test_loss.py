"""rawks_loss against a direct torch computation, its limits (one-hot, uniform, unreachable) and its errors."""

import math

import pytest
import torch

import rawks_triton as rt
from rawks_triton.loss import entropy, loss_weights, rawks_loss_terms
from rawks_triton.testing import assert_close


def direct_loss(P, q_logits, alpha, mask, detach_weight=True):
    """Eq. 11 written out term by term in float64, P strictly positive."""
    Q = torch.softmax(q_logits, dim=1)
    H = -(P * P.log()).sum(1)
    kl = (P * (P.log() - Q.log())).sum(1)
    w = torch.exp(-alpha * (H.detach() if detach_weight else H))
    per_pixel = (w * kl + H) * mask
    return per_pixel.sum() / mask.sum()


def random_inputs(rng_seed, n=2, L=4, h=7, w=13, dtype=torch.float64):
    g = torch.Generator().manual_seed(rng_seed)
    P = torch.softmax(2 * torch.randn(n, L, h, w, generator=g, dtype=dtype), dim=1)
    q = torch.randn(n, L, h, w, generator=g, dtype=dtype)
    return P, q


@pytest.mark.parametrize("alpha", [0.0, 0.7, 3.0], ids=["alpha0", "alpha0.7", "alpha3"])
@pytest.mark.parametrize("detach_weight", [True, False], ids=["detached", "full"])
def test_value_and_gradients_match_direct_computation(alpha, detach_weight):
    P0, q0 = random_inputs(1)
    reachable = torch.rand(P0.shape[0], *P0.shape[2:], generator=torch.Generator().manual_seed(3)) > 0.3
    P, q = P0.clone().requires_grad_(), q0.clone().requires_grad_()
    loss = rt.rawks_loss(P, q, alpha=alpha, reachable=reachable, detach_weight=detach_weight)
    gP, gq = torch.autograd.grad(loss, (P, q))
    Pd, qd = P0.clone().requires_grad_(), q0.clone().requires_grad_()
    expected = direct_loss(Pd, qd, alpha, reachable.double(), detach_weight)
    eP, eq = torch.autograd.grad(expected, (Pd, qd))
    assert_close(loss, expected, atol=1e-12, name="loss")
    assert_close(gP, eP, atol=1e-12, name="dloss/dP")
    assert_close(gq, eq, atol=1e-12, name="dloss/dq")


def test_reductions_agree():
    P, q = random_inputs(2, dtype=torch.float32)
    per_pixel = rt.rawks_loss(P, q, reduction="none")
    assert per_pixel.shape == (2, 7, 13)
    assert_close(rt.rawks_loss(P, q, reduction="sum"), per_pixel.sum(), atol=1e-4, name="sum")
    assert_close(rt.rawks_loss(P, q), per_pixel.mean(), atol=1e-6, name="mean")


def test_one_hot_P_is_cross_entropy_with_finite_gradients():
    n, L, h, w = 1, 3, 5, 6
    labels = torch.randint(0, L, (n, h, w), generator=torch.Generator().manual_seed(0))
    P = torch.nn.functional.one_hot(labels, L).permute(0, 3, 1, 2).double().requires_grad_()
    q = torch.randn(n, L, h, w, dtype=torch.float64, requires_grad=True)
    terms = rawks_loss_terms(P, q, alpha=2.0)
    assert_close(terms.entropy, torch.zeros(n, h, w), atol=0, name="H at one-hot")
    assert_close(terms.weight, torch.ones(n, h, w), atol=0, name="w at one-hot")
    loss = rt.rawks_loss(P, q, alpha=2.0)
    ce = torch.nn.functional.cross_entropy(q, labels)
    assert_close(loss, ce, atol=1e-12, name="loss at one-hot vs cross-entropy")
    gP, gq = torch.autograd.grad(loss, (P, q))
    assert torch.isfinite(gP).all() and torch.isfinite(gq).all()
    assert_close(gq, torch.autograd.grad(ce, q)[0], atol=1e-12, name="dloss/dq at one-hot")


def test_uniform_P_has_maximal_entropy_and_small_weight():
    n, L, h, w = 2, 5, 4, 3
    P = torch.full((n, L, h, w), 1.0 / L, dtype=torch.float64, requires_grad=True)
    q = torch.zeros(n, L, h, w, dtype=torch.float64, requires_grad=True)  # Q uniform too: KL = 0
    alpha = 1.5
    terms = rawks_loss_terms(P, q, alpha=alpha)
    assert_close(terms.entropy, torch.full((n, h, w), math.log(L), dtype=torch.float64), atol=1e-12, name="H uniform")
    assert_close(terms.weight, torch.full((n, h, w), L**-alpha, dtype=torch.float64), atol=1e-12, name="w uniform")
    assert_close(terms.kl, torch.zeros(n, h, w), atol=1e-12, name="KL(uniform || uniform)")
    loss = rt.rawks_loss(P, q, alpha=alpha)
    assert_close(loss, torch.tensor(math.log(L), dtype=torch.float64), atol=1e-12, name="loss uniform")
    gP, gq = torch.autograd.grad(loss, (P, q))
    assert torch.isfinite(gP).all()
    assert_close(gq, torch.zeros_like(gq), atol=1e-15, name="dloss/dq when P = Q")


def test_unreachable_pixels_contribute_nothing():
    P, q = random_inputs(4)
    P[:, :, 0, 0] = 0.0  # a zero row there must not leak NaN through the mask either
    P.requires_grad_()
    q.requires_grad_()
    reachable = torch.ones(P.shape[0], *P.shape[2:], dtype=torch.bool)
    reachable[:, 0, :] = False
    loss = rt.rawks_loss(P, q, reachable=reachable)
    gP, gq = torch.autograd.grad(loss, (P, q))
    assert torch.isfinite(gP).all() and torch.isfinite(gq).all()
    assert torch.all(gP[:, :, 0, :] == 0) and torch.all(gq[:, :, 0, :] == 0)
    assert bool((gq[:, :, 1:, :] != 0).any())
    # Changing P and Q on unreachable pixels leaves the loss unchanged.
    P2, q2 = P.detach().clone(), q.detach().clone()
    P2[:, :, 0, :] = 1.0 / P.shape[1]
    q2[:, :, 0, :] = 50.0 * torch.randn_like(q2[:, :, 0, :])
    assert_close(rt.rawks_loss(P2, q2, reachable=reachable), loss, atol=1e-12, name="loss with changed unreachable")
    # Nothing reachable: a zero loss that still back-propagates (zeros).
    none = torch.zeros_like(reachable)
    empty = rt.rawks_loss(P, q, reachable=none)
    assert float(empty.detach()) == 0.0
    assert torch.all(torch.autograd.grad(empty, q)[0] == 0)


def test_loss_through_propagation_reaches_boundary_scores():
    """End to end: the gradient of the loss reaches B through the adjoint solve, and Q through q."""
    g = torch.Generator().manual_seed(0)
    boundary = (0.01 * torch.rand(1, 1, 9, 11, generator=g, dtype=torch.float64)).requires_grad_()
    seeds = torch.full((1, 9, 11), -1)
    seeds[0, 1, 1:4] = 0
    seeds[0, 7, 6:10] = 1
    q = torch.randn(1, 2, 9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    result = rt.propagate(boundary, seeds, 2, backend="scipy")
    loss = rt.rawks_loss(result.P, q, reachable=result.reachable)
    gB, gq = torch.autograd.grad(loss, (boundary, q))
    assert torch.isfinite(gB).all() and bool((gB != 0).any())
    assert torch.isfinite(gq).all() and bool((gq != 0).any())


def test_entropy_and_weights_helpers():
    P = torch.tensor([[[[1.0]], [[0.0]]], [[[0.5]], [[0.5]]]])  # [2, 2, 1, 1]
    assert_close(entropy(P), torch.tensor([[[0.0]], [[math.log(2)]]]), atol=1e-7, name="entropy")
    assert_close(loss_weights(P, alpha=1.0), torch.tensor([[[1.0]], [[0.5]]]), atol=1e-7, name="w")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(P=[[0.5]]), TypeError, r"`P` must be a torch.Tensor, got list"),
        (
            dict(P=torch.zeros(2, 3, 4)),
            ValueError,
            r"`P` must have shape \(N, L, H, W\) or, for volumes, \(N, L, D, H, W\), got \(2, 3, 4\)",
        ),
        (dict(P=torch.zeros(1, 2, 3, 4, dtype=torch.int64)), TypeError, r"`P` must have dtype float32 or float64"),
        (
            dict(q_logits=torch.zeros(1, 3, 3, 4)),
            ValueError,
            r"`q_logits` must have the shape of `P` \(1, 2, 3, 4\), got \(1, 3, 3, 4\)",
        ),
        (dict(alpha=-1.0), ValueError, r"`alpha` must be a finite number >= 0, got -1.0"),
        (dict(alpha="2"), TypeError, r"`alpha` must be a real number, got str"),
        (dict(reachable=torch.ones(1, 3, 4)), TypeError, r"`reachable` must be a bool tensor, got torch.float32"),
        (
            dict(reachable=torch.ones(1, 4, 3, dtype=torch.bool)),
            ValueError,
            r"`reachable` must have shape \(N, H, W\) = \(1, 3, 4\), got \(1, 4, 3\)",
        ),
        (dict(reduction="max"), ValueError, r"`reduction` must be one of \['mean', 'none', 'sum'\], got 'max'"),
        (dict(detach_weight=1), TypeError, r"`detach_weight` must be a bool, got int"),
    ],
    ids=[
        "P-list",
        "P-3d",
        "P-int",
        "q-shape",
        "alpha-negative",
        "alpha-str",
        "reachable-float",
        "reachable-shape",
        "reduction",
        "detach",
    ],
)
def test_bad_input(kwargs, error, match):
    args = dict(P=torch.full((1, 2, 3, 4), 0.5), q_logits=torch.zeros(1, 2, 3, 4))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        rt.rawks_loss(**args)


def test_loss_on_volumes_is_the_loss_of_its_voxels():
    """[N, L, D, H, W]: the same per-voxel terms as the slices laid side by side as images."""
    generator = torch.Generator().manual_seed(0)
    P = torch.softmax(torch.randn(2, 3, 4, 5, 6, generator=generator, dtype=torch.float64), dim=1)
    q = torch.randn(2, 3, 4, 5, 6, generator=generator, dtype=torch.float64)
    reachable = torch.rand(2, 4, 5, 6, generator=generator) > 0.2
    as_images = lambda t: t.movedim(2, 1).reshape(8, 3, 5, 6) if t.dim() == 5 else t.reshape(8, 5, 6)  # noqa: E731
    volume = rt.rawks_loss(P, q, reachable=reachable, reduction="none")
    images = rt.rawks_loss(as_images(P), as_images(q), reachable=as_images(reachable), reduction="none")
    assert_close(volume.reshape(8, 5, 6), images, atol=1e-14, name="per-voxel loss")
