"""The embedded default dataset: generated scenes with textures, edges, dense truth and scribbles.

Each scene has a background (class 0) and 2 to 5 objects of classes 1..L-1. With the
default ``cue="texture"`` any shape can carry any class and the class picks the texture
(stripes, checkerboard or dots) and the colour. With ``cue="shape"`` the class of an
object is its shape (1: ellipse, 2: rotated box, 3: triangle), and its texture and colour
are drawn independently of the class, so that a pixel's class is a matter of context, not
of its local look (a harder set). Towards its silhouette an object blends into a halo or
a shadow of the background. The background has a smooth colour gradient and faint soft
blobs that make edges which are not class boundaries. Objects may overlap.

Scribbles are simulated as an annotator would draw them: for every visible part of every
object, one short stroke (a wandering polyline 1 to 3 pixels wide) in its middle, and
three strokes on every background component. Everything is drawn from a numpy
generator seeded by (seed, index), so a dataset is the same on every machine and run.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .data import UNLABELLED, DataFolderError, Sample, ScribbleDataset, rasterise_strokes

RIM_FACTORS = (0.55, 1.5)  # the rim is the background behind the object, darkened or brightened
RIM_WIDTH = (6.0, 10.0)  # pixels
STROKE_MARGIN = 8  # object strokes keep this far from the silhouette when the object is large enough
CLASS_COLOURS = np.array(
    [
        [0.55, 0.55, 0.50],
        [0.85, 0.35, 0.25],
        [0.25, 0.45, 0.85],
        [0.35, 0.75, 0.30],
        [0.80, 0.75, 0.25],
        [0.60, 0.30, 0.70],
    ]
)


def _texture(kind: int, yy, xx, rng) -> np.ndarray:
    """A zero-mean pattern in [-1, 1] for object class ``kind`` (1-based)."""
    family, level = (kind - 1) % 3, (kind - 1) // 3
    period = (5.0 + 3.0 * level) * rng.uniform(0.85, 1.15)
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    if family == 0:  # stripes
        return np.sign(np.sin(2 * np.pi * u / period))
    if family == 1:  # checkerboard
        return np.sign(np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period))
    # dots
    du = np.mod(u, period) - period / 2
    dv = np.mod(v, period) - period / 2
    return np.where(du**2 + dv**2 < (0.3 * period) ** 2, 1.0, -0.4)


SHAPES = ("ellipse", "box", "triangle")
CUES = ("shape", "texture")


def _shape_mask(rng, yy, xx, height, width, kind: int | None = None) -> np.ndarray:
    """A random ellipse (kind 0), box (1) or triangle (2); a random kind when None."""
    cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
    size = rng.uniform(0.12, 0.28) * min(height, width)
    angle = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    aspect = rng.uniform(0.6, 1.6)
    kind = rng.integers(0, 3) if kind is None else kind
    if kind == 0:  # ellipse
        return (u / (size * aspect)) ** 2 + (v / (size / aspect)) ** 2 <= 1.0
    if kind == 1:  # box
        return (np.abs(u) <= size * aspect) & (np.abs(v) <= size / aspect)
    # triangle: three half-planes
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):
        t = angle + 2 * np.pi * k / 3
        inside &= (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t) <= 0.6 * size * aspect
    return inside


def _stroke(rng, region: np.ndarray, length: float):
    """A wandering polyline inside ``region`` (bool [H, W]) from a random interior point."""
    ys, xs = np.nonzero(region)
    start = rng.integers(len(ys))
    points = [(float(xs[start]), float(ys[start]))]
    heading = rng.uniform(0, 2 * np.pi)
    step = max(2.0, length / 6)
    for _ in range(6):
        heading += rng.normal(0, 0.5)
        x = points[-1][0] + step * np.cos(heading)
        y = points[-1][1] + step * np.sin(heading)
        xi, yi = int(round(x)), int(round(y))
        if not (0 <= yi < region.shape[0] and 0 <= xi < region.shape[1] and region[yi, xi]):
            heading += np.pi  # turn back instead of leaving the region
            continue
        points.append((x, y))
    return points


def synthetic_scene(
    seed: int, index: int, height: int = 96, width: int = 128, num_labels: int = 3, cue: str = "texture"
):
    """One scene: image [3, H, W] float32, dense truth [H, W] and scribbles [H, W] (int64 numpy).

    ``cue="shape"``: object class k is a shape (1 ellipse, 2 box, 3 triangle; at most 4
    labels) with a texture and colour drawn independently of the class. ``cue="texture"``:
    any shape, the class picks the texture family and the colour.
    """
    rng = np.random.default_rng([seed, index])
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    # Background: a smooth colour gradient, faint texture-free blobs (edges that are not boundaries).
    base = CLASS_COLOURS[0] + rng.uniform(-0.12, 0.12, 3)
    slope = rng.uniform(-0.25, 0.25, (3, 2))
    image = (
        base[:, None, None]
        + slope[:, 0, None, None] * (yy / height - 0.5)
        + slope[:, 1, None, None] * (xx / width - 0.5)
    )
    for _ in range(rng.integers(1, 4)):
        blob = _shape_mask(rng, yy, xx, height, width)
        blob = ndimage.gaussian_filter(blob.astype(np.float64), 1.0)
        image = image + rng.uniform(-0.12, 0.12) * blob[None]
    truth = np.zeros((height, width), dtype=np.int64)
    instance = np.zeros((height, width), dtype=np.int64)  # 0: background, k + 1: object k
    n_objects = rng.integers(2, 6)
    labels = [0]
    for k in range(n_objects):
        label = 1 + (k if k < num_labels - 1 else int(rng.integers(0, num_labels - 1)))
        labels.append(label)
        if cue == "shape":
            shape = _shape_mask(rng, yy, xx, height, width, kind=label - 1)
            look = int(rng.integers(1, len(CLASS_COLOURS)))
        else:
            shape = _shape_mask(rng, yy, xx, height, width)
            look = int(label)
        colour = CLASS_COLOURS[1 + (look - 1) % (len(CLASS_COLOURS) - 1)] + rng.uniform(-0.08, 0.08, 3)
        pattern = _texture(look, yy, xx, rng)
        appearance = colour[:, None, None] + rng.uniform(0.08, 0.14) * pattern[None]
        # A rim: towards its silhouette the object blends smoothly into a brightened or
        # darkened copy of the background behind it (a halo or a shadow), over a band that
        # scribbles, drawn in the middle of objects, do not reach.
        rim = np.clip(image * rng.choice(RIM_FACTORS), 0.0, 1.0)
        depth = np.clip(ndimage.distance_transform_edt(shape) / rng.uniform(*RIM_WIDTH), 0.0, 1.0)
        appearance = depth[None] * appearance + (1.0 - depth[None]) * rim
        image = np.where(shape[None], appearance, image)
        truth[shape] = label
        instance[shape] = k + 1
    image = image + rng.normal(0, 0.03, image.shape)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)

    # One stroke per visible part of every object (an annotator scribbles each instance),
    # two per background component.
    strokes = []
    for k in range(n_objects + 1):
        components, count = ndimage.label(instance == k)
        label = labels[k]
        for c in range(1, count + 1):
            part = components == c
            if part.sum() < 12:
                continue
            # Objects are scribbled in their middle, the background anywhere 3 pixels from an
            # edge; a small part gets its stroke through its deepest pixels.
            inner = ndimage.binary_erosion(part, iterations=3 if k == 0 else STROKE_MARGIN)
            if inner.sum() < 10:
                depth = ndimage.distance_transform_edt(part)
                inner = depth >= 0.6 * depth.max()
            length = 0.5 * np.sqrt(inner.sum())
            for _ in range(3 if k == 0 else 1):
                strokes.append((label, _stroke(rng, inner, length), part))
    # Each stroke is clipped to the part it was drawn in: the simulated annotator does not
    # stray over edges, even where a wide stroke or a chord of a curved region would.
    stroke_width = int(rng.integers(1, 4))
    scribbles = np.full((height, width), UNLABELLED, dtype=np.int64)
    for label, points, part in strokes:
        drawn = (rasterise_strokes([(label, points)], height, width, stroke_width) >= 0) & part
        scribbles[drawn] = label
    return image, truth, scribbles


class SyntheticDataset(ScribbleDataset):
    """``count`` generated scenes (see the module docstring); ``seed`` picks the set."""

    in_channels = 3
    has_masks = True

    def __init__(
        self,
        count: int = 64,
        height: int = 96,
        width: int = 128,
        num_labels: int = 3,
        seed: int = 0,
        cue: str = "texture",
        cache: bool = True,
    ):
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"`count` must be an int >= 1, got {count!r}")
        if cue not in CUES:
            raise ValueError(f"`cue` must be one of {list(CUES)}, got {cue!r}")
        top = 1 + len(SHAPES) if cue == "shape" else 7
        if not isinstance(num_labels, int) or not 2 <= num_labels <= top:
            raise ValueError(f"`num_labels` must be an int in [2, {top}] for cue={cue!r}, got {num_labels!r}")
        self.cue = cue
        if height < 24 or width < 24:
            raise ValueError(f"`height` and `width` must be >= 24, got {height}x{width}")
        self.height, self.width, self.seed = height, width, seed
        self.num_labels = num_labels
        if cue == "shape":
            self.class_names = ("background",) + SHAPES[: num_labels - 1]
        else:
            self.class_names = ("background",) + tuple(f"texture {k}" for k in range(1, num_labels))
        super().__init__([f"synthetic-{seed}-{i:05d}" for i in range(count)], cache)

    def describe(self) -> str:
        return f"synthetic set (seed {self.seed})"

    def image_size(self, index: int) -> tuple[int, int]:
        return (self.height, self.width)

    def load(self, index: int) -> Sample:
        name = self.names[index]
        try:
            number = int(name.rsplit("-", 1)[1])
        except (IndexError, ValueError) as err:  # pragma: no cover - names are made above
            raise DataFolderError(f"bad synthetic sample name {name!r}") from err
        image, truth, scribbles = synthetic_scene(self.seed, number, self.height, self.width, self.num_labels, self.cue)
        return Sample(name, torch.from_numpy(image), torch.from_numpy(scribbles), torch.from_numpy(truth))


def scribble_coverage(dataset: ScribbleDataset) -> float:
    """Fraction of pixels that carry a scribble, over the whole dataset."""
    labelled = total = 0
    for i in range(len(dataset)):
        s = dataset[i].scribbles
        labelled += int((s != UNLABELLED).sum())
        total += s.numel()
    return labelled / max(total, 1)
