"""GrabCut/BSDS images with the Andrade-Carrera scribbles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .common import (
    IGNORE,
    UNLABELLED,
    Sample,
    ScribbleDataset,
    _check_same_size,
    _find_image,
    _only,
    _require_dir,
    _require_file,
    read_image,
    read_label_png,
)


class GrabCutDataset(ScribbleDataset):
    """GrabCut/BSDS images with the Andrade-Carrera scribbles::

        root/images/<name>.jpg|.bmp|...
        root/ground-truth/<name>.png          0 background, 255 foreground, 128 uncertain band
        root/<scribble_set>/<name>-anno.png   0 unlabelled, 1 foreground, 2 background

    Labels: 0 = background, 1 = foreground; the uncertain band is IGNORE.
    """

    num_labels = 2
    in_channels = 3
    class_names = ("background", "foreground")
    has_masks = True

    def __init__(self, root, scribble_set: str = "scribbles-set-1", names=None, cache: bool = True):
        self.root = Path(root)
        _require_dir(self.root, "GrabCut root")
        self.image_dir = _require_dir(self.root / "images", "GrabCut images")
        self.truth_dir = _require_dir(self.root / "ground-truth", "GrabCut ground truth")
        self.scribble_dir = _require_dir(self.root / scribble_set, "GrabCut scribbles")
        found = sorted(p.name[: -len("-anno.png")] for p in self.scribble_dir.glob("*-anno.png"))
        super().__init__(_only(found, names, "GrabCut: no scribbles for", self.scribble_dir), cache)

    def describe(self) -> str:
        return f"GrabCut at {self.root}: <scribble set>/<name>-anno.png"

    def image_file(self, index: int) -> Path:
        return _find_image(self.image_dir, self.names[index])

    def load(self, index: int) -> Sample:
        name = self.names[index]
        image = read_image(self.image_file(index), 3)
        anno_path = self.scribble_dir / f"{name}-anno.png"
        anno = read_label_png(anno_path)
        _check_same_size(name, image, anno, "scribble map", anno_path)
        scribbles = np.full(anno.shape, UNLABELLED, dtype=np.int64)
        scribbles[anno == 1] = 1
        scribbles[anno == 2] = 0
        truth_path = _require_file(self.truth_dir / f"{name}.png", f"ground truth of {name!r}")
        truth = read_label_png(truth_path)
        _check_same_size(name, image, truth, "ground truth", truth_path)
        mask = np.full(truth.shape, IGNORE, dtype=np.int64)
        mask[truth == 0] = 0
        mask[truth == 255] = 1
        return Sample(name, image, torch.from_numpy(scribbles), torch.from_numpy(mask))
