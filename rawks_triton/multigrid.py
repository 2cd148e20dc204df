"""Multigrid preconditioner for the 5-point random-walk systems, in plain torch (CPU or CUDA).

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
* Symmetric V-cycle with ``smoothing_steps`` damped-Jacobi steps (weight
  ``jacobi_weight``) before and after the coarse correction, and an exact (pseudo-)inverse
  of the coarsest level, precomputed densely. The cycle is a fixed linear map, symmetric
  and positive definite on the free pixels, so conjugate gradients stay conjugate
  gradients.

Layout: each level stores per-image coefficients flat, as [G, 1, hs * ws] with (hs, ws)
the level's size rounded up to even (zero coefficients in the padding), and vectors as
[G, k, hs * ws]: k systems of one image share the coefficients by broadcasting. In flat
layout the right/left neighbours are offsets +-1 (the right edge weight is 0 in the last
column, so rows never mix) and the up/down neighbours offsets +-ws, so each stencil pass
is a handful of in-place torch ops over contiguous memory with preallocated buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .systems import Stencil


@dataclass(frozen=True)
class MultigridOptions:
    """The cycle. Defaults are the measured choice (docs/multigrid.md)."""

    smoothing_steps: int = 2  # damped-Jacobi steps before and after the coarse correction
    jacobi_weight: float = 0.8
    coarse_edge_scale: float = 0.5
    coarsest_pixels: int = 64  # stop coarsening when a level has at most this many (padded) pixels


FRAME = 1  # level 0: the image with a one-pixel zero border, as the torch backend stores vectors


@dataclass
class Level:
    """One level of the hierarchy: [G, 1, rows * cols] flat coefficients, 0 outside the image."""

    height: int  # the grid; stored with a zero border as (height + 2) x (width + 2)
    width: int
    diag: torch.Tensor
    right: torch.Tensor
    down: torch.Tensor
    weighted_inv_diag: torch.Tensor  # jacobi_weight / diag on unknowns with diag > 0, else 0
    prolongation: torch.Tensor | None = None  # p_i in {0, 1}; None on the coarsest level
    coarsest_inverse: torch.Tensor | None = None  # [G, n, n] on the coarsest level

    @property
    def size(self) -> int:
        return (self.height + 2 * FRAME) * (self.width + 2 * FRAME)


def degree(right: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """Sum of the edge weights at every pixel of [..., H, W] edge tensors."""
    left = F.pad(right[..., :, :-1], (1, 0))
    up = F.pad(down[..., :-1, :], (0, 0, 1, 0))
    return right + left + down + up


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
    positive internal edges (at most two steps round the block), 0 elsewhere.
    """
    r_top, _, r_bottom, _ = block_corners(right)
    d_left, d_right, _, _ = block_corners(down)
    ab, cd, ac, bd = r_top > 0, r_bottom > 0, d_left > 0, d_right > 0
    a, b, c, d = (x > 0 for x in block_corners(active))
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


def _weighted_inverse(diag: torch.Tensor, weight: float) -> torch.Tensor:
    positive = diag > 0
    return torch.where(positive, weight / torch.where(positive, diag, torch.ones_like(diag)), torch.zeros_like(diag))


def dense_matrix(diag: torch.Tensor, right: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """The [N, H*W, H*W] float64 matrix diag(d) - W of [N, H, W] stencil coefficients."""
    n, h, w = diag.shape
    size = h * w
    A = torch.zeros(n, size, size, dtype=torch.float64, device=diag.device)
    idx = torch.arange(size, device=diag.device).view(h, w)
    flat = idx.reshape(-1)
    A[:, flat, flat] = diag.reshape(n, -1).double()
    if w > 1:
        i, j = idx[:, :-1].reshape(-1), idx[:, 1:].reshape(-1)
        A[:, i, j] = A[:, j, i] = -right[:, :, :-1].reshape(n, -1).double()
    if h > 1:
        i, j = idx[:-1].reshape(-1), idx[1:].reshape(-1)
        A[:, i, j] = A[:, j, i] = -down[:, :-1].reshape(n, -1).double()
    return A


def pseudo_inverse(A: torch.Tensor) -> torch.Tensor:
    """Symmetric pseudo-inverse of a batch of symmetric positive semi-definite matrices.

    Eigenvalues at or below n * eps * the largest are treated as 0: zero rows (padding,
    empty aggregates) and the constant mode of a component that no seed reaches.
    """
    eigenvalues, vectors = torch.linalg.eigh(A)
    cutoff = eigenvalues[:, -1:].clamp(min=0) * (A.shape[-1] * torch.finfo(A.dtype).eps)
    keep = eigenvalues > cutoff
    inverse = torch.where(keep, 1.0 / torch.where(keep, eigenvalues, torch.ones_like(eigenvalues)), torch.zeros_like(eigenvalues))
    return (vectors * inverse.unsqueeze(1)) @ vectors.transpose(1, 2)



def connected(A: torch.Tensor) -> torch.Tensor:
    """1 where unknowns i and j are joined by a path of nonzero entries of A (both with a
    nonzero diagonal), else 0. Multiplying the coarsest inverse by it makes it exactly
    block-diagonal over the components (eigh leaves rounding-level entries between them)."""
    reach = (A != 0).double()
    for _ in range(max(1, (A.shape[-1] - 1).bit_length())):
        reach = ((reach @ reach) > 0).double()
    return reach


def _framed(t: torch.Tensor) -> torch.Tensor:
    """[N, h, w] -> [N, h + 2, w + 2] with a zero border."""
    return F.pad(t, (FRAME,) * 4)


def _pad_even(t: torch.Tensor) -> torch.Tensor:
    h, w = t.shape[-2:]
    return F.pad(t, (0, w % 2, 0, h % 2)) if (h % 2 or w % 2) else t


def build_hierarchy(stencil: Stencil, options: MultigridOptions = MultigridOptions()) -> list[Level]:
    """The levels of every image of ``stencil``: per-image [N, 1, (h + 2) (w + 2)] coefficients.

    Every level is stored in a frame, the h x w grid with a one-pixel zero border, which is
    also how the torch backend stores its vectors at level 0. Aggregation pairs the rows
    and columns of the grid from the top left; an odd last row or column is paired with the
    border, which takes no part.
    """
    if options.coarsest_pixels < 1:
        raise ValueError(f"`coarsest_pixels` must be at least 1, got {options.coarsest_pixels}")
    dtype = stencil.diag.dtype
    active = (stencil.inv_diag > 0).to(dtype)  # free pixels with d > 0
    right, down = stencil.right, stencil.down
    diag = stencil.diag * active  # seeds out: their identity rows are not aggregated
    excess = torch.clamp(diag - degree(right, down), min=0.0) * active
    n_images = diag.shape[0]
    levels = []
    while True:
        height, width = diag.shape[-2:]
        flat = lambda t: _framed(t).reshape(n_images, 1, -1)  # noqa: E731
        level = Level(
            height=height,
            width=width,
            diag=flat(diag),
            right=flat(right),
            down=flat(down),
            weighted_inv_diag=flat(_weighted_inverse(diag, options.jacobi_weight) * active),
        )
        levels.append(level)
        if height * width <= options.coarsest_pixels or (height == 1 and width == 1):
            A = dense_matrix(_framed(diag), _framed(right), _framed(down))
            level.coarsest_inverse = (pseudo_inverse(A) * connected(A)).to(dtype).contiguous()
            return levels
        p, excess, right, down = coarsen(*(_pad_even(t) for t in (excess, right, down, active)), options.coarse_edge_scale)
        level.prolongation = flat(p[:, :height, :width])
        diag = excess + degree(right, down)
        active = (diag > 0).to(dtype)


class MultigridPreconditioner:
    """z = M r, M one symmetric V-cycle per system, for vectors in the level-0 frame.

    ``levels`` are per image (:func:`build_hierarchy`); ``image_index`` [S] maps systems to
    images. When the systems are sorted by image and every image that has systems has the
    same number k of them, vectors are viewed as [G, k, n] and share the per-image
    coefficients by broadcasting; otherwise the coefficients are gathered per system and
    vectors are [S, 1, n]. Work buffers are allocated here, once.
    """

    def __init__(self, levels: list[Level], image_index: torch.Tensor, options: MultigridOptions = MultigridOptions()):
        self.options = options
        self.num_systems = int(image_index.numel())
        n_images = levels[0].diag.shape[0]
        images, counts = torch.unique_consecutive(image_index, return_counts=True)
        is_sorted = bool((image_index[1:] >= image_index[:-1]).all()) if self.num_systems > 1 else True
        if self.num_systems and is_sorted and bool((counts == counts[0]).all()):
            self.groups, self.per_group = int(images.numel()), int(counts[0])
            everything = images.numel() == n_images and bool((images == torch.arange(n_images, device=images.device)).all())
            gather = None if everything else images
        else:
            self.groups, self.per_group = self.num_systems, 1
            gather = image_index
        self.levels = levels if gather is None else [_select(level, gather) for level in levels]
        top = self.levels[0]
        self.height, self.width = top.height, top.width
        new = dict(dtype=top.diag.dtype, device=top.diag.device)
        shape = lambda level: (self.groups, self.per_group, level.size)  # noqa: E731
        # Level 0 works in the caller's rhs and output; every level needs a residual buffer
        # and a [.., ceil(h / 2), 2 ceil(w / 2)] buffer for the transfers. Borders stay 0.
        self.rhs = [None] + [torch.zeros(shape(level), **new) for level in self.levels[1:]]
        self.x = [None] + [torch.zeros(shape(level), **new) for level in self.levels[1:]]
        self.residual = [torch.zeros(shape(level), **new) for level in self.levels[:-1]]
        self.half = [
            torch.zeros((self.groups, self.per_group, coarse.height, 2 * coarse.width), **new)
            for coarse in self.levels[1:]
        ]

    @property
    def frame_size(self) -> int:
        return self.levels[0].size

    def precondition(self, r: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out = M r for [S, (H + 2) (W + 2)] vectors in the frame (zero border); returns out."""
        shape = (self.groups, self.per_group, self.frame_size)
        self._cycle(0, r.view(shape), out.view(shape))
        return out

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        """M r for [S, H, W] vectors (a new tensor)."""
        padded = F.pad(r, (FRAME,) * 4).reshape(r.shape[0], self.frame_size)
        out = torch.empty_like(padded)
        self.precondition(padded, out)
        return out.view(r.shape[0], self.height + 2 * FRAME, self.width + 2 * FRAME)[:, FRAME:-FRAME, FRAME:-FRAME].contiguous()

    @staticmethod
    def _residual(level: Level, out, rhs, x):
        """out = rhs - A x: five fused multiply-adds over the flat vectors."""
        row, right, down = level.width + 2 * FRAME, level.right, level.down
        torch.addcmul(rhs, level.diag, x, value=-1.0, out=out)
        out[..., :-1].addcmul_(right[..., :-1], x[..., 1:])
        out[..., 1:].addcmul_(right[..., :-1], x[..., :-1])
        out[..., :-row].addcmul_(down[..., :-row], x[..., row:])
        out[..., row:].addcmul_(down[..., :-row], x[..., :-row])
        return out

    def _cycle(self, l: int, rhs: torch.Tensor, x: torch.Tensor) -> None:
        """x = V-cycle of level l applied to rhs ([G, k, n]; x is overwritten)."""
        level = self.levels[l]
        if level.coarsest_inverse is not None:
            torch.matmul(rhs, level.coarsest_inverse, out=x)
            return
        res, half = self.residual[l], self.half[l]
        winv = level.weighted_inv_diag
        # pre-smoothing from x = 0
        torch.mul(winv, rhs, out=x)
        for _ in range(self.options.smoothing_steps - 1):
            x.addcmul_(winv, self._residual(level, res, rhs, x))
        self._residual(level, res, rhs, x)
        # restriction: the sum of p * res over each 2x2 block, row pairs first, then column pairs
        coarse = self.levels[l + 1]
        blocks = self._blocks(level, coarse)
        res_pairs, p_pairs = blocks(res), blocks(level.prolongation)
        torch.mul(res_pairs[:, :, :, 0], p_pairs[:, :, :, 0], out=half)
        half.addcmul_(res_pairs[:, :, :, 1], p_pairs[:, :, :, 1])
        torch.add(half[..., 0::2], half[..., 1::2], out=self._interior(coarse, self.rhs[l + 1]))
        self._cycle(l + 1, self.rhs[l + 1], self.x[l + 1])
        # prolongation and correction: x += p * (P e)
        half.view(half.shape[:-1] + (coarse.width, 2)).copy_(self._interior(coarse, self.x[l + 1]).unsqueeze(-1).expand(-1, -1, -1, -1, 2))
        blocks(x).addcmul_(half.unsqueeze(3), p_pairs)
        # post-smoothing
        for _ in range(self.options.smoothing_steps):
            x.addcmul_(winv, self._residual(level, res, rhs, x))

    @staticmethod
    def _interior(level: Level, t: torch.Tensor) -> torch.Tensor:
        """[G, k, h, w] view of the grid inside the border."""
        return t.view(t.shape[:2] + (level.height + 2 * FRAME, level.width + 2 * FRAME))[:, :, FRAME:-FRAME, FRAME:-FRAME]

    @staticmethod
    def _blocks(level: Level, coarse: Level):
        """t [G, m, n] -> [G, m, H', 2, 2 W'] view of the 2x2 blocks (row pairs x column span)."""
        rows, cols = 2 * coarse.height, 2 * coarse.width
        frame_cols = level.width + 2 * FRAME

        def view(t):
            grid = t.view(t.shape[:2] + (level.height + 2 * FRAME, frame_cols))
            return grid[:, :, FRAME : FRAME + rows, FRAME : FRAME + cols].unflatten(2, (coarse.height, 2))

        return view


def _select(level: Level, index: torch.Tensor) -> Level:
    pick = lambda t: None if t is None else t.index_select(0, index)  # noqa: E731
    return Level(
        level.height, level.width, pick(level.diag), pick(level.right), pick(level.down),
        pick(level.weighted_inv_diag), pick(level.prolongation), pick(level.coarsest_inverse),
    )


class MultigridOperator:
    """The torch backend's padded-layout operator with the V-cycle as its preconditioner.

    Everything but ``precondition`` (and ``restrict``, which keeps the hierarchy) is the
    wrapped operator's; the hierarchy is built once per forward pass and kept with the
    backend for the adjoint solve.
    """

    def __init__(self, operator, levels: list[Level], options: MultigridOptions = MultigridOptions()):
        self._operator = operator
        self._levels = levels
        self._options = options
        self._cycle = MultigridPreconditioner(levels, operator.image_index, options)
        if getattr(operator, "size", self._cycle.frame_size) != self._cycle.frame_size:
            raise RuntimeError(
                f"multigrid: the operator's vectors have {operator.size} entries per system, the level-0 "
                f"frame (H + 2) (W + 2) has {self._cycle.frame_size}"
            )

    def precondition(self, r: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self._cycle.precondition(r, out)

    def restrict(self, rows: torch.Tensor) -> "MultigridOperator":
        return MultigridOperator(self._operator.restrict(rows), self._levels, self._options)

    def __getattr__(self, name):
        return getattr(self._operator, name)
