"""The multigrid preconditioner on volumes ([N, D, H, W], 7-point systems): the semi-coarsening
rule, the coarse operators against the per-axis scaled Galerkin product of the scipy reference,
the anchor components of 2x2x2 blocks, the cycle's symmetry and definiteness, no leakage, and
propagate(..., backend="torch", preconditioner="multigrid") against the direct solution."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import rawks_triton as rt
from rawks_triton.backends.torch.multigrid import TorchMultigrid
from rawks_triton.coefficients import grady_edge_coefficients, grady_node_coefficients, rawks_coefficients
from rawks_triton.reference import assemble_matrix
from rawks_triton.solve.choose import choose_solver
from rawks_triton.solve.multigrid import MultigridOptions, build_hierarchy
from rawks_triton.systems import build_stencil, compact_labels
from rawks_triton.testing import SOLVE_RTOL, TOL, assert_close, assert_spd_on_active, explicit_matrix, random_scores

MODELS = ["rawks", "grady", "grady-edges"]
CYCLES = {
    "V": MultigridOptions(coarsest_pixels=4),
    "W": MultigridOptions(coarsest_pixels=4, cycle="W"),
    "galerkin-over": MultigridOptions(coarsest_pixels=4, coarse_edge_scale=1.0, correction_scale=1.8),
    "V-every-axis": MultigridOptions(coarsest_pixels=4, semi_coarsening=0.0),
}
Z_RATIO = 1 / 40  # z conductances of thick slices: (1.5 mm / 10 mm)^2 ~ 1/44


def ids(shapes):
    return ["x".join(map(str, s)) for s in shapes]


def volume_seeds(rng, n, shape, num_labels, density):
    labels = rng.integers(0, num_labels, size=(n, *shape))
    seeds = np.where(rng.random((n, *shape)) < density, labels, -1)
    seeds.reshape(n, -1)[:, 0] = 0  # every volume has systems
    return torch.from_numpy(seeds)


def volume_coefficients(rng, model, n, shape, z_ratio=1.0, dtype=torch.float64):
    """(diag, right, down, deep) of a random volume; ``z_ratio`` scales the z edges (for "rawks"
    the walk's killing d = exp(B) times the degree of unit in-plane and ``z_ratio`` z edges)."""
    d, h, w = shape
    if model == "grady-edges":
        edges = torch.from_numpy(rng.random((n, 3, d, h, w))).to(dtype)
        edges[:, 2] *= z_ratio
        return grady_edge_coefficients(edges)
    scores = random_scores(rng, n * d, h, w, spread=3.0, dtype=dtype).view(n, d, h, w)
    diag, right, down, deep = rawks_coefficients(scores, 3) if model == "rawks" else grady_node_coefficients(scores, 3)
    deep = deep * z_ratio
    if model == "rawks":
        diag = torch.exp(scores) * (4.0 + 2.0 * z_ratio)
    else:
        diag = grady_edge_coefficients(torch.stack([right, down, deep], dim=1))[0]
    return diag, right, down, deep


def volume_problem(rng, model, n, shape, z_ratio=1.0, density=0.1, num_labels=3, dtype=torch.float64):
    coeffs = volume_coefficients(rng, model, n, shape, z_ratio, dtype)
    systems = compact_labels(volume_seeds(rng, n, shape, num_labels, density), num_labels, -1)
    unit = model == "rawks" and z_ratio == 1.0
    stencil = build_stencil(coeffs[0], coeffs[1], coeffs[2], systems.free, unit_edges=unit, deep=coeffs[3])
    return coeffs, systems, stencil


def edge_stencil(edges, free):
    """The stencil of Grady edge weights [N, 3, D, H, W]."""
    diag, right, down, deep = grady_edge_coefficients(edges)
    return build_stencil(diag, right, down, free, deep=deep)


def interior(level, t):
    """[N, 1, size] level tensor -> [N, d, h, w] numpy."""
    return level.frame.interior(t.reshape(t.shape[0], -1)).double().numpy()


def level_matrix(level):
    return assemble_matrix(*(interior(level, t)[0] for t in (level.diag, *level.edges)))


def explicit_prolongation(level, coarse):
    """Sparse P (fine x coarse unknowns) of one aggregation step with ``level.block``."""
    p = interior(level, level.prolongation)[0].ravel()
    fine, coarse_shape = level.frame.shape, coarse.frame.shape
    position = np.unravel_index(np.arange(p.size), fine)
    block = np.ravel_multi_index(tuple(i // b for i, b in zip(position, level.block, strict=True)), coarse_shape)
    return sp.csr_array((p, (np.arange(p.size), block)), shape=(p.size, int(np.prod(coarse_shape))))


def axis_scale_matrix(level, coarse, scale):
    """S[J, K] = the edge scale of the axis joining the adjacent coarse unknowns J and K."""
    shape = coarse.frame.shape
    n = int(np.prod(shape))
    S = np.zeros((n, n))
    index = np.arange(n).reshape(shape)
    for dim in range(3):
        factor = scale if level.block[dim] == 2 else 1.0
        first = index.take(range(shape[dim] - 1), axis=dim).ravel()
        second = index.take(range(1, shape[dim]), axis=dim).ravel()
        S[first, second] = S[second, first] = factor
    return S


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is faster and steady


GALERKIN_SHAPES = [(5, 6, 7), (8, 8, 8), (3, 9, 10), (1, 7, 6)]


@pytest.mark.parametrize("semi", [1.0, 0.25])
@pytest.mark.parametrize("z_ratio", [1.0, Z_RATIO], ids=["isotropic", "thick-slices"])
@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("shape", GALERKIN_SHAPES, ids=ids(GALERKIN_SHAPES))
def test_coarse_operators_are_axis_scaled_galerkin_products(rng, shape, model, scale, z_ratio, semi):
    """Every coarse level equals P^T A P (assembled with the scipy reference) with its
    off-diagonal entries multiplied by ``coarse_edge_scale`` along the coarsened axes and by 1
    along an axis that was not coarsened, and the diagonal lowered to match (the excess part,
    the sum of the row, unchanged)."""
    _, _, stencil = volume_problem(rng, model, 1, shape, z_ratio)
    options = MultigridOptions(coarse_edge_scale=scale, coarsest_pixels=4, semi_coarsening=semi)
    levels = build_hierarchy(stencil, options)
    assert len(levels) >= 2
    for level, coarse in zip(levels[:-1], levels[1:], strict=True):
        P = explicit_prolongation(level, coarse)
        galerkin = (P.T @ level_matrix(level) @ P).toarray()
        off = (galerkin - np.diag(np.diag(galerkin))) * axis_scale_matrix(level, coarse, scale)
        full_off = galerkin - np.diag(np.diag(galerkin))
        expected = np.diag(np.diag(galerkin) + (full_off - off).sum(axis=1)) + off
        actual = level_matrix(coarse).toarray()
        assert_close(
            torch.from_numpy(actual), torch.from_numpy(expected), atol=1e-12 * np.abs(expected).max(), name="A_c"
        )


def test_semi_coarsening_rule():
    """2x2x2 blocks on isotropic volumes; 2x2x1 where the z edges are weak, until the coarse
    z edges (4 fine edges each, unscaled, against 2 halved in-plane ones) have caught up; no
    coarsening along an axis of extent 1."""
    rng = np.random.default_rng(3)
    _, _, iso = volume_problem(rng, "grady-edges", 1, (16, 16, 16), density=0.0)
    assert build_hierarchy(iso, MultigridOptions(semi_coarsening=0.25))[0].block == (2, 2, 2)
    _, _, thick = volume_problem(rng, "grady-edges", 1, (16, 64, 64), Z_RATIO, density=0.0)
    blocks = [level.block for level in build_hierarchy(thick, MultigridOptions(semi_coarsening=0.25))[:-1]]
    # z / in-plane: 1/40 -> 1/10 -> 1/2.5 (semi-coarsening multiplies it by 4), then 2x2x2
    assert blocks[:3] == [(1, 2, 2), (1, 2, 2), (2, 2, 2)], blocks
    # the default (1): only the strongest axes, so z waits until its edges are the strongest
    blocks = [level.block for level in build_hierarchy(thick)[:-1]]
    assert all(block[0] == 1 for block in blocks[:4]) and any(block[0] == 2 for block in blocks), blocks
    _, _, unit = volume_problem(rng, "rawks", 1, (8, 8, 8), density=0.0)
    assert build_hierarchy(unit)[0].block == (2, 2, 2)  # equal axes: all coarsened
    _, _, flat = volume_problem(rng, "rawks", 1, (1, 9, 10))
    assert all(level.block[0] == 1 for level in build_hierarchy(flat, MultigridOptions(coarsest_pixels=1))[:-1])
    always = MultigridOptions(semi_coarsening=0.0)
    assert build_hierarchy(thick, always)[0].block == (2, 2, 2)
    with pytest.raises(ValueError, match="semi_coarsening"):
        MultigridOptions(semi_coarsening=1.5)


def test_a_block_takes_the_anchor_component_through_a_long_path():
    """A 2x2x2 volume whose only positive edges are a path through all eight voxels (seven
    steps): every voxel joins the one aggregate. Cutting the path in the middle leaves out
    the part without the anchor (the end with the strongest internal edges)."""
    path = [(0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0), (1, 1, 0), (1, 1, 1), (1, 0, 1), (1, 0, 0)]
    edges = torch.zeros(1, 3, 2, 2, 2, dtype=torch.float64)
    for k, (a, b) in enumerate(zip(path[:-1], path[1:], strict=True)):
        axis = 2 - [i for i in range(3) if a[i] != b[i]][0]  # 0: x, 1: y, 2: z
        start = min(a, b)
        edges[(0, axis) + start] = 1.0 + k  # stronger along the path
    seeds = torch.full((1, 2, 2, 2), -1)
    systems = compact_labels(seeds, 1, -1)
    stencil = edge_stencil(edges, systems.free)
    every_axis = MultigridOptions(coarsest_pixels=1, semi_coarsening=0.0)
    level = build_hierarchy(stencil, every_axis)[0]
    assert level.block == (2, 2, 2)
    assert np.array_equal(interior(level, level.prolongation)[0], np.ones((2, 2, 2)))
    edges[(0, 2, 0, 1, 0)] = 0.0  # cut the z step of the path: (0, 1, 0) - (1, 1, 0)
    stencil = edge_stencil(edges, systems.free)
    level = build_hierarchy(stencil, every_axis)[0]
    assert level.block == (2, 2, 2)
    p = interior(level, level.prolongation)[0]
    expected = np.zeros((2, 2, 2))
    for voxel in path[4:]:  # the second half holds the strongest edges, so the anchor
        expected[voxel] = 1.0
    assert np.array_equal(p, expected), p


SPD_SHAPES = [(1, 1, 1), (2, 2, 2), (3, 1, 5), (2, 3, 4), (4, 5, 3)]


@pytest.mark.parametrize("cycle", list(CYCLES))
@pytest.mark.parametrize("z_ratio", [1.0, Z_RATIO], ids=["isotropic", "thick-slices"])
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("shape", SPD_SHAPES, ids=ids(SPD_SHAPES))
def test_preconditioner_is_symmetric_positive_definite_on_free_voxels(rng, shape, model, z_ratio, cycle):
    """The explicit matrix of M: symmetric, positive definite on the free voxels with d > 0,
    zero rows and columns elsewhere. Two volumes, each with its own labels."""
    _, systems, stencil = volume_problem(rng, model, 2, shape, z_ratio, density=0.25)
    S = systems.num_systems
    options = CYCLES[cycle]
    M = TorchMultigrid(build_hierarchy(stencil, options), systems.image_index, options)
    Mm = explicit_matrix(M, S, shape)
    assert_spd_on_active(Mm, (stencil.inv_diag > 0).index_select(0, systems.image_index).reshape(S, -1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("z_ratio", [1.0, Z_RATIO], ids=["isotropic", "thick-slices"])
def test_dot_product_test_on_larger_volumes(rng, z_ratio, dtype):
    """<M u, v> = <u, M v> and <M u, u> > 0 at 9x17x15, uniform layout [N, k, n]."""
    shape = (9, 17, 15)
    _, _, stencil = volume_problem(rng, "grady-edges", 2, shape, z_ratio, density=0.02, dtype=dtype)
    image_index = torch.tensor([0, 0, 1, 1])
    M = TorchMultigrid(build_hierarchy(stencil), image_index)
    active = (stencil.inv_diag > 0).index_select(0, image_index).to(dtype)
    u = torch.from_numpy(rng.standard_normal((4, *shape))).to(dtype) * active
    v = torch.from_numpy(rng.standard_normal((4, *shape))).to(dtype) * active
    Mu, Mv = M(u), M(v)
    tol = {torch.float64: 1e-11, torch.float32: 2e-5}[dtype]
    lhs, rhs = (Mu * v).sum((1, 2, 3)), (u * Mv).sum((1, 2, 3))
    assert_close(lhs, rhs, atol=tol * float(lhs.abs().max()), name="<Mu, v> - <u, Mv>")
    assert bool(((Mu * u).sum((1, 2, 3)) > 0).all())


def test_no_leak_into_components_without_seeds():
    """A zero-weight plane between slices 2 and 3 (inside a 2x2x2 block): the slices behind
    it reach no seed, and the cycle leaves them at 0."""
    edges = torch.ones(1, 3, 6, 5, 4, dtype=torch.float64)
    edges[0, 2, 2] = 0.0
    seeds = torch.full((1, 6, 5, 4), -1)
    seeds[0, 0, 0, 0], seeds[0, 1, 4, 3] = 0, 1
    systems = compact_labels(seeds, 2, -1)
    stencil = edge_stencil(edges, systems.free)
    M = TorchMultigrid(build_hierarchy(stencil, MultigridOptions(coarsest_pixels=4)), systems.image_index)
    r = torch.rand(2, 6, 5, 4, dtype=torch.float64) * systems.free_mask(torch.float64)
    r[:, 3:] = 0.0
    z = M(r)
    assert torch.all(z[:, 3:] == 0) and bool((z[:, :3] != 0).any())
    result = rt.propagate(edges, seeds, 2, "grady", backend="torch", preconditioner="multigrid")
    assert result.reachable[0, :3].all() and not result.reachable[0, 3:].any()


def assert_matches(result, reference, dtype, name):
    """Z normwise per volume, P where the reference's total weight is at least 0.01."""
    tol = TOL[dtype]
    scale = reference.Z.abs().amax(dim=(1, 2, 3, 4), keepdim=True).clamp(min=1e-300)
    assert_close(result.Z / scale, reference.Z / scale, atol=tol, name=f"{name} Z / max Z")
    well_determined = (reference.Z.sum(1) >= 0.01).unsqueeze(1).expand_as(reference.P)
    assert_close(result.P, reference.P, atol=tol, name=f"{name} P", mask=well_determined)


PROPAGATE_SHAPES = [(1, 1, 1), (3, 1, 5), (2, 3, 4), (5, 6, 7), (9, 12, 11)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("model", ["rawks", "grady"])
@pytest.mark.parametrize("shape", PROPAGATE_SHAPES, ids=ids(PROPAGATE_SHAPES))
def test_propagate_matches_scipy(rng, shape, model, dtype):
    """Two volumes, forward and adjoint solves certified (converged), against the direct solve."""
    d, h, w = shape
    scores = random_scores(rng, 2 * d, h, w, spread=2.0).view(2, d, h, w)
    seeds = volume_seeds(rng, 2, shape, 3, 0.06)
    reference = rt.propagate(scores, seeds, 3, model, backend="scipy")
    leaf = scores.to(dtype).requires_grad_()
    result = rt.propagate(leaf, seeds, 3, model, backend="torch", preconditioner="multigrid", rtol=SOLVE_RTOL[dtype])
    assert (result.backend, result.preconditioner) == ("torch", "multigrid")
    assert bool(result.converged.all()), f"not converged: {result.residual.max():.3g}"
    assert_matches(result, reference, dtype, f"{model} {shape}")
    (result.P * torch.linspace(-1, 1, d * h * w, dtype=dtype).view(d, h, w)).sum().backward()
    assert bool(result.adjoint_converged.all()) and torch.isfinite(leaf.grad).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("shape", [(4, 13, 12), (7, 9, 8)], ids=ids([(4, 13, 12), (7, 9, 8)]))
def test_thick_slices_match_scipy(rng, shape, dtype):
    """Grady edge weights with z conductances 1/40 of the in-plane ones (semi-coarsened)."""
    edges = torch.from_numpy(0.05 + rng.random((2, 3, *shape)))
    edges[:, 2] *= Z_RATIO
    seeds = volume_seeds(rng, 2, shape, 3, 0.04)
    reference = rt.propagate(edges, seeds, 3, "grady", backend="scipy")
    result = rt.propagate(
        edges.to(dtype), seeds, 3, "grady", backend="torch", preconditioner="multigrid", rtol=SOLVE_RTOL[dtype]
    )
    assert bool(result.converged.all())
    assert_matches(result, reference, dtype, f"thick slices {shape}")


def test_jacobi_on_volumes_is_certified_by_a_cycle(rng):
    """Jacobi-PCG on a volume: the final test uses the multigrid cycle, as on images."""
    scores = random_scores(rng, 6, 7, 5, spread=2.0).view(1, 6, 7, 5)
    seeds = volume_seeds(rng, 1, (6, 7, 5), 2, 0.05)
    reference = rt.propagate(scores, seeds, 2, "grady", backend="scipy")
    result = rt.propagate(scores, seeds, 2, "grady", backend="torch", preconditioner="jacobi", rtol=1e-8)
    assert bool(result.converged.all())
    assert_matches(result, reference, torch.float64, "jacobi")


def regions_volume(side, z_ratio=1.0, border=6.0):
    """A 2 x 2 x 2 arrangement of box regions: score 0 inside, ``border`` on the region borders,
    one scribble per region."""
    axis = np.arange(side) * 2 // side
    region = axis[:, None, None] * 4 + axis[None, :, None] * 2 + axis[None, None, :]
    edge = np.zeros(region.shape, bool)
    for dim in range(3):
        differ = np.diff(region, axis=dim) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[dim], hi[dim] = slice(0, -1), slice(1, None)
        edge[tuple(lo)] |= differ
        edge[tuple(hi)] |= differ
    scores = torch.from_numpy(np.where(edge, border, 0.0))[None]
    seeds = torch.full((1, side, side, side), -1)
    centre = side // 4
    for k in range(8):
        z, y, x = (k >> 2) & 1, (k >> 1) & 1, k & 1
        seeds[0, centre + z * side // 2, centre + y * side // 2, centre + x * side // 2] = k % 3
    return scores, seeds


@pytest.mark.parametrize("model", ["rawks", "grady"])
def test_iterations_bounded_on_region_volumes(model):
    """A handful of iterations at 12^3 and 24^3, flat across the sizes (docs/multigrid.md)."""
    counts = []
    for side in (12, 24):
        scores, seeds = regions_volume(side)
        result = rt.propagate(scores.float(), seeds, 3, model, backend="torch", preconditioner="multigrid")
        assert bool(result.converged.all())
        counts.append(int(result.iterations.max()))
    assert max(counts) <= 20 and counts[1] <= counts[0] + 4, counts


def test_auto_rule_on_volumes():
    cpu = torch.device("cpu")
    for model in ("rawks", "grady"):
        assert choose_solver("torch", "auto", cpu, 64, 64, model, depth=64) == ("torch", "multigrid")
    assert choose_solver("auto", "auto", cpu, 64, 64, "rawks", depth=64) == ("torch", "multigrid")
    scores, seeds = regions_volume(8)
    result = rt.propagate(scores, seeds, 3, "rawks")
    assert (result.backend, result.preconditioner) == ("torch", "multigrid") and bool(result.converged.all())


def test_volume_mode_of_the_iterations_script_runs(capsys):
    from bench import multigrid_iterations

    threads = torch.get_num_threads()
    try:
        multigrid_iterations.main(["--volumes", "--volume-sizes", "8", "--models", "rawks,grady", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| rawks |", "| grady |"))]
    assert len(rows) == 4, rows  # isotropic and thick slices, both models
    assert all("stalled" not in row for row in rows), rows


def test_subset_of_systems_matches_rows_of_the_full_preconditioner(rng):
    """The cycle of some systems only (CG's compaction, per-system gathered levels) applies
    the same map as the cycle of all of them, thick slices included."""
    shape = (6, 11, 10)
    _, _, stencil = volume_problem(rng, "grady-edges", 3, shape, Z_RATIO, density=0.05)
    levels = build_hierarchy(stencil)
    assert any(level.block != (2, 2, 2) for level in levels[:-1])
    image_index = torch.tensor([0, 0, 1, 1, 2, 2])
    active = (stencil.inv_diag > 0).index_select(0, image_index)
    r = torch.from_numpy(rng.standard_normal((6, *shape))) * active
    full = TorchMultigrid(levels, image_index)(r)
    rows = torch.tensor([1, 2, 5])
    part = TorchMultigrid(levels, image_index.index_select(0, rows))
    assert part.per_group == 1
    assert_close(part(r.index_select(0, rows)), full.index_select(0, rows), atol=1e-13, name="M_rows r")


def test_auto_gives_triton_volumes_the_triton_cycle(monkeypatch):
    """backend="triton" has the multigrid cycle for volumes: "auto" picks it there, and "auto"
    on CUDA volumes is the triton backend with multigrid, as on images."""
    from rawks_triton.solve import choose

    monkeypatch.setattr(choose, "triton_available", lambda device: True)
    monkeypatch.setattr(choose, "triton_installed", lambda: True)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose.choose_solver("triton", "auto", cpu, 16, 16, "rawks", depth=8) == ("triton", "multigrid")
    assert choose.choose_solver("triton", "auto", cpu, 16, 16, "rawks") == ("triton", "multigrid")
    assert choose.choose_solver("auto", "auto", cuda, 16, 16, "rawks", depth=8) == ("triton", "multigrid")
    assert choose.choose_solver("auto", "multigrid", cuda, 16, 16, "grady", depth=8) == ("triton", "multigrid")
    assert choose.choose_solver("auto", "jacobi", cuda, 16, 16, "rawks", depth=8) == ("triton", "jacobi")
    assert choose.choose_solver("torch", "auto", cuda, 16, 16, "rawks", depth=8) == ("torch", "multigrid")
    assert choose.choose_solver("auto", "auto", cuda, 16, 16, "rawks") == ("triton", "multigrid")
