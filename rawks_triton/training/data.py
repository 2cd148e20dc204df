"""Scribble-annotated datasets: one sample = image, sparse scribbles, optional dense truth.

Every loader returns :class:`Sample` objects with one convention, whatever the format
on disk:

* ``image``: [C, H, W] float32 in [0, 1];
* ``scribbles``: [H, W] int64, a label in [0, num_labels) or ``UNLABELLED`` (-1);
* ``mask``: [H, W] int64 dense truth, a label or ``IGNORE`` (-1) (None without truth).

Loaders: :class:`FolderDataset` (the generic format), :class:`GrabCutDataset`,
:class:`ACDCDataset` (HDF5 slices), :class:`ScribbleSupDataset` (PASCAL VOC with
ScribbleSup polylines or XML) and, in :mod:`.synthetic`, the generated default.
A missing or malformed folder raises :class:`DataFolderError` naming the path and what
was expected.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

UNLABELLED = -1
IGNORE = -1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".JPG", ".JPEG", ".PNG", ".BMP")
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


class DataFolderError(ValueError):
    """A data folder or file is missing or does not have the expected layout."""


@dataclass
class Sample:
    name: str
    image: torch.Tensor  # [C, H, W] float32 in [0, 1]
    scribbles: torch.Tensor  # [H, W] int64, label or UNLABELLED
    mask: torch.Tensor | None = None  # [H, W] int64, label or IGNORE

    def flipped(self) -> "Sample":
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
        raise DataFolderError(f"{what} {path} holds values {found} outside [0, {num_labels}) and the unlabelled/ignore value")


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

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Sample:
        if index in self._cache:
            return self._cache[index]
        sample = self.load(index)
        if self.cache:
            self._cache[index] = sample
        return sample

    def subset(self, names) -> "ScribbleDataset":
        """The same dataset restricted to ``names`` (each must exist)."""
        missing = [n for n in names if n not in self.names]
        if missing:
            raise DataFolderError(f"{self.describe()}: unknown sample name(s) {missing[:5]}")
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.names = list(names)
        view._cache = {}
        return view


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

    def load(self, index: int) -> Sample:
        name = self.names[index]
        image = read_image(_find_image(self.image_dir, name), self.in_channels)
        path = _require_file(self.scribble_dir / f"{name}.png", f"scribbles of {name!r}")
        scribbles = read_label_png(path)
        _check_same_size(name, image, scribbles, "scribble map", path)
        scribbles = np.where(scribbles == self.unlabelled, UNLABELLED, scribbles)
        _check_label_range(scribbles, self.num_labels, "scribble map", path)
        mask = None
        mask_path = self.mask_dir / f"{name}.png"
        if self.has_masks and mask_path.is_file():
            mask = read_label_png(mask_path)
            _check_same_size(name, image, mask, "mask", mask_path)
            mask = np.where(mask == self.ignore, IGNORE, mask)
            _check_label_range(mask, self.num_labels, "mask", mask_path)
            mask = torch.from_numpy(mask)
        return Sample(name, image, torch.from_numpy(scribbles), mask)


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

    def load(self, index: int) -> Sample:
        name = self.names[index]
        image = read_image(_find_image(self.image_dir, name), 3)
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
        return Sample(name, torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(scribble), torch.from_numpy(label))


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
        strokes.append((label, list(zip(coords[0::2], coords[1::2]))))
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
        for x, y in (points if stroke_width > 1 else points[:1]):
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
            found = sorted({p.name[: -len("_scribble.txt")] for p in self.root.glob("*_scribble.txt")} | {p.stem for p in self.root.glob("*.xml")})
        else:
            self.image_dir = _require_dir(self.root / "JPEGImages", "VOC images")
            self.scribble_dir = _require_dir(self.root / scribble_dir, "ScribbleSup scribbles")
            self.mask_dir = self.root / "SegmentationClass"
            self.scribble_patterns = ("{}.xml", "{}.txt")
            self.mask_pattern = "{}.png"
            found = sorted({p.stem for p in self.scribble_dir.glob("*.xml")} | {p.stem for p in self.scribble_dir.glob("*.txt")})
            if split is not None:
                wanted = read_split(self.root / "ImageSets" / "Segmentation" / f"{split}.txt")
                found = [n for n in wanted if n in set(found)]
        found = _only(found, names, "ScribbleSup: no scribbles for", self.scribble_dir)
        self.has_masks = any((self.mask_dir / self.mask_pattern.format(n)).is_file() for n in found[:50])
        super().__init__(found, cache)

    def describe(self) -> str:
        return f"ScribbleSup ({self.layout} layout) at {self.root}"

    def load(self, index: int) -> Sample:
        name = self.names[index]
        image = read_image(_find_image(self.image_dir, name), 3)
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
            values = read_label_png(mask_path)
            _check_same_size(name, image, values, "mask", mask_path)
            values = np.where(values == 255, IGNORE, values)
            _check_label_range(values, self.num_labels, "mask", mask_path)
            mask = torch.from_numpy(values)
        return Sample(name, image, torch.from_numpy(scribbles), mask)
