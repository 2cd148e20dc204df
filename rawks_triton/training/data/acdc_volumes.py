"""ACDC cardiac MRI volumes (HDF5) with scribbles: one sample is a whole short-axis stack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .acdc import find_files, read_file, read_shape
from .common import Sample, ScribbleDataset


class ACDCVolumeDataset(ScribbleDataset):
    """ACDC cardiac MRI volumes as HDF5 files ``root/<name>.h5`` with datasets

    ``image`` float (D, H, W) in [0, 1], ``label`` uint8 dense truth 0..3 and ``scribble``
    0..3 = class, 4 = unlabelled. Classes: background, right ventricle, myocardium,
    left ventricle. Samples are volumes: image [1, D, H, W], scribbles and mask [D, H, W].

    ``downsample`` k > 1 reduces every slice by k in-plane (the slices are far thicker
    than the pixels, so depth is kept): the image is averaged over k x k blocks, a block
    of scribbles takes the label most of its scribbled pixels carry (thin strokes
    survive), and the truth takes the block's centre pixel.
    """

    num_labels = 4
    in_channels = 1
    class_names = ("background", "right ventricle", "myocardium", "left ventricle")
    has_masks = True
    volumetric = True
    UNLABELLED_VALUE = 4

    def __init__(self, root, names=None, patients=None, downsample: int = 1, cache: bool = True):
        self.root = Path(root)
        if isinstance(downsample, bool) or not isinstance(downsample, int) or downsample < 1:
            raise ValueError(f"`downsample` must be an int >= 1, got {downsample!r}")
        self.downsample = downsample
        found = find_files(self.root, names, patients, "ACDC volumes", "volumes")
        super().__init__(found, cache)

    def describe(self) -> str:
        return f"ACDC volumes at {self.root}: <name>.h5"

    def image_size(self, index: int) -> tuple[int, ...]:
        shape = read_shape(self.root / f"{self.names[index]}.h5")
        if len(shape) != 3:
            return super().image_size(index)  # load() says what is wrong with the file
        (depth, height, width), k = shape, self.downsample
        return (depth, max(1, height // k), max(1, width // k))

    def load(self, index: int) -> Sample:
        name = self.names[index]
        image, scribble, label = read_file(self.root / f"{name}.h5", 3, self.UNLABELLED_VALUE)
        image = torch.from_numpy(np.ascontiguousarray(np.clip(image, 0.0, 1.0)))[None]  # [1, D, H, W]
        scribbles, mask = torch.from_numpy(scribble), torch.from_numpy(label)
        if self.downsample > 1:
            image, scribbles, mask = _downsample(image, scribbles, mask, self.downsample, self.num_labels)
        return Sample(name, image, scribbles, mask)


def _downsample(image, scribbles, mask, k: int, num_labels: int):
    """In-plane reduction by k of image [1, D, H, W], scribbles and mask [D, H, W]."""
    from ..propagate import downsample_scribbles

    depth, height, width = scribbles.shape
    size = (max(1, height // k), max(1, width // k))
    image = F.adaptive_avg_pool2d(image, size)  # the depth is pooled as channels: slice by slice
    scribbles = downsample_scribbles(scribbles, size, num_labels)
    rows = (torch.arange(size[0]) * height // size[0] + height // size[0] // 2).clamp(max=height - 1)
    cols = (torch.arange(size[1]) * width // size[1] + width // size[1] // 2).clamp(max=width - 1)
    mask = mask[:, rows][:, :, cols]
    return image.contiguous(), scribbles.contiguous(), mask.contiguous()
