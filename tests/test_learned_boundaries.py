"""What "converged" means, on the problems users have.

* Learned-like RAWKS boundaries (walls of scores 20 to 50 closing pockets, so that the total
  weight S spans twenty orders of magnitude): P and the gradient against the exact float64
  solution wherever S is above the reach threshold, for every backend, both dtypes, at the
  default tolerance.
* The Grady cases that a residual-norm test got wrong: a high-contrast wall, a common shift
  of the scores, a common scale of the edge weights, and rtol = 0 (solve to the rounding
  floor without diverging).
* No silent wrong answer: a solve either converges and is right, or warns.
"""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rawks_triton as rt
from rawks_triton.solve.choose import triton_available
from rawks_triton.testing import assert_close, learned_problems, learned_scene, random_scores, random_seeds

RTOL = 1e-3  # the default
TAU = rt.propagation.REACH_THRESHOLDS["rawks"]
# P and the gradient against the exact solution, as multiples of rtol (docs/numerics.md
# gives the measured ratios on real learned boundaries: about 1.5 for P, 2.5 for the gradient)
P_FACTOR, GRAD_FACTOR = 5.0, 10.0
TRITON = triton_available(torch.device("cpu")) or torch.cuda.is_available()
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def well_inside(S_ref: torch.Tensor) -> torch.Tensor:
    """Pixels whose reachability no rounding can flip: S at least 10 tau, or below tau / 10."""
    return (S_ref >= 10 * TAU) | (S_ref <= TAU / 10)


def check_learned(result, reference, seeds, rtol=RTOL):
    S_ref = reference.Z.detach().sum(1)
    safe = well_inside(S_ref)
    assert torch.equal(result.reachable.cpu()[safe], reference.reachable[safe]), (
        "reachable differs from the exact solve"
    )
    mask = (reference.reachable & safe).unsqueeze(1).expand_as(reference.P)
    assert_close(result.P, reference.P, atol=P_FACTOR * rtol, name="P", mask=mask)
    assert torch.isfinite(result.P).all()


def gradients(scores, seeds, num_labels, weights, **kw):
    leaf = scores.clone().requires_grad_(True)
    result = rt.propagate(leaf, seeds, num_labels, **kw)
    (result.P * weights).sum().backward()
    return leaf.grad, result


def gradient_tolerance(grad_ref, dtype) -> float:
    """GRAD_FACTOR rtol of the largest gradient, plus the rounding of an exactly zero one."""
    return GRAD_FACTOR * RTOL * float(grad_ref.abs().max()) + 100 * torch.finfo(dtype).eps


def loss_weights(reference, seed):
    """A fixed incoming gradient, zero where S is close to tau (reachability may flip there)."""
    g = torch.from_numpy(np.random.default_rng(seed).standard_normal(tuple(reference.P.shape)))
    return g * well_inside(reference.Z.detach().sum(1)).unsqueeze(1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_torch_backend_on_learned_boundaries(dtype, data):
    scores, seeds, num_labels = data.draw(learned_problems(dtype))
    reference = rt.propagate(scores.double(), seeds, num_labels, backend="scipy")
    weights = loss_weights(reference, data.draw(st.integers(0, 2**31)))
    grad_ref, _ = gradients(scores.double(), seeds, num_labels, weights, backend="scipy")
    with warnings.catch_warnings():
        warnings.simplefilter("error", rt.ConvergenceWarning)
        grad, result = gradients(scores, seeds, num_labels, weights.to(dtype), backend="torch")
    assert bool(result.converged.all()) and bool(result.adjoint_converged.all())
    for error in (result.error, result.adjoint_error):
        assert error.numel() == 0 or float(error.max()) <= RTOL
    check_learned(result, reference, seeds)
    assert_close(grad, grad_ref, atol=gradient_tolerance(grad_ref, dtype), name="dL/dB")


@pytest.mark.interpreter
@pytest.mark.skipif(not TRITON, reason="triton needs CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@settings(max_examples=6, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_triton_backend_on_learned_boundaries(dtype, data):
    scores, seeds, num_labels = data.draw(learned_problems(dtype, max_side=12))
    reference = rt.propagate(scores.double(), seeds, num_labels, backend="scipy")
    weights = loss_weights(reference, 1)
    grad_ref, _ = gradients(scores.double(), seeds, num_labels, weights, backend="scipy")
    with warnings.catch_warnings():
        warnings.simplefilter("error", rt.ConvergenceWarning)
        grad, result = gradients(
            scores.to(DEVICE), seeds.to(DEVICE), num_labels, weights.to(DEVICE, dtype), backend="triton"
        )
    assert result.preconditioner == "multigrid"
    check_learned(result, reference, seeds)
    assert_close(grad.cpu(), grad_ref, atol=gradient_tolerance(grad_ref, dtype), name="dL/dB")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_jacobi_never_claims_a_wrong_answer(rng, dtype):
    """Jacobi-PCG cannot see errors behind walls (r / d is tiny there) nor where its Krylov
    space has not reached; certified by a multigrid cycle, it converges right or warns."""
    scores, seeds = learned_scene(np.random.default_rng(7), 40, 40, 2, dtype)
    reference = rt.propagate(scores.double(), seeds, 2, backend="scipy")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = rt.propagate(scores, seeds, 2, backend="torch", preconditioner="jacobi")
    warned = any(issubclass(w.category, rt.ConvergenceWarning) for w in record)
    assert warned == (not bool(result.converged.all()))
    if not warned:
        check_learned(result, reference, seeds)


# ---- Grady: contrast, shift, scale, rtol = 0 -----------------------------------------------

BACKENDS = [("scipy", "auto"), ("torch", "multigrid"), ("torch", "jacobi")]
if TRITON:
    BACKENDS += [("triton", "multigrid"), ("triton", "jacobi")]
BACKEND_IDS = [f"{b}-{p}" for b, p in BACKENDS]


def solve(boundary, seeds, num_labels, backend, preconditioner, **kw):
    device = DEVICE if backend == "triton" else torch.device("cpu")
    return rt.propagate(
        boundary.to(device), seeds.to(device), num_labels, "grady", backend=backend, preconditioner=preconditioner, **kw
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend,preconditioner", BACKENDS, ids=BACKEND_IDS)
def test_grady_high_contrast_wall(backend, preconditioner, dtype):
    """Scores [0, 20, 0, 0], seeds at both ends: the wall pixel is reached from both sides
    through the same tiny conductance, so P = 1/2 there. A normwise residual test stopped
    with P = 1 ("converged")."""
    scores = torch.tensor([[[0.0, 20.0, 0.0, 0.0]]], dtype=dtype)
    seeds = torch.tensor([[[0, -1, -1, 1]]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", rt.ConvergenceWarning)
        result = solve(scores, seeds, 2, backend, preconditioner)
    exact = rt.propagate(scores.double(), seeds, 2, "grady", backend="scipy")
    assert abs(float(exact.P[0, 0, 0, 1]) - 0.5) < 1e-4
    assert_close(result.P.cpu(), exact.P, atol=1e-3, name="P")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend,preconditioner", BACKENDS, ids=BACKEND_IDS)
def test_grady_shift_and_scale_invariance(rng, backend, preconditioner, dtype):
    """P does not change under a common shift of the scores or a common scale of the edge
    weights; before the per-image normalisation these overflowed or underflowed."""
    h, w = (6, 7) if backend == "triton" else (12, 15)
    scores = random_scores(rng, 1, h, w, spread=4.0, dtype=dtype)
    seeds = random_seeds(rng, 1, h, w, 3, 0.05)
    seeds[0, 0, 0], seeds[0, -1, -1] = 0, 2
    exact = rt.propagate(scores.double(), seeds, 3, "grady", backend="scipy")
    for shift in (-500.0, -60.0, 60.0, 500.0):
        leaf = (scores + shift).requires_grad_(True)
        result = solve(leaf, seeds, 3, backend, preconditioner)
        assert_close(result.P.cpu(), exact.P, atol=1e-2 if dtype == torch.float32 else 1e-3, name=f"P, shift {shift}")
        result.P.square().sum().backward()
        assert torch.isfinite(leaf.grad).all(), f"non-finite gradient at shift {shift}"
    edges = torch.from_numpy(rng.random((1, 2, h, w)) + 0.1).to(dtype)
    exact = rt.propagate(edges.double(), seeds, 3, "grady", backend="scipy")
    for scale in (1e-20, 1e20, 3e38 / 1.1):
        result = solve(edges * scale, seeds, 3, backend, preconditioner)
        assert torch.isfinite(result.P).all() and torch.isfinite(result.error).all()
        assert_close(result.P.cpu(), exact.P, atol=1e-2 if dtype == torch.float32 else 1e-3, name=f"P, scale {scale:g}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("preconditioner", ["multigrid", "jacobi"])
def test_rtol_zero_stops_at_the_rounding_floor(rng, preconditioner, dtype):
    """rtol = atol = 0 solves as far as the dtype allows and stops there with the "stalled"
    warning: never at maxiter, never diverging (float32 Grady reached a residual of 3.8e4)."""
    scores = random_scores(rng, 1, 24, 24, spread=6.0, dtype=dtype)
    seeds = random_seeds(rng, 1, 24, 24, 2, 0.02)
    seeds[0, 0, 0], seeds[0, -1, -1] = 0, 1
    exact = rt.propagate(scores.double(), seeds, 2, "grady", backend="scipy")
    with pytest.warns(rt.ConvergenceWarning, match="rounding floor"):
        result = rt.propagate(scores, seeds, 2, "grady", backend="torch", preconditioner=preconditioner, rtol=0.0)
    assert int(result.iterations.max()) < 10 * (24 + 24) + 1000
    assert bool(result.converged.any()) is False and torch.isfinite(result.error).all()
    assert_close(result.P, exact.P, atol=1e-3, name="P at the floor")
    assert float(result.residual.max()) < 1e-3


# ---- systems that stop early keep their answer ----------------------------------------------


def ring_scene(dtype):
    """The case found on a trained ACDC boundary network: one label's scribble lies on a ring
    of high scores (a thick wall), so its system converges in a few iterations while another
    label's, behind a wall, needs many more. P inside the ring belongs to the ring's label."""
    h = w = 48
    yy, xx = np.mgrid[0:h, 0:w]
    radius = np.hypot(yy - 24, xx - 24)
    scores = np.where(np.abs(radius - 12) < 3, 9.0 + 2 * np.cos(yy / 3.0), 1e-3)
    scores[:, 40:43] = 30.0
    seeds = np.full((h, w), -1, dtype=np.int64)
    seeds[np.abs(radius - 12) < 0.7] = 2
    seeds[2:5, 2:8] = 0
    seeds[40:44, 44:47] = 1
    return torch.from_numpy(scores).to(dtype)[None], torch.from_numpy(seeds)[None]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_a_system_that_stopped_keeps_its_answer(monkeypatch, dtype):
    """Rounding can make a stopped system's recomputed measure a few ulps above its best. That
    once sent it back to the fallback iterate saved at x = 0: its Z became 0 off the seeds and P
    was wrong by 1 on hundreds of pixels while the solve reported converged; a system that had
    a fallback of its own would go back to it and report "not converged". Here the first
    certification of labels 0 and 1 fails (their measures times 10), so both go on with a
    fallback while label 2 stops; then label 1 stops and label 0 (its measure raised to 1.5)
    goes on alone; and every
    refresh finds the measures one part in a million higher than the last, as rounding may."""
    from rawks_triton.solve import pcg as cg

    scores, seeds = ring_scene(dtype)
    reference = rt.propagate(scores.double(), seeds, 3, backend="scipy")
    refreshes = []
    original = cg.CertifiedPCG._certify_true_residual

    def inflated(self, reactivate, first=False):
        measure, k = self.rule.measure, len(refreshes)
        boost = torch.tensor([10.0, 10.0, 1.0] if k == 1 else [1.0] * 3, dtype=dtype) * (1 + 1e-6 * k)
        floor = torch.tensor([1.5 if k == 2 else 0.0, 0.0, 0.0], dtype=dtype)  # fails, having progressed
        self.rule.measure = lambda *args: torch.maximum(measure(*args) * boost, floor)
        try:
            original(self, reactivate, first)
        finally:
            self.rule.measure = measure
        refreshes.append(self.active.tolist())

    monkeypatch.setattr(cg.CertifiedPCG, "_certify_true_residual", inflated)
    result = rt.propagate(scores, seeds, 3, backend="torch")
    # labels 0 and 1 go on after the first certification, then label 0 alone
    assert refreshes[1:3] == [[True, True, False], [True, False, False]], refreshes
    assert bool(result.converged.all())
    check_learned(result, reference, seeds)
