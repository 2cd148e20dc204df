"""The Triton backend against the torch and scipy backends.

On a machine without a GPU the kernels run in Triton's interpreter on CPU tensors
(tests/conftest.py sets TRITON_INTERPRET=1 before they are imported); on a GPU they run
compiled on CUDA tensors. The interpreter is slow, so the grids are small and odd-sized.
"""

import warnings

import pytest
import torch

import rawks_triton as rt
from rawks_triton import ConvergenceWarning
from rawks_triton.solve.choose import triton_available
from rawks_triton.testing import assert_close, compare_with_reference, random_scores, random_seeds

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = [
    pytest.mark.interpreter,
    pytest.mark.skipif(not triton_available(DEVICE), reason="triton needs CUDA or TRITON_INTERPRET=1"),
]

SIZES = [(1, 1), (1, 17), (7, 13), (16, 16), (33, 31)]
RTOL = {torch.float64: 1e-8, torch.float32: 1e-5}


def problem(rng, model, h, w, dtype, n=2, num_labels=3, edges=False, density=0.08):
    seeds = random_seeds(rng, n, h, w, num_labels, density=density)
    seeds[0, 0, 0], seeds[-1, h - 1, w - 1] = 0, num_labels - 1  # every image has a seed
    seeds[-1, 0, 0] = -1 if h * w > 1 else seeds[-1, 0, 0]
    if edges:
        boundary = random_scores(rng, n * 2, h, w, offset=0.05, spread=1.0, dtype=dtype).view(n, 2, h, w)
    else:
        boundary = random_scores(rng, n, h, w, spread=3.0, dtype=dtype)
    return boundary.to(DEVICE), seeds.to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("model", ["rawks", "grady"])
@pytest.mark.parametrize("h,w", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_forward_matches_torch_and_scipy(rng, model, h, w, dtype):
    # The interpreter's cost grows with systems x iterations: fewer systems on larger grids.
    n, density = (2, 0.08) if h * w < 300 else (1, 0.03)
    boundary, seeds = problem(rng, model, h, w, dtype, n=n, density=density)
    kw = dict(model=model, rtol=RTOL[dtype])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        got = rt.propagate(boundary, seeds, 3, backend="triton", **kw)
        ref_torch = rt.propagate(boundary, seeds, 3, backend="torch", **kw)
    ref = rt.propagate(boundary.double().cpu(), seeds.cpu(), 3, model=model, backend="scipy")
    compare_with_reference(got, ref, dtype, name=f"triton {model}")
    assert_close(got.P, ref_torch.P, atol=50 * RTOL[dtype], name="P triton vs torch")
    assert bool(got.converged.all())
    assert got.error.max() <= RTOL[dtype]
    # Same algorithm, same order of updates: iteration counts agree up to rounding.
    assert (got.iterations - ref_torch.iterations).abs().max() <= (0 if dtype == torch.float64 else 3)


@pytest.mark.parametrize("model", ["rawks", "grady", "grady-edges"])
def test_gradients_match_torch_backend(rng, model):
    edges = model == "grady-edges"
    boundary, seeds = problem(rng, model, 5, 7, torch.float64, edges=edges)
    weights = torch.randn(2, 3, 5, 7, dtype=torch.float64, device=DEVICE)
    grads, results = {}, {}
    for backend in ("triton", "torch"):
        b = boundary.clone().requires_grad_(True)
        result = rt.propagate(b, seeds, 3, model=model.split("-")[0], backend=backend, rtol=1e-11)
        (result.P * weights).sum().backward()
        grads[backend], results[backend] = b.grad, result
    assert_close(grads["triton"], grads["torch"], atol=1e-8, rtol=1e-6, name="dL/dboundary")
    assert bool(results["triton"].adjoint_converged.all())
    assert (results["triton"].adjoint_iterations - results["torch"].adjoint_iterations).abs().max() <= 1


@pytest.mark.parametrize("model", ["rawks", "grady"])
def test_gradcheck_float64(rng, model):
    boundary, seeds = problem(rng, model, 2, 3, torch.float64, n=1, num_labels=2)
    weights = torch.randn(1, 2, 2, 3, dtype=torch.float64, device=DEVICE)

    def loss(b):
        return (rt.propagate(b, seeds, 2, model=model, backend="triton", rtol=1e-12).P * weights).sum()

    assert torch.autograd.gradcheck(loss, (boundary.requires_grad_(True),), eps=1e-6, atol=1e-7, rtol=1e-5)


def _operator(rng, model, h, w):
    from rawks_triton.backends.triton.operator import TritonOperator
    from rawks_triton.coefficients import grady_node_coefficients, rawks_coefficients
    from rawks_triton.systems import build_stencil, compact_labels

    boundary, seeds = problem(rng, model, h, w, torch.float64)
    systems = compact_labels(seeds, 3, -1)
    coefficients = (rawks_coefficients if model == "rawks" else grady_node_coefficients)(boundary)
    stencil = build_stencil(*coefficients, systems.free, unit_edges=model == "rawks")
    return TritonOperator(stencil, systems.image_index, systems.groups), stencil, systems


@pytest.mark.parametrize("model", ["rawks", "grady"])
def test_matvec_is_the_assembled_operator_and_symmetric(rng, model):
    from rawks_triton.reference import assemble_matrix

    op, stencil, systems = _operator(rng, model, 7, 13)
    frame = op.frame
    u = torch.randn(systems.num_systems, 7, 13, dtype=torch.float64, device=DEVICE)
    v = torch.randn_like(u)
    Au, Av = (frame.unframe(op.matvec(frame.frame(t))) for t in (u, v))
    assert_close((Au * v).sum(), (u * Av).sum(), atol=1e-10, rtol=1e-12, name="<Au, v> vs <u, Av>")
    for s in range(systems.num_systems):
        n = int(systems.image_index[s])
        A = assemble_matrix(*(t[n].cpu().numpy() for t in (stencil.diag, stencil.right, stencil.down)))
        expected = torch.as_tensor(A @ u[s].cpu().numpy().ravel()).view(7, 13)
        assert_close(Au[s].cpu(), expected, atol=1e-12, rtol=1e-12, name=f"A u, system {s}")


def test_a_general_preconditioner_gives_the_fused_jacobi_iterates(rng):
    """The hook used by multigrid: M r computed outside the CG kernels, r' z by its own launch."""
    from rawks_triton.backends.triton.pcg import TritonPCG
    from rawks_triton.solve.options import SolverOptions
    from rawks_triton.solve.pcg import run_pcg
    from rawks_triton.solve.rules import ForwardRule

    op, stencil, systems = _operator(rng, "rawks", 7, 13)
    rhs = torch.randn(systems.num_systems, 7, 13, dtype=torch.float64, device=DEVICE).abs()
    rhs = op.frame.frame(rhs * systems.free_mask(torch.float64))
    options = SolverOptions(rtol=1e-9, preconditioner="jacobi")

    class ObjectJacobi:
        def apply(self, r, out):
            return torch.mul(op.inv_diag.index_select(0, systems.image_index), r, out=out)

    runs = {}
    for name, pre in (("fused", None), ("hook", ObjectJacobi())):
        runs[name] = TritonPCG(op, rhs, ForwardRule(options, systems.groups), options, pre)
        run_pcg(runs[name], 500, 4)
    assert torch.equal(runs["fused"].iterations, runs["hook"].iterations)
    assert_close(runs["hook"].x, runs["fused"].x, atol=1e-12, rtol=1e-9, name="x, hook vs fused")
    assert bool(runs["hook"].final_converged.all())
    residual = rhs - op.matvec(runs["hook"].x)
    assert float(residual.abs().max()) <= 1e-8 * float(rhs.abs().max())


def test_maxiter_reached_warns_and_strict_raises(rng):
    boundary, seeds = problem(rng, "grady", 16, 16, torch.float32)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        result = rt.propagate(boundary, seeds, 3, model="grady", backend="triton", maxiter=3, rtol=1e-6)
    assert not bool(result.converged.all()) and int(result.iterations.max()) <= 3
    assert torch.isfinite(result.P).all()
    with pytest.raises(rt.ConvergenceError):
        rt.propagate(boundary, seeds, 3, model="grady", backend="triton", maxiter=3, rtol=1e-6, strict=True)


def test_defined_results_no_seeds_all_seeded_and_non_contiguous(rng):
    boundary, seeds = problem(rng, "rawks", 7, 13, torch.float64, n=3)
    seeds[1] = -1  # no seeds: uniform P, flagged
    seeds[2] = torch.arange(7 * 13, device=DEVICE).view(7, 13) % 3  # all seeded
    boundary_nc = boundary.transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous
    got = rt.propagate(boundary_nc, seeds, 3, backend="triton", rtol=1e-10)
    ref = rt.propagate(boundary.cpu(), seeds.cpu(), 3, backend="scipy", rtol=1e-10)  # same reach threshold
    assert_close(got.P, ref.P, atol=1e-6, name="P")  # P error is about rtol / sum_l Z_l
    assert torch.equal(got.has_seeds.cpu(), ref.has_seeds)
    assert_close(got.P[1], torch.full_like(got.P[1], 1 / 3), atol=0, name="P without seeds")


def test_programs_per_system_fill_the_device_and_respect_the_limits():
    from rawks_triton.backends.triton.operator import LAUNCH_CONFIGS, MAX_PARTIALS, num_partials

    cfg = LAUNCH_CONFIGS[torch.float32]
    assert num_partials(1, 1, cfg, 132) == 1  # never more programs than blocks of pixels
    assert num_partials(512 * 512, 24, cfg, 132) == 512 * 512 // cfg.pixels_per_program
    assert num_partials(128 * 128, 24, cfg, 132) == 16  # a small batch is spread over the SMs
    assert num_partials(128 * 128, 24, cfg, 0) == 4
    assert num_partials(4096 * 4096, 1, cfg, 132) == MAX_PARTIALS


# ---- every kernel writes every position it owns ------------------------------------------------
# Output buffers start as NaN (not zeros or torch.empty), so a position a kernel should write
# and does not is caught. The CG kernels own the frame's [lo, hi): there every value is
# finite and equals the plain-torch reference, exactly 0 on the border positions; outside it
# nothing is written (the launchers allocate vectors with zeros).

NAN_SIZES = [(7, 13), (1, 9), (6, 5)]
NAN_IDS = [f"{h}x{w}" for h, w in NAN_SIZES]


def _owned(frame):
    """[size] bool: the positions [lo, hi) of the CG kernels."""
    owned = torch.zeros(frame.size, dtype=torch.bool, device=DEVICE)
    owned[frame.lo : frame.hi] = True
    return owned


def _is_pixel(frame):
    return frame.frame(torch.ones(1, frame.height, frame.width, device=DEVICE)).view(-1) > 0


def assert_owned(out, expected, frame, name, atol=1e-12):
    """out ([B, size]) against the unframed reference ``expected`` ([B, h, w]): finite on
    [lo, hi), equal to it on the pixels, exactly 0 on the border positions of [lo, hi),
    untouched (NaN) outside."""
    owned, pixel = _owned(frame), _is_pixel(frame)
    assert torch.isfinite(out[:, owned]).all(), f"{name}: positions of [lo, hi) left unwritten"
    assert_close(frame.unframe(out), expected, atol=atol, rtol=1e-12, name=name)
    assert bool((out[:, owned & ~pixel] == 0).all()), f"{name}: border positions inside [lo, hi) are not 0"
    assert bool(torch.isnan(out[:, ~owned]).all()), f"{name}: positions outside [lo, hi) were written"


def _framed_random(op, systems, free_only=True):
    t = torch.randn(systems.num_systems, op.frame.height, op.frame.width, dtype=torch.float64, device=DEVICE)
    return op.frame.frame(t * systems.free_mask(torch.float64) if free_only else t)


@pytest.mark.parametrize("h,w", NAN_SIZES, ids=NAN_IDS)
def test_stencil_residual_writes_every_owned_position(rng, h, w):
    from rawks_triton.systems import stencil_matvec

    op, stencil, systems = _operator(rng, "grady", h, w)
    frame, S = op.frame, systems.num_systems
    x, b = _framed_random(op, systems), _framed_random(op, systems)
    Ax = stencil_matvec(stencil, systems.image_index, frame.unframe(x))
    nan = lambda *shape: torch.full(shape, float("nan"), dtype=torch.float64, device=DEVICE)  # noqa: E731
    out = op.residual(None, x, nan(S, frame.size))
    assert_owned(out, Ax, frame, "A x")
    rz_part, rr_part = nan(S, op.T), nan(S, op.T)
    out = op.residual(b, x, nan(S, frame.size), rz_part, rr_part)
    r = frame.unframe(b) - Ax
    assert_owned(out, r, frame, "b - A x")
    inv_diag = stencil.inv_diag.index_select(0, systems.image_index)
    assert_close(rz_part.sum(1), (r * inv_diag * r).flatten(1).sum(1), atol=1e-12, rtol=1e-12, name="r' M r partials")
    assert_close(rr_part.sum(1), (r * r).flatten(1).sum(1), atol=1e-12, rtol=1e-12, name="r' r partials")


@pytest.mark.parametrize("jacobi", [True, False], ids=["fused-jacobi", "preconditioner"])
@pytest.mark.parametrize("h,w", NAN_SIZES, ids=NAN_IDS)
def test_cg_iteration_writes_every_owned_position(rng, h, w, jacobi):
    """One iteration from x = 0 against its plain-torch formulas; p_new and A p start as NaN."""
    from rawks_triton.backends.triton.pcg import TritonPCG
    from rawks_triton.solve.options import SolverOptions
    from rawks_triton.solve.rules import ForwardRule
    from rawks_triton.systems import stencil_matvec

    op, stencil, systems = _operator(rng, "rawks", h, w)
    frame = op.frame
    inv_diag = stencil.inv_diag.index_select(0, systems.image_index)

    class ObjectJacobi:
        def apply(self, r, out):
            return torch.mul(op.inv_diag.index_select(0, systems.image_index), r, out=out)

    b = _framed_random(op, systems).abs()
    options = SolverOptions(rtol=1e-9, preconditioner="jacobi")
    pcg = TritonPCG(op, b, ForwardRule(options, systems.groups), options, None if jacobi else ObjectJacobi())
    p_new = pcg.p[1 - pcg.current]
    p_new.fill_(float("nan"))
    pcg.ap.fill_(float("nan"))
    pcg.step()
    rhs = frame.unframe(b)
    p = inv_diag * rhs  # beta p_old = 0 at the first iteration
    ap = stencil_matvec(stencil, systems.image_index, p)
    alpha = (rhs * p).flatten(1).sum(1) / (p * ap).flatten(1).sum(1)
    alpha = alpha.view(-1, 1, 1)
    assert_owned(p_new, p, frame, "p_new")
    assert_owned(pcg.ap, ap, frame, "A p")
    for name, got, expected in (("x", pcg.x, alpha * p), ("r", pcg.r, rhs - alpha * ap)):
        assert_close(frame.unframe(got), expected, atol=1e-12, rtol=1e-10, name=name)
        assert torch.equal(got, frame.frame(frame.unframe(got))), f"{name}: the border is not exactly 0"


@pytest.mark.parametrize("edges", [False, True], ids=["node", "edges"])
@pytest.mark.parametrize("h,w", NAN_SIZES, ids=NAN_IDS)
def test_coefficient_gradients_write_every_owned_position(rng, h, w, edges):
    from rawks_triton.systems import coefficient_gradients

    op, stencil, systems = _operator(rng, "grady", h, w)
    frame = op.frame
    adjoint, x = (frame.unframe(_framed_random(op, systems)) for _ in range(2))
    Z = x + torch.rand_like(x)
    n = stencil.shape[0]
    nan = lambda: torch.full((n, frame.size), float("nan"), dtype=torch.float64, device=DEVICE)  # noqa: E731
    out = (nan(), (nan(), nan()))
    framed = [frame.frame(t) for t in (adjoint, x, Z)]
    op.coefficient_gradients(*framed, systems.groups.first_system(), edges, out=out)
    expected_diag, expected_edges = coefficient_gradients(adjoint, x, Z, systems, edges)
    assert_owned(out[0], expected_diag, frame, "dL/dd")
    for k, (name, got) in enumerate(zip(("right", "down"), out[1], strict=True)):
        if expected_edges is None:
            assert bool(torch.isnan(got).all()), f"dL/d{name} written without edges"
        else:
            assert_owned(got, expected_edges[k], frame, f"dL/d{name}")


@pytest.mark.parametrize("preconditioner", ["jacobi", "multigrid"])
def test_the_border_of_every_vector_stays_zero(rng, preconditioner):
    from rawks_triton.backends.triton.multigrid import multigrid_preconditioner
    from rawks_triton.backends.triton.pcg import TritonPCG
    from rawks_triton.solve.options import SolverOptions
    from rawks_triton.solve.pcg import run_pcg
    from rawks_triton.solve.rules import ForwardRule

    op, stencil, systems = _operator(rng, "grady", 6, 5)
    b = _framed_random(op, systems).abs()
    options = SolverOptions(rtol=1e-9, preconditioner=preconditioner)
    pre = (
        None
        if preconditioner == "jacobi"
        else multigrid_preconditioner(stencil, systems.image_index, framed=op.coefficients)
    )
    pcg = TritonPCG(op, b, ForwardRule(options, systems.groups), options, pre)
    run_pcg(pcg, 200, 4)
    assert bool(pcg.final_converged.all())
    border = ~_is_pixel(op.frame)
    for name in ("x", "r", "ap", "z"):
        assert bool((getattr(pcg, name)[:, border] == 0).all()), f"{name}: nonzero border"
    assert all(bool((p[:, border] == 0).all()) for p in pcg.p), "p: nonzero border"
