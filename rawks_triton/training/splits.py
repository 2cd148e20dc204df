"""Dataset name + options -> the training split and the held-out split.

The held-out split is used to measure Q (mIoU on images it never saw) and the learned
boundaries on scribbles that were not used in training (P on the held-out images).

The data set names and their options are in :mod:`.data.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data import (
    ACDCDataset,
    ACDCVolumeDataset,
    DataFolderError,
    FolderDataset,
    GrabCutDataset,
    ScribbleDataset,
    ScribbleSupDataset,
)
from .data.registry import parse_options
from .synthetic import SyntheticDataset

# The held-out patients of both ACDC sets (slices and volumes), so that their splits agree.
ACDC_VAL_PATIENTS = "patient005"


@dataclass
class Splits:
    train: ScribbleDataset
    val: ScribbleDataset | None

    @property
    def num_labels(self) -> int:
        return self.train.num_labels

    @property
    def in_channels(self) -> int:
        return self.train.in_channels

    @property
    def volumetric(self) -> bool:
        """True when the samples are volumes ([C, D, H, W] images)."""
        return bool(getattr(self.train, "volumetric", False))

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.train.class_names)

    def items(self) -> list[tuple[str, ScribbleDataset]]:
        """("train", train) and, when there is one, ("val", val)."""
        return [(name, d) for name, d in (("train", self.train), ("val", self.val)) if d is not None]


def _names(value) -> list[str]:
    if isinstance(value, str):
        return [v for v in value.replace(",", "+").split("+") if v]
    return list(value)


def build_splits(data: str, root: str | None, options: dict | None = None) -> Splits:
    options = parse_options(data, dict(options or {}))
    if data == "synthetic":
        seed = options.get("data_seed", 0)
        shape = dict(
            height=options.get("height", 96),
            width=options.get("width", 128),
            num_labels=options.get("num_labels", 3),
            cue=options.get("cue", "texture"),
        )
        train = SyntheticDataset(options.get("train_count", 64), seed=seed, **shape)
        val_count = options.get("val_count", 32)
        val = SyntheticDataset(val_count, seed=seed + 1, **shape) if val_count > 0 else None
        return Splits(train, val)
    if root is None:
        raise ValueError(f"`data_root` is required for data={data!r} (the folder that holds the data set)")
    root_path = Path(root)
    if not root_path.exists():
        raise DataFolderError(f"data_root {root_path} does not exist (expected the {data} data folder)")
    if data == "folder":
        common = {k: options[k] for k in ("unlabelled", "ignore", "channels", "num_labels") if k in options}
        splits_dir = root_path / "splits"
        train_split = options.get("train_split", "train" if (splits_dir / "train.txt").is_file() else None)
        val_split = options.get("val_split", "val" if (splits_dir / "val.txt").is_file() else None)
        train = FolderDataset(root_path, train_split, **common)
        common.setdefault("num_labels", train.num_labels)
        val = FolderDataset(root_path, val_split, **common) if val_split else None
        return Splits(train, val)
    if data == "grabcut":
        scribble_set = options.get("scribble_set", "scribbles-set-1")
        every = GrabCutDataset(root_path, scribble_set)
        if "holdout" in options:
            held = _names(options["holdout"])
        else:
            count = options.get("holdout_count", 10)
            if not 0 <= count < len(every):
                raise ValueError(f"`holdout_count` must be in [0, {len(every)}), got {count}")
            held = [every.names[round(i * len(every) / count)] for i in range(count)] if count else []
        train_names = [n for n in every.names if n not in set(held)]
        return Splits(every.subset(train_names), every.subset(held) if held else None)
    if data in ("acdc", "acdc-volumes"):
        # Patient-wise: every slice (acdc) or volume (acdc-volumes) of a held-out patient is held out.
        if data == "acdc":
            every = ACDCDataset(root_path)
        else:
            every = ACDCVolumeDataset(root_path, downsample=options.get("downsample", 1))
        val_patients = _names(options.get("val_patients", ACDC_VAL_PATIENTS))
        held = [n for n in every.names if any(n.startswith(p) for p in val_patients)]
        train_names = [n for n in every.names if n not in set(held)]
        return Splits(every.subset(train_names), every.subset(held) if held else None)
    # scribblesup
    layout = options.get("layout", "auto")
    common = {k: options[k] for k in ("stroke_width", "scribble_dir") if k in options}
    if layout == "auto":
        layout = "voc" if (root_path / "JPEGImages").is_dir() else "flat"
    if layout == "flat":
        return Splits(ScribbleSupDataset(root_path, "flat", **common), None)
    train = ScribbleSupDataset(root_path, "voc", options.get("train_split", "train"), **common)
    val_split = options.get("val_split", "val")
    val = ScribbleSupDataset(root_path, "voc", val_split, **common) if val_split else None
    return Splits(train, val)
