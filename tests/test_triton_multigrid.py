"""The Triton multigrid cycle against the plain-torch cycle, and backend="triton" with
preconditioner="multigrid" against the scipy reference, gradients included.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py
sets TRITON_INTERPRET=1 before triton is imported); the grids are small and odd-sized.
"""

from dataclasses import replace

import pytest
import torch

import rawks_triton as rt
from rawks_triton.solve.choose import triton_available
from rawks_triton.backends.torch.multigrid import TorchMultigrid as MultigridPreconditioner
from rawks_triton.solve.multigrid import MultigridOptions, build_hierarchy

from rawks_triton.testing import assert_close, compare_with_reference, random_scores, random_seeds
from test_multigrid import make_problem

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
    from rawks_triton.backends.triton_multigrid import TritonMultigridPreconditioner

    h, w = size
    _, systems, stencil = make_problem(rng, model, 2, h, w, density=0.05, dtype=dtype)
    options = CYCLES[cycle]
    on_device = replace(stencil, **{name: getattr(stencil, name).to(DEVICE) for name in ("diag", "right", "down", "inv_diag")})
    levels = build_hierarchy(on_device, options)
    tol = {torch.float64: 1e-12, torch.float32: 2e-5}[dtype]
    for image_index in (torch.tensor([0, 0, 1, 1]), torch.tensor([1, 0, 1])):
        image_index = image_index.to(DEVICE)
        active = (stencil.inv_diag.to(DEVICE) > 0).index_select(0, image_index)
        r = torch.from_numpy(rng.standard_normal((image_index.numel(), h, w))).to(device=DEVICE, dtype=dtype) * active
        expected = MultigridPreconditioner(levels, image_index, options)(r)
        out = torch.full_like(r, float("nan"))
        TritonMultigridPreconditioner(levels, image_index, options).apply(r, out)
        assert_close(out, expected, atol=tol * max(1.0, float(expected.abs().max())), name=f"M r {image_index.tolist()}")


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
