"""Boundary scores + scribbles -> label probabilities P at the image resolution, for training.

Wraps :func:`rawks_triton.propagate` with what training needs: an optional lower
propagation resolution (the paper propagated at a quarter of the image resolution) and
the interpolation of P back to the image size. The backend is the library's own choice
(``backend="auto"``: multigrid-preconditioned CG, torch on the CPU and the Triton kernels
on CUDA) unless the settings name one; this module keeps no rule of its own. The scores'
dtype is the solver's: a float32 network propagates in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..coefficients import grady_node_coefficients
from ..propagation import PropagationResult, propagate
from ..random_walker_weights import image_edge_weights


@dataclass(frozen=True)
class PropagationSettings:
    model: str = "rawks"
    backend: str = "auto"
    rtol: float = 1e-3
    min_weight: float | None = None
    scale: float = 1.0
    volume: str = "3d"  # on volumes: "3d" (one walk through the volume) or "slices" (each slice in 2D)
    # "grady" on images: start from scikit-image's random walker at this beta. The conductances
    # are the walker's times exp(-(B_i + B_j) / 2), so B = 0 is the tuned walker itself.
    walker_beta: float | None = None


VOLUME_PROPAGATIONS = ("3d", "slices")


def downsample_scribbles(scribbles: torch.Tensor, size: tuple[int, int], num_labels: int) -> torch.Tensor:
    """[N, H, W] scribbles -> [N, h, w]: each coarse pixel takes the label most of its scribbled pixels carry.

    Thin strokes survive (a coarse pixel is labelled as soon as one fine pixel is).
    """
    labelled = scribbles >= 0
    one_hot = F.one_hot(scribbles.clamp(min=0), num_labels).permute(0, 3, 1, 2).float() * labelled[:, None].float()
    counts = F.adaptive_avg_pool2d(one_hot, size)
    best = counts.argmax(dim=1)
    return torch.where(counts.sum(dim=1) > 0, best, torch.full_like(best, -1))


def walker_conductances(image: torch.Tensor, beta: float, size: tuple[int, int]) -> torch.Tensor:
    """[N, 2, h, w] scikit-image's random-walker conductances (right, down) of each image of
    [N, C, H, W] ``image``, computed at the propagation size ``size`` (the image averaged
    down to it); a constant of training (no gradient)."""
    with torch.no_grad():
        if tuple(image.shape[-2:]) != tuple(size):
            image = F.adaptive_avg_pool2d(image, size)
        channels = image.shape[1]
        per_image = [
            image_edge_weights(x.permute(1, 2, 0) if channels > 1 else x[0], beta, multichannel=channels > 1)
            for x in image
        ]
        return torch.cat(per_image)


def _with_walker(scores: torch.Tensor, image: torch.Tensor | None, settings: PropagationSettings) -> torch.Tensor:
    """The Grady edge weights [N, 2, h, w]: the walker's conductances times exp(-(B_i + B_j) / 2)."""
    if image is None:
        raise ValueError("`image` is needed with settings.walker_beta: the walker's conductances are computed from it")
    if settings.model != "grady":
        raise ValueError(f"walker_beta needs model 'grady' (its conductances are edges), got {settings.model!r}")
    # The walker's conductances span about ten orders of magnitude (exp(-beta' dI^2) + 1e-10),
    # beyond what a float32 solve resolves (docs/numerics.md, "Grady contrast"): these
    # systems are solved in float64, and P is returned in the scores' dtype.
    scores = scores.double()
    # Shifting the scores by their detached minimum leaves P unchanged (a common factor of the
    # conductances) and keeps the factor <= 1 where B is smallest.
    shifted = scores[:, 0] - scores.detach().flatten(1).amin(dim=1).view(-1, 1, 1)
    _, right, down = grady_node_coefficients(shifted, 2)
    walker = walker_conductances(image.double(), settings.walker_beta, tuple(scores.shape[-2:]))
    return walker * torch.stack([right, down], dim=1)


def propagate_scribbles(
    boundary: torch.Tensor,
    scribbles: torch.Tensor,
    num_labels: int,
    settings: PropagationSettings,
    image: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, PropagationResult]:
    """P [N, L, H, W] and reachable [N, H, W] at the input size, and the raw result.

    ``boundary`` [N, 1, H, W] >= 0 (differentiable), ``scribbles`` [N, H, W] (-1 unlabelled);
    ``image`` [N, C, H, W], needed when ``settings.walker_beta`` is set (images only).
    Volumes: ``boundary`` [N, 1, D, H, W], ``scribbles`` [N, D, H, W] give P [N, L, D, H, W]
    and reachable [N, D, H, W]; ``settings.scale`` then reduces every slice in-plane (the
    depth is kept), and ``settings.volume="slices"`` propagates each slice on its own.
    """
    if scribbles.dim() == 4:
        if settings.walker_beta is not None:
            raise ValueError("walker_beta is for images; volumes propagate the boundary scores alone")
        return _propagate_volume(boundary, scribbles, num_labels, settings)
    height, width = boundary.shape[-2:]
    scores = boundary
    seeds = scribbles
    if settings.scale != 1.0:
        size = (max(1, round(height * settings.scale)), max(1, round(width * settings.scale)))
        scores = F.adaptive_avg_pool2d(scores, size)
        seeds = downsample_scribbles(scribbles, size, num_labels)
    if settings.walker_beta is not None:
        scores = _with_walker(scores, image, settings)
    result = _solve(scores, seeds, num_labels, settings)
    P, reachable = result.P, result.reachable
    if settings.scale != 1.0:
        P = F.interpolate(P, size=(height, width), mode="bilinear", align_corners=False)
        reachable = F.interpolate(reachable[:, None].float(), size=(height, width), mode="nearest")[:, 0] > 0.5
    return P.to(boundary.dtype), reachable, result


def _solve(scores: torch.Tensor, seeds: torch.Tensor, num_labels: int, settings: PropagationSettings):
    """:func:`rawks_triton.propagate` with the settings' model, backend and accuracy."""
    return propagate(
        scores,
        seeds,
        num_labels,
        settings.model,
        backend=settings.backend,
        rtol=settings.rtol,
        min_weight=settings.min_weight,
    )


def _propagate_volume(
    boundary: torch.Tensor, scribbles: torch.Tensor, num_labels: int, settings: PropagationSettings
) -> tuple[torch.Tensor, torch.Tensor, PropagationResult]:
    """:func:`propagate_scribbles` on volumes: [N, 1, D, H, W] scores, [N, D, H, W] scribbles."""
    if settings.volume not in VOLUME_PROPAGATIONS:
        raise ValueError(f"`volume` must be one of {list(VOLUME_PROPAGATIONS)}, got {settings.volume!r}")
    n, depth, height, width = scribbles.shape
    scores = boundary.reshape(n, depth, height, width)  # the depth as channels: in-plane pooling per slice
    seeds = scribbles
    if settings.scale != 1.0:
        size = (max(1, round(height * settings.scale)), max(1, round(width * settings.scale)))
        scores = F.adaptive_avg_pool2d(scores, size)
        seeds = downsample_scribbles(scribbles.reshape(n * depth, height, width), size, num_labels)
        seeds = seeds.reshape(n, depth, *size)
    h, w = scores.shape[-2:]
    if settings.volume == "slices":
        scores, seeds = scores.reshape(n * depth, 1, h, w), seeds.reshape(n * depth, h, w)
    result = _solve(scores, seeds, num_labels, settings)
    # [N, L, D, h, w] either way (slices: [N * D, L, h, w] regrouped).
    P = result.P.reshape(n, depth, num_labels, h, w).transpose(1, 2) if settings.volume == "slices" else result.P
    reachable = result.reachable.reshape(n, depth, h, w)
    if settings.scale != 1.0:
        P = F.interpolate(P.reshape(n, num_labels * depth, h, w), size=(height, width), mode="bilinear")
        P = P.reshape(n, num_labels, depth, height, width)
        reachable = F.interpolate(reachable.float(), size=(height, width), mode="nearest") > 0.5
    return P.to(boundary.dtype), reachable, result
