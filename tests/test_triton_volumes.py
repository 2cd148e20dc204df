"""The Triton backend on volumes ([N, D, H, W]): the 7-point kernels against the plain-torch
references, propagate with Jacobi against the scipy backend, gradients, and the default
preconditioner (multigrid: tests/test_triton_multigrid_volumes.py tests its cycle).

Without a GPU the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py),
so the volumes are tiny and odd-sized.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rawks_triton as rt
from rawks_triton.solve.choose import triton_available
from rawks_triton.testing import TOL, assert_close

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = [
    pytest.mark.interpreter,
    pytest.mark.skipif(not triton_available(DEVICE), reason="triton needs CUDA or TRITON_INTERPRET=1"),
]

SHAPES = [(1, 1, 1), (2, 3, 4), (3, 1, 5), (4, 5, 3)]
SHAPE_IDS = ["x".join(map(str, s)) for s in SHAPES]
# float32: 1e-4, as the rounding floor of the certified error is near 1e-5 on some of these
# volumes with Jacobi certifying itself (the torch backend stops at the same floor).
RTOL = {torch.float64: 1e-8, torch.float32: 1e-4}
DTYPES = [torch.float64, torch.float32]
DTYPE_IDS = ["f64", "f32"]


def volume_problem(rng, n, shape, num_labels=3, density=0.1, dtype=torch.float64):
    """Node scores [N, D, H, W] in [0, 2) and seeds with at least one per volume."""
    scores = torch.from_numpy(2.0 * rng.random((n,) + shape)).to(dtype)
    labels = rng.integers(0, num_labels, size=(n,) + shape)
    seeds = np.where(rng.random((n,) + shape) < density, labels, -1)
    seeds.reshape(n, -1)[:, 0] = 0
    seeds.reshape(n, -1)[-1, -1] = num_labels - 1
    return scores.to(DEVICE), torch.from_numpy(seeds).to(DEVICE)


def _operator(rng, model, shape, n=2):
    from rawks_triton.backends.triton.operator import TritonOperator
    from rawks_triton.coefficients import grady_node_coefficients, rawks_coefficients
    from rawks_triton.systems import build_stencil, compact_labels

    scores, seeds = volume_problem(rng, n, shape)
    systems = compact_labels(seeds, 3, -1)
    if model == "rawks":
        diag = rawks_coefficients(scores, 3)[0]
        stencil = build_stencil(diag, None, None, systems.free, unit_edges=True)
    else:
        diag, right, down, deep = grady_node_coefficients(scores, 3)
        stencil = build_stencil(diag, right, down, systems.free, deep=deep)
    return TritonOperator(stencil, systems.image_index, systems.groups), stencil, systems


# ---- every kernel writes every position it owns ------------------------------------------------
# Output buffers start as NaN: on the frame's [lo, hi) every value must come back finite and
# equal to the plain-torch reference, exactly 0 on the border positions; outside it nothing
# is written.


def _owned(frame):
    owned = torch.zeros(frame.size, dtype=torch.bool, device=DEVICE)
    owned[frame.lo : frame.hi] = True
    return owned


def _is_voxel(frame):
    return frame.frame(torch.ones((1,) + frame.shape, device=DEVICE)).view(-1) > 0


def assert_owned(out, expected, frame, name, atol=1e-12):
    """out ([B, size]) against the unframed ``expected`` ([B, d, h, w]): finite on [lo, hi),
    equal on the voxels, exactly 0 on the border positions of [lo, hi), NaN outside."""
    owned, voxel = _owned(frame), _is_voxel(frame)
    assert torch.isfinite(out[:, owned]).all(), f"{name}: positions of [lo, hi) left unwritten"
    assert_close(frame.unframe(out), expected, atol=atol, rtol=1e-12, name=name)
    assert bool((out[:, owned & ~voxel] == 0).all()), f"{name}: border positions inside [lo, hi) are not 0"
    assert bool(torch.isnan(out[:, ~owned]).all()), f"{name}: positions outside [lo, hi) were written"


def _nan(*shape):
    return torch.full(shape, float("nan"), dtype=torch.float64, device=DEVICE)


def _random_free(op, systems):
    t = torch.randn((systems.num_systems,) + op.frame.shape, dtype=torch.float64, device=DEVICE)
    return t * systems.free_mask(torch.float64)


@pytest.mark.parametrize("model", ["rawks", "grady"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_7point_stencil_product_is_stencil_matvec(rng, shape, model):
    from rawks_triton.systems import stencil_matvec

    op, stencil, systems = _operator(rng, model, shape)
    frame, S = op.frame, systems.num_systems
    assert op.three_d and frame.offsets == (1, frame.row, frame.plane)
    x, b = _random_free(op, systems), _random_free(op, systems)
    Ax = stencil_matvec(stencil, systems.image_index, x)
    assert_owned(op.residual(None, frame.frame(x), _nan(S, frame.size)), Ax, frame, "A x")
    rz_part, rr_part = _nan(S, op.T), _nan(S, op.T)
    out = op.residual(frame.frame(b), frame.frame(x), _nan(S, frame.size), rz_part, rr_part)
    r = b - Ax
    assert_owned(out, r, frame, "b - A x")
    inv_diag = stencil.inv_diag.index_select(0, systems.image_index)
    assert_close(rz_part.sum(1), (r * inv_diag * r).flatten(1).sum(1), atol=1e-12, rtol=1e-12, name="r' M r")
    assert_close(rr_part.sum(1), (r * r).flatten(1).sum(1), atol=1e-12, rtol=1e-12, name="r' r")


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_cg_iteration_on_a_volume_writes_every_owned_position(rng, shape):
    """One fused Jacobi iteration from x = 0 against its plain-torch formulas. A system with
    b = 0 (a volume seeded everywhere) is inactive from the start: its p and A p stay as
    they were."""
    from rawks_triton.backends.triton.pcg import TritonPCG
    from rawks_triton.solve.options import SolverOptions
    from rawks_triton.solve.rules import ForwardRule
    from rawks_triton.systems import stencil_matvec

    op, stencil, systems = _operator(rng, "grady", shape)
    frame = op.frame
    b = frame.frame(_random_free(op, systems).abs())
    options = SolverOptions(rtol=1e-9, preconditioner="jacobi")
    pcg = TritonPCG(op, b, ForwardRule(options, systems.groups), options)
    pcg.p[1 - pcg.current].fill_(float("nan"))
    pcg.ap.fill_(float("nan"))
    pcg.step()
    rhs = frame.unframe(b)
    p = stencil.inv_diag.index_select(0, systems.image_index) * rhs
    ap = stencil_matvec(stencil, systems.image_index, p)
    pap = (p * ap).flatten(1).sum(1)
    alpha = torch.where(pap > 0, (rhs * p).flatten(1).sum(1) / pap.clamp(min=1e-300), 0.0)
    alpha = alpha.view((-1,) + (1,) * 3)
    active = (rhs != 0).flatten(1).any(1)
    for name, got, expected in (("p_new", pcg.p[pcg.current], p), ("A p", pcg.ap, ap)):
        assert bool(torch.isnan(got[~active]).all()), f"{name}: written for an inactive system"
        if bool(active.any()):
            assert_owned(got[active], expected[active], frame, name)
    for name, got, expected in (("x", pcg.x, alpha * p), ("r", pcg.r, rhs - alpha * ap)):
        assert_close(frame.unframe(got), expected, atol=1e-12, rtol=1e-10, name=name)
        assert torch.equal(got, frame.frame(frame.unframe(got))), f"{name}: the border is not exactly 0"


@pytest.mark.parametrize("edges", [False, True], ids=["node", "edges"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_coefficient_gradients_of_a_volume_write_every_owned_position(rng, shape, edges):
    from rawks_triton.systems import coefficient_gradients

    op, stencil, systems = _operator(rng, "grady", shape)
    frame, n = op.frame, stencil.shape[0]
    adjoint, x = _random_free(op, systems), _random_free(op, systems)
    Z = x + torch.rand_like(x)
    out = (_nan(n, frame.size), (_nan(n, frame.size), _nan(n, frame.size), _nan(n, frame.size)))
    framed = [frame.frame(t) for t in (adjoint, x, Z)]
    _, got_edges = op.coefficient_gradients(*framed, systems.groups.first_system(), edges, out=out)
    expected_diag, expected_edges = coefficient_gradients(adjoint, x, Z, systems, edges)
    assert_owned(out[0], expected_diag, frame, "dL/dd")
    for k, (name, got) in enumerate(zip(("right", "down", "deep"), out[1], strict=True)):
        if expected_edges is None:
            assert got_edges is None
            assert bool(torch.isnan(got).all()), f"dL/d{name} written without edges"
        else:
            assert_owned(got, expected_edges[k], frame, f"dL/d{name}")


# ---- propagate --------------------------------------------------------------------------------


def compare_volumes(result, reference, dtype, name):
    """Z normwise per volume and P where the reference's total weight is at least 0.01 (the
    metric of rawks_triton.testing.compare_with_reference, over [N, L, D, H, W])."""
    tol = TOL[dtype]
    scale = reference.Z.flatten(1).abs().amax(dim=1).clamp(min=1e-300).view(-1, 1, 1, 1, 1)
    assert_close(result.Z / scale, reference.Z / scale, atol=tol, name=f"{name} Z / max Z")
    well_determined = (reference.Z.sum(1) >= 0.01).unsqueeze(1).expand_as(reference.P)
    assert_close(result.P, reference.P, atol=tol, name=f"{name} P", mask=well_determined)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("model", ["rawks", "grady"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_volume_forward_matches_scipy(rng, shape, model, dtype):
    scores, seeds = volume_problem(rng, 2, shape, dtype=dtype)
    got = rt.propagate(scores, seeds, 3, model, backend="triton", preconditioner="jacobi", rtol=RTOL[dtype])
    ref = rt.propagate(scores.double().cpu(), seeds.cpu(), 3, model, backend="scipy")
    assert got.P.shape == (2, 3) + shape and got.P.dtype == dtype
    compare_volumes(got, ref, dtype, f"triton {model}")
    assert bool(got.converged.all())


def test_volume_preconditioner_auto_is_multigrid(rng):
    """The Triton multigrid cycle on volumes (tests/test_triton_multigrid_volumes.py); 4x6x5
    has 120 voxels, more than a coarsest level's 64: the cycle's kernels run."""
    scores, seeds = volume_problem(rng, 1, (4, 6, 5))
    got = rt.propagate(scores, seeds, 3, "grady", backend="triton", rtol=1e-9)
    assert (got.backend, got.preconditioner) == ("triton", "multigrid")
    ref = rt.propagate(scores.cpu(), seeds.cpu(), 3, "grady", backend="scipy")
    compare_volumes(got, ref, torch.float64, "auto")


@pytest.mark.parametrize("model", ["rawks", "grady", "grady-edges"])
def test_volume_gradients_match_scipy(rng, model):
    scores, seeds = volume_problem(rng, 2, (2, 3, 4))
    if model == "grady-edges":
        scores = torch.from_numpy(0.05 + rng.random((2, 3, 2, 3, 4))).to(DEVICE)
    weights = torch.from_numpy(rng.standard_normal((2, 3, 2, 3, 4))).to(DEVICE)
    grads = {}
    for backend, device in (("triton", DEVICE), ("scipy", torch.device("cpu"))):
        b = scores.to(device).clone().requires_grad_(True)
        kw = dict(preconditioner="jacobi", rtol=1e-10) if backend == "triton" else {}
        result = rt.propagate(b, seeds.to(device), 3, model.split("-")[0], backend=backend, **kw)
        (result.P * weights.to(device)).sum().backward()
        grads[backend] = b.grad.cpu()
    scale = grads["scipy"].abs().max()
    assert_close(grads["triton"] / scale, grads["scipy"] / scale, atol=1e-7, name="dL/dboundary")


@pytest.mark.parametrize("model", ["rawks", "grady"])
def test_volume_gradcheck_float64(rng, model):
    scores, seeds = volume_problem(rng, 1, (2, 2, 2), num_labels=2, density=0.2)
    weights = torch.from_numpy(rng.standard_normal((1, 2, 2, 2, 2))).to(DEVICE)

    def loss(b):
        kw = dict(backend="triton", preconditioner="jacobi", rtol=1e-12)
        return (rt.propagate(b, seeds, 2, model, **kw).P * weights).sum()

    assert torch.autograd.gradcheck(loss, (scores.requires_grad_(True),), eps=1e-6, atol=1e-7, rtol=1e-5)
