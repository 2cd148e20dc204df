"""What a run reports: :class:`RunSummary`, the markdown table of runs, and the CSV log of its metrics."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import atomic_write


@dataclass
class RunSummary:
    out: Path
    step: int
    metrics: dict  # split -> metrics of the last evaluation
    checkpoint: Path


def format_table(results: dict, title: str = "") -> str:
    """A markdown table of {run name: {split: metrics}}."""
    columns = [
        ("q_miou", "Q mIoU (val)", "val"),
        ("p_miou", "P mIoU (train)", "train"),
        ("p_miou_abstain", "P mIoU abstaining (train)", "train"),
        ("abstained", "abstained % (train)", "train"),
        ("p_accuracy", "P accuracy (train)", "train"),
        ("p_pixel_error", "P pixel error (train)", "train"),
        ("p_pixel_error", "P pixel error (val)", "val"),
    ]
    used = [c for c in columns if any(c[0] in r.get(c[2], {}) for r in results.values())]
    lines = [title] if title else []
    lines.append("| run | " + " | ".join(c[1] for c in used) + " |")
    lines.append("| --- |" + " ---: |" * len(used))
    for name, r in results.items():
        cells = []
        for key, _, split in used:
            value = r.get(split, {}).get(key)
            cells.append("-" if value is None else f"{value:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


METRICS = "metrics.csv"
CSV_FIELDS = (
    "step",
    "phase",
    "kind",
    "split",
    "loss",
    "q_miou",
    "q_accuracy",
    "q_pixel_error",
    "p_miou",
    "p_accuracy",
    "p_pixel_error",
    "p_miou_abstain",
    "p_pixel_error_abstain",
    "abstained",
    "images",
    "images_per_second",
    "seconds",
)


class MetricsLog:
    """metrics.csv of a run (rank 0 only); on resume, rows past the checkpoint are dropped.

    The file is rewritten atomically on resume; rows that do not parse (a line cut short
    by a crash) are dropped with the rows past the checkpoint.
    """

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        rows = []
        if resume_step is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if _step_of(r) is not None and _step_of(r) <= resume_step]

        def write(f):
            writer = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

        atomic_write(path, write, text=True)

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, CSV_FIELDS).writerow({k: _fmt(row.get(k)) for k in CSV_FIELDS})


def _step_of(row: dict) -> int | None:
    """The step of a metrics.csv row, None for a row cut short or malformed."""
    if None in row or any(value is None for value in row.values()):
        return None
    try:
        return int(row["step"])
    except ValueError:
        return None


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value
