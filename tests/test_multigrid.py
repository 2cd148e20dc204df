"""The multigrid preconditioner: symmetry and definiteness, the coarse operators against
P^T A P from the scipy reference, no leakage into unreachable components, and
propagate(..., preconditioner="multigrid") against the exact reference, gradients included."""

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rawks_triton as rt
from rawks_triton.backends.torch.multigrid import TorchMultigrid
from rawks_triton.coefficients import grady_edge_coefficients, grady_node_coefficients, rawks_coefficients
from rawks_triton.reference import assemble_matrix
from rawks_triton.solve.multigrid import MultigridOptions, build_hierarchy
from rawks_triton.systems import build_stencil, compact_labels, right_hand_sides
from rawks_triton.testing import (
    SOLVE_RTOL,
    assert_close,
    assert_spd_on_active,
    compare_with_reference,
    explicit_matrix,
    problems,
    random_scores,
    random_seeds,
)

SPD_SIZES = [(1, 1), (1, 17), (17, 1), (2, 2), (3, 1), (7, 13), (9, 10)]
CYCLES = {
    "V": MultigridOptions(coarsest_pixels=4),
    "W": MultigridOptions(coarsest_pixels=4, cycle="W"),
    "galerkin-over": MultigridOptions(coarsest_pixels=4, coarse_edge_scale=1.0, correction_scale=1.8),
}
MODELS = ["rawks", "grady", "grady-edges"]


def make_problem(rng, model, n, h, w, density=0.1, num_labels=3, spread=3.0, dtype=torch.float64):
    if model == "grady-edges":
        coeffs = grady_edge_coefficients(torch.from_numpy(rng.random((n, 2, h, w))).to(dtype))
    else:
        scores = random_scores(rng, n, h, w, spread=spread, dtype=dtype)
        coeffs = rawks_coefficients(scores) if model == "rawks" else grady_node_coefficients(scores)
    seeds = random_seeds(rng, n, h, w, num_labels, density)
    unseeded = (seeds < 0).flatten(1).all(dim=1)
    seeds[unseeded, 0, 0] = 0  # every image has systems
    systems = compact_labels(seeds, num_labels, -1)
    stencil = build_stencil(*coeffs, systems.free, unit_edges=model == "rawks")
    return coeffs, systems, stencil


def interior(level, t):
    """[N, 1, (h + 2) (w + 2)] level tensor -> [N, h, w] numpy."""
    n = t.shape[0]
    grid = level.frame.interior(t.reshape(n, -1))
    return grid.double().numpy()


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is faster and steady


@pytest.mark.parametrize("cycle", list(CYCLES))
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("h,w", SPD_SIZES, ids=[f"{h}x{w}" for h, w in SPD_SIZES])
def test_preconditioner_is_symmetric_positive_definite_on_free_pixels(rng, model, h, w, cycle):
    """The explicit matrix of M: symmetric, positive definite on the free pixels with d > 0,
    zero rows and columns elsewhere (seeds). Three images, each with its own labels."""
    _, systems, stencil = make_problem(rng, model, 3, h, w, density=0.3)
    image_index = systems.image_index
    S = systems.num_systems
    assert S > 0
    options = CYCLES[cycle]
    M = TorchMultigrid(build_hierarchy(stencil, options), image_index, options)
    Mm = explicit_matrix(M, S, (h, w))
    assert_spd_on_active(Mm, (stencil.inv_diag > 0).index_select(0, image_index).reshape(S, -1))


@pytest.mark.parametrize("cycle", list(CYCLES))
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("h,w", [(33, 31), (63, 65), (40, 1), (128, 96)], ids=["33x31", "63x65", "40x1", "128x96"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_dot_product_test_and_rayleigh_quotients(rng, model, h, w, dtype, cycle):
    """<M u, v> = <u, M v> and <M u, u> > 0 for random and smooth u, uniform layout [N, k, n]."""
    _, systems, stencil = make_problem(rng, model, 2, h, w, density=0.02, dtype=dtype)
    image_index = torch.tensor([0, 0, 1, 1])
    options = replace(CYCLES[cycle], coarsest_pixels=MultigridOptions.coarsest_pixels)
    M = TorchMultigrid(build_hierarchy(stencil, options), image_index, options)
    assert M.per_group == 2
    active = (stencil.inv_diag > 0).index_select(0, image_index).to(dtype)
    u = torch.from_numpy(rng.standard_normal((4, h, w))).to(dtype) * active
    v = torch.from_numpy(rng.standard_normal((4, h, w))).to(dtype) * active
    Mu, Mv = M(u), M(v)
    tol = {torch.float64: 1e-11, torch.float32: 2e-5}[dtype]
    lhs, rhs = (Mu * v).sum((1, 2)), (u * Mv).sum((1, 2))
    assert_close(lhs, rhs, atol=tol * float(lhs.abs().max()), name="<Mu, v> - <u, Mv>")
    smooth = active * torch.linspace(1.0, 2.0, w, dtype=dtype)
    for vector in (u, smooth):
        assert bool(((M(vector) * vector).sum((1, 2)) > 0).all())


def explicit_prolongation(level, coarse):
    """Sparse P (h w x h' w') of one aggregation step: P[i, J] = p_i for pixel i in block J."""
    p = interior(level, level.prolongation)[0].ravel()
    y, x = np.divmod(np.arange(level.height * level.width), level.width)
    block = (y // 2) * coarse.width + (x // 2)
    return sp.csr_array((p, (np.arange(p.size), block)), shape=(p.size, coarse.height * coarse.width))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("h,w", [(7, 13), (16, 16), (33, 31)], ids=["7x13", "16x16", "33x31"])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_coarse_operators_are_scaled_galerkin_products(rng, model, h, w, scale):
    """Every coarse level equals P^T A P (assembled with the scipy reference) with its
    off-diagonal part multiplied by ``coarse_edge_scale`` and the diagonal lowered to match
    (the excess part, sum of the row, unchanged)."""
    _, _, stencil = make_problem(rng, model, 1, h, w, density=0.1)
    levels = build_hierarchy(stencil, MultigridOptions(coarse_edge_scale=scale, coarsest_pixels=4))
    assert len(levels) >= 3
    for level, coarse in zip(levels[:-1], levels[1:], strict=True):
        A = assemble_matrix(*(interior(level, t)[0] for t in (level.diag, level.right, level.down)))
        P = explicit_prolongation(level, coarse)
        galerkin = (P.T @ A @ P).toarray()
        off = galerkin - np.diag(np.diag(galerkin))
        expected = np.diag(np.diag(galerkin) + (1.0 - scale) * off.sum(axis=1)) + scale * off
        actual = assemble_matrix(*(interior(coarse, t)[0] for t in (coarse.diag, coarse.right, coarse.down))).toarray()
        assert_close(
            torch.from_numpy(actual), torch.from_numpy(expected), atol=1e-12 * np.abs(expected).max(), name="A_c"
        )


def test_prolongation_keeps_the_anchor_component_of_each_block():
    """A block split by zero-weight edges keeps only the part joined to its anchor, the
    pixel with the largest internal edge weight; seeds take no part."""
    edges = torch.ones(1, 2, 4, 4, dtype=torch.float64)
    edges[0, 0, :, 0] = 0.0  # column 0 cut from column 1: the left blocks split into two pairs
    edges[0, 1, :, 1] = 3.0  # the pair in column 1 holds the anchor
    coeffs = grady_edge_coefficients(edges)
    seeds = torch.full((1, 4, 4), -1)
    seeds[0, 3, 3] = 0
    systems = compact_labels(seeds, 1, -1)
    stencil = build_stencil(*coeffs, systems.free)
    level = build_hierarchy(stencil, MultigridOptions(coarsest_pixels=1))[0]
    p = interior(level, level.prolongation)[0]
    expected = np.array([[0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 0]], dtype=float)
    assert np.array_equal(p, expected), p


def wall_problem(dtype=torch.float64):
    """Grady edges with a zero-weight wall: columns 3.. are cut off from every seed."""
    edges = torch.ones(1, 2, 8, 8, dtype=dtype)
    edges[0, 0, :, 2] = 0.0  # no edge between columns 2 and 3 (inside 2x2 blocks of the frame)
    seeds = torch.full((1, 8, 8), -1)
    seeds[0, 0, 0], seeds[0, 7, 0] = 0, 1
    return edges, seeds


def test_no_leak_into_components_without_seeds():
    edges, seeds = wall_problem()
    systems = compact_labels(seeds, 2, -1)
    coeffs = grady_edge_coefficients(edges)
    stencil = build_stencil(*coeffs, systems.free)
    M = TorchMultigrid(build_hierarchy(stencil, MultigridOptions(coarsest_pixels=4)), systems.image_index)
    r = torch.rand(2, 8, 8, dtype=torch.float64) * systems.free_mask(torch.float64)
    r[:, :, 3:] = 0.0
    z = M(r)
    assert torch.all(z[:, :, 3:] == 0) and bool((z[:, :, :3] != 0).any())
    rhs = right_hand_sides(coeffs[1], coeffs[2], systems)
    assert torch.all(rhs[:, :, 3:] == 0)


def test_unreachable_component_end_to_end_with_gradient():
    edges, seeds = wall_problem()
    edges.requires_grad_()
    r = rt.propagate(edges, seeds, 2, "grady", backend="torch", preconditioner="multigrid")
    assert r.reachable[0, :, :3].all() and not r.reachable[0, :, 3:].any()
    assert torch.all(r.P[0, :, :, 3:] == 0.5)
    (r.P[:, 0] * torch.arange(64.0, dtype=torch.float64).view(1, 8, 8)).sum().backward()
    assert torch.isfinite(edges.grad).all() and torch.all(edges.grad[0, :, :, 4:] == 0)


def test_subset_of_systems_matches_rows_of_the_full_preconditioner(rng):
    """The operator restricted to some systems (CG's compaction) applies the same cycle."""
    _, systems, stencil = make_problem(rng, "grady", 3, 21, 18, density=0.05)
    levels = build_hierarchy(stencil)
    image_index = torch.tensor([0, 0, 1, 1, 2, 2])
    r = torch.from_numpy(rng.standard_normal((6, 21, 18))) * (stencil.inv_diag > 0).index_select(0, image_index)
    full = TorchMultigrid(levels, image_index)(r)
    rows = torch.tensor([1, 2, 5])
    part = TorchMultigrid(levels, image_index.index_select(0, rows))
    assert part.per_group == 1
    assert_close(part(r.index_select(0, rows)), full.index_select(0, rows), atol=1e-13, name="M_rows r")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_multigrid_matches_scipy_reference(dtype, data):
    model, scores, seeds, num_labels = data.draw(
        problems(dtype, max_labels=5, densities=(0.0, 0.003, 0.02, 0.1, 0.5), offsets=(0.0, 0.5, 3.0))
    )
    reference = rt.propagate(scores.double(), seeds, num_labels, model, backend="scipy")
    result = rt.propagate(
        scores,
        seeds,
        num_labels,
        model,
        backend="torch",
        preconditioner="multigrid",
        rtol=SOLVE_RTOL[dtype],
        maxiter=2000,
    )
    assert bool(result.converged.all()), f"not converged: residual {result.residual.max():.3g}"
    compare_with_reference(result, reference, dtype, name=f"{model} multigrid")


@pytest.mark.parametrize("model", ["rawks", "grady", "grady-edges"])
def test_gradcheck_float64(rng, model):
    if model == "grady-edges":
        boundary, model_name = torch.from_numpy(0.1 + rng.random((2, 2, 5, 6))), "grady"
    else:
        boundary, model_name = random_scores(rng, 2, 5, 6, spread=1.5), model
    seeds = torch.full((2, 5, 6), -1)
    seeds[0, 0, 0], seeds[0, 4, 5], seeds[0, 2, 1], seeds[1, 1, 1], seeds[1, 3, 4] = 0, 2, 1, 1, 0
    weights = torch.from_numpy(rng.standard_normal((2, 3, 5, 6)))

    def loss(b):
        r = rt.propagate(b, seeds, 3, model_name, backend="torch", preconditioner="multigrid", rtol=1e-13)
        return (r.P * weights).sum(), (r.Z * weights).sum()

    assert torch.autograd.gradcheck(loss, (boundary.requires_grad_(),), eps=1e-6, atol=1e-7, rtol=1e-5)


def regions(h, w, border, dtype=torch.float64):
    """A 4 x 4 grid of rectangular regions: score 0 inside, ``border`` on the region borders,
    one scribble per region (labels cycle 0, 1, 2)."""
    ys, xs = np.arange(h) * 4 // h, np.arange(w) * 4 // w
    region = ys[:, None] * 4 + xs[None, :]
    edge = np.zeros((h, w), bool)
    edge[:, 1:] |= region[:, 1:] != region[:, :-1]
    edge[:, :-1] |= region[:, 1:] != region[:, :-1]
    edge[1:] |= region[1:] != region[:-1]
    edge[:-1] |= region[1:] != region[:-1]
    scores = torch.from_numpy(np.where(edge, border, 0.0))[None].to(dtype)
    seeds = torch.full((1, h, w), -1)
    for k in range(16):
        y, x = np.argwhere(region == k).mean(axis=0).astype(int)
        seeds[0, y, max(0, x - w // 32) : x + w // 32 + 1] = k % 3
    return scores, seeds


@pytest.mark.parametrize("model", ["rawks", "grady"])
def test_iterations_bounded_and_far_below_jacobi(model):
    """Regions with strong borders: a handful of iterations at 96x128 and 192x256, where
    Jacobi-PCG needs hundreds (measured: docs/multigrid.md)."""
    counts = {}
    for h, w in [(96, 128), (192, 256)]:
        scores, seeds = regions(h, w, border=6.0)
        r = rt.propagate(scores, seeds, 3, model, backend="torch", preconditioner="multigrid")
        assert bool(r.converged.all())
        counts[h] = int(r.iterations.max())
        assert counts[h] <= 15, f"{model} {h}x{w}: {r.iterations.tolist()}"
    assert counts[192] <= counts[96] + 3
    scores, seeds = regions(96, 128, border=6.0)
    jacobi = rt.propagate(scores, seeds, 3, model, backend="torch", preconditioner="jacobi")
    assert int(jacobi.iterations.max()) >= 5 * counts[96]


def test_options_are_checked():
    stencil = build_stencil(*rawks_coefficients(torch.zeros(1, 4, 4)), torch.ones(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="coarsest_pixels"):
        build_hierarchy(stencil, MultigridOptions(coarsest_pixels=0))
    for bad, name in [
        (dict(cycle="F"), "cycle"),
        (dict(correction_scale=1.5), "correction_scale"),
        (dict(smoothing_steps=0), "smoothing_steps"),
    ]:
        with pytest.raises(ValueError, match=name):
            MultigridOptions(**bad)


ODD_SIZES = [(1, 1), (1, 17), (7, 13), (33, 31)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("model", ["rawks", "grady"])
@pytest.mark.parametrize("h,w", ODD_SIZES, ids=[f"{h}x{w}" for h, w in ODD_SIZES])
def test_odd_sizes_match_scipy(rng, h, w, model, dtype):
    """Two images, 21 labels of which a few are present (label compaction), against the
    float64 direct solution; the forward and the adjoint solve converge."""
    scores = random_scores(rng, 2, h, w, spread=3.0, dtype=dtype)
    seeds = random_seeds(rng, 2, h, w, 3, 0.08)
    seeds = torch.where(seeds >= 0, torch.tensor([2, 5, 20])[seeds.clamp(min=0)], seeds)
    seeds[:, 0, 0] = 20
    seeds[1, -1, -1] = 4
    reference = rt.propagate(scores.double(), seeds, 21, model, backend="scipy")
    scores.requires_grad_()
    result = rt.propagate(scores, seeds, 21, model, backend="torch", preconditioner="multigrid", rtol=SOLVE_RTOL[dtype])
    compare_with_reference(result, reference, dtype, name=f"{model} {h}x{w}")
    assert result.num_systems <= 2 * 4
    (result.P * torch.linspace(-1, 1, h * w, dtype=dtype).view(h, w)).sum().backward()
    assert bool(result.adjoint_converged.all()) and torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("model", ["rawks", "grady"])
def test_all_seeded_image_next_to_a_free_one(rng, model):
    """An image whose every pixel is a seed has no unknowns: its levels are all zero and the
    cycle leaves its systems at 0, while the other image is solved as usual."""
    scores = random_scores(rng, 2, 9, 14)
    seeds = random_seeds(rng, 2, 9, 14, 3, 0.1)
    seeds[0] = torch.from_numpy(rng.integers(0, 3, size=(9, 14)))
    seeds[1, 0, 0] = 1
    reference = rt.propagate(scores, seeds, 3, model, backend="scipy")
    result = rt.propagate(scores, seeds, 3, model, backend="torch", preconditioner="multigrid", rtol=1e-10)
    compare_with_reference(result, reference, torch.float64, name=model)
    assert torch.all(result.iterations[result.image_index == 0] == 0)


def test_auto_rule_picks_and_records_the_solver():
    from rawks_triton.solve.choose import DIRECT_MAX_PIXELS, choose_solver

    cpu = torch.device("cpu")
    assert choose_solver("auto", "auto", cpu, 8, 8, "grady") == ("scipy", "none")
    assert choose_solver("auto", "auto", cpu, 8, 8, "rawks") == ("torch", "multigrid")
    big = int(DIRECT_MAX_PIXELS**0.5) + 1
    assert choose_solver("auto", "auto", cpu, big, big, "grady") == ("torch", "multigrid")
    assert choose_solver("auto", "jacobi", cpu, 8, 8, "grady") == ("torch", "jacobi")  # asking for CG means CG
    assert choose_solver("auto", "auto", cpu, 512, 512, "grady") == ("scipy", "none")
    for model in ("rawks", "grady"):  # multigrid at every size: Jacobi cannot meet the rule on learned boundaries
        for pixels in (1, 100, 10**6):
            assert choose_solver("torch", "auto", cpu, 1, pixels, model) == ("torch", "multigrid")
    assert choose_solver("scipy", "multigrid", cpu, 8, 8, "rawks") == ("scipy", "none")
    scores, seeds = regions(12, 16, border=3.0)
    r = rt.propagate(scores, seeds, 3, "grady")
    assert (r.backend, r.preconditioner) == ("scipy", "none")
    r = rt.propagate(scores, seeds, 3, preconditioner="multigrid")
    assert (r.backend, r.preconditioner) == ("torch", "multigrid") and bool(r.converged.all())
    with pytest.raises(ValueError, match="preconditioner"):
        rt.propagate(scores, seeds, 3, preconditioner="amg")


def test_float32_image_without_seeds_beside_a_seeded_one():
    """Found by hypothesis: the unseeded image's Laplacian is singular, and float32 rounding
    in its degrees must not pass for excess (the coarsest inverse raised here)."""
    scores = torch.tensor(
        [
            [[1.5355, 2.8514, 0.4325, 2.8459], [0.9355, 1.2700, 2.4831, 1.2276]],
            [[1.6488, 0.0827, 2.2605, 1.6144], [0.9892, 2.3653, 0.9096, 1.3605]],
        ]
    )
    seeds = torch.full((2, 2, 4), -1)
    seeds[1, 1, 0], seeds[1, 1, 3] = 0, 1
    got = rt.propagate(scores, seeds, 2, "grady", backend="torch", preconditioner="multigrid", rtol=1e-6)
    ref = rt.propagate(scores.double(), seeds, 2, "grady", backend="scipy")
    assert_close(got.P, ref.P, atol=1e-4, name="P")
    assert not bool(got.has_seeds[0]) and bool(got.converged.all())
