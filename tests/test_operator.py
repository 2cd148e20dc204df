"""The stencil operator: matrix-free products against the assembled scipy matrix."""

import numpy as np
import pytest
import torch

from rawks_triton.coefficients import grady_edge_coefficients, grady_node_coefficients, rawks_coefficients
from rawks_triton.reference import assemble_matrix, dense_solve
from rawks_triton.systems import build_stencil, compact_labels, right_hand_sides, stencil_matvec
from rawks_triton.testing import assert_close, random_scores, random_seeds

SIZES = [(1, 1), (1, 17), (17, 1), (7, 13), (16, 16), (33, 31)]


def make_stencil(rng, model, n, h, w, density=0.1, num_labels=3):
    scores = random_scores(rng, n, h, w, spread=3.0)
    if model == "rawks":
        coeffs = rawks_coefficients(scores)
    elif model == "grady":
        coeffs = grady_node_coefficients(scores)
    else:
        coeffs = grady_edge_coefficients(torch.from_numpy(rng.random((n, 2, h, w))))
    seeds = random_seeds(rng, n, h, w, num_labels, density)
    systems = compact_labels(seeds, num_labels, -1)
    return coeffs, systems, build_stencil(*coeffs, systems.free, unit_edges=model == "rawks")


@pytest.mark.parametrize("model", ["rawks", "grady", "grady-edges"])
@pytest.mark.parametrize("h,w", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_matvec_matches_assembled_matrix(rng, model, h, w):
    _, systems, stencil = make_stencil(rng, model, 2, h, w)
    x = torch.from_numpy(rng.standard_normal((2, h, w)))
    y = stencil_matvec(stencil, torch.arange(2), x)
    for n in range(2):
        A = assemble_matrix(stencil.diag[n].numpy(), stencil.right[n].numpy(), stencil.down[n].numpy())
        expected = torch.from_numpy(A @ x[n].numpy().ravel()).view(h, w)
        assert_close(y[n], expected, atol=1e-12, rtol=1e-12, name=f"A x, image {n}")


@pytest.mark.parametrize("model", ["rawks", "grady", "grady-edges"])
@pytest.mark.parametrize("h,w", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_matvec_is_symmetric_dot_product_test(rng, model, h, w):
    """<A u, v> = <u, A v>: the adjoint solve may reuse the forward operator."""
    _, _, stencil = make_stencil(rng, model, 3, h, w)
    idx = torch.arange(3)
    u = torch.from_numpy(rng.standard_normal((3, h, w)))
    v = torch.from_numpy(rng.standard_normal((3, h, w)))
    lhs = (stencil_matvec(stencil, idx, u) * v).sum((1, 2))
    rhs = (u * stencil_matvec(stencil, idx, v)).sum((1, 2))
    assert_close(lhs, rhs, atol=1e-12, rtol=1e-12, name="<Au, v> - <u, Av>")


@pytest.mark.parametrize("model", ["rawks", "grady"])
def test_operator_positive_definite_on_free_pixels(rng, model):
    coeffs, systems, stencil = make_stencil(rng, model, 1, 9, 11, density=0.05)
    A = assemble_matrix(stencil.diag[0].numpy(), stencil.right[0].numpy(), stencil.down[0].numpy()).toarray()
    assert np.allclose(A, A.T)
    free = systems.free[0].numpy().ravel()
    eig = np.linalg.eigvalsh(A[np.ix_(free, free)])
    if model == "rawks":  # for grady, components without a seed neighbour are singular by design
        assert eig.min() > 0


def test_rhs_counts_edges_to_seeds_of_the_label():
    seeds = torch.full((1, 3, 3), -1)
    seeds[0, 1, 1] = 0
    seeds[0, 0, 1] = 1
    right = torch.ones(1, 3, 3, dtype=torch.float64)
    right[..., -1] = 0
    down = torch.full((1, 3, 3), 2.0, dtype=torch.float64)
    down[:, -1] = 0
    systems = compact_labels(seeds, 2, -1)
    b = right_hand_sides(right, down, systems)
    # label 0 seed at the centre: left/right neighbours weight 1, bottom weight 2; top is a seed
    expected0 = torch.tensor([[0, 0, 0], [1, 0, 1], [0, 2, 0]], dtype=torch.float64)
    # label 1 seed at the top middle: corners weight 1; the centre is a seed (no unknown)
    expected1 = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 0, 0]], dtype=torch.float64)
    assert_close(b[0], expected0, atol=0, name="b label 0")
    assert_close(b[1], expected1, atol=0, name="b label 1")


def test_dense_and_sparse_reference_agree(rng):
    coeffs, systems, stencil = make_stencil(rng, "grady", 1, 6, 7, density=0.2)
    import rawks_triton as rt

    seeds = systems.seeds
    scores = -2.0 * torch.log(torch.ones(1, 6, 7, dtype=torch.float64))
    result = rt.propagate(scores, seeds, 3, "grady", backend="scipy")
    unit = grady_node_coefficients(scores)
    st = build_stencil(*unit, systems.free)
    b = right_hand_sides(unit[1], unit[2], systems)
    z = dense_solve(st.diag[0].numpy(), st.right[0].numpy(), st.down[0].numpy(), systems.free[0].numpy(), b.numpy())
    Zc = torch.from_numpy(z) + systems.seed_indicator(torch.float64)
    assert_close(result.Z[0, systems.label_index], Zc, atol=1e-12, name="Z")


@pytest.mark.parametrize("h,w", [(1, 9), (7, 13), (6, 5)], ids=["1x9", "7x13", "6x5"])
def test_torch_framed_outputs_are_written_everywhere(rng, h, w):
    """The torch operator, the Jacobi preconditioner and the multigrid cycle write every
    position of a NaN-filled output: the pixels equal the reference (for the cycle: its result on
    a zeroed output), the border is 0."""
    from rawks_triton.backends.torch.multigrid import TorchMultigrid
    from rawks_triton.backends.torch.operator import FramedOperator, JacobiPreconditioner
    from rawks_triton.solve.multigrid import build_hierarchy

    _, systems, stencil = make_stencil(rng, "rawks", 2, h, w)
    op = FramedOperator.from_stencil(stencil, systems.image_index)
    frame = op.frame
    x = torch.from_numpy(rng.standard_normal((systems.num_systems, h, w)))
    x = x * systems.free_mask(x.dtype)
    framed = frame.frame(x)
    border = frame.frame(torch.ones_like(x)) == 0  # True on the border only
    levels = build_hierarchy(stencil, framed=op.per_image)
    cycle = TorchMultigrid(levels, systems.image_index)
    jacobi = JacobiPreconditioner(op.per_image["inv_diag"], systems.image_index)
    expected = {
        "A x": stencil_matvec(stencil, systems.image_index, x),
        "D^-1 x": x * stencil.inv_diag.index_select(0, systems.image_index),
        "M x": frame.unframe(cycle.apply(framed, torch.zeros_like(framed))),  # the same on a zeroed output
    }
    for name, apply in (("A x", op.matvec), ("D^-1 x", jacobi.apply), ("M x", cycle.apply)):
        out = torch.full_like(framed, float("nan"))
        apply(framed, out)
        assert bool(torch.isfinite(out).all()), f"{name}: unwritten (NaN) positions"
        assert bool((out[border] == 0).all()), f"{name}: nonzero border"
        assert_close(frame.unframe(out), expected[name], atol=1e-12, rtol=1e-12, name=name)
