"""ACDC cardiac MRI slices (HDF5) with scribbles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .common import UNLABELLED, DataFolderError, Sample, ScribbleDataset, _check_label_range, _only, _require_dir


class ACDCDataset(ScribbleDataset):
    """ACDC cardiac MRI slices as HDF5 files ``root/<name>.h5`` with datasets

    ``image`` float (H, W) in [0, 1], ``label`` uint8 dense truth 0..3 and ``scribble``
    0..3 = class, 4 = unlabelled. Classes: background, right ventricle, myocardium,
    left ventricle. ``patients`` restricts to names starting with those prefixes
    (e.g. ``["patient001", "patient002"]``).
    """

    num_labels = 4
    in_channels = 1
    class_names = ("background", "right ventricle", "myocardium", "left ventricle")
    has_masks = True
    UNLABELLED_VALUE = 4

    def __init__(self, root, names=None, patients=None, cache: bool = True):
        self.root = Path(root)
        _require_dir(self.root, "ACDC root")
        found = sorted(p.stem for p in self.root.glob("*.h5"))
        if not found:
            raise DataFolderError(f"ACDC: expected HDF5 slices <name>.h5 in {self.root}, found none")
        found = _only(found, names, "ACDC: no slices", self.root)
        if patients is not None:
            found = [n for n in found if any(n.startswith(p) for p in patients)]
        super().__init__(found, cache)

    def describe(self) -> str:
        return f"ACDC at {self.root}: <name>.h5"

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
                    raise DataFolderError(f"ACDC slice {path} has no dataset {key!r} (found {sorted(f.keys())})")
            image = np.asarray(f["image"], dtype=np.float32)
            label = np.asarray(f["label"]).astype(np.int64)
            scribble = np.asarray(f["scribble"]).astype(np.int64)
        if image.ndim != 2 or label.shape != image.shape or scribble.shape != image.shape:
            raise DataFolderError(
                f"ACDC slice {path}: expected 2-d image, label and scribble of one size, got "
                f"{image.shape}, {label.shape}, {scribble.shape}"
            )
        scribble = np.where(scribble == self.UNLABELLED_VALUE, UNLABELLED, scribble)
        _check_label_range(scribble, 4, "scribble", path)
        _check_label_range(label, 4, "label", path)
        image = np.clip(image, 0.0, 1.0)[None]
        return Sample(
            name, torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(scribble), torch.from_numpy(label)
        )
