"""The Triton backend against the torch and scipy backends.

On a machine without a GPU the kernels run in Triton's interpreter on CPU tensors
(tests/conftest.py sets TRITON_INTERPRET=1 before they are imported); on a GPU they run
compiled on CUDA tensors. The interpreter is slow, so the grids are small and odd-sized.
"""

import warnings

import pytest
import torch

import rawks_triton as rt
from rawks_triton.solve.choose import triton_available
from rawks_triton import ConvergenceWarning

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
    from rawks_triton.backends.triton_cg import TritonOperator
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
    u = torch.randn(systems.num_systems, 7, 13, dtype=torch.float64, device=DEVICE)
    v = torch.randn_like(u)
    Au, Av = op.matvec(u), op.matvec(v)
    assert_close((Au * v).sum(), (u * Av).sum(), atol=1e-10, rtol=1e-12, name="<Au, v> vs <u, Av>")
    for s in range(systems.num_systems):
        n = int(systems.image_index[s])
        A = assemble_matrix(*(t[n].cpu().numpy() for t in (stencil.diag, stencil.right, stencil.down)))
        expected = torch.as_tensor(A @ u[s].cpu().numpy().ravel()).view(7, 13)
        assert_close(Au[s].cpu(), expected, atol=1e-12, rtol=1e-12, name=f"A u, system {s}")


def test_a_general_preconditioner_gives_the_fused_jacobi_iterates(rng):
    """The hook used by multigrid: M r computed outside the CG kernels, r' z by its own launch."""
    from rawks_triton.backends.triton_cg import TritonPCG
    from rawks_triton.solve.options import SolverOptions
    from rawks_triton.solve.pcg import run_pcg
    from rawks_triton.solve.rules import ForwardRule

    op, stencil, systems = _operator(rng, "rawks", 7, 13)
    rhs = torch.randn(systems.num_systems, 7, 13, dtype=torch.float64, device=DEVICE).abs()
    rhs *= systems.free_mask(torch.float64)
    options = SolverOptions(rtol=1e-9, preconditioner="jacobi")

    class ObjectJacobi:
        def apply(self, r, out):
            return torch.mul(stencil.inv_diag.index_select(0, systems.image_index), r, out=out)

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
    from rawks_triton.backends.triton_cg import LAUNCH_CONFIGS, MAX_PARTIALS, num_partials

    cfg = LAUNCH_CONFIGS[torch.float32]
    assert num_partials(1, 1, cfg, 132) == 1  # never more programs than blocks of pixels
    assert num_partials(512 * 512, 24, cfg, 132) == 512 * 512 // cfg.pixels_per_program
    assert num_partials(128 * 128, 24, cfg, 132) == 16  # a small batch is spread over the SMs
    assert num_partials(128 * 128, 24, cfg, 0) == 4
    assert num_partials(4096 * 4096, 1, cfg, 132) == MAX_PARTIALS
