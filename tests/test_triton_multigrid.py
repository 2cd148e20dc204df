"""The Triton multigrid cycle against the plain-torch cycle, and backend="triton" with
preconditioner="multigrid" against the scipy reference, gradients included.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py
sets TRITON_INTERPRET=1 before triton is imported); the grids are small and odd-sized.
"""

from dataclasses import replace

import pytest
import torch
from test_multigrid import make_problem

import rawks_triton as rt
from rawks_triton.backends.torch.multigrid import TorchMultigrid
from rawks_triton.solve.choose import triton_available
from rawks_triton.solve.multigrid import MultigridOptions, build_hierarchy
from rawks_triton.testing import assert_close, compare_with_reference, random_scores, random_seeds

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = [
    pytest.mark.interpreter,
    pytest.mark.skipif(not triton_available(DEVICE), reason="triton needs CUDA or TRITON_INTERPRET=1"),
]

CASES = [  # (size, model, dtype, cycle): every size, model, dtype and cycle at least once
    ((1, 1), "rawks", torch.float64, "V"),
    ((1, 17), "grady-edges", torch.float32, "V"),
    ((5, 6), "rawks", torch.float32, "W-galerkin-over"),
    ((6, 5), "grady-edges", torch.float64, "W-galerkin-over"),
    ((7, 13), "grady-edges", torch.float64, "V"),
    ((33, 31), "rawks", torch.float64, "V"),
    ((33, 31), "grady-edges", torch.float32, "V"),
]
CYCLES = {
    "V": MultigridOptions(coarsest_pixels=4),
    "W-galerkin-over": MultigridOptions(coarsest_pixels=4, cycle="W", coarse_edge_scale=1.0, correction_scale=1.8),
}


@pytest.mark.parametrize(
    "size,model,dtype,cycle", CASES, ids=[f"{h}x{w}-{m}-{str(d)[-7:]}-{c}" for (h, w), m, d, c in CASES]
)
def test_kernels_apply_the_torch_cycle(rng, size, model, dtype, cycle):
    """Same hierarchy, same cycle: the kernels agree with the torch ops to rounding, in the
    grouped layout [G, k, n] and in the gathered one (systems not sorted by image)."""
    from rawks_triton.backends.triton.multigrid import TritonMultigrid
    from rawks_triton.solve.layout import Frame

    h, w = size
    _, systems, stencil = make_problem(rng, model, 2, h, w, density=0.05, dtype=dtype)
    options = CYCLES[cycle]
    names = ("diag", "right", "down", "inv_diag")
    on_device = replace(stencil, **{name: getattr(stencil, name).to(DEVICE) for name in names})
    levels = build_hierarchy(on_device, options)
    tol = {torch.float64: 1e-12, torch.float32: 2e-5}[dtype]
    for image_index in (torch.tensor([0, 0, 1, 1]), torch.tensor([1, 0, 1])):
        image_index = image_index.to(DEVICE)
        active = (stencil.inv_diag.to(DEVICE) > 0).index_select(0, image_index)
        r = torch.from_numpy(rng.standard_normal((image_index.numel(), h, w))).to(device=DEVICE, dtype=dtype) * active
        expected = TorchMultigrid(levels, image_index, options)(r)
        frame = Frame(h, w)
        out = torch.full((r.shape[0], frame.size), float("nan"), dtype=dtype, device=DEVICE)
        TritonMultigrid(levels, image_index, options).apply(frame.frame(r), out)
        name = f"M r {image_index.tolist()}"
        assert_close(frame.unframe(out), expected, atol=tol * max(1.0, float(expected.abs().max())), name=name)
        assert torch.equal(out, frame.frame(frame.unframe(out))), f"{name}: the border is not exactly 0"


def test_triton_multigrid_matches_scipy_with_gradients(rng, model="rawks", dtype=torch.float64):
    """One case: the interpreter runs every launch of the solve and the adjoint in Python."""
    h, w = 11, 13
    scores = random_scores(rng, 2, h, w, spread=3.0, dtype=dtype)
    seeds = random_seeds(rng, 2, h, w, 4, 0.06)
    seeds[0, 0, 0], seeds[1, -1, -1] = 3, 1
    weights = torch.from_numpy(rng.standard_normal((2, 4, h, w)))
    reference_leaf = scores.double().requires_grad_()
    reference = rt.propagate(reference_leaf, seeds, 4, model, backend="scipy")
    (reference.P * weights).sum().backward()
    leaf = scores.to(DEVICE).requires_grad_()
    rtol = {torch.float64: 1e-8, torch.float32: 2e-5}[dtype]
    result = rt.propagate(leaf, seeds.to(DEVICE), 4, model, backend="triton", preconditioner="multigrid", rtol=rtol)
    assert result.preconditioner == "multigrid" and result.backend == "triton"
    assert bool(result.converged.all()) and int(result.iterations.max()) <= 20
    compare_with_reference(result, reference, dtype, name=f"triton multigrid {model}")
    (result.P * weights.to(DEVICE, dtype)).sum().backward()
    assert bool(result.adjoint_converged.all())
    scale = float(reference_leaf.grad.abs().max())
    tol = {torch.float64: 1e-6, torch.float32: 2e-3}[dtype]
    assert_close(leaf.grad, reference_leaf.grad, atol=tol * scale, name="dLoss/dboundary")


NAN_SIZES = [(7, 13), (1, 9), (6, 5)]


@pytest.mark.parametrize("size", NAN_SIZES, ids=[f"{h}x{w}" for h, w in NAN_SIZES])
def test_cycle_primitives_write_every_owned_position(rng, size):
    """Each primitive's output starts as NaN and must equal the torch primitive where the
    kernel owns it: [lo, hi) for the residual (exactly 0 on its border positions, nothing
    written outside), the whole frame for the Jacobi step and the restriction (border 0);
    the prolongation changes the pixels only."""
    from rawks_triton.backends.triton.multigrid import TritonMultigrid
    from rawks_triton.solve.layout import Frame

    h, w = size
    _, systems, stencil = make_problem(rng, "grady-edges", 2, h, w, density=0.1)
    names = ("diag", "right", "down", "inv_diag")
    on_device = replace(stencil, **{name: getattr(stencil, name).to(DEVICE) for name in names})
    options = MultigridOptions(coarsest_pixels=2)
    levels = build_hierarchy(on_device, options)
    assert len(levels) >= 2
    image_index = systems.image_index.to(DEVICE)
    fast = TritonMultigrid(levels, image_index, options)
    slow = TorchMultigrid(levels, image_index, options)
    shape = lambda level: (slow.groups, slow.per_group, level.size)  # noqa: E731
    nan = lambda level: torch.full(shape(level), float("nan"), dtype=torch.float64, device=DEVICE)  # noqa: E731

    def framed_random(level):
        frame = Frame(level.height, level.width)
        t = torch.from_numpy(rng.standard_normal((image_index.numel(), level.height, level.width))).to(DEVICE)
        return frame.frame(t).view(shape(level))

    fine, coarse = fast.levels[0], fast.levels[1]  # the levels of its systems (gathered when needed)
    frame = Frame(fine.height, fine.width)
    owned = torch.zeros(frame.size, dtype=torch.bool, device=DEVICE)
    owned[frame.lo : frame.hi] = True
    pixel = frame.frame(torch.ones(1, h, w, device=DEVICE)).view(-1) > 0

    rhs, x = framed_random(fine), framed_random(fine)
    got = fast._residual(fine, nan(fine), rhs, x)
    expected = slow._residual(fine, torch.empty(shape(fine), dtype=torch.float64, device=DEVICE), rhs, x)
    assert torch.isfinite(got[..., owned]).all(), "residual: positions of [lo, hi) left unwritten"
    assert_close(got[..., owned], expected[..., owned], atol=1e-12, name="residual")
    assert bool((got[..., owned & ~pixel] == 0).all()) and bool(torch.isnan(got[..., ~owned]).all())

    for first in (True, False):
        got = nan(fine) if first else x.clone()
        expected = torch.empty_like(x) if first else x.clone()
        fast._jacobi(fine, got, rhs, first=first)
        slow._jacobi(fine, expected, rhs, first=first)
        assert_close(got, expected, atol=1e-12, name=f"jacobi first={first}")
        assert bool((got[..., ~pixel] == 0).all()), "jacobi: nonzero border"

    got, expected = nan(coarse), torch.zeros(shape(coarse), dtype=torch.float64, device=DEVICE)
    fast._restrict(0, rhs, got)
    slow._restrict(0, rhs, expected)
    assert_close(got, expected, atol=1e-12, name="restrict (border 0)")

    coarse_x = framed_random(coarse)
    got, expected = x.clone(), x.clone()
    fast._prolong(0, coarse_x, got)
    slow._prolong(0, coarse_x, expected)
    assert_close(got, expected, atol=1e-12, name="prolong")
    assert bool((got[..., ~pixel] == 0).all()), "prolong: nonzero border"
