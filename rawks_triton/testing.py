"""Test helpers for this library and for code built on it: comparisons that say where and by
how much values differ, the problem generators of the test suite, and hypothesis strategies
over them (these need the ``hypothesis`` package, part of the ``test`` extra).

    from rawks_triton.testing import assert_close, random_scores, random_seeds
"""

from __future__ import annotations

import numpy as np
import torch

try:
    from hypothesis import strategies as st
except ImportError:  # the strategies need hypothesis; the rest does not
    st = None

__all__ = [
    "SOLVE_RTOL",
    "TOL",
    "assert_close",
    "compare_with_reference",
    "learned_problems",
    "learned_scene",
    "problems",
    "random_scores",
    "random_seeds",
]

# Tolerances tied to dtype: P and Z against the float64 direct solution.
TOL = {torch.float64: 1e-5, torch.float32: 1e-3}
# CG tolerance used when comparing against the exact reference.
SOLVE_RTOL = {torch.float64: 1e-6, torch.float32: 1e-4}


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float = 0.0, name: str = "value", mask=None
):
    """Assert |actual - expected| <= atol + rtol |expected| (where ``mask``), reporting the worst entry."""
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), (
        f"{name}: non-finite values at {(~torch.isfinite(actual)).nonzero()[:5].tolist()}"
    )
    err = (actual - expected).abs() - (atol + rtol * expected.abs())
    if mask is not None:
        err = torch.where(mask.cpu(), err, torch.full_like(err, -1.0))
    worst = int(err.argmax())
    if float(err.view(-1)[worst]) > 0:
        where = np.unravel_index(worst, tuple(actual.shape))
        bad = int((err > 0).sum())
        raise AssertionError(
            f"{name}: {bad} of {err.numel()} entries differ beyond atol={atol:g}, rtol={rtol:g}; worst at "
            f"{tuple(int(i) for i in where)}: got {float(actual.view(-1)[worst]):.10g}, expected "
            f"{float(expected.view(-1)[worst]):.10g} (|diff| {float((actual - expected).abs().view(-1)[worst]):.3g})"
        )


def explicit_matrix(apply, num_systems: int, shape) -> torch.Tensor:
    """[S, n, n] float64 matrix of a linear map of [S, *shape] vectors (``apply``), column by column."""
    n = int(np.prod(shape))
    columns = []
    for i in range(n):
        e = torch.zeros(num_systems, n, dtype=torch.float64)
        e[:, i] = 1.0
        columns.append(apply(e.view(num_systems, *shape)).reshape(num_systems, n))
    return torch.stack(columns, dim=2)


def assert_spd_on_active(matrices: torch.Tensor, active: torch.Tensor) -> None:
    """[S, n, n] matrices symmetric, zero outside the ``active`` [S, n] unknowns and positive
    definite on them (smallest eigenvalue above 1e-8 of the largest)."""
    assert_close(matrices, matrices.transpose(1, 2), atol=1e-12 * float(matrices.abs().max()), name="M - M^T")
    for s in range(matrices.shape[0]):
        a = active[s]
        assert torch.all(matrices[s][~a] == 0) and torch.all(matrices[s][:, ~a] == 0)
        if a.any():
            eigenvalues = torch.linalg.eigvalsh(matrices[s][a][:, a])
            assert float(eigenvalues.min()) > 1e-8 * float(eigenvalues.max()), f"system {s}: {eigenvalues[:3]}"


def random_seeds(rng: np.random.Generator, n: int, h: int, w: int, num_labels: int, density: float) -> torch.Tensor:
    labels = rng.integers(0, num_labels, size=(n, h, w))
    seeds = np.where(rng.random((n, h, w)) < density, labels, -1)
    return torch.from_numpy(seeds)


def random_scores(rng, n, h, w, offset=0.0, spread=2.0, dtype=torch.float64) -> torch.Tensor:
    return torch.from_numpy(offset + spread * rng.random((n, h, w))).to(dtype)


def compare_with_reference(result, reference, dtype, name=""):
    """P and Z of ``result`` against the scipy reference, with the metric of docs/numerics.md.

    Z: normwise, |Z - Z_ref| <= tol * max |Z_ref| per image. P: |P - P_ref| <= tol where the
    reference's total weight sum_l Z_l >= 0.01 (elsewhere P's accuracy is about
    rtol / sum_l Z_l, see the numerical limits) and on every seed.
    """
    tol = TOL[dtype]
    scale = reference.Z.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-300)
    assert_close(result.Z / scale, reference.Z / scale, atol=tol, name=f"{name} Z / max Z")
    well_determined = (reference.Z.sum(1) >= 0.01).unsqueeze(1).expand_as(reference.P)
    assert_close(result.P, reference.P, atol=tol, name=f"{name} P", mask=well_determined)
    assert torch.equal(result.image_index.cpu(), reference.image_index)
    assert torch.equal(result.label_index.cpu(), reference.label_index)


def learned_scene(rng: np.random.Generator, h: int, w: int, num_labels: int = 2, dtype=torch.float64):
    """Boundary scores like those of a trained network, and scribbles (one image).

    Near-free interiors (B about 1e-4), walls of scores 20 to 50 that are one or two pixels
    thick, some with gaps, and pockets closed by them; scribbles in some regions only, so
    that the total weight S spans many orders of magnitude (down to and below the reach
    threshold), as on the learned boundaries of docs/benchmarks.md.
    """
    scores = 1e-4 * (1.0 + rng.random((h, w)))
    yy, xx = np.mgrid[0:h, 0:w]
    n_sites = int(rng.integers(2, 7))
    sites = np.stack([rng.integers(0, h, n_sites), rng.integers(0, w, n_sites)], axis=1)
    region = ((yy[None] - sites[:, 0, None, None]) ** 2 + (xx[None] - sites[:, 1, None, None]) ** 2).argmin(0)
    wall = np.zeros((h, w), dtype=bool)
    wall[:, 1:] |= region[:, 1:] != region[:, :-1]
    wall[1:, :] |= region[1:, :] != region[:-1, :]
    if rng.random() < 0.5:  # thicker walls
        wall[:, :-1] |= wall[:, 1:]
    height_of_wall = rng.uniform(20.0, 50.0, size=n_sites)[region]
    gaps = rng.random((h, w)) < rng.choice([0.0, 0.0, 0.02])
    scores = np.where(wall & ~gaps, height_of_wall, scores)
    seeds = np.full((h, w), -1, dtype=np.int64)
    for site in range(n_sites):
        if rng.random() < 0.6:
            y, x = sites[site]
            inside = (region == site) & ~wall & (np.abs(yy - y) <= 1) & (np.abs(xx - x) <= 3)
            seeds[inside] = int(rng.integers(0, num_labels))
    if (seeds < 0).all() and h * w > 1:
        seeds[sites[0, 0], sites[0, 1]] = 0
    return torch.from_numpy(scores).to(dtype)[None], torch.from_numpy(seeds)[None]


if st is not None:

    @st.composite
    def problems(draw, dtype, max_labels=6, densities=(0.0, 0.003, 0.02, 0.1, 0.5, 1.0), offsets=(0.0, 0.5, 3.0, 30.0)):
        """(model, scores, seeds, num_labels): sizes 1..40 a side, random seed layouts, scores from 0 to large."""
        model = draw(st.sampled_from(["rawks", "grady"]))
        n = draw(st.integers(1, 3))
        h = draw(st.integers(1, 40))
        w = draw(st.integers(1, 40))
        num_labels = draw(st.integers(1, max_labels))
        density = draw(st.sampled_from(densities))
        offset = draw(st.sampled_from(offsets))
        # float32 cannot resolve Grady conductance contrasts much beyond exp(6) (docs/numerics.md)
        max_spread = 6.0 if (dtype == torch.float32 and model == "grady") else 20.0
        spread = draw(st.floats(0.0, max_spread))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        scores = random_scores(rng, n, h, w, offset, spread, dtype)
        seeds = random_seeds(rng, n, h, w, num_labels, density)
        return model, scores, seeds, num_labels

    @st.composite
    def learned_problems(draw, dtype, max_side=40, min_side=1):
        """(scores, seeds, num_labels) from :func:`learned_scene`, sizes min_side..max_side a side."""
        h = draw(st.integers(min_side, max_side))
        w = draw(st.integers(min_side, max_side))
        num_labels = draw(st.integers(1, 3))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        scores, seeds = learned_scene(rng, h, w, num_labels, dtype)
        return scores, seeds, num_labels
