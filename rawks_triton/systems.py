"""Seeds -> the compacted set of linear systems, their right-hand sides and operator.

For image n and label l the unknowns are the unseeded ("free") pixels U:

    A z_l = b_l,   A = diag(d) - W restricted to U,
    b_l[i] = sum of W_ij over the grid neighbours j (4 in an image, 6 in a volume) that
             are seeds labelled l.

Only labels that occur among an image's seeds are solved ("label compaction"); the
solved (image, label) pairs are the *systems*, and every solver vector has the layout
(S, *grid), grid = (H, W) or (D, H, W), with S the number of systems, sorted by image
then label.

Solvers work on the whole grid: seed rows are replaced by identity rows and edges that
touch a seed are cut (:class:`Stencil`), so vectors stay exactly zero on seeds and no
seed mask is needed inside a matrix-vector product.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .solve.layout import Frame, ImageGroups
from .solve.stencil import StencilProduct


@dataclass(frozen=True)
class LabelSystems:
    """The (image, label) pairs that are solved, and the seed layout they come from."""

    seeds: torch.Tensor  # [N, *grid] int64, label or ignore_index
    free: torch.Tensor  # [N, *grid] bool, unseeded pixels
    image_index: torch.Tensor  # [S] int64
    label_index: torch.Tensor  # [S] int64
    present: torch.Tensor  # [N, L] bool, labels that occur among the image's seeds
    num_labels: int

    @property
    def num_systems(self) -> int:
        return int(self.image_index.numel())

    @property
    def ndim(self) -> int:
        """2 for images, 3 for volumes."""
        return self.seeds.dim() - 1

    def seed_indicator(self, dtype: torch.dtype) -> torch.Tensor:
        """[S, *grid] 1 where the pixel is a seed of the system's label, else 0."""
        labels = self.label_index.view((-1,) + (1,) * self.ndim)
        return (self.seeds.index_select(0, self.image_index) == labels).to(dtype)

    def free_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """[S, *grid] 1 on the free pixels of each system's image."""
        return self.free.index_select(0, self.image_index).to(dtype)

    @cached_property
    def groups(self) -> ImageGroups:
        """The systems grouped by image (see :class:`ImageGroups`)."""
        return ImageGroups(self.image_index, self.seeds.shape[0])

    def per_image_sum(self, per_system: torch.Tensor) -> torch.Tensor:
        """Sum an [S, ...] tensor over the systems of each image -> [N, ...]."""
        return self.groups.image_sum(per_system)


def compact_labels(seeds: torch.Tensor, num_labels: int, ignore_index: int) -> LabelSystems:
    """Find the labels present in each image. ``seeds`` must already be checked."""
    n_images = seeds.shape[0]
    seeded = seeds != ignore_index
    image_of_pixel = torch.arange(n_images, device=seeds.device).view((-1,) + (1,) * (seeds.dim() - 1))
    image_of_pixel = image_of_pixel.expand_as(seeds)
    flat = (image_of_pixel * num_labels + seeds)[seeded]
    present = torch.zeros(n_images * num_labels, dtype=torch.bool, device=seeds.device)
    present[flat] = True
    pairs = present.nonzero().squeeze(1)
    return LabelSystems(
        seeds=seeds,
        free=~seeded,
        image_index=torch.div(pairs, num_labels, rounding_mode="floor"),
        label_index=pairs % num_labels,
        present=present.view(n_images, num_labels),
        num_labels=num_labels,
    )


def right_hand_sides(right, down, systems: LabelSystems, dtype: torch.dtype | None = None, deep=None) -> torch.Tensor:
    """b [S, *grid]: for free pixels, the weight of their edges to seeds of the label.

    ``right = down = None``: unit edge weights (then ``dtype`` gives the dtype); ``deep``:
    the edges along z of a volume.
    """
    ndim = systems.ndim
    if right is None:
        from .coefficients import grid_edges

        edges = grid_edges(systems.free.to(dtype), ndim)
    else:
        edges = (right, down) + ((deep,) if ndim == 3 else ())
    groups = systems.groups
    frame = Frame(*systems.free.shape[1:])
    # the coefficients of each image broadcast over its labels
    product = StencilProduct(None, [groups.spread(frame.frame(e)) for e in edges], frame.offsets)
    seeds = frame.frame(systems.seed_indicator(edges[0].dtype))
    b = product.neighbours(groups.grouped(seeds), groups.grouped(torch.empty_like(seeds)))
    del seeds
    b = frame.unframe(b.view(-1, frame.size))
    groups.grouped(b).masked_fill_(~groups.spread(systems.free), 0.0)
    return b


@dataclass(frozen=True)
class Stencil:
    """The operator of every image's systems on the full grid (shared by its labels).

    ``diag`` is d on free pixels and 1 on seeds; ``right``/``down`` (and ``deep`` on
    volumes) are the edge weights with every edge that touches a seed cut; ``inv_diag`` is
    the Jacobi preconditioner, 1/d on free pixels with d > 0 and 0 elsewhere (on seeds, and
    on free pixels without any edge, where the solution is defined as 0).
    """

    diag: torch.Tensor  # [N, *grid]
    right: torch.Tensor  # [N, *grid]
    down: torch.Tensor  # [N, *grid]
    inv_diag: torch.Tensor  # [N, *grid]
    unit_edges: bool = False  # every edge between free pixels has weight 1 (the "rawks" model)
    deep: torch.Tensor | None = None  # [N, D, H, W] on volumes

    @property
    def shape(self):
        return tuple(self.diag.shape)

    @property
    def ndim(self) -> int:
        return self.diag.dim() - 1

    @property
    def edges(self) -> tuple[torch.Tensor, ...]:
        """The edge arrays in the order of :attr:`rawks_triton.solve.layout.Frame.offsets`."""
        return (self.right, self.down) + ((self.deep,) if self.deep is not None else ())


def build_stencil(diag, right, down, free: torch.Tensor, unit_edges: bool = False, deep=None) -> Stencil:
    """The stencil of every image; ``right = down = None`` means unit edge weights (the
    "rawks" model), made here without all-ones arrays. ``deep``: the z edges of a volume."""
    from .coefficients import pad_last, shifted_pair

    ndim = free.dim() - 1
    free_f = free.to(diag.dtype)
    given = None if right is None else (right, down) + ((deep,) if ndim == 3 else ())
    edges = []
    for axis in range(ndim):
        a, b = shifted_pair(free_f, axis)
        both_free = pad_last(a * b, axis)  # both ends free, 0 at the last position
        edges.append(both_free if given is None else (given[axis] * both_free).contiguous())
    del free_f
    op_diag = torch.where(free, diag, torch.ones_like(diag))
    positive = free & (diag > 0)
    inv_diag = torch.where(positive, 1.0 / torch.where(positive, diag, torch.ones_like(diag)), torch.zeros_like(diag))
    return Stencil(
        diag=op_diag.contiguous(),
        right=edges[0],
        down=edges[1],
        inv_diag=inv_diag.contiguous(),
        unit_edges=unit_edges or right is None,
        deep=edges[2] if ndim == 3 else None,
    )


def stencil_matvec(stencil: Stencil, image_index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y = A x for [S, *grid] vectors, A of each system taken from its image (plain torch;
    tests and diagnostics: the solvers apply the same product in their framed layout)."""
    frame = Frame(*x.shape[1:])
    framed = lambda t: frame.frame(t.index_select(0, image_index))  # noqa: E731
    product = StencilProduct(framed(stencil.diag), [framed(e) for e in stencil.edges], frame.offsets)
    xf = frame.frame(x)
    return frame.unframe(product(xf, torch.empty_like(xf)))


def coefficient_gradients(adjoint: torch.Tensor, x: torch.Tensor, Z: torch.Tensor, systems: LabelSystems, edges: bool):
    """Gradients of the loss with respect to the raw coefficients (d, right, down[, deep]).

    With A lambda = dLoss/dz (lambda = 0 on seeds), differentiating A z = b gives

        dLoss/dd_i    = -sum_l lambda_l[i] z_l[i]
        dLoss/dW_ij   =  sum_l lambda_l[i] Z_l[j] + lambda_l[j] Z_l[i]

    where Z carries the seed values (1 for the label's seeds, 0 for others), so that the
    edges into seeds, which enter through b, are covered by the same formula. (With
    d = sum_j W_ij as in the Grady model, the chain through d adds -lambda_i Z_i -
    lambda_j Z_j and gives the Laplacian form -(lambda_i - lambda_j)(Z_i - Z_j).)
    Returns ``(grad_diag, grad_edges)``: per-image [N, *grid] tensors, ``grad_edges`` one
    per axis (right, down[, deep]), None unless ``edges``.
    """
    from .coefficients import pad_last, shifted_pair

    grad_diag = systems.per_image_sum(-(adjoint * x))
    if not edges:
        return grad_diag, None
    grads = []
    for axis in range(systems.ndim):
        lam_i, lam_j = shifted_pair(adjoint, axis)
        z_i, z_j = shifted_pair(Z, axis)
        grads.append(systems.per_image_sum(pad_last(lam_i * z_j + lam_j * z_i, axis)))
    return grad_diag, tuple(grads)
