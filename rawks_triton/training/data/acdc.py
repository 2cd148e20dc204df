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
        super().__init__(find_files(self.root, names, patients, "ACDC", "slices"), cache)

    def describe(self) -> str:
        return f"ACDC at {self.root}: <name>.h5"

    def image_size(self, index: int) -> tuple[int, ...]:
        return read_shape(self.root / f"{self.names[index]}.h5")

    def load(self, index: int) -> Sample:
        name = self.names[index]
        image, scribble, label = read_file(self.root / f"{name}.h5", 2, self.UNLABELLED_VALUE)
        image = np.clip(image, 0.0, 1.0)[None]
        return Sample(
            name, torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(scribble), torch.from_numpy(label)
        )


def find_files(root: Path, names, patients, what: str, items: str) -> list[str]:
    """The ``<name>.h5`` files of an ACDC folder, restricted to ``names`` and ``patients``."""
    _require_dir(root, f"{what} root")
    found = sorted(p.stem for p in root.glob("*.h5"))
    if not found:
        raise DataFolderError(f"{what}: expected HDF5 {items} <name>.h5 in {root}, found none")
    found = _only(found, names, f"{what}: no {items}", root)
    if patients is not None:
        found = [n for n in found if any(n.startswith(p) for p in patients)]
    return found


def _h5py():
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - h5py is in the [train] extra
        raise ImportError("reading ACDC needs h5py: pip install 'rawks-triton[train]'") from err
    return h5py


def read_shape(path: Path) -> tuple[int, ...]:
    """The shape of the image of one ACDC file, from its header (nothing else is read)."""
    try:
        with _h5py().File(path, "r") as f:
            return tuple(int(n) for n in f["image"].shape)
    except (OSError, KeyError) as err:
        raise DataFolderError(f"cannot read the image of ACDC file {path}: {err}") from err


def read_file(path: Path, ndim: int, unlabelled_value: int):
    """(image, scribble, label) numpy arrays of one ACDC file of ``ndim`` dimensions (2: a
    slice, 3: a volume), checked; scribbles with ``UNLABELLED`` for unlabelled pixels."""
    what = "slice" if ndim == 2 else "volume"
    with _h5py().File(path, "r") as f:
        for key in ("image", "label", "scribble"):
            if key not in f:
                raise DataFolderError(f"ACDC {what} {path} has no dataset {key!r} (found {sorted(f.keys())})")
        image = np.asarray(f["image"], dtype=np.float32)
        label = np.asarray(f["label"]).astype(np.int64)
        scribble = np.asarray(f["scribble"]).astype(np.int64)
    if image.ndim != ndim or label.shape != image.shape or scribble.shape != image.shape:
        expected = "2-d image" if ndim == 2 else "3-d (D, H, W) image"
        hint = " (a 2-d slice: use --data acdc)" if ndim == 3 and image.ndim == 2 else ""
        raise DataFolderError(
            f"ACDC {what} {path}: expected {expected}, label and scribble of one size, got "
            f"{image.shape}, {label.shape}, {scribble.shape}{hint}"
        )
    scribble = np.where(scribble == unlabelled_value, UNLABELLED, scribble)
    _check_label_range(scribble, 4, "scribble", path)
    _check_label_range(label, 4, "label", path)
    return image, scribble, label
