"""The one vector layout of every solver, and how systems map onto their images.

**Frame.** An h x w grid (or a d x h x w volume) is stored with a one-pixel zero border,
flattened: a vector of one system is (h + 2) (w + 2) numbers ((d + 2) (h + 2) (w + 2) for a
volume), and the neighbours of a flat position k are k -+ 1, k -+ (w + 2) and, in a volume,
k -+ (h + 2) (w + 2). The torch and Triton backends and every level of the multigrid
hierarchy use it, for vectors ([S, size]) and per-image coefficients ([N, size]) alike.
The coefficients are 0 on the border, and the right edge weight is 0 in the last column,
so a stencil product needs no masks and rows never mix; the border of a vector stays 0.

**Groups.** Systems are sorted by image then label (:mod:`rawks_triton.systems`);
:class:`ImageGroups` maps [S, ...] per-system tensors onto [N, ...] per-image ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BORDER = 1  # the width of the zero border around every grid


class Frame:
    """The framed layout of an h x w grid, or of a d x h x w volume (see the module docstring).

    ``offsets`` are the flat distances to the next neighbour along each axis, in the order of
    the edge arrays (:attr:`rawks_triton.systems.Stencil.edges`): along x (1), along y
    (``row``) and, for a volume, along z (``plane``).
    """

    def __init__(self, *shape: int):
        if len(shape) not in (2, 3):
            raise ValueError(f"a frame has 2 or 3 dimensions, got shape {shape}")
        self.shape = tuple(int(n) for n in shape)
        self.ndim = len(self.shape)
        self.depth = self.shape[0] if self.ndim == 3 else 1
        self.height, self.width = self.shape[-2:]
        self.row = self.width + 2 * BORDER  # the stride between vertically adjacent pixels
        self.rows = self.height + 2 * BORDER
        self.plane = self.rows * self.row  # the stride between adjacent slices of a volume
        self.framed_shape = tuple(n + 2 * BORDER for n in self.shape)
        self.size = self.plane * (self.depth + 2 * BORDER if self.ndim == 3 else 1)
        self.offsets = (1, self.row) + ((self.plane,) if self.ndim == 3 else ())
        # [lo, hi): the flat range from the first to the last pixel; it holds every pixel,
        # and the border positions inside it have zero coefficients.
        self.lo = sum(self.offsets) * BORDER
        self.hi = self.size - self.lo

    def __repr__(self) -> str:
        return f"Frame{self.shape}"

    def __eq__(self, other) -> bool:
        return isinstance(other, Frame) and self.shape == other.shape

    def __hash__(self) -> int:
        return hash(self.shape)

    def frame(self, t: torch.Tensor) -> torch.Tensor:
        """[B, *shape] -> [B, size], zero border, contiguous (a new tensor)."""
        return F.pad(t, (BORDER,) * (2 * self.ndim)).flatten(-self.ndim)

    def grid(self, v: torch.Tensor) -> torch.Tensor:
        """[..., size] -> its [..., *framed_shape] view."""
        return v.view(tuple(v.shape[:-1]) + self.framed_shape)

    def interior(self, v: torch.Tensor) -> torch.Tensor:
        """[..., size] -> the [..., *shape] view of the grid inside the border."""
        inside = (slice(BORDER, -BORDER),) * self.ndim
        return self.grid(v)[(Ellipsis,) + inside]

    def unframe(self, v: torch.Tensor) -> torch.Tensor:
        """[B, size] -> [B, *shape] (a contiguous copy)."""
        return self.interior(v).contiguous()

    def coarse(self) -> Frame:
        """The frame of the grid of 2 x 2 blocks (an odd last row or column pairs with the border)."""
        return Frame(*self.shape[:-2], (self.height + 1) // 2, (self.width + 1) // 2)


class ImageGroups:
    """How [S, ...] per-system vectors map onto [N, ...] per-image tensors.

    When the systems are sorted by image and every image that has systems has the same
    number k of them (the common case: a batch of images with the same labels present), an
    [S, ...] vector is viewed as [G, k, ...], G the number of those images, and per-image
    tensors broadcast as [G, 1, ...] with no copy when G = N (``images`` is None), or
    after selecting the G images (``images``, [G]). Otherwise per-image tensors are gathered
    per system and vectors viewed as [S, 1, ...].
    """

    def __init__(self, image_index: torch.Tensor, n_images: int):
        self.image_index = image_index
        self.n_images = n_images
        self.per_image: int | None = None  # k, when uniform
        self.images: torch.Tensor | None = None  # the G images with systems, when not all of them
        systems = int(image_index.numel())
        if not systems:
            return
        images, counts = torch.unique_consecutive(image_index, return_counts=True)
        is_sorted = systems == 1 or bool((image_index[1:] >= image_index[:-1]).all())
        if is_sorted and bool((counts == counts[0]).all()):
            self.per_image = int(counts[0])
            if images.numel() != n_images:
                self.images = images

    @property
    def num_systems(self) -> int:
        return int(self.image_index.numel())

    @property
    def covers_every_image(self) -> bool:
        """Uniform over all N images: per-image tensors broadcast with no copy at all."""
        return self.per_image is not None and self.images is None

    def restrict(self, rows: torch.Tensor) -> ImageGroups:
        return ImageGroups(self.image_index.index_select(0, rows), self.n_images)

    def grouped(self, v: torch.Tensor) -> torch.Tensor:
        """[S, ...] -> [G, k, ...] (a view) in the uniform case, else [S, 1, ...]."""
        if self.per_image is not None:
            return v.view((-1, self.per_image) + tuple(v.shape[1:]))
        return v.unsqueeze(1)

    def select(self, t: torch.Tensor) -> torch.Tensor:
        """[N, ...] per-image -> [G, ...] (``t`` itself when G = N) or [S, ...] per system."""
        if self.per_image is None:
            return t.index_select(0, self.image_index)
        return t if self.images is None else t.index_select(0, self.images)

    def spread(self, t: torch.Tensor) -> torch.Tensor:
        """[N, ...] per-image -> broadcastable against :meth:`grouped` vectors."""
        return self.select(t).unsqueeze(1)

    def multiply(self, v: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out = v * t[image of each system], for [S, ...] v and out and [N, ...] t."""
        torch.mul(self.grouped(v), self.spread(t), out=self.grouped(out))
        return out

    def image_max(self, per_system: torch.Tensor) -> torch.Tensor:
        """[S] -> [N], the largest value over the systems of each image (0 for an image without any)."""
        out = per_system.new_zeros(self.n_images)
        return out.scatter_reduce_(0, self.image_index, per_system, reduce="amax", include_self=True)

    def image_sum(self, v: torch.Tensor) -> torch.Tensor:
        """[S, ...] -> [N, ...], the sum over the systems of each image (0 for an image without any)."""
        if self.per_image is not None:
            total = self.grouped(v).sum(dim=1)
            if self.images is None:
                return total
            return total.new_zeros((self.n_images,) + tuple(v.shape[1:])).index_copy_(0, self.images, total)
        out = v.new_zeros((self.n_images,) + tuple(v.shape[1:]))
        return out.index_add_(0, self.image_index, v)

    def first_system(self) -> torch.Tensor:
        """[N + 1] int64: the systems of image n are rows first[n] .. first[n + 1] - 1."""
        counts = torch.bincount(self.image_index, minlength=self.n_images)
        return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
