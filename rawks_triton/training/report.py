"""What a run reports: :class:`RunSummary` and the markdown table of runs and their metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
