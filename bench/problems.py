"""Shared benchmark problems: synthetic scenes with scribbles, for both models.

A scene is a Voronoi partition of the image into ``num_labels`` regions, each with its
own grey level plus Gaussian noise, and one short horizontal scribble per region through
its site. The same scene gives

* ``image`` and ``markers`` for scikit-image's ``random_walker`` convention (labels 1..L,
  0 unknown) and for :func:`rawks_triton.random_walker`;
* ``seeds`` (labels 0..L-1, -1 unknown) and non-negative ``boundary`` scores (high on the
  region borders) for :func:`rawks_triton.propagate` with ``model="rawks"``;
* ``grady_edges``: the (right, down) conductances that scikit-image computes from
  ``image`` (``beta`` scaled by the standard deviation), for ``model="grady"``.

Everything is drawn from a ``numpy.random.Generator`` seeded by the arguments, so every
method in a run, and every run, solves the same problems.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

SIZES = (64, 128, 256, 512, 1024)
ASPECTS = ("square", "4:3")
# Label cases: name -> (size of the label space, labels present in each image). "21c" is the
# PASCAL VOC situation: 21 classes, a few in each image; label compaction solves only those.
LABEL_CASES = {"2": (2, 2), "3": (3, 3), "21": (21, 21), "21c": (21, 3)}
BATCHES = (1, 8)
NOISE = 0.05  # standard deviation of the image noise (grey levels span [0.1, 0.9])
BORDER_SCORE = 4.0  # RAWKS boundary score on region borders (0 inside, plus |noise|)


def shape_of(size: int, aspect: str) -> tuple[int, int]:
    """(H, W): ``size`` x ``size``, or 4:3 landscape with W = ``size`` (128 -> 96 x 128)."""
    if aspect == "square":
        return size, size
    if aspect == "4:3":
        return max(1, (3 * size) // 4), size
    raise ValueError(f"`aspect` must be one of {list(ASPECTS)}, got {aspect!r}")


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # [H, W] float64 grey levels
    regions: np.ndarray  # [H, W] int64, 0..L-1, the true partition
    markers: np.ndarray  # [H, W] int64, scikit-image convention: 1..L scribbles, 0 unknown
    boundary: np.ndarray  # [H, W] float64 >= 0, RAWKS boundary scores
    num_labels: int

    @property
    def seeds(self) -> np.ndarray:
        """[H, W] int64, this library's convention: 0..L-1 scribbles, -1 unknown."""
        return self.markers - 1

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape)


def _generator(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def region_borders(regions: np.ndarray) -> np.ndarray:
    """[H, W] bool: the pixels with a 4-neighbour in another region (both sides of every border)."""
    border = np.zeros(regions.shape, dtype=bool)
    step = regions[:, 1:] != regions[:, :-1]
    border[:, 1:] |= step
    border[:, :-1] |= step
    step = regions[1:, :] != regions[:-1, :]
    border[1:, :] |= step
    border[:-1, :] |= step
    return border


def make_scene(height: int, width: int, num_labels: int, seed: int = 0) -> Scene:
    """One synthetic scene; the same arguments always give the same scene."""
    if height < 1 or width < 1 or num_labels < 1:
        raise ValueError(f"need height, width, num_labels >= 1, got {height}, {width}, {num_labels}")
    if num_labels > height * width:
        raise ValueError(f"`num_labels` ({num_labels}) exceeds the pixel count {height} x {width}")
    rng = _generator("scene", height, width, num_labels, seed)
    # Distinct sites, then the nearest-site partition.
    flat = rng.choice(height * width, size=num_labels, replace=False)
    site_y, site_x = np.divmod(flat, width)
    yy, xx = np.mgrid[0:height, 0:width]
    best = np.full((height, width), np.inf)
    regions = np.zeros((height, width), dtype=np.int64)
    for label in range(num_labels):
        d = (yy - site_y[label]) ** 2 + (xx - site_x[label]) ** 2
        closer = d < best
        best[closer] = d[closer]
        regions[closer] = label
    levels = 0.1 + 0.8 * rng.permutation(num_labels) / max(1, num_labels - 1)
    image = levels[regions] + NOISE * rng.standard_normal((height, width))

    # One scribble per region: a horizontal stroke through the site, kept inside the region.
    markers = np.zeros((height, width), dtype=np.int64)
    half = max(1, width // 16)
    for label in range(num_labels):
        y, x = site_y[label], site_x[label]
        x0, x1 = max(0, x - half), min(width, x + half + 1)
        row = regions[y, x0:x1] == label
        markers[y, x0:x1][row] = label + 1

    boundary = BORDER_SCORE * region_borders(regions) + np.abs(0.04 * rng.standard_normal((height, width)))
    return Scene(image=image, regions=regions, markers=markers, boundary=boundary, num_labels=num_labels)


@dataclass(frozen=True)
class Batch:
    """``batch`` scenes of one shape, as tensors ready for :func:`rawks_triton.propagate`.

    With ``present`` < ``num_labels`` each scene has ``present`` regions whose labels are
    drawn (per scene) from the ``num_labels`` of the label space.
    """

    scenes: tuple[Scene, ...]
    boundary: torch.Tensor  # [N, 1, H, W] RAWKS scores
    grady_edges: torch.Tensor  # [N, 2, H, W] scikit-image conductances from the images
    seeds: torch.Tensor  # [N, H, W] int64
    num_labels: int

    def inputs(self, model: str) -> torch.Tensor:
        return self.boundary if model == "rawks" else self.grady_edges


def make_batch(
    height: int,
    width: int,
    num_labels: int,
    batch: int = 1,
    *,
    present: int | None = None,
    beta: float = 130.0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Batch:
    from rawks_triton.random_walker import image_edge_weights

    present = num_labels if present is None else present
    scenes = tuple(make_scene(height, width, present, seed=i) for i in range(batch))
    boundary = torch.from_numpy(np.stack([s.boundary for s in scenes])[:, None])
    edges = torch.cat([image_edge_weights(torch.from_numpy(s.image), beta) for s in scenes])
    seeds = []
    for i, scene in enumerate(scenes):
        label_of_region = np.arange(present)
        if present < num_labels:
            label_of_region = np.sort(
                _generator("labels", num_labels, present, i).choice(num_labels, present, replace=False)
            )
        seeds.append(np.where(scene.seeds >= 0, label_of_region[np.maximum(scene.seeds, 0)], -1))
    seeds = torch.from_numpy(np.stack(seeds))
    return Batch(
        scenes=scenes,
        boundary=boundary.to(device=device, dtype=dtype),
        grady_edges=edges.to(device=device, dtype=dtype),
        seeds=seeds.to(device),
        num_labels=num_labels,
    )
