"""scikit-image's random-walker conductances in this library's edge layout, and the
components of the unknown pixels that a seed can reach (:func:`rawks_triton.random_walker`)."""

from __future__ import annotations

import math

import numpy as np
import torch

EDGE_EPSILON = 1e-10  # added to every weight, as scikit-image does: no edge is ever cut by the image


def image_edge_weights(
    image: torch.Tensor, beta: float, spacing=(1.0, 1.0), multichannel: bool = False
) -> torch.Tensor:
    """scikit-image's random-walker conductances as this library's edge layout.

    Args:
        image: floating-point data (already scaled like ``img_as_float``), spatial axes
            first and an optional trailing channel axis: [H, W] or [H, W, C] for an image,
            [D, H, W] or [D, H, W, C] for a volume.
        beta: the diffusion penalty; divided by 10 std(image), and by sqrt(C) when ``multichannel``.
        spacing: one pixel spacing per spatial axis, in the axis order of ``image``
            ((row, column), or (slice, row, column)); its length says whether ``image`` is
            an image (2) or a volume (3). The intensity difference along each axis is
            divided by that axis's spacing before it is squared, as scikit-image does.
    Returns:
        [1, 2, H, W] (right, down) weights for an image, [1, 3, D, H, W] (along W, along H,
        along D) for a volume; the weight at index i is the edge i -> i + 1 along its axis,
        0 past the last index.
    """
    ndim = len(spacing)
    if ndim not in (2, 3):
        raise ValueError(f"`spacing` must have 2 (image) or 3 (volume) entries, got {tuple(spacing)}")
    if image.dim() == ndim:
        image = image.unsqueeze(-1)
    if image.dim() != ndim + 1:
        raise ValueError(
            f"`image` must have {ndim} spatial axes and an optional channel axis for spacing {tuple(spacing)}, "
            f"got shape {tuple(image.shape)}"
        )
    grid, channels = tuple(image.shape[:-1]), image.shape[-1]
    std = float(image.std(correction=0)) if image.numel() else 0.0
    # A constant image has no intensity differences: every weight is exp(0) + eps.
    scale = -float(beta) / (10.0 * std) if std > 0 else 0.0
    if multichannel:
        scale /= math.sqrt(channels)
    edges = image.new_zeros((1, ndim) + grid)
    for channel, axis in enumerate(reversed(range(ndim))):  # channel 0 runs along the last axis (W)
        step = torch.diff(image, dim=axis) / float(spacing[axis])
        inside = [slice(None)] * ndim
        inside[axis] = slice(0, grid[axis] - 1)
        edges[(0, channel, *inside)] = torch.exp(scale * step.square().sum(dim=-1)) + EDGE_EPSILON
    return edges


def _seeded_components(active: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """[*grid] bool: active pixels connected (4-neighbours, 6 in a volume), through active pixels, to a seed.

    Computed with scipy.ndimage on the host (a one-byte-per-pixel map each way); only
    called when some pixels are inactive, since the full grid is connected otherwise.
    """
    from scipy import ndimage

    components, _ = ndimage.label(active.cpu().numpy())
    seeded = np.unique(components[positive.cpu().numpy()])
    seeded = seeded[seeded > 0]
    return torch.from_numpy(np.isin(components, seeded)).to(active.device)
