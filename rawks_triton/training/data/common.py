"""What every loader shares: the Sample convention, the base dataset, image and label-PNG readers.

* ``image``: [C, H, W] float32 in [0, 1];
* ``scribbles``: [H, W] int64, a label in [0, num_labels) or ``UNLABELLED`` (-1);
* ``mask``: [H, W] int64 dense truth, a label or ``IGNORE`` (-1) (None without truth).

Volumes (data sets with ``volumetric = True``) add a depth before H, W: image
[C, D, H, W], scribbles and mask [D, H, W].

A missing or malformed folder raises :class:`DataFolderError` naming the path and what
was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

UNLABELLED = -1
IGNORE = -1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".JPG", ".JPEG", ".PNG", ".BMP")


class DataFolderError(ValueError):
    """A data folder or file is missing or does not have the expected layout."""


@dataclass
class Sample:
    name: str
    image: torch.Tensor  # [C, H, W] float32 in [0, 1]
    scribbles: torch.Tensor  # [H, W] int64, label or UNLABELLED
    mask: torch.Tensor | None = None  # [H, W] int64, label or IGNORE

    def flipped(self) -> Sample:
        """The sample mirrored left to right."""
        return Sample(
            self.name,
            self.image.flip(-1),
            self.scribbles.flip(-1),
            None if self.mask is None else self.mask.flip(-1),
        )


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataFolderError(f"{what}: expected a folder at {path}, found {'a file' if path.exists() else 'nothing'}")
    return path


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataFolderError(f"{what}: expected a file at {path}, found {'a folder' if path.exists() else 'nothing'}")
    return path


def read_image(path: Path, channels: int = 3) -> torch.Tensor:
    """An image file as [C, H, W] float32 in [0, 1] (C = 3: RGB, C = 1: grey)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            array = np.asarray(img, dtype=np.float32) / 255.0
    except OSError as err:
        raise DataFolderError(f"cannot read image {path}: {err}") from err
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def read_label_png(path: Path) -> np.ndarray:
    """A label PNG as an integer [H, W] array: palette indices for palette PNGs, grey levels otherwise."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I", "I;16"):
                img = img.convert("L")
            return np.asarray(img).astype(np.int64)
    except OSError as err:
        raise DataFolderError(f"cannot read label image {path}: {err}") from err


def _find_image(folder: Path, name: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    raise DataFolderError(f"no image for {name!r} in {folder} (expected {name}.png/.jpg/.bmp/...)")


def _check_same_size(name: str, image: torch.Tensor, labels: np.ndarray, what: str, path: Path) -> None:
    if tuple(labels.shape) != tuple(image.shape[1:]):
        raise DataFolderError(
            f"{what} {path} of {name!r} is {labels.shape[0]}x{labels.shape[1]}, "
            f"expected the image size {image.shape[1]}x{image.shape[2]}"
        )


def _check_label_range(values: np.ndarray, num_labels: int, what: str, path: Path) -> None:
    bad = (values != -1) & ((values < 0) | (values >= num_labels))
    if bad.any():
        found = np.unique(values[bad])[:5].tolist()
        raise DataFolderError(
            f"{what} {path} holds values {found} outside [0, {num_labels}) and the unlabelled/ignore value"
        )


def read_mask(path: Path, name: str, image: torch.Tensor, ignore: int, num_labels: int) -> torch.Tensor:
    """A dense-truth PNG as [H, W] int64: ``ignore`` becomes IGNORE; the size and the labels are checked."""
    values = read_label_png(path)
    _check_same_size(name, image, values, "mask", path)
    values = np.where(values == ignore, IGNORE, values)
    _check_label_range(values, num_labels, "mask", path)
    return torch.from_numpy(values)


def _only(found: list[str], names, what: str, folder: Path) -> list[str]:
    """``names`` (each must be in ``found``), or ``found`` when ``names`` is None."""
    if names is None:
        return found
    missing = [n for n in names if n not in found]
    if missing:
        raise DataFolderError(f"{what} {missing[:5]} in {folder}")
    return list(names)


def read_split(path: Path) -> list[str]:
    """A split list: one name a line (blank lines and '#' comments skipped)."""
    _require_file(path, "split list")
    names = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [n for n in names if n]


class ScribbleDataset(torch.utils.data.Dataset):
    """Base class: ``names``, ``num_labels``, ``in_channels``, ``class_names`` and ``load``.

    Samples are read on demand and, with ``cache=True``, kept in memory after the first read.
    """

    num_labels: int
    in_channels: int
    class_names: tuple[str, ...]
    has_masks: bool
    volumetric = False  # True: samples are volumes, image [C, D, H, W], scribbles and mask [D, H, W]

    def __init__(self, names: list[str], cache: bool = True):
        if not names:
            raise DataFolderError(f"{type(self).__name__}: no samples found ({self.describe()})")
        self.names = list(names)
        self.cache = cache
        self._cache: dict[int, Sample] = {}

    def describe(self) -> str:
        return type(self).__name__

    def load(self, index: int) -> Sample:
        raise NotImplementedError

    def image_file(self, index: int) -> Path | None:
        """The image file of sample ``index``, where the loader reads one (then its size comes from the header)."""
        return None

    def image_size(self, index: int) -> tuple[int, ...]:
        """(H, W) of sample ``index`` ((D, H, W) for volumes), without loading it where the format allows."""
        path = self.image_file(index)
        if path is None:
            return tuple(self[index].image.shape[1:])
        from PIL import Image

        try:
            with Image.open(path) as img:
                return (img.height, img.width)
        except OSError as err:
            raise DataFolderError(f"cannot read image {path}: {err}") from err

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Sample:
        if index in self._cache:
            return self._cache[index]
        sample = self.load(index)
        if self.cache:
            self._cache[index] = sample
        return sample

    def subset(self, names) -> ScribbleDataset:
        """The same dataset restricted to ``names`` (each must exist)."""
        missing = [n for n in names if n not in self.names]
        if missing:
            raise DataFolderError(f"{self.describe()}: unknown sample name(s) {missing[:5]}")
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.names = list(names)
        view._cache = {}
        return view
