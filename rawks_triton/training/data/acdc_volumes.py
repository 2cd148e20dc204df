"""ACDC cardiac MRI volumes (HDF5) with scribbles: one sample is a whole short-axis stack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .common import UNLABELLED, DataFolderError, Sample, ScribbleDataset, _check_label_range, _only, _require_dir


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
        _require_dir(self.root, "ACDC volumes root")
        if isinstance(downsample, bool) or not isinstance(downsample, int) or downsample < 1:
            raise ValueError(f"`downsample` must be an int >= 1, got {downsample!r}")
        self.downsample = downsample
        found = sorted(p.stem for p in self.root.glob("*.h5"))
        if not found:
            raise DataFolderError(f"ACDC volumes: expected HDF5 volumes <name>.h5 in {self.root}, found none")
        found = _only(found, names, "ACDC volumes: no volumes", self.root)
        if patients is not None:
            found = [n for n in found if any(n.startswith(p) for p in patients)]
        super().__init__(found, cache)

    def describe(self) -> str:
        return f"ACDC volumes at {self.root}: <name>.h5"

    def load(self, index: int) -> Sample:
        try:
            import h5py
        except ImportError as err:  # pragma: no cover - h5py is in the [train] extra
            raise ImportError("reading ACDC needs h5py: pip install 'rawks-triton[train]'") from err
        name = self.names[index]
        path = self.root / f"{name}.h5"
        with h5py.File(path, "r") as f:
            for key in ("image", "label", "scribble"):
                if key not in f:
                    raise DataFolderError(f"ACDC volume {path} has no dataset {key!r} (found {sorted(f.keys())})")
            image = np.asarray(f["image"], dtype=np.float32)
            label = np.asarray(f["label"]).astype(np.int64)
            scribble = np.asarray(f["scribble"]).astype(np.int64)
        if image.ndim != 3 or label.shape != image.shape or scribble.shape != image.shape:
            raise DataFolderError(
                f"ACDC volume {path}: expected 3-d (D, H, W) image, label and scribble of one size, got "
                f"{image.shape}, {label.shape}, {scribble.shape}"
                + (" (a 2-d slice: use --data acdc)" if image.ndim == 2 else "")
            )
        scribble = np.where(scribble == self.UNLABELLED_VALUE, UNLABELLED, scribble)
        _check_label_range(scribble, 4, "scribble", path)
        _check_label_range(label, 4, "label", path)
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
