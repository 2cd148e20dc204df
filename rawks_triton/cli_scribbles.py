"""The scribble maps of ``rawks propagate``: a label per pixel from the values of a PNG, with
the checks that catch a wrong ``--unlabelled`` or ``--map`` (the messages name the flags)."""

from __future__ import annotations

import numpy as np
import torch


class UsageError(ValueError):
    """A bad command line or input file; reported as ``rawks <command>: error: ...``."""


# rawks propagate refuses a scribble map that labels more than this fraction of the pixels
# (unless --allow-dense): scribbles are sparse, and a dense map almost always means a
# wrong --unlabelled.
DENSE_SCRIBBLES = 0.5
# labels.png stores a label per pixel in 8 bits.
MAX_LABELS = 256


def parse_value_map(specs: list[str]) -> dict[int, int]:
    """["1=1,2=0", ...] (--map) -> {file value: label}."""
    mapping: dict[int, int] = {}
    for spec in specs:
        for pair in spec.split(","):
            value, sep, label = pair.partition("=")
            try:
                value, label = int(value), int(label)
            except ValueError:
                value = label = None
            if not sep or value is None or label < 0:
                raise UsageError(
                    f"--map expects VALUE=LABEL pairs of integers (label >= 0), e.g. 1=1,2=0; got {pair!r}"
                )
            if mapping.get(value, label) != label:
                raise UsageError(f"--map maps value {value} twice, to {mapping[value]} and to {label}")
            mapping[value] = label
    return mapping


def _most_frequent(values: np.ndarray) -> tuple[int, float]:
    found, counts = np.unique(values, return_counts=True)
    best = int(counts.argmax())
    return int(found[best]), float(counts[best]) / values.size


def scribbles_from_values(
    raw: np.ndarray,
    path,
    unlabelled: int,
    value_map: dict[int, int],
    num_labels: int | None,
    labels_from: str,
    allow_dense: bool = False,
) -> tuple[torch.Tensor, int, list[str]]:
    """A scribble PNG's values -> ([H, W] int64 labels, -1 unscribbled; the label count; warnings to print).

    ``num_labels`` None: the largest label + 1. UsageError (naming --unlabelled, --map or
    --num-labels) for a map that would seed (nearly) every pixel, for values that are not
    labels, and for a map without any scribble.
    """
    scribbled = raw != unlabelled
    fraction = float(scribbled.mean())
    top, top_fraction = _most_frequent(raw)
    hint = ""
    if top != unlabelled:
        hint = (
            f"; the most frequent value is {top} ({100 * top_fraction:.1f}% of the pixels): "
            f"if {top} marks pixels without a scribble, pass --unlabelled {top}"
        )
    if fraction == 1.0:
        raise UsageError(
            f"{path}: with --unlabelled {unlabelled} (a value no pixel has), every pixel would be a "
            f"scribble and nothing is left to propagate to{hint}"
        )
    if fraction > DENSE_SCRIBBLES and not allow_dense:
        raise UsageError(
            f"{path}: with --unlabelled {unlabelled}, {100 * fraction:.1f}% of the pixels would be scribbles; "
            f"scribbles are sparse, so more than {100 * DENSE_SCRIBBLES:.0f}% is refused (pass --allow-dense "
            f"if it is meant){hint}"
        )
    if not scribbled.any():
        raise UsageError(f"{path} has no scribbled pixel (every value is --unlabelled={unlabelled})")
    values = sorted(int(v) for v in np.unique(raw[scribbled]))
    if value_map:
        if unlabelled in value_map:
            raise UsageError(f"--map maps {unlabelled}, the --unlabelled value; pixels of that value have no scribble")
        unmapped = [v for v in values if v not in value_map]
        if unmapped:
            raise UsageError(
                f"{path} holds scribble value(s) {unmapped[:10]} that --map does not map "
                f"(--map covers {sorted(value_map)}; --unlabelled is {unlabelled}){hint}"
            )
        labels = np.full(raw.shape, -1, dtype=np.int64)
        for value in values:
            labels[raw == value] = value_map[value]
    else:
        labels = np.where(scribbled, raw, -1).astype(np.int64)
    present = sorted(int(v) for v in np.unique(labels[labels >= 0]))
    notes = []
    if num_labels is None:
        num_labels = present[-1] + 1
        if num_labels > MAX_LABELS:
            raise UsageError(
                f"{path} holds label {present[-1]}; labels.png has room for {MAX_LABELS} labels: "
                f"pass --unlabelled, --map or --num-labels to say what the values mean{hint}"
            )
        missing = sorted(set(range(num_labels)) - set(present))
        if missing:
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            notes.append(
                f"{path} has no scribble of label(s) {missing[:10]}{more} below its largest label "
                f"{num_labels - 1}: they get probability 0, and the outputs use the file's values as labels "
                "(--map VALUE=LABEL renumbers them, e.g. --map 1=1,2=0 for GrabCut files)"
            )
    else:
        unknown = [v for v in present if v >= num_labels]
        if unknown:
            origin = [v for v in values if value_map.get(v, v) in unknown]
            mapped = " after --map" if value_map else ""
            raise UsageError(
                f"{path} holds scribble value(s) {origin[:10]} that are not labels{mapped}: the labels are "
                f"0 .. {num_labels - 1} ({labels_from}); map file values to labels with --map VALUE=LABEL "
                f"(e.g. --map 1=1,2=0 for GrabCut files) or check --unlabelled ({unlabelled}){hint}"
            )
    return torch.from_numpy(labels), num_labels, notes
