"""The generic folder format: images/, scribbles/ and optional masks/ and splits/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .common import (
    UNLABELLED,
    DataFolderError,
    Sample,
    ScribbleDataset,
    _check_label_range,
    _check_same_size,
    _find_image,
    _require_dir,
    _require_file,
    read_image,
    read_label_png,
    read_mask,
    read_split,
)


class FolderDataset(ScribbleDataset):
    """The generic folder format::

        root/images/<name>.png|.jpg|...   the images
        root/scribbles/<name>.png         class index per pixel, ``unlabelled`` where not scribbled
        root/masks/<name>.png             optional dense truth, ``ignore`` where not scored
        root/splits/<split>.txt           optional name lists (train.txt, val.txt, ...)

    ``num_labels`` is inferred from the largest label in the scribbles and masks when not given.
    """

    def __init__(
        self,
        root,
        split: str | None = None,
        *,
        num_labels: int | None = None,
        unlabelled: int = 255,
        ignore: int = 255,
        channels: int = 3,
        cache: bool = True,
    ):
        self.root = Path(root)
        _require_dir(self.root, "folder dataset root")
        self.image_dir = _require_dir(self.root / "images", "folder dataset images")
        self.scribble_dir = _require_dir(self.root / "scribbles", "folder dataset scribbles")
        self.mask_dir = self.root / "masks"
        self.has_masks = self.mask_dir.is_dir()
        self.unlabelled, self.ignore, self.in_channels = unlabelled, ignore, channels
        if split is not None:
            names = read_split(self.root / "splits" / f"{split}.txt")
        else:
            names = sorted(p.stem for p in self.scribble_dir.glob("*.png"))
        if num_labels is None:
            largest = -1
            for name in names:
                for folder, skip in ((self.scribble_dir, unlabelled), (self.mask_dir, ignore)):
                    path = folder / f"{name}.png"
                    if path.is_file():
                        values = read_label_png(path)
                        values = values[values != skip]
                        largest = max(largest, int(values.max()) if values.size else -1)
            if largest < 0:
                raise DataFolderError(f"folder dataset {self.root}: no labelled pixel in any scribble or mask")
            num_labels = largest + 1
        self.num_labels = num_labels
        self.class_names = tuple(str(i) for i in range(num_labels))
        super().__init__(names, cache)

    def describe(self) -> str:
        return f"folder dataset at {self.root}: images/, scribbles/*.png"

    def image_file(self, index: int) -> Path:
        return _find_image(self.image_dir, self.names[index])

    def load(self, index: int) -> Sample:
        name = self.names[index]
        image = read_image(self.image_file(index), self.in_channels)
        path = _require_file(self.scribble_dir / f"{name}.png", f"scribbles of {name!r}")
        scribbles = read_label_png(path)
        _check_same_size(name, image, scribbles, "scribble map", path)
        scribbles = np.where(scribbles == self.unlabelled, UNLABELLED, scribbles)
        _check_label_range(scribbles, self.num_labels, "scribble map", path)
        mask = None
        mask_path = self.mask_dir / f"{name}.png"
        if self.has_masks and mask_path.is_file():
            mask = read_mask(mask_path, name, image, self.ignore, self.num_labels)
        return Sample(name, image, torch.from_numpy(scribbles), mask)
