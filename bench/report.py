"""The report of ``python -m bench.compare``: the machine, the tables, the targets and findings,
the CSV, the plot, and the blocks that ``--write-docs`` writes between the markers of a docs page.
"""

from __future__ import annotations

import csv
import datetime
import importlib
import os
import platform
import shlex
import sys

import numpy as np
import scipy
import torch

import rawks_triton as rt
from bench.harness import CLOCK, PAPER_RAWKS_MS, PEERS, Measurement, cpu_model
from bench.markers import append_between_markers, write_between_markers
from rawks_triton.options import PRECONDITIONERS

TARGET_VS_CG_J = 1.2  # goal: the torch backend within 1.2x of scikit-image cg_j at every size
TARGET_RAWKS_MS = 80.0  # goal: RAWKS forward + backward, 128 x 96, 21 labels, CPU


def machine_info(argv=None) -> dict:
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }
    for name in ("skimage", "pyamg", "triton", "matplotlib"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            versions[name] = "not installed"
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "their default",
        "command": "python -m bench.compare " + shlex.join(sys.argv[1:] if argv is None else argv),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "platform": platform.platform(),
        "rawks_triton": rt.__version__,
        "preconditioners": list(PRECONDITIONERS),
        "versions": versions,
    }


def ratios(rows: list[Measurement]) -> dict:
    """(method, size) -> {peer: peer median / this median}, for this library's rows."""
    by_size = {}
    for row in rows:
        by_size.setdefault((row.section, row.height, row.width), {})[row.method] = row
    out = {}
    for row in rows:
        if row.section != "grady" or not row.method.startswith("rawks"):
            continue
        peers = by_size[(row.section, row.height, row.width)]
        out[(row.method, row.height, row.width)] = {
            peer: peers[peer].median / row.median for peer in PEERS if peer in peers and peers[peer].times and row.times
        }
    return out


def spread(row: Measurement) -> str:
    chosen = row.chosen()
    if len(chosen) < 2:
        return "1 run"
    return f"{min(chosen) * 1e3:.1f}-{max(chosen) * 1e3:.1f}"


def machine_lines(info: dict) -> list[str]:
    clock = "CPU time of the process" if CLOCK["name"] == "cpu" else "wall-clock time"
    return [
        f"- machine: {info['cpu']} ({info['cpu_count']} cores), GPU: {info['gpu']}",
        f"- threads: torch {info['torch_threads']}; BLAS/OpenMP {info['blas_threads']}",
        f"- date: {info['date']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        f"- clock: {clock} (medians, spreads and speed-ups; the other clock's median has its own column)",
        f"- command: `{info['command']}`",
    ] + ([f"- note: {info['note']}"] if info.get("note") else [])


def _other_clock(row: Measurement) -> float:
    return row.wall_median if CLOCK["name"] == "cpu" else row.cpu_median


def grady_lines(rows: list[Measurement]) -> list[str]:
    grady = [r for r in rows if r.section == "grady"]
    if not grady:
        return []
    other = "wall ms" if CLOCK["name"] == "cpu" else "CPU ms"
    speedups = ratios(rows)
    lines = [
        f"Grady model (scikit-image's weights, beta {grady[0].beta:g}), {grady[0].labels} labels, "
        f"tol {grady[0].tol:g}, "
        "one image per call; time in ms (median, min-max over the repeats); speed-up = peer time / this time "
        '(> 1: this library is faster). "P diff": the largest |P - P_direct| over the pixels.',
        "",
        f"| size | method | median ms | spread ms | runs | {other} | iterations | P diff | "
        + " | ".join(f"vs {p}" for p in PEERS)
        + " |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in PEERS) + " |",
    ]
    for row in grady:
        size = f"{row.height}x{row.width}"
        if not row.times:
            lines.append(
                f"| {size} | {row.method} ({row.note}) | - | - | 0 | - | - | - | "
                + " | ".join("" for _ in PEERS)
                + " |"
            )
            continue
        ratio = speedups.get((row.method, row.height, row.width), {})
        note = f" ({row.note})" if row.note else ""
        lines.append(
            f"| {size} | {row.method}{note} | {row.median * 1e3:.1f} | {spread(row)} | {len(row.times)} | "
            f"{_other_clock(row) * 1e3:.1f} | {row.iterations or '-'} | {row.max_prob_diff:.1e} | "
            + " | ".join(f"{ratio[p]:.2f}x" if p in ratio else "" for p in PEERS)
            + " |"
        )
    return lines


def rawks_lines(rows: list[Measurement]) -> list[str]:
    rawks = [r for r in rows if r.section == "rawks"]
    if not rawks:
        return []
    other = "wall ms" if CLOCK["name"] == "cpu" else "CPU ms"
    r0 = rawks[0]
    lines = [
        f"RAWKS model, {r0.height}x{r0.width}, {r0.labels} labels, rtol {r0.tol:g}, one image per call; the paper: "
        f'{PAPER_RAWKS_MS:.0f} ms for the random-walk solve alone, per image, on a CPU. "P diff": the largest '
        "|P - P_direct| where the direct solution's total weight sum_l Z_l is at least 0.01 (P is not determined "
        "to better than rtol / sum_l Z_l elsewhere, docs/numerics.md).",
        "",
        f"| method | median ms | spread ms | runs | {other} | iterations (forward + adjoint) | P diff | paper / this |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rawks:
        lines.append(
            f"| {row.method} | {row.median * 1e3:.1f} | {spread(row)} | {len(row.times)} | "
            f"{_other_clock(row) * 1e3:.1f} | "
            f"{row.iterations or '-'} | {row.max_prob_diff:.1e} | {PAPER_RAWKS_MS / (row.median * 1e3):.1f}x |"
        )
    return lines


def finding_lines(rows: list[Measurement]) -> list[str]:
    """The speed goals this comparison checks, met or not, and every (size, peer) where this library is slower."""
    lines = []
    by_key = {(r.section, r.method, r.height, r.width): r for r in rows if r.times}
    sizes = sorted({(r.height, r.width) for r in rows if r.section == "grady"}, key=lambda s: s[0] * s[1])
    for ours in ("rawks torch f64", "rawks torch f32"):
        checked = [
            (f"{h}x{w}", by_key[("grady", ours, h, w)].median / by_key[("grady", "skimage cg_j", h, w)].median)
            for h, w in sizes
            if ("grady", ours, h, w) in by_key and ("grady", "skimage cg_j", h, w) in by_key
        ]
        if checked:
            missed = [f"{size} ({ratio:.2f}x)" for size, ratio in checked if ratio > TARGET_VS_CG_J]
            verdict = "met at every size measured" if not missed else "NOT met at " + ", ".join(missed)
            lines.append(
                f'- Target "{ours} within {TARGET_VS_CG_J}x of skimage cg_j" (time ratio this / cg_j, '
                f"{', '.join(f'{s}: {r:.2f}' for s, r in checked)}): {verdict}."
            )
    rawks_fb = [r for r in rows if r.section == "rawks" and r.method.endswith("forward+backward") and r.times]
    if rawks_fb:
        r0 = rawks_fb[0]
        setting = (r0.height, r0.width, r0.labels) == (96, 128, 21)
        results = ", ".join(
            f"{r.method.removesuffix(' forward+backward')} {r.median * 1e3:.1f} ms"
            + (" (met)" if r.median * 1e3 < TARGET_RAWKS_MS else " (NOT met)")
            for r in rawks_fb
        )
        lines.append(
            f'- Target "RAWKS forward+backward, 128x96, 21 labels, CPU, under {TARGET_RAWKS_MS:.0f} ms": '
            + (results if setting else f"not measured (this run: {r0.height}x{r0.width}, {r0.labels} labels)")
            + "."
        )
    speedups = ratios(rows)
    slower = {}  # method -> peer -> ["size (speed-up)"]
    for (method, height, width), ratio in speedups.items():
        for peer, value in ratio.items():
            if value < 1:
                slower.setdefault(method, {}).setdefault(peer, []).append(f"{height}x{width} ({value:.2f}x)")
    if slower:
        lines.append("- Slower than a peer (speed-up < 1, by size):")
        for method, peers in slower.items():
            lines.append(f"  - {method}: " + "; ".join(f"vs {peer} at {', '.join(at)}" for peer, at in peers.items()))
    elif speedups:
        lines.append("- Slower than a peer: nowhere in this run.")
    return lines


def format_tables(rows: list[Measurement], info: dict) -> str:
    parts = [machine_lines(info), grady_lines(rows), rawks_lines(rows), finding_lines(rows)]
    return "\n\n".join("\n".join(p) for p in parts if p)


def doc_blocks(rows: list[Measurement], info: dict, device: str) -> dict:
    """Marker name -> generated markdown, for ``--write-docs``."""
    return {
        f"compare-{device}-machine": "\n".join(machine_lines(info)),
        f"compare-{device}": "\n".join(grady_lines(rows)),
        f"rawks-paper-{device}": "\n".join(rawks_lines(rows)),
        f"compare-{device}-findings": "\n".join(finding_lines(rows)),
    }


def write_docs(path: str, blocks: dict) -> list[str]:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` for each block.

    Blocks whose markers the file lacks are appended at its end, inside new markers.
    Returns the names that were appended.
    """
    appended = []
    for name, block in blocks.items():
        text = block or "Not measured in this run."
        if not write_between_markers(path, name, text):
            append_between_markers(path, name, text)
            appended.append(name)
    return appended


def write_csv(rows: list[Measurement], path: str) -> None:
    speedups = ratios(rows)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "section",
                "method",
                "height",
                "width",
                "pixels",
                "labels",
                "tol",
                "runs",
                "clock",
                "median_s",
                "min_s",
                "max_s",
                "wall_median_s",
                "cpu_median_s",
                "iterations",
                "max_prob_diff",
                "note",
            ]
            + [f"speedup_vs_{p.replace(' ', '_')}" for p in PEERS]
        )
        for row in rows:
            ratio = speedups.get((row.method, row.height, row.width), {})
            chosen = row.chosen()
            writer.writerow(
                [
                    row.section,
                    row.method,
                    row.height,
                    row.width,
                    row.pixels,
                    row.labels,
                    row.tol,
                    len(row.times),
                    CLOCK["name"],
                    f"{row.median:.6g}",
                    f"{min(chosen):.6g}" if chosen else "",
                    f"{max(chosen):.6g}" if chosen else "",
                    f"{row.wall_median:.6g}",
                    f"{row.cpu_median:.6g}",
                    row.iterations,
                    f"{row.max_prob_diff:.3g}",
                    row.note,
                ]
                + [f"{ratio[p]:.4g}" if p in ratio else "" for p in PEERS]
            )


def plot(rows: list[Measurement], path: str, info: dict) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    grady = [r for r in rows if r.section == "grady" and r.times]
    if not grady:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for method in dict.fromkeys(r.method for r in grady):
        points = sorted((r.pixels, r.median, min(r.chosen()), max(r.chosen())) for r in grady if r.method == method)
        x = [p[0] for p in points]
        y = [p[1] for p in points]
        err = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
        style = "-o" if method.startswith("rawks") else "--s"
        ax.errorbar(x, y, yerr=err, fmt=style, capsize=3, label=method, markersize=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("pixels")
    ax.set_ylabel(f"{'CPU' if CLOCK['name'] == 'cpu' else 'wall-clock'} time per image (s), median and min-max")
    r0 = grady[0]
    ax.set_title(
        f"Grady random walker, {r0.labels} labels, tol {r0.tol:g}\n"
        f"{info['cpu']}, torch threads {info['torch_threads']}, {info['date'][:10]}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
