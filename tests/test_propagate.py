"""Forward results: the torch backend against the exact scipy reference, and properties of P."""

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rawks_triton as rt
from rawks_triton.testing import SOLVE_RTOL, assert_close, compare_with_reference, problems, random_scores, random_seeds


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_torch_backend_matches_scipy_reference(dtype, data):
    model, scores, seeds, num_labels = data.draw(problems(dtype))
    reference = rt.propagate(scores.double(), seeds, num_labels, model, backend="scipy")
    result = rt.propagate(scores, seeds, num_labels, model, backend="torch", rtol=SOLVE_RTOL[dtype], maxiter=20000)
    assert bool(result.converged.all()), f"not converged: residual {result.residual.max():.3g}"
    compare_with_reference(result, reference, dtype, name=f"{model}")


@pytest.mark.parametrize("model", ["rawks", "grady"])
@pytest.mark.parametrize("backend", ["scipy", "torch"])
def test_probability_properties(rng, model, backend):
    n, h, w, num_labels = 3, 12, 15, 5
    scores = random_scores(rng, n, h, w, spread=1.0)
    seeds = random_seeds(rng, n, h, w, num_labels, 0.05)
    seeds[2] = -1  # an image without seeds
    seeds[0, 0, 0] = 4
    r = rt.propagate(scores, seeds, num_labels, model, backend=backend, rtol=1e-10)
    P = r.P
    assert P.shape == (n, num_labels, h, w)
    assert torch.all(P >= -1e-12) and torch.all(P <= 1 + 1e-12)
    assert_close(P.sum(1), torch.ones(n, h, w, dtype=P.dtype), atol=1e-12, name="sum_l P_l")
    # absent labels are exactly 0 wherever the image has seeds
    present = r.Z.new_zeros(n, num_labels, dtype=torch.bool)
    present[r.image_index, r.label_index] = True
    for i in range(2):
        assert torch.all(P[i, ~present[i]] == 0)
    # seeds are one-hot
    seeded = seeds[:2] >= 0
    onehot = torch.nn.functional.one_hot(seeds[:2].clamp(min=0), num_labels).permute(0, 3, 1, 2).to(P.dtype)
    assert torch.equal(P[:2].permute(0, 2, 3, 1)[seeded], onehot.permute(0, 2, 3, 1)[seeded])
    # the image without seeds: uniform, flagged
    assert not bool(r.has_seeds[2]) and not bool(r.reachable[2].any())
    assert torch.all(P[2] == 1.0 / num_labels)
    if model == "grady":  # with positive conductances every pixel reaches a seed: sum_l Z_l = 1
        assert_close(r.Z[:2].sum(1), torch.ones(2, h, w, dtype=P.dtype), atol=1e-8, name="sum_l Z_l")


def test_label_compaction_solves_only_present_labels():
    seeds = torch.full((2, 6, 6), -1)
    seeds[0, 0, 0], seeds[0, 5, 5] = 3, 17
    seeds[1, 2, 2] = 3
    r = rt.propagate(torch.zeros(2, 6, 6), seeds, 21, backend="torch")
    assert r.image_index.tolist() == [0, 0, 1] and r.label_index.tolist() == [3, 17, 3]
    assert r.iterations.shape == r.residual.shape == r.converged.shape == (3,)
    assert torch.all(r.P[1, 3] == 1.0)  # a single label present: P = 1 everywhere reachable


def test_module_keeps_last_result_and_adjoint_statistics():
    module = rt.RandomWalkPropagation(3, model="grady", backend="torch")
    scores = torch.rand(2, 1, 9, 10, dtype=torch.float64, requires_grad=True)
    seeds = torch.full((2, 9, 10), -1)
    seeds[:, 0, 0], seeds[:, 8, 9], seeds[1, 4, 4] = 0, 1, 2
    P = module(scores, seeds)
    assert P.shape == (2, 3, 9, 10)
    result = module.last_result
    assert result.num_systems == 5 and not result.P.requires_grad
    assert result.adjoint_iterations is None
    (P[:, 0] ** 2).sum().backward()
    assert result.adjoint_iterations.shape == (5,) and bool(result.adjoint_converged.all())
    assert "num_labels=3" in repr(module)


@pytest.mark.parametrize("preconditioner", ["jacobi", "multigrid"])
def test_convergence_warning_and_strict_error(preconditioner):
    scores = torch.zeros(1, 32, 32)
    seeds = torch.full((1, 32, 32), -1)
    seeds[0, 0, 0], seeds[0, 31, 31] = 0, 1
    kw = dict(backend="torch", preconditioner=preconditioner, maxiter=2)
    with pytest.warns(rt.ConvergenceWarning, match=r"maxiter=2\b.*worst estimated error of P") as record:
        r = rt.propagate(scores, seeds, 2, "grady", **kw)
    # the warning points at the caller's line, not at the library
    assert all(w.filename == __file__ for w in record if issubclass(w.category, rt.ConvergenceWarning))
    advice = "Increase `maxiter`" if preconditioner == "multigrid" else "Use preconditioner='multigrid'"
    assert advice in str(record[0].message)
    assert not bool(r.converged.any()) and int(r.iterations.max()) == 2 and float(r.error.min()) > 1e-3
    with pytest.raises(rt.ConvergenceError, match="Increase|increase"):
        rt.propagate(scores, seeds, 2, "grady", strict=True, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = rt.propagate(scores, seeds, 2, "grady", backend="torch", preconditioner="multigrid")
    assert bool(r.converged.all()) and float(r.error.max()) <= 1e-3


def test_converged_systems_stop_changing():
    """A system that converges early keeps its iteration count while others go on."""
    seeds = torch.full((2, 40, 40), -1)
    seeds[0] = 1
    seeds[0, 20, 5:] = -1  # image 0: a single free row segment, seeded by label 1 around it
    seeds[0, 20, 4] = 0
    seeds[1, 0, 0], seeds[1, 39, 39] = 0, 1  # image 1: the whole image to propagate into
    for preconditioner in ("jacobi", "multigrid"):
        r = rt.propagate(
            torch.zeros(2, 40, 40, dtype=torch.float64),
            seeds,
            2,
            "grady",
            backend="torch",
            preconditioner=preconditioner,
        )
        assert r.image_index.tolist() == [0, 0, 1, 1]
        it = r.iterations
        assert int(it[:2].max()) < int(it[2:].min()), (preconditioner, it.tolist())
        assert bool(r.converged.all())
