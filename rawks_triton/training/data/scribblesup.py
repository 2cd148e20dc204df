"""PASCAL VOC images with ScribbleSup scribbles: the polyline and XML parsers, the rasteriser, the dataset."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

from .common import (
    UNLABELLED,
    DataFolderError,
    Sample,
    ScribbleDataset,
    _find_image,
    _only,
    _require_dir,
    read_image,
    read_mask,
    read_split,
)

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def _class_index(token: str, where: str) -> int:
    token = token.strip()
    if token.lstrip("-").isdigit():
        value = int(token)
    elif token.lower() in VOC_CLASSES:
        value = VOC_CLASSES.index(token.lower())
    else:
        raise DataFolderError(f"{where}: unknown class {token!r} (expected 0..20 or a VOC class name)")
    if not 0 <= value < len(VOC_CLASSES):
        raise DataFolderError(f"{where}: class {value} outside [0, {len(VOC_CLASSES)})")
    return value


def parse_scribble_text(text: str, where: str = "scribbles") -> list[tuple[int, list[tuple[float, float]]]]:
    """ScribbleSup polylines, one stroke a line ``class,x1,y1,x2,y2,...`` (x = column, y = row)."""
    strokes = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f for f in line.replace(";", ",").split(",") if f.strip()]
        if len(fields) < 3 or (len(fields) - 1) % 2:
            raise DataFolderError(
                f"{where} line {number}: expected 'class,x1,y1,x2,y2,...' (a class and pairs of coordinates), "
                f"got {len(fields)} field(s)"
            )
        label = _class_index(fields[0], f"{where} line {number}")
        try:
            coords = [float(f) for f in fields[1:]]
        except ValueError as err:
            raise DataFolderError(f"{where} line {number}: coordinates must be numbers ({err})") from err
        strokes.append((label, list(zip(coords[0::2], coords[1::2], strict=True))))
    return strokes


def parse_scribble_xml(path: Path) -> list[tuple[int, list[tuple[float, float]]]]:
    """The original ScribbleSup XML: ``<polygon><tag>class</tag><point><X/><Y/></point>...</polygon>``."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataFolderError(f"ScribbleSup XML {path} is malformed: {err}") from err
    strokes = []
    for polygon in root.iter("polygon"):
        tag = polygon.find("tag")
        if tag is None or not (tag.text or "").strip():
            raise DataFolderError(f"ScribbleSup XML {path}: a <polygon> without a <tag> class name")
        label = _class_index(tag.text, f"ScribbleSup XML {path}")
        points = []
        for point in polygon.iter("point"):
            x, y = point.find("X"), point.find("Y")
            if x is None or y is None:
                raise DataFolderError(f"ScribbleSup XML {path}: a <point> without <X> and <Y>")
            points.append((float(x.text), float(y.text)))
        if points:
            strokes.append((label, points))
    return strokes


def rasterise_strokes(strokes, height: int, width: int, stroke_width: int = 3) -> np.ndarray:
    """Polylines -> an [H, W] int64 label map, UNLABELLED elsewhere; later strokes overwrite earlier ones."""
    from PIL import Image, ImageDraw

    canvas = Image.new("I", (width, height), UNLABELLED)
    draw = ImageDraw.Draw(canvas)
    radius = max(stroke_width - 1, 0) / 2.0
    for label, points in strokes:
        if len(points) > 1:
            draw.line(points, fill=int(label), width=max(int(stroke_width), 1), joint="curve")
        for x, y in points if stroke_width > 1 else points[:1]:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=int(label))
    return np.asarray(canvas, dtype=np.int64).copy()


class ScribbleSupDataset(ScribbleDataset):
    """PASCAL VOC images with ScribbleSup scribbles (21 classes, VOC masks optional).

    Two layouts:

    * ``"flat"``: ``root/<id>.jpg``, ``root/<id>_scribble.txt`` (or ``<id>.xml``) and
      optionally ``root/<id>_gt.png``;
    * ``"voc"``: ``root/JPEGImages/<id>.jpg``, ``root/<scribble_dir>/<id>.xml`` (or
      ``.txt``), optional ``root/SegmentationClass/<id>.png`` and
      ``root/ImageSets/Segmentation/<split>.txt``.

    Strokes are rasterised ``stroke_width`` pixels wide. Mask value 255 is IGNORE.
    """

    num_labels = len(VOC_CLASSES)
    in_channels = 3
    class_names = VOC_CLASSES

    def __init__(
        self,
        root,
        layout: str = "auto",
        split: str | None = None,
        scribble_dir: str = "pascal_2012",
        stroke_width: int = 3,
        names=None,
        cache: bool = False,
    ):
        self.root = Path(root)
        _require_dir(self.root, "ScribbleSup root")
        if layout == "auto":
            layout = "voc" if (self.root / "JPEGImages").is_dir() else "flat"
        if layout not in ("flat", "voc"):
            raise ValueError(f"`layout` must be one of ['auto', 'flat', 'voc'], got {layout!r}")
        self.layout, self.stroke_width = layout, stroke_width
        if layout == "flat":
            self.image_dir = self.scribble_dir = self.mask_dir = self.root
            self.scribble_patterns = ("{}_scribble.txt", "{}.xml")
            self.mask_pattern = "{}_gt.png"
            found = sorted(
                {p.name[: -len("_scribble.txt")] for p in self.root.glob("*_scribble.txt")}
                | {p.stem for p in self.root.glob("*.xml")}
            )
        else:
            self.image_dir = _require_dir(self.root / "JPEGImages", "VOC images")
            self.scribble_dir = _require_dir(self.root / scribble_dir, "ScribbleSup scribbles")
            self.mask_dir = self.root / "SegmentationClass"
            self.scribble_patterns = ("{}.xml", "{}.txt")
            self.mask_pattern = "{}.png"
            found = sorted(
                {p.stem for p in self.scribble_dir.glob("*.xml")} | {p.stem for p in self.scribble_dir.glob("*.txt")}
            )
            if split is not None:
                wanted = read_split(self.root / "ImageSets" / "Segmentation" / f"{split}.txt")
                found = [n for n in wanted if n in set(found)]
        found = _only(found, names, "ScribbleSup: no scribbles for", self.scribble_dir)
        self.has_masks = any((self.mask_dir / self.mask_pattern.format(n)).is_file() for n in found[:50])
        super().__init__(found, cache)

    def describe(self) -> str:
        return f"ScribbleSup ({self.layout} layout) at {self.root}"

    def image_file(self, index: int) -> Path:
        return _find_image(self.image_dir, self.names[index])

    def load(self, index: int) -> Sample:
        name = self.names[index]
        image = read_image(self.image_file(index), 3)
        height, width = image.shape[1:]
        for pattern in self.scribble_patterns:
            path = self.scribble_dir / pattern.format(name)
            if path.is_file():
                break
        else:
            raise DataFolderError(f"ScribbleSup: no scribbles for {name!r} in {self.scribble_dir}")
        if path.suffix == ".xml":
            strokes = parse_scribble_xml(path)
        else:
            strokes = parse_scribble_text(path.read_text(), str(path))
        scribbles = rasterise_strokes(strokes, height, width, self.stroke_width)
        mask = None
        mask_path = self.mask_dir / self.mask_pattern.format(name)
        if mask_path.is_file():
            mask = read_mask(mask_path, name, image, 255, self.num_labels)
        return Sample(name, image, torch.from_numpy(scribbles), mask)
