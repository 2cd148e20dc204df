"""The multigrid hierarchy of the 5-point random-walk systems: aggregation, the Galerkin
coarse operators and the coarsest level's inverse, in torch ops on the tensors' device
(every backend builds it this way; the cycle is :mod:`.cycle`).

The method (docs/multigrid.md gives the derivation, the measurements behind each choice
and the exact order of operations that the Triton kernels reproduce):

* Aggregation of 2x2 pixel blocks. Inside each block only the pixels joined to the
  block's *anchor* (the pixel with the largest internal edge weight) by positive internal
  edges take part; seeds, isolated pixels and pixels cut off by zero-weight edges are left
  out. The prolongation P is piecewise constant with weight ``p_i`` in {0, 1} per fine
  pixel, one coarse unknown per block, so every coarse operator is again a 5-point
  stencil ("diag", "right", "down"), and vectors never leak into a component that no
  seed reaches.
* Coarse operator: the Galerkin product P^T A P with its edge weights halved. Written as
  A = diag(excess + degree(W)) - W, the coarse excess (the killing or seed-coupling part,
  >= 0) is the sum of the block's excess plus its edges to left-out pixels, and the coarse
  edge is ``coarse_edge_scale`` (1/2) times the sum of the fine edges crossing between the
  two blocks. Summing non-negative numbers keeps every level a diagonally dominant
  M-matrix without cancellation. Halving the edges makes the coarse Laplacian part the
  rediscretisation of the fine one on the doubled grid (plain aggregation overestimates it
  by 2), while the excess (mass) part is already right: one coarse operator serves both the
  Laplacian-like Grady systems and the strongly killed RAWKS systems, with no
  over-correction factor.
* Symmetric V-cycle (or W-cycle, ``cycle="W"``) with ``smoothing_steps`` damped-Jacobi
  steps (weight ``jacobi_weight``) before and after the coarse correction, the correction
  optionally scaled by ``correction_scale``, and an exact inverse of the coarsest level on
  its grounded components, precomputed densely (Cholesky). The cycle is a fixed linear
  map, symmetric and positive definite on the free pixels (``MultigridOptions`` refuses
  scalings that would break that), so conjugate gradients stay conjugate gradients.

Layout: each level of h x w unknowns is stored in the frame of
:mod:`rawks_triton.solve.layout` (level 0 is how the solvers store their vectors, and
shares their coefficients), per image: [N, 1, (h + 2) (w + 2)]. An odd last row or column
is aggregated with the border, which takes no part.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...coefficients import degree
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


def block_corners(t: torch.Tensor):
    """The four pixels (top-left, top-right, bottom-left, bottom-right) of every 2x2 block."""
    n, h, w = t.shape
    t4 = t.view(n, h // 2, 2, w // 2, 2)
    return t4[:, :, 0, :, 0], t4[:, :, 0, :, 1], t4[:, :, 1, :, 0], t4[:, :, 1, :, 1]


def anchor_components(right: torch.Tensor, down: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Prolongation weights p in {0, 1} of a level with even size [N, H, W].

    In every 2x2 block with pixels a b / c d and internal edges ab, cd (right) and ac, bd
    (down), the anchor is the active pixel with the largest sum of internal edge weights
    (the first in a, b, c, d order on ties); p = 1 on the pixels joined to the anchor by
    positive internal edges between active pixels (at most two steps round the block), 0
    elsewhere.
    """
    r_top, _, r_bottom, _ = block_corners(right)
    d_left, d_right, _, _ = block_corners(down)
    a, b, c, d = (x > 0 for x in block_corners(active))
    ab, cd, ac, bd = (r_top > 0) & a & b, (r_bottom > 0) & c & d, (d_left > 0) & a & c, (d_right > 0) & b & d
    strength = torch.stack(
        [
            (r_top + d_left) * a,
            (r_top + d_right) * b,
            (d_left + r_bottom) * c,
            (r_bottom + d_right) * d,
        ]
    )
    # an active pixel without internal edges still beats an inactive one
    strength = strength + torch.stack([a, b, c, d]).to(strength.dtype) * torch.finfo(strength.dtype).tiny
    anchor = strength.argmax(dim=0)
    is_a, is_b, is_c, is_d = (anchor == k for k in range(4))
    # pixel q is in the anchor's component if it is the anchor, a neighbour by a positive
    # edge, or the opposite corner reached through either neighbour
    in_a = is_a | (is_b & ab) | (is_c & ac) | (is_d & ((bd & ab) | (cd & ac)))
    in_b = is_b | (is_a & ab) | (is_d & bd) | (is_c & ((ac & ab) | (cd & bd)))
    in_c = is_c | (is_a & ac) | (is_d & cd) | (is_b & ((ab & ac) | (bd & cd)))
    in_d = is_d | (is_b & bd) | (is_c & cd) | (is_a & ((ab & bd) | (ac & cd)))
    n, h, w = right.shape
    p = torch.stack([torch.stack([in_a, in_b], dim=-1), torch.stack([in_c, in_d], dim=-1)], dim=2)
    return p.view(n, h, w).to(right.dtype) * (active > 0).to(right.dtype)


def coarsen(excess, right, down, active, edge_scale: float):
    """One aggregation step on even-size [N, H, W] tensors.

    Returns the prolongation weights p of this level and the coarse (excess, right, down).
    """
    p = anchor_components(right, down, active)
    p_right = F.pad(p[:, :, 1:], (0, 1))
    p_down = F.pad(p[:, 1:, :], (0, 0, 0, 1))
    kept_right = right * (p * p_right)
    kept_down = down * (p * p_down)
    # edges from a kept pixel to a left-out one count as excess of the kept pixel's block
    lost = degree(right - kept_right, down - kept_down)
    fine_excess = (excess + lost) * p
    tl, tr, bl, br = block_corners(fine_excess)
    coarse_excess = (tl + tr) + (bl + br)
    _, r_tr, _, r_br = block_corners(kept_right)  # edges crossing to the block on the right
    _, _, d_bl, d_br = block_corners(kept_down)  # edges crossing to the block below
    coarse_right = (r_tr + r_br) * edge_scale
    coarse_down = (d_bl + d_br) * edge_scale
    return p, coarse_excess, coarse_right, coarse_down


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
    """[N, h, w] -> [N, h + 2, w + 2] with a zero border."""
    return F.pad(t, (BORDER,) * 4)


def _pad_even(t: torch.Tensor) -> torch.Tensor:
    h, w = t.shape[-2:]
    return F.pad(t, (0, w % 2, 0, h % 2)) if (h % 2 or w % 2) else t


def build_hierarchy(
    stencil: Stencil, options: MultigridOptions = DEFAULT_OPTIONS, framed: dict | None = None
) -> list[Level]:
    """The levels of every image of ``stencil``: per-image [N, 1, (h + 2) (w + 2)] coefficients.

    Every level is stored in a frame, the h x w grid with a one-pixel zero border, which is
    also how the torch backend stores its vectors at level 0. Aggregation pairs the rows
    and columns of the grid from the top left; an odd last row or column is paired with the
    border, which takes no part.

    Walls: a pixel whose excess is above ``options.wall_ratio`` times its degree (for
    "rawks", a score above ln 2: the walk is killed there with probability above 1/2 per
    step) is left out of the aggregates, as seeds are. The smoother resolves such strongly
    diagonally dominant rows by itself, and, more importantly, no aggregate then joins the
    two sides of a learned wall: the coarse correction of a block never carries the values
    of one side into the other, where they can be twenty orders of magnitude apart. On
    learned boundaries in float32 at rtol 1e-3 this takes 9 to 14 iterations forward where
    aggregating walls took 4 to 43 and stalled above the tolerance on two images of three
    (docs/multigrid.md).

    ``framed``: the solver's own [N, (H + 2) (W + 2)] "diag", "right", "down" and
    "inv_diag" of ``stencil`` (the torch backend's ``FramedOperator.per_image``); level 0
    then shares them instead of holding copies. Its diagonal is 1 on seeds where level 0's
    own is 0: the same cycle, since every vector of the cycle is 0 on seeds.
    """
    if stencil.ndim != 2:
        raise NotImplementedError("build_hierarchy: the multigrid hierarchy of volumes is not implemented")
    if options.coarsest_pixels < 1:
        raise ValueError(f"`coarsest_pixels` must be at least 1, got {options.coarsest_pixels}")
    dtype = stencil.diag.dtype
    active = (stencil.inv_diag > 0).to(dtype)  # free pixels with d > 0
    right, down = stencil.right, stencil.down
    diag = stencil.diag * active  # seeds out: their identity rows are not aggregated
    excess = torch.clamp(diag - degree(right, down), min=0.0) * active
    levels = []
    while True:
        height, width = diag.shape[-2:]
        frame = Frame(height, width)
        if not levels and framed is not None:
            level = Level(height, width, *(framed[name].unsqueeze(1) for name in ("diag", "right", "down", "inv_diag")))
        else:
            level = Level(
                height,
                width,
                frame.frame(diag).unsqueeze(1),
                frame.frame(right).unsqueeze(1),
                frame.frame(down).unsqueeze(1),
                frame.frame(_inverse(diag) * active).unsqueeze(1),
            )
        levels.append(level)
        if height * width <= options.coarsest_pixels or (height == 1 and width == 1):
            A = dense_matrix(_framed(diag), _framed(right), _framed(down))
            level.coarsest_inverse = coarsest_inverse(A, torch.finfo(dtype).eps).to(dtype).contiguous()
            return levels
        aggregated = active
        if options.wall_ratio is not None:
            aggregated = active * (excess <= options.wall_ratio * degree(right, down)).to(dtype)
        p, excess, right, down = coarsen(
            *(_pad_even(t) for t in (excess, right, down, aggregated)), options.coarse_edge_scale
        )
        level.prolongation = frame.frame(p[:, :height, :width]).unsqueeze(1)
        diag = excess + degree(right, down)
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
    )
