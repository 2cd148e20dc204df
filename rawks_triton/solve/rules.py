"""The stopping rules: what "converged" means for the forward and the adjoint solve.

The user reads P = Z / S with S = sum_l Z_l, and, after ``backward``, the gradient with
respect to the boundary scores; the rules bound both, pixel by pixel, through the
preconditioned residual zeta = M r, an estimate of the error (docs/numerics.md):

* forward (:class:`ForwardRule`): |zeta_i| <= max(rtol max(S_i, tau), atol) at every pixel;
* adjoint (:class:`AdjointRule`): d_i |zeta_i| |x_i| <= max(rtol G, atol) per system, G the
  image's gradient scale max_i d_i sum_l |lambda_l,i| |x_l,i|.
"""

from __future__ import annotations

import math

import torch

from .options import SolverOptions


def tiny(t: torch.Tensor) -> float:
    return torch.finfo(t.dtype).tiny


class ForwardRule:
    """Converged when |zeta_i| <= max(rtol max(S_i, tau), atol) at every pixel of the system.

    S is the sum over the image's systems of the current iterates (at free pixels, where
    every test is made, that is sum_l Z_l). ``prepare`` computes the per-image thresholds
    from the iterates; ``measure`` is max_i |zeta_i| / threshold_i (<= 1: passes), ``error``
    max_i |zeta_i| / max(S_i, tau), the estimated error of P.
    """

    kind = "forward"

    def __init__(self, options: SolverOptions, groups):
        self.rtol, self.atol, self.tau = options.rtol, options.atol, options.tau
        self.groups = groups  # the full set of systems: ImageGroups of the backend's layout
        self._scale = None  # [N, M] max(S, tau)
        self._inv_threshold = None

    def prepare(self, x_full: torch.Tensor, z_full: torch.Tensor | None = None, full: bool = True) -> None:
        scale = self.groups.image_sum(x_full).clamp_(min=self.tau)  # [N, M]
        threshold = scale * self.rtol
        if self.atol > 0 or self.rtol == 0:
            threshold.clamp_(min=max(self.atol, tiny(scale)))
        self._scale, self._inv_threshold = scale, threshold.reciprocal_()

    def restrict(self, rows: torch.Tensor) -> ForwardRule:
        return self  # per-image weights: the layout gathers them

    def _max_weighted(self, groups, z, inv_img, buffer):
        weighted = groups.multiply(z, inv_img, out=buffer)
        return torch.linalg.vector_norm(weighted.flatten(1), ord=math.inf, dim=1)

    def measure(self, groups, z: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
        return self._max_weighted(groups, z, self._inv_threshold, buffer)

    def error(self, groups, z: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
        return self._max_weighted(groups, z, self._scale.reciprocal(), buffer)


class AdjointRule:
    """Converged when d_i |zeta_i| |x_i| <= max(rtol G, atol) at every pixel of the system.

    x is the forward solution of the system, d the stencil diagonal and G, per image, the
    largest d_i sum_l |lambda_l,i| |x_l,i| of the current adjoint iterates lambda (of zeta
    when every lambda is still 0). ``error`` is max_i d_i |zeta_i| |x_i| / G.
    """

    kind = "adjoint"

    def __init__(self, options: SolverOptions, groups, x_forward: torch.Tensor, diag: torch.Tensor):
        self.rtol, self.atol = options.rtol, options.atol
        self.groups = groups
        self.x_forward = x_forward  # [S, M] the forward solutions in the backend's layout
        self.x_working = x_forward
        self.diag = diag  # [N, M] per image
        self._gradient_scale = None

    def _scale(self, lam: torch.Tensor) -> torch.Tensor:
        """[N] max_i d_i sum_l |lam_l,i| |x_l,i| (products in an order that cannot overflow first)."""
        per_pixel = self.groups.image_sum(torch.mul(lam, self.x_forward).abs_()).mul_(self.diag)
        return torch.linalg.vector_norm(per_pixel.flatten(1), ord=math.inf, dim=1)

    def prepare(self, x_full: torch.Tensor, z_full: torch.Tensor | None = None, full: bool = True) -> None:
        """``full=False``: keep the gradient scale G of the last full preparation (it settles
        within a few iterations; the certification always recomputes it)."""
        if not full and self._gradient_scale is not None:
            return
        scale = self._scale(x_full)
        if z_full is not None and bool((scale == 0).any()):
            scale = torch.where(scale > 0, scale, self._scale(z_full))
        self._gradient_scale = scale
        # An image whose gradient scale is 0 (no incoming gradient reaches its pixels) has
        # nothing left to solve: its measure is 0. The division by the per-image threshold
        # comes last, so that a tiny scale cannot make an infinite weight (0 * inf = NaN).
        self._threshold = torch.clamp(self.rtol * scale, min=max(self.atol, tiny(scale)))
        self._scale_or_tiny = torch.clamp(scale, min=tiny(scale))
        self._nothing = scale == 0

    def restrict(self, rows: torch.Tensor) -> AdjointRule:
        rule = AdjointRule.__new__(AdjointRule)
        rule.__dict__.update(self.__dict__)
        rule.x_working = self.x_forward.index_select(0, rows)
        return rule

    def _max_weighted(self, groups, z, per_image, buffer):
        torch.mul(z, self.x_working, out=buffer).abs_()
        weighted = groups.multiply(buffer, self.diag, out=buffer)
        largest = torch.linalg.vector_norm(weighted.flatten(1), ord=math.inf, dim=1)
        image = groups.image_index
        return torch.where(self._nothing[image], torch.zeros_like(largest), largest / per_image[image])

    def measure(self, groups, z: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
        return self._max_weighted(groups, z, self._threshold, buffer)

    def error(self, groups, z: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
        return self._max_weighted(groups, z, self._scale_or_tiny, buffer)
