"""The torch backend's operator and Jacobi preconditioner on the framed layout.

Every solver vector is stored framed, [S, size] (:mod:`rawks_triton.solve.layout`), so the
stencil product is five elementwise torch ops on contiguous slices (no shifted copies, no
per-iteration allocation), and the border and the seeds (where the coefficients are 0)
need no masks. Coefficients are kept per image, [N, size], and broadcast over the labels
of each image as :class:`rawks_triton.solve.layout.ImageGroups` says; otherwise they are
gathered per system, as they are for the shrinking working set of
:class:`rawks_triton.backends.torch.pcg.TorchPCG`.
"""

from __future__ import annotations

import torch

from ...solve.layout import Frame, ImageGroups
from ...solve.stencil import StencilProduct
from ...systems import Stencil

EDGES = ("right", "down", "deep")  # along x, y, z: the order of Frame.offsets
COEFFICIENTS = ("diag", "right", "down", "deep", "inv_diag")


class FramedOperator:
    """y = d x - sum_j w_ij x_j for the framed vectors of a set of systems."""

    def __init__(self, per_image: dict, image_index: torch.Tensor, frame: Frame):
        self.per_image = per_image  # name -> [N, size] framed coefficients
        self.image_index = image_index  # [S] image of each system
        self.frame = frame
        self.groups = ImageGroups(image_index, next(iter(per_image.values())).shape[0])
        edges = [self.groups.spread(per_image[name]) for name in EDGES[: frame.ndim]]
        self._product = StencilProduct(self.groups.spread(per_image["diag"]), edges, frame.offsets, cache=True)

    @classmethod
    def from_stencil(cls, stencil: Stencil, image_index: torch.Tensor) -> FramedOperator:
        frame = Frame(*stencil.shape[1:])
        names = [name for name in COEFFICIENTS if getattr(stencil, name) is not None]
        return cls({name: frame.frame(getattr(stencil, name)) for name in names}, image_index, frame)

    def restrict(self, rows: torch.Tensor) -> FramedOperator:
        return FramedOperator(self.per_image, self.image_index.index_select(0, rows), self.frame)

    def matvec(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out = A x for [S, size] vectors."""
        self._product(self.groups.grouped(x), self.groups.grouped(out))
        return out

    def release(self) -> None:
        self._product.release()


class JacobiPreconditioner:
    """z = D^-1 r on the free pixels with d > 0, 0 elsewhere (seeds, the border)."""

    def __init__(self, inv_diag: torch.Tensor, image_index: torch.Tensor):
        self.inv_diag = inv_diag  # [N, size]
        self.groups = ImageGroups(image_index, inv_diag.shape[0])
        self._spread = self.groups.spread(inv_diag)

    def apply(self, r: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
        torch.mul(self._spread, self.groups.grouped(r), out=self.groups.grouped(out))
        return out

    def restrict(self, rows: torch.Tensor) -> JacobiPreconditioner:
        return JacobiPreconditioner(self.inv_diag, self.groups.image_index.index_select(0, rows))

    def release(self) -> None:
        """No work buffers."""
