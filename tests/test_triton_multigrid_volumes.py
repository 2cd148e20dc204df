"""The Triton multigrid cycle on volumes ([N, D, H, W], 7-point systems): every primitive of
every level against the torch backend's (NaN-filled outputs), the whole cycle against the
torch cycle, propagate(..., backend="triton", preconditioner="multigrid") against the scipy
reference, and a float64 gradcheck.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py
sets TRITON_INTERPRET=1 before triton is imported), so the volumes are tiny and odd-sized.
The hierarchies are those of tests/test_multigrid_volumes.py: single-axis, 2x2x2 and
semi-coarsened (1x2x2, 2x2x1) blocks, odd extents paired with the border.
"""

from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_multigrid_volumes import Z_RATIO, assert_matches, volume_problem, volume_seeds

import rawks_triton as rt
from rawks_triton.backends.torch.multigrid import TorchMultigrid
from rawks_triton.solve.choose import triton_available
from rawks_triton.solve.multigrid import MultigridOptions, build_hierarchy
from rawks_triton.testing import SOLVE_RTOL, assert_close, random_scores

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = [
    pytest.mark.interpreter,
    pytest.mark.skipif(not triton_available(DEVICE), reason="triton needs CUDA or TRITON_INTERPRET=1"),
    pytest.mark.usefixtures("one_thread"),
]

F32, F64 = torch.float32, torch.float64
CASES = [  # (shape, model, z_ratio, semi_coarsening, dtype); the blocks of their levels:
    ((4, 6, 5), "grady", 1.0, 1.0, F64),  # 2x1x1, 1x1x2, 1x2x1, ... (the strongest axis only)
    ((6, 8, 8), "rawks", 1.0, 1.0, F32),  # 2x2x2
    ((5, 9, 8), "grady-edges", Z_RATIO, 0.25, F64),  # 1x2x2 (thick slices), then 2x2x1
    ((3, 7, 6), "rawks", Z_RATIO, 0.25, F32),  # 1x2x2, then 2x2x2
]
CASE_IDS = ["x".join(map(str, s)) + f"-{m}-z{z:.2g}-semi{c:g}-{str(d)[-7:]}" for s, m, z, c, d in CASES]
TOL = {F64: 1e-12, F32: 2e-5}


def hierarchy(shape, model, z_ratio, semi, dtype, cycle="V"):
    """(stencil on DEVICE, systems, options, levels) of two random volumes, the same for a
    case in every test (drawn from a generator seeded by the case)."""
    rng = np.random.default_rng(zlib.crc32(repr((shape, model, z_ratio, semi)).encode()))
    _, systems, stencil = volume_problem(rng, model, 2, shape, z_ratio, density=0.1, dtype=dtype)
    names = ("diag", "right", "down", "deep", "inv_diag")
    stencil = replace(stencil, **{name: getattr(stencil, name).to(DEVICE) for name in names})
    options = MultigridOptions(coarsest_pixels=4, semi_coarsening=semi, cycle=cycle)
    return stencil, systems, options, build_hierarchy(stencil, options)


def test_the_cases_cover_every_kind_of_block():
    blocks = set()
    for case in CASES:
        blocks |= {level.block for level in hierarchy(*case)[3][:-1]}
    assert {(2, 2, 2), (1, 2, 2), (2, 2, 1), (2, 1, 1), (1, 1, 2)} <= blocks, blocks


@pytest.mark.parametrize("layout", ["grouped", "gathered"])
@pytest.mark.parametrize("shape,model,z_ratio,semi,dtype", CASES, ids=CASE_IDS)
def test_primitives_of_every_level_match_torch_and_write_what_they_own(rng, shape, model, z_ratio, semi, dtype, layout):
    """Each primitive's output starts as NaN and must equal the torch primitive where the
    kernel owns it: [lo, hi) for the residual (exactly 0 on its border positions, nothing
    written outside), the whole frame for the Jacobi step and the restriction (border
    exactly 0); the prolongation changes the voxels only (a NaN border stays NaN). The
    systems of each volume as [G, k, n], or gathered per system (not sorted by volume)."""
    from rawks_triton.backends.triton.multigrid import TritonMultigrid

    _, systems, options, levels = hierarchy(shape, model, z_ratio, semi, dtype)
    image_index = (systems.image_index if layout == "grouped" else torch.tensor([1, 0, 1])).to(DEVICE)
    fast, slow = TritonMultigrid(levels, image_index, options), TorchMultigrid(levels, image_index, options)
    assert fast.three_d and len(fast.levels) >= 3
    grouped = lambda level: (slow.groups, slow.per_group, level.size)  # noqa: E731
    nan = lambda level: torch.full(grouped(level), float("nan"), dtype=dtype, device=DEVICE)  # noqa: E731

    def framed_random(level):
        t = torch.from_numpy(rng.standard_normal((image_index.numel(),) + level.frame.shape)).to(DEVICE, dtype)
        return level.frame.frame(t).view(grouped(level))

    def voxels(level):
        return level.frame.frame(torch.ones((1,) + level.frame.shape, device=DEVICE)).view(-1) > 0

    for k, (fine, coarse) in enumerate(zip(fast.levels[:-1], fast.levels[1:], strict=True)):
        name = f"level {k} {fine.frame.shape} block {fine.block}"
        frame, voxel = fine.frame, voxels(fine)
        owned = torch.zeros(frame.size, dtype=torch.bool, device=DEVICE)
        owned[frame.lo : frame.hi] = True
        rhs, x = framed_random(fine), framed_random(fine)
        atol = lambda expected: TOL[dtype] * max(1.0, float(expected.abs().max()))  # noqa: E731

        got = fast._residual(fine, nan(fine), rhs, x)
        expected = slow._residual(fine, torch.empty(grouped(fine), dtype=dtype, device=DEVICE), rhs, x)
        assert torch.isfinite(got[..., owned]).all(), f"{name} residual: positions of [lo, hi) left unwritten"
        assert_close(got[..., owned], expected[..., owned], atol=atol(expected), name=f"{name} residual")
        assert bool((got[..., owned & ~voxel] == 0).all()), f"{name} residual: border positions are not 0"
        assert bool(torch.isnan(got[..., ~owned]).all()), f"{name} residual: positions outside [lo, hi) written"

        for first in (True, False):
            got = nan(fine) if first else x.clone()
            expected = torch.empty_like(x) if first else x.clone()
            fast._jacobi(fine, got, rhs, first=first)
            slow._jacobi(fine, expected, rhs, first=first)
            assert_close(got, expected, atol=atol(expected), name=f"{name} jacobi first={first}")
            assert bool((got[..., ~voxel] == 0).all()), f"{name} jacobi: nonzero border"

        got, expected = nan(coarse), torch.zeros(grouped(coarse), dtype=dtype, device=DEVICE)
        fast._restrict(k, rhs, got)
        slow._restrict(k, rhs, expected)
        assert_close(got, expected, atol=atol(expected), name=f"{name} restrict")
        assert bool((got[..., ~voxels(coarse)] == 0).all()), f"{name} restrict: nonzero border"

        coarse_x = framed_random(coarse)
        got = torch.where(voxel, x, torch.full_like(x, float("nan")))
        expected = got.clone()
        fast._prolong(k, coarse_x, got)
        slow._prolong(k, coarse_x, expected)
        assert_close(got[..., voxel], expected[..., voxel], atol=atol(expected[..., voxel]), name=f"{name} prolong")
        assert bool(torch.isnan(got[..., ~voxel]).all()), f"{name} prolong: the border was written"


# V on every case; W (two coarse cycles per level: 2^levels of them) where the hierarchy is short
CYCLE_CASES = [case + ("V",) for case in CASES] + [case + ("W",) for case in CASES[1:3]]
CYCLE_IDS = [f"{name}-V" for name in CASE_IDS] + [f"{name}-W" for name in CASE_IDS[1:3]]


@pytest.mark.parametrize("shape,model,z_ratio,semi,dtype,cycle", CYCLE_CASES, ids=CYCLE_IDS)
def test_cycle_applies_the_torch_cycle(rng, shape, model, z_ratio, semi, dtype, cycle):
    """Same hierarchy, same cycle: the kernels agree with the torch ops to rounding, in the
    grouped layout [G, k, n] and in the gathered one (systems not sorted by image)."""
    from rawks_triton.backends.triton.multigrid import TritonMultigrid

    stencil, _, options, levels = hierarchy(shape, model, z_ratio, semi, dtype, cycle)
    frame = levels[0].frame
    for image_index in (torch.tensor([0, 0, 1, 1]), torch.tensor([1, 0, 1])):
        image_index = image_index.to(DEVICE)
        active = (stencil.inv_diag > 0).index_select(0, image_index)
        r = torch.from_numpy(rng.standard_normal((image_index.numel(),) + shape)).to(DEVICE, dtype) * active
        expected = TorchMultigrid(levels, image_index, options)(r)
        out = torch.full((r.shape[0], frame.size), float("nan"), dtype=dtype, device=DEVICE)
        TritonMultigrid(levels, image_index, options).apply(frame.frame(r), out)
        name = f"M r {image_index.tolist()}"
        assert_close(frame.unframe(out), expected, atol=TOL[dtype] * max(1.0, float(expected.abs().max())), name=name)
        assert torch.equal(out, frame.frame(frame.unframe(out))), f"{name}: the border is not exactly 0"


PROPAGATE = [  # (shape, model, dtype, thick slices)
    ((4, 6, 5), "grady", F64, False),
    ((6, 8, 8), "rawks", F32, False),
    ((5, 9, 8), "grady", F64, True),  # Grady edge weights, z conductances 1/40: semi-coarsened
    ((4, 7, 6), "rawks", F64, False),
    ((5, 6, 7), "grady", F32, False),
]


@pytest.mark.parametrize(
    "shape,model,dtype,thick",
    PROPAGATE,
    ids=["x".join(map(str, s)) + f"-{m}-{str(d)[-7:]}" + ("-thick" if t else "") for s, m, d, t in PROPAGATE],
)
def test_propagate_with_multigrid_matches_scipy(rng, shape, model, dtype, thick):
    d, h, w = shape
    if thick:
        inputs = torch.from_numpy(0.05 + rng.random((2, 3, *shape)))
        inputs[:, 2] *= Z_RATIO
    else:
        inputs = random_scores(rng, 2 * d, h, w, spread=2.0).view(2, d, h, w)
    seeds = volume_seeds(rng, 2, shape, 3, 0.06)
    reference = rt.propagate(inputs, seeds, 3, model, backend="scipy")
    kw = dict(backend="triton", preconditioner="multigrid", rtol=SOLVE_RTOL[dtype])
    result = rt.propagate(inputs.to(DEVICE, dtype), seeds.to(DEVICE), 3, model, **kw)
    assert (result.backend, result.preconditioner) == ("triton", "multigrid")
    assert bool(result.converged.all()), f"not converged: {float(result.residual.max()):.3g}"
    assert int(result.iterations.max()) <= 20, result.iterations
    assert_matches(result, reference, dtype, f"triton multigrid {model} {shape}")


def test_gradcheck_float64_with_multigrid(rng, model="rawks"):
    """The multigrid forward and adjoint solves: a 3x4x6 volume (72 voxels, one coarsening
    step with the default options) whose scores move along three random directions (three
    inputs: the interpreter runs every finite-difference solve)."""
    shape = (3, 4, 6)
    base = torch.from_numpy(2.0 * rng.random((1, *shape))).to(DEVICE)
    directions = torch.from_numpy(rng.standard_normal((3, 1, *shape))).to(DEVICE)
    seeds = volume_seeds(rng, 1, shape, 2, 0.1).to(DEVICE)
    weights = torch.from_numpy(rng.standard_normal((1, 2, *shape))).to(DEVICE)
    assert 3 * 4 * 6 > MultigridOptions().coarsest_pixels  # the cycle runs the kernels on level 0

    def loss(theta):
        scores = base + (theta.view(3, 1, 1, 1, 1) * directions).sum(0)
        kw = dict(backend="triton", preconditioner="multigrid", rtol=1e-12)
        result = rt.propagate(scores, seeds, 2, model, **kw)
        assert result.preconditioner == "multigrid"
        return (result.P * weights).sum()

    theta = torch.zeros(3, dtype=F64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(loss, (theta,), eps=1e-6, atol=1e-7, rtol=1e-5)
