"""The multigrid hierarchy of the random-walk systems (5-point on images, 7-point on volumes):
aggregation, the Galerkin coarse operators and the coarsest level's inverse, in torch ops on
the tensors' device (every backend builds it this way; the cycle is :mod:`.cycle`).

The method (docs/multigrid.md gives the derivation, the measurements behind each choice
and the exact order of operations that the Triton kernels reproduce):

* Aggregation of 2x2 pixel blocks (volumes: 2x2x2 voxel blocks, or 2x2x1 where the z
  edges are weak, see :func:`build_hierarchy`). Inside each block only the pixels joined
  to the block's *anchor* (the pixel with the largest internal edge weight) by positive
  internal edges take part; seeds, isolated pixels and pixels cut off by zero-weight edges
  are left out. The prolongation P is piecewise constant with weight ``p_i`` in {0, 1} per
  fine pixel, one coarse unknown per block, so every coarse operator is again a 5-point
  (7-point) stencil ("diag", "right", "down"[, "deep"]), and vectors never leak into a
  component that no seed reaches.
* Coarse operator: the Galerkin product P^T A P with its edge weights scaled per axis.
  Written as A = diag(excess + degree(W)) - W, the coarse excess (the killing or
  seed-coupling part, >= 0) is the sum of the block's excess plus its edges to left-out
  pixels, and the coarse edge is the sum of the fine edges crossing between the two blocks,
  times ``coarse_edge_scale`` (1/2) along a coarsened axis and 1 along an axis that is not
  coarsened. On a grid of spacings h_b the edge along axis a of the Laplacian is
  prod_{b != a} h_b / h_a (face area over distance); blocks of s_b positions per axis give
  the rediscretisation prod_{b != a} s_b / s_a times it, while aggregation sums the
  prod_{b != a} s_b crossing edges: it overestimates by s_a, 2 along a coarsened axis and 1
  along one that is not (2x2, 2x2x2 and 2x2x1 blocks alike). Summing non-negative numbers
  keeps every level a diagonally dominant M-matrix without cancellation; the excess (mass)
  part is already right, so one coarse operator serves both the Laplacian-like Grady
  systems and the strongly killed RAWKS systems, with no over-correction factor.
* Symmetric V-cycle (or W-cycle, ``cycle="W"``) with ``smoothing_steps`` damped-Jacobi
  steps (weight ``jacobi_weight``) before and after the coarse correction, the correction
  optionally scaled by ``correction_scale``, and an exact inverse of the coarsest level on
  its grounded components, precomputed densely (Cholesky). The cycle is a fixed linear
  map, symmetric and positive definite on the free pixels (``MultigridOptions`` refuses
  scalings that would break that), so conjugate gradients stay conjugate gradients.

Layout: each level is stored in the frame of :mod:`rawks_triton.solve.layout` (level 0 is
how the solvers store their vectors, and shares their coefficients), per image:
[N, 1, size]. An odd last row, column or slice is aggregated with the border, which takes
no part.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...coefficients import degree, pad_last, shifted_pair
from ...systems import Stencil
from ..layout import BORDER, Frame
from ..stencil import dense_matrix


@dataclass(frozen=True)
class MultigridOptions:
    """The cycle. Defaults are the measured choice (docs/multigrid.md)."""

    smoothing_steps: int = 2  # damped-Jacobi steps before and after the coarse correction
    jacobi_weight: float = 0.9
    coarse_edge_scale: float = 0.5
    coarsest_pixels: int = 64  # stop coarsening when a level has at most this many (padded) pixels
    correction_scale: float = 1.0  # the prolongated coarse correction is multiplied by it (over-correction)
    cycle: str = "V"  # "V": one coarse cycle per level; "W": two
    # Pixels whose excess (killing or seed coupling) is above wall_ratio times their degree
    # stay out of the aggregates (None: every free pixel takes part); see build_hierarchy.
    wall_ratio: float | None = 2.0
    # Volumes: an axis is coarsened only where its mean edge weight is at least this fraction
    # of the strongest axis's (semi-coarsening; 1: the strongest axes only, 0: always 2x2x2);
    # see build_hierarchy and docs/multigrid.md, "Volumes", for the measurements.
    semi_coarsening: float = 1.0

    def __post_init__(self):
        if self.cycle not in ("V", "W"):
            raise ValueError(f"`cycle` must be 'V' or 'W', got {self.cycle!r}")
        # The coarse operator is >= min(1, coarse_edge_scale) times the Galerkin product, so the
        # coarse correction is at most correction_scale / min(1, coarse_edge_scale) times the
        # exact one; up to 2 the cycle stays a contraction in the energy norm, hence SPD.
        limit = 2.0 * min(1.0, self.coarse_edge_scale)
        if not 0.0 < self.correction_scale <= limit:
            raise ValueError(
                f"`correction_scale` must lie in (0, 2 min(1, coarse_edge_scale)] = (0, {limit:g}] for a positive "
                f"definite cycle, got {self.correction_scale}"
            )
        if self.coarse_edge_scale <= 0:
            raise ValueError(f"`coarse_edge_scale` must be > 0, got {self.coarse_edge_scale}")
        if self.smoothing_steps < 1:
            raise ValueError(f"`smoothing_steps` must be at least 1, got {self.smoothing_steps}")
        if self.wall_ratio is not None and not self.wall_ratio > 0:
            raise ValueError(f"`wall_ratio` must be > 0 or None, got {self.wall_ratio}")
        if not 0.0 <= self.semi_coarsening <= 1.0:
            raise ValueError(f"`semi_coarsening` must lie in [0, 1], got {self.semi_coarsening}")


DEFAULT_OPTIONS = MultigridOptions()


@dataclass
class Level:
    """One level of the hierarchy: [G, 1, rows * cols] flat coefficients, 0 outside the image."""

    height: int  # the grid; stored with a zero border as (height + 2) x (width + 2)
    width: int
    diag: torch.Tensor
    right: torch.Tensor
    down: torch.Tensor
    inv_diag: torch.Tensor  # 1 / diag on unknowns with diag > 0, else 0
    prolongation: torch.Tensor | None = None  # p_i in {0, 1}; None on the coarsest level
    coarsest_inverse: torch.Tensor | None = None  # [G, n, n] on the coarsest level
    deep: torch.Tensor | None = None  # the z edges of a volume's level
    depth: int | None = None  # the slices of a volume's level
    # the aggregation factors to the next level in the grid's order ((2, 2) for an image; (2, 2, 2)
    # or (1, 2, 2) for a volume); None on the coarsest level
    block: tuple[int, ...] | None = None

    @property
    def frame(self) -> Frame:
        return Frame(self.height, self.width) if self.depth is None else Frame(self.depth, self.height, self.width)

    @property
    def edges(self) -> tuple[torch.Tensor, ...]:
        """The edge arrays in the order of :attr:`Frame.offsets`."""
        return (self.right, self.down) + ((self.deep,) if self.deep is not None else ())

    @property
    def size(self) -> int:
        return self.frame.size

    @property
    def row(self) -> int:
        return self.frame.row


def block_view(t: torch.Tensor, block: tuple[int, ...]) -> torch.Tensor:
    """[N, *shape] with every extent a multiple of its block factor -> the [N, *coarse, *block]
    view of its aggregation blocks (``block`` in the grid's order: (2, 2) for an image,
    (2, 2, 2) or (1, 2, 2) for a volume)."""
    ndim = len(block)
    coarse = [extent // factor for extent, factor in zip(t.shape[1:], block, strict=True)]
    split = t.reshape([t.shape[0]] + [v for pair in zip(coarse, block, strict=True) for v in pair])
    return split.permute([0] + [1 + 2 * i for i in range(ndim)] + [2 + 2 * i for i in range(ndim)])


def block_sum(blocks: torch.Tensor, dims: int) -> torch.Tensor:
    """Sum over the last ``dims`` (block) dimensions of a :func:`block_view`, pairwise from the
    last (x) dimension on: (tl + tr) + (bl + br) for a 2x2 block."""
    for _ in range(dims):
        blocks = blocks[..., 0] + blocks[..., 1] if blocks.shape[-1] == 2 else blocks[..., 0]
    return blocks


def _corner(blocks: torch.Tensor, index: tuple[int, ...]) -> torch.Tensor:
    """The [N, *coarse] values at one position ``index`` (grid order) of every block."""
    return blocks[(Ellipsis,) + tuple(index)]


def anchor_components(edges, active: torch.Tensor, block: tuple[int, ...] | None = None) -> torch.Tensor:
    """Prolongation weights p in {0, 1} of a level whose extents are multiples of ``block``.

    ``edges``: the level's edge arrays in the order of :attr:`Level.edges` (right, down and,
    for a volume, deep); ``block``: the aggregation factors in the grid's order (default 2
    along every axis). In every block the anchor is the active position with the largest
    sum of internal edge weights (the first in C order on ties: a, b, c, d for the 2x2 block
    a b / c d); p = 1 on the positions joined to the anchor by positive internal edges
    between active positions, 0 elsewhere. The membership is propagated along the internal
    edges as many times as the block has positions minus one (the longest path inside it:
    3 for 2x2, 7 for 2x2x2), so a block's part is the anchor's whole connected component.
    """
    ndim = active.dim() - 1
    block = (2,) * ndim if block is None else tuple(block)
    positions = list(itertools.product(*(range(factor) for factor in block)))
    act_blocks = block_view(active > 0, block)
    act = [_corner(act_blocks, q) for q in positions]
    strength = [None] * len(positions)
    links = []  # (position, its neighbour along an axis, joined by a positive edge between active positions)
    for axis, weight in enumerate(edges):
        dim = ndim - 1 - axis  # the grid dimension of the edge axis (x: the last)
        if block[dim] == 1:
            continue
        weights = block_view(weight, block)
        for k, q in enumerate(positions):
            if q[dim] == 0:
                w = _corner(weights, q)
                partner = positions.index(q[:dim] + (1,) + q[dim + 1 :])
                links.append((k, partner, (w > 0) & act[k] & act[partner]))
            else:  # the internal edge along this axis ends here: it starts at the position before
                w = _corner(weights, q[:dim] + (0,) + q[dim + 1 :])
            strength[k] = w if strength[k] is None else strength[k] + w
    tiny = torch.finfo(active.dtype).tiny
    # an active position without internal edges still beats an inactive one
    strength = torch.stack([s * a + a.to(active.dtype) * tiny for s, a in zip(strength, act, strict=True)], dim=-1)
    anchor = strength.argmax(dim=-1)
    member = [anchor == k for k in range(len(positions))]
    for _ in range(len(positions) - 1):
        for first, second, joined in links:
            member[first] = member[first] | (member[second] & joined)
            member[second] = member[second] | (member[first] & joined)
    p = torch.stack(member, dim=-1).view(act_blocks.shape)
    inverse = [0] + [v for i in range(ndim) for v in (1 + i, 1 + ndim + i)]
    p = p.permute(inverse).reshape(active.shape)
    return p.to(active.dtype) * (active > 0).to(active.dtype)


def coarsen(excess, edges, active, block: tuple[int, ...], edge_scales: tuple[float, ...]):
    """One aggregation step on [N, *shape] tensors whose extents are multiples of ``block``.

    ``edges`` and ``edge_scales`` are per edge axis (right, down[, deep]). Returns the
    prolongation weights p of this level and the coarse (excess, edges).
    """
    ndim = len(block)
    p = anchor_components(edges, active, block)
    kept = [weight * (p * pad_last(shifted_pair(p, axis)[1], axis)) for axis, weight in enumerate(edges)]
    # edges from a kept position to a left-out one count as excess of the kept position's block
    lost = degree(*(weight - k for weight, k in zip(edges, kept, strict=True)))
    fine_excess = (excess + lost) * p
    coarse_excess = block_sum(block_view(fine_excess, block), ndim)
    coarse_edges = []
    for axis, (weight, scale) in enumerate(zip(kept, edge_scales, strict=True)):
        dim = ndim - 1 - axis
        # the fine edges from the last position of each block along the axis cross to the next block
        crossing = block_view(weight, block).select(1 + ndim + dim, block[dim] - 1)
        total = block_sum(crossing, ndim - 1)
        coarse_edges.append(total if scale == 1.0 else total * scale)
    return p, coarse_excess, tuple(coarse_edges)


def axis_strengths(edges, aggregated: torch.Tensor) -> list[float]:
    """The mean weight of the edges between aggregated positions, per edge axis, over the batch."""
    means = []
    for axis, weight in enumerate(edges):
        first, second = shifted_pair(aggregated, axis)
        both = pad_last(first * second, axis)
        pairs = float(both.sum())
        means.append(float((weight * both).sum()) / pairs if pairs > 0 else 0.0)
    return means


def volume_blocks(shape: tuple[int, ...], strengths: list[float], ratio: float) -> tuple[int, ...]:
    """The block factors (grid order) of one volume level: 2 along every axis of extent > 1
    whose mean edge weight is at least ``ratio`` times the strongest one's, 1 along the others
    (semi-coarsening; without any edge, every axis of extent > 1 is coarsened)."""
    ndim = len(shape)
    candidates = [axis for axis in range(ndim) if shape[ndim - 1 - axis] > 1]
    strongest = max((strengths[axis] for axis in candidates), default=0.0)
    block = [1] * ndim
    for axis in candidates:
        if strongest == 0.0 or strengths[axis] >= ratio * strongest:
            block[ndim - 1 - axis] = 2
    return tuple(block)


def _inverse(diag: torch.Tensor) -> torch.Tensor:
    positive = diag > 0
    return torch.where(positive, 1.0 / torch.where(positive, diag, torch.ones_like(diag)), torch.zeros_like(diag))


def coarsest_inverse(A: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """Inverse of a batch of symmetric diagonally dominant M-matrices on their grounded part.

    Unknowns with a zero row (the frame, padding, empty aggregates) and components without
    any excess (a Grady component that no seed reaches: a singular Laplacian block) get zero
    rows and columns; every other component is inverted through a Cholesky factorisation.
    For an M-matrix the factor's inverse is non-negative and computed without cancellation,
    so the entries of the inverse are accurate relative to themselves, also the tiny ones
    between distant pixels of a strongly killed (RAWKS) system. An eigendecomposition only
    gets them to eps times the largest entry, which P = Z / sum Z amplifies where sum Z is
    small (and which is not a smooth function of the coefficients).
    """
    n = A.shape[-1]
    # eps: the precision the coefficients were computed in (a float32 degree minus its edges
    # leaves rounding noise, not excess, in a component that no seed reaches).
    eps = torch.finfo(A.dtype).eps if eps is None else eps
    diag = torch.diagonal(A, dim1=-2, dim2=-1)
    reach = connected(A)
    component_excess = reach @ torch.clamp(A.sum(dim=-1), min=0.0).unsqueeze(-1)
    component_diag = reach @ diag.unsqueeze(-1)
    grounded = ((component_excess > n * eps * component_diag) & (diag.unsqueeze(-1) > 0)).squeeze(-1)
    keep = grounded.to(A.dtype)
    mask = keep.unsqueeze(-1) * keep.unsqueeze(-2)
    factor, info = torch.linalg.cholesky_ex(A * mask + torch.diag_embed(1.0 - keep))
    failed = info != 0
    if bool(failed.any()):  # a failed factor is not triangular-invertible: identity until replaced
        factor = torch.where(
            failed.view(-1, *([1] * (factor.dim() - 1))), torch.eye(n, dtype=A.dtype, device=A.device), factor
        )
    inverse = torch.cholesky_inverse(factor)
    if bool(failed.any()):
        # A nearly singular grounded block (rounding): its symmetric positive semi-definite
        # pseudo-inverse keeps the cycle symmetric and CG convergent, at eigh's accuracy.
        inverse[failed] = torch.linalg.pinv((A * mask)[failed], hermitian=True)
    return inverse * mask * reach


def connected(A: torch.Tensor) -> torch.Tensor:
    """1 where unknowns i and j are joined by a path of nonzero entries of A, else 0."""
    reach = (A != 0).to(A.dtype)
    for _ in range(max(1, (A.shape[-1] - 1).bit_length())):
        reach = ((reach @ reach) > 0).to(A.dtype)
    return reach


def _framed(t: torch.Tensor) -> torch.Tensor:
    """[N, *shape] -> [N, *(shape + 2)] with a zero border."""
    return F.pad(t, (BORDER,) * (2 * (t.dim() - 1)))


def _pad_to_blocks(t: torch.Tensor, block: tuple[int, ...]) -> torch.Tensor:
    """Pad every odd extent with a block factor of 2 by one zero position at its end."""
    pad = []
    for extent, factor in zip(reversed(t.shape[1:]), reversed(block), strict=True):
        pad += [0, extent % factor]
    return F.pad(t, pad) if any(pad) else t


def _crop(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return t[(slice(None),) + tuple(slice(0, extent) for extent in shape)]


def build_hierarchy(
    stencil: Stencil, options: MultigridOptions = DEFAULT_OPTIONS, framed: dict | None = None
) -> list[Level]:
    """The levels of every image (or volume) of ``stencil``: per-image [N, 1, size] coefficients.

    Every level is stored in a frame, the grid with a one-position zero border, which is
    also how the torch backend stores its vectors at level 0. Aggregation pairs the
    positions along each coarsened axis from the start; an odd last one is paired with the
    border, which takes no part.

    Blocks: 2x2 on images. On volumes 2x2x2, or, per level, 1 along an axis whose mean edge
    weight (between aggregated voxels, over the batch) is below ``options.semi_coarsening``
    times the strongest axis's, and along an axis of extent 1 (semi-coarsening: with slices
    much thicker than the pixels, the z edges are weak and the blocks 2x2x1 until the
    coarse z edges have caught up). The coarse edges of a coarsened axis are
    ``options.coarse_edge_scale`` times the sum of the crossing fine edges, those of an axis
    that is not coarsened the plain sum: the rediscretisation on the coarser grid (module
    docstring).

    Walls: a pixel whose excess is above ``options.wall_ratio`` times its degree (for
    "rawks", a score above ln 2: the walk is killed there with probability above 1/2 per
    step) is left out of the aggregates, as seeds are. The smoother resolves such strongly
    diagonally dominant rows by itself, and, more importantly, no aggregate then joins the
    two sides of a learned wall: the coarse correction of a block never carries the values
    of one side into the other, where they can be twenty orders of magnitude apart. On
    learned boundaries in float32 at rtol 1e-3 this takes 9 to 14 iterations forward where
    aggregating walls took 4 to 43 and stalled above the tolerance on two images of three
    (docs/multigrid.md).

    ``framed``: the solver's own [N, size] "diag", the edges ("right", "down"[, "deep"]) and
    "inv_diag" of ``stencil`` (the torch backend's ``FramedOperator.per_image``); level 0
    then shares them instead of holding copies. Its diagonal is 1 on seeds where level 0's
    own is 0: the same cycle, since every vector of the cycle is 0 on seeds.
    """
    if stencil.ndim not in (2, 3):
        raise NotImplementedError(f"build_hierarchy: grids of 2 or 3 dimensions, got {stencil.ndim}")
    if options.coarsest_pixels < 1:
        raise ValueError(f"`coarsest_pixels` must be at least 1, got {options.coarsest_pixels}")
    volume = stencil.ndim == 3
    names = ("right", "down", "deep")[: stencil.ndim]
    dtype = stencil.diag.dtype
    active = (stencil.inv_diag > 0).to(dtype)  # free pixels with d > 0
    edges = stencil.edges
    diag = stencil.diag * active  # seeds out: their identity rows are not aggregated
    excess = torch.clamp(diag - degree(*edges), min=0.0) * active
    levels = []
    while True:
        shape = tuple(diag.shape[1:])
        frame = Frame(*shape)
        if not levels and framed is not None:
            coefficients = [framed[name].unsqueeze(1) for name in ("diag", *names, "inv_diag")]
        else:
            coefficients = [frame.frame(t).unsqueeze(1) for t in (diag, *edges, _inverse(diag) * active)]
        level = Level(
            shape[-2],
            shape[-1],
            coefficients[0],
            coefficients[1],
            coefficients[2],
            coefficients[-1],
            deep=coefficients[3] if volume else None,
            depth=shape[0] if volume else None,
        )
        levels.append(level)
        if diag[0].numel() <= options.coarsest_pixels or all(extent == 1 for extent in shape):
            A = dense_matrix(_framed(diag), *(_framed(t) for t in edges))
            level.coarsest_inverse = coarsest_inverse(A, torch.finfo(dtype).eps).to(dtype).contiguous()
            return levels
        aggregated = active
        if options.wall_ratio is not None:
            aggregated = active * (excess <= options.wall_ratio * degree(*edges)).to(dtype)
        if volume:
            level.block = volume_blocks(shape, axis_strengths(edges, aggregated), options.semi_coarsening)
        else:
            level.block = (2, 2)
        scales = tuple(
            options.coarse_edge_scale if level.block[stencil.ndim - 1 - axis] == 2 else 1.0
            for axis in range(stencil.ndim)
        )
        padded = [_pad_to_blocks(t, level.block) for t in (excess, *edges, aggregated)]
        p, excess, edges = coarsen(padded[0], tuple(padded[1:-1]), padded[-1], level.block, scales)
        level.prolongation = frame.frame(_crop(p, shape)).unsqueeze(1)
        diag = excess + degree(*edges)
        active = (diag > 0).to(dtype)


def select_images(level: Level, groups) -> Level:
    """The level's coefficients for the systems of ``groups`` (:class:`ImageGroups`): per
    image with systems when they are uniform, else per system."""
    pick = lambda t: None if t is None else groups.select(t)  # noqa: E731
    return Level(
        level.height,
        level.width,
        pick(level.diag),
        pick(level.right),
        pick(level.down),
        pick(level.inv_diag),
        pick(level.prolongation),
        pick(level.coarsest_inverse),
        pick(level.deep),
        level.depth,
        level.block,
    )
