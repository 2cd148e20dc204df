"""Side-by-side comparison with the tools people use today, in one run on one machine.

    python -m bench.compare --threads 1 --write-docs  # Grady 64..1024 and the RAWKS figure -> docs/
    python -m bench.compare --sizes 64,128 --repeats 3 --methods "torch f32,cg_j"
    python -m bench.compare --smoke --out /tmp/x      # a tiny run (what the test suite checks)

Grady's model (scikit-image's random walker, 3 labels by default): the same scenes at
the same tolerance, solved by this library's ``random_walker`` on each available
backend and by ``skimage.segmentation.random_walker`` in modes ``cg_j``, ``cg_mg``
(pyamg) and ``bf``, and by one direct ``scipy.sparse.linalg.spsolve`` of the assembled
system, which is also the reference solution. Each method is run once untimed (warm-up,
iterations, probabilities), then timed ``--repeats`` times within ``--budget`` seconds;
a method that needed more than the budget at one size is skipped at the larger ones.

RAWKS (node costs, 21 labels, 128 x 96, the paper's setting): ``propagate`` forward and
forward + backward on each backend, against the paper's 800 ms per image for the
random-walk solve on a CPU (Vernaza and Chandraker, CVPR 2017).

Writes ``compare-<device>.csv`` (one row per method and problem), ``compare-<device>.json``
(machine, date, versions) and ``compare-<device>.png`` (Grady: time against pixels, log-log)
to ``--out``; prints the tables, and with ``--write-docs`` writes them into
docs/benchmarks.md between its ``<!-- compare-<device>...:begin/end -->`` markers, with the
issue's targets (met or not) and every size and peer where this library is slower. Peers
that are not installed (``pip install -e .[bench]``) are left out with a note.
"""

from __future__ import annotations

import os
import sys


def _pin_library_threads(argv) -> None:
    """``--threads N``: size the BLAS/OpenMP pools of numpy and scipy (the peers) to N as well.

    Those pools are sized when numpy loads, so this runs before the imports below. Without
    it, OpenBLAS's idle threads spin and are billed as the peers' CPU time.
    """
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--threads=") else argv[i + 1] if arg == "--threads" and i + 1 < len(argv) else None
        if value is not None:
            for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(name, value)


if __name__ == "__main__":
    _pin_library_threads(sys.argv[1:])

import argparse
import csv
import datetime
import importlib
import json
import math
import platform
import shlex
import statistics
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

import rawks_triton as rt
from bench.problems import make_batch, make_scene
from rawks_triton.propagation import PRECONDITIONERS
from rawks_triton.random_walker import image_edge_weights, random_walker_with_stats
from rawks_triton.reference import assemble_matrix

PAPER_RAWKS_MS = 800.0  # RAWKS paper: random-walk solve per 128 x 96 image, CPU, 21 labels
PEERS = ("skimage cg_j", "skimage cg_mg", "skimage bf", "scipy spsolve")
TARGET_VS_CG_J = 1.2  # issue 4: the torch backend within 1.2x of scikit-image cg_j at every size
TARGET_RAWKS_MS = 80.0  # issue 4: RAWKS forward + backward, 128 x 96, 21 labels, CPU
CLOCK = {"name": "wall"}  # "wall" or "cpu": the clock of medians, ratios and the plot (``--clock``)


@dataclass
class Measurement:
    section: str  # "grady" or "rawks"
    method: str
    height: int
    width: int
    labels: int
    tol: float
    beta: float = math.nan
    times: list = field(default_factory=list)  # seconds of wall-clock time, timed repeats
    cpu_times: list = field(default_factory=list)  # seconds of CPU time of this process (all its threads)
    iterations: str = ""  # e.g. "412" (largest over the labels) or "" for direct solvers
    max_prob_diff: float = math.nan  # against the direct solution
    note: str = ""

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def median(self) -> float:
        """Median over the repeats on the clock chosen for the run (see ``--clock``)."""
        chosen = self.cpu_times if CLOCK["name"] == "cpu" else self.times
        return statistics.median(chosen) if chosen else math.nan

    @property
    def wall_median(self) -> float:
        return statistics.median(self.times) if self.times else math.nan

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_times) if self.cpu_times else math.nan

    def chosen(self) -> list:
        return self.cpu_times if CLOCK["name"] == "cpu" else self.times


# ---- timing ----


def _synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def first_call(fn):
    """The untimed warm-up call: (its result, its duration in seconds)."""
    start = time.perf_counter()
    result = fn()
    _synchronize()
    return result, time.perf_counter() - start


def timed_calls(fn, repeats: int, budget: float, first: float) -> tuple[list, list]:
    """Up to ``repeats`` timed calls (at least one) that fit in ``budget`` at ``first`` seconds each.

    Returns wall-clock and CPU seconds. On a machine shared with other work the CPU time of
    a single-threaded run is the steadier measure of the work done.
    """
    times, cpu_times = [], []
    for _ in range(max(1, min(repeats, int(budget / max(first, 1e-9))))):
        cpu_start, start = time.process_time(), time.perf_counter()
        fn()
        _synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return times, cpu_times


def measure(fn, repeats: int, budget: float):
    result, first = first_call(fn)
    return (result, *timed_calls(fn, repeats, budget, first))


# ---- the Grady methods ----


def skimage_modes():
    """The scikit-image modes available here, and a note on those that are not."""
    try:
        importlib.import_module("skimage.segmentation")
    except ImportError:
        return [], "scikit-image is not installed: its modes are left out (pip install -e .[bench])"
    modes = ["cg_j", "bf"]
    try:
        importlib.import_module("pyamg")
        modes.insert(1, "cg_mg")
    except ImportError:
        return modes, "pyamg is not installed: skimage cg_mg is left out"
    return modes, ""


class CountingCG:
    """Wraps scipy's ``cg`` inside scikit-image to count iterations (untimed runs only)."""

    def __init__(self):
        self.counts = []

    def __enter__(self):
        module = importlib.import_module("skimage.segmentation.random_walker_segmentation")
        self.module, self.original = module, module.cg

        def counting(A, b, *args, **kwargs):
            calls = [0]

            def callback(_):
                calls[0] += 1

            out = self.original(A, b, *args, callback=callback, **kwargs)
            self.counts.append(calls[0])
            return out

        module.cg = counting
        return self

    def __exit__(self, *exc):
        self.module.cg = self.original


def direct_probabilities(image: np.ndarray, markers: np.ndarray, beta: float) -> np.ndarray:
    """[L, H, W] Grady probabilities by one sparse LU solve (scipy.sparse.linalg.spsolve), float64."""
    edges = image_edge_weights(torch.from_numpy(image), beta)[0].numpy()
    right, down = edges[0], edges[1]
    left = np.pad(right[:, :-1], ((0, 0), (1, 0)))
    up = np.pad(down[:-1, :], ((1, 0), (0, 0)))
    degree = right + left + down + up
    A = assemble_matrix(degree, right, down).tocsr()
    flat = markers.ravel()
    free = np.flatnonzero(flat == 0)
    seeded = np.flatnonzero(flat > 0)
    num_labels = int(flat.max())
    onehot = (flat[seeded, None] == np.arange(1, num_labels + 1)[None, :]).astype(np.float64)
    rhs = -(A[free][:, seeded] @ onehot)
    solution = spla.spsolve(A[free][:, free].tocsc(), rhs)
    solution = solution.reshape(free.size, num_labels)
    out = np.zeros((num_labels, flat.size))
    out[:, free] = solution.T
    out[:, seeded] = onehot.T
    return out.reshape((num_labels,) + image.shape)


def grady_methods(tol: float, beta: float):
    """name -> fn(image, markers) returning (probabilities [L, H, W] numpy, iterations string)."""
    methods = {}

    def ours(backend, dtype, device, mode="cg_j"):
        def run(image, markers):
            data = torch.from_numpy(image.astype(dtype)).to(device)
            prob, result = random_walker_with_stats(
                data, torch.from_numpy(markers).to(device), beta=beta, mode=mode, tol=tol, return_full_prob=True, backend=backend
            )
            if mode == "cg_mg" and result is not None and getattr(result, "preconditioner", "multigrid") != "multigrid":
                raise RuntimeError(f"backend {backend!r} ran cg_mg without its multigrid preconditioner")
            iterations = str(int(result.iterations.max())) if result is not None and backend != "scipy" else ""
            return prob.detach().cpu().double().numpy(), iterations

        return run

    for dtype in (np.float64, np.float32):
        bits = np.dtype(dtype).itemsize * 8
        methods[f"rawks torch f{bits}"] = ours("torch", dtype, "cpu")
        if "multigrid" in PRECONDITIONERS:
            methods[f"rawks torch multigrid f{bits}"] = ours("torch", dtype, "cpu", mode="cg_mg")
    if torch.cuda.is_available():
        methods["rawks torch cuda f32"] = ours("torch", np.float32, "cuda")
        methods["rawks triton cuda f32"] = ours("triton", np.float32, "cuda")
        if "multigrid" in PRECONDITIONERS:
            methods["rawks triton cuda multigrid f32"] = ours("triton", np.float32, "cuda", mode="cg_mg")

    modes, note = skimage_modes()
    for mode in modes:

        def peer(image, markers, mode=mode):
            from skimage.segmentation import random_walker as skimage_random_walker

            with CountingCG() as counter:
                prob = skimage_random_walker(image, markers, beta=beta, mode=mode, tol=tol, return_full_prob=True)
            return prob, (str(max(counter.counts)) if counter.counts else "")

        def timed_peer(image, markers, mode=mode):
            from skimage.segmentation import random_walker as skimage_random_walker

            return skimage_random_walker(image, markers, beta=beta, mode=mode, tol=tol, return_full_prob=True)

        methods[f"skimage {mode}"] = (peer, timed_peer)
    methods["scipy spsolve"] = lambda image, markers: (direct_probabilities(image, markers, beta), "")
    return methods, note


def run_grady(sizes, labels, tol, beta, repeats, budget, log, only=()) -> list[Measurement]:
    methods, note = grady_methods(tol, beta)
    if only:
        methods = {name: fn for name, fn in methods.items() if any(part in name for part in only)}
    if note:
        log(f"note: {note}")
    skip = {}  # method -> why it is not run at the larger sizes
    rows = []
    for size in sizes:
        scene = make_scene(size, size, labels)
        image, markers = scene.image, scene.markers
        reference = direct_probabilities(image, markers, beta)
        for name, method in methods.items():
            row = Measurement("grady", name, size, size, labels, tol, beta)
            rows.append(row)
            if name in skip:
                row.note = skip[name]
                continue
            first_fn, timed_fn = method if isinstance(method, tuple) else (method, method)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # probability-range warnings alike for every method
                cpu_start = time.process_time()
                try:
                    (prob, iterations), first = first_call(lambda: first_fn(image, markers))
                except (RuntimeError, ValueError, MemoryError) as err:  # one method failing ends none of the others
                    row.note = f"failed: {type(err).__name__}: {err}"
                    skip[name] = "skipped: failed at a smaller size"
                    log(f"  grady {size}x{size} {name}: {row.note}")
                    continue
                if first < budget:
                    row.times, row.cpu_times = timed_calls(lambda: timed_fn(image, markers), repeats, budget, first)
                else:  # too slow to repeat: the warm-up run is the measurement
                    row.times, row.cpu_times = [first], [time.process_time() - cpu_start]
            row.iterations = iterations
            row.max_prob_diff = float(np.abs(prob - reference).max())
            if first >= budget:
                row.note = "one run (over the time budget)"
                skip[name] = f"skipped: over the time budget ({budget:g} s) at a smaller size"
            log(f"  grady {size}x{size} {name:28s} {row.median * 1e3:10.1f} ms  iterations {iterations or '-':>5s}  "
                f"max |P - P_direct| {row.max_prob_diff:.1e}")
    return rows


# ---- RAWKS ----


def rawks_targets():
    targets = [("torch", "cpu", p) for p in PRECONDITIONERS]
    if torch.cuda.is_available():
        targets += [("torch", "cuda", p) for p in PRECONDITIONERS] + [("triton", "cuda", "jacobi")]
    targets.append(("scipy", "cpu", None))
    return targets


def run_rawks(height, width, labels, tol, repeats, budget, log) -> list[Measurement]:
    rows = []
    reference = None
    for backend, device, preconditioner in rawks_targets():
        dtype = torch.float64 if backend == "scipy" else torch.float32
        batch = make_batch(height, width, labels, 1, dtype=dtype, device=device)
        options = dict(backend=backend, rtol=tol)
        if preconditioner is not None:
            options["preconditioner"] = preconditioner
        weights = torch.randn((1, labels, height, width), generator=torch.Generator().manual_seed(0)).to(batch.boundary)

        def forward():
            with torch.no_grad():
                return rt.propagate(batch.boundary, batch.seeds, labels, "rawks", **options)

        def forward_backward():
            leaf = batch.boundary.detach().requires_grad_()
            result = rt.propagate(leaf, batch.seeds, labels, "rawks", **options)
            (result.P * weights).sum().backward()
            return result

        name = " ".join(p for p in ("rawks", backend, device if backend != "scipy" else "", preconditioner or "direct") if p)
        for what, fn in (("forward", forward), ("forward+backward", forward_backward)):
            try:
                result, times, cpu_times = measure(fn, repeats, budget)
            except ValueError as err:  # a backend without this preconditioner
                log(f"  rawks {name}: {err}")
                continue
            row = Measurement("rawks", f"{name} {what}", height, width, labels, tol, times=times, cpu_times=cpu_times)
            if backend != "scipy":
                row.iterations = str(int(result.iterations.max()))
                if result.adjoint_iterations is not None:
                    row.iterations += f" + {int(result.adjoint_iterations.max())}"
            if backend == "scipy" and what == "forward":
                reference = result.P.detach().double().cpu()
                # P is only determined to about rtol / sum_l Z_l (docs/numerics.md): compare where
                # the direct solution's total weight is at least 0.01, as the tests do.
                determined = result.Z.detach().double().cpu().sum(dim=1, keepdim=True) >= 0.01
            rows.append(row)
            log(f"  rawks {height}x{width} L{labels} {row.method:40s} {row.median * 1e3:9.1f} ms  "
                f"{PAPER_RAWKS_MS / (row.median * 1e3):6.1f}x the paper's solve")
            row._P = result.P.detach().double().cpu()
    for row in rows:
        if reference is not None:
            row.max_prob_diff = float(((row._P - reference).abs() * determined).max())
        del row._P
    return rows


# ---- output ----


def machine_info(argv=None) -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__}
    for name in ("skimage", "pyamg", "triton", "matplotlib"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            versions[name] = "not installed"
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
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
        f"Grady model (scikit-image's weights, beta {grady[0].beta:g}), {grady[0].labels} labels, tol {grady[0].tol:g}, "
        "one image per call; time in ms (median, min-max over the repeats); speed-up = peer time / this time "
        "(> 1: this library is faster). \"P diff\": the largest |P - P_direct| over the pixels.",
        "",
        f"| size | method | median ms | spread ms | runs | {other} | iterations | P diff | "
        + " | ".join(f"vs {p}" for p in PEERS) + " |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in PEERS) + " |",
    ]
    for row in grady:
        size = f"{row.height}x{row.width}"
        if not row.times:
            lines.append(f"| {size} | {row.method} ({row.note}) | - | - | 0 | - | - | - | " + " | ".join("" for _ in PEERS) + " |")
            continue
        ratio = speedups.get((row.method, row.height, row.width), {})
        note = f" ({row.note})" if row.note else ""
        lines.append(
            f"| {size} | {row.method}{note} | {row.median * 1e3:.1f} | {spread(row)} | {len(row.times)} | "
            f"{_other_clock(row) * 1e3:.1f} | {row.iterations or '-'} | {row.max_prob_diff:.1e} | "
            + " | ".join(f"{ratio[p]:.2f}x" if p in ratio else "" for p in PEERS) + " |"
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
        f"{PAPER_RAWKS_MS:.0f} ms for the random-walk solve alone, per image, on a CPU. \"P diff\": the largest "
        "|P - P_direct| where the direct solution's total weight sum_l Z_l is at least 0.01 (P is not determined "
        "to better than rtol / sum_l Z_l elsewhere, docs/numerics.md).",
        "",
        f"| method | median ms | spread ms | runs | {other} | iterations (forward + adjoint) | P diff | paper / this |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rawks:
        lines.append(
            f"| {row.method} | {row.median * 1e3:.1f} | {spread(row)} | {len(row.times)} | {_other_clock(row) * 1e3:.1f} | "
            f"{row.iterations or '-'} | {row.max_prob_diff:.1e} | {PAPER_RAWKS_MS / (row.median * 1e3):.1f}x |"
        )
    return lines


def finding_lines(rows: list[Measurement]) -> list[str]:
    """The issue's targets, met or not, and every (size, peer) where this library is slower."""
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
                f"- Target \"{ours} within {TARGET_VS_CG_J}x of skimage cg_j\" (time ratio this / cg_j, "
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
            f"- Target \"RAWKS forward+backward, 128x96, 21 labels, CPU, under {TARGET_RAWKS_MS:.0f} ms\": "
            + (results if setting else f"not measured (this run: {r0.height}x{r0.width}, {r0.labels} labels)") + "."
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
    with open(path) as f:
        text = f.read()
    appended = []
    for name, block in blocks.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        replacement = f"{begin}\n{block or 'Not measured in this run.'}\n{end}"
        if begin in text and end in text and text.index(begin) < text.index(end):
            head, rest = text.split(begin, 1)
            _, tail = rest.split(end, 1)
            text = head + replacement + tail
        else:
            text = text.rstrip("\n") + "\n\n" + replacement + "\n"
            appended.append(name)
    with open(path, "w") as f:
        f.write(text)
    return appended


def write_csv(rows: list[Measurement], path: str) -> None:
    speedups = ratios(rows)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["section", "method", "height", "width", "pixels", "labels", "tol", "runs", "clock", "median_s", "min_s", "max_s",
             "wall_median_s", "cpu_median_s", "iterations", "max_prob_diff", "note"]
            + [f"speedup_vs_{p.replace(' ', '_')}" for p in PEERS]
        )
        for row in rows:
            ratio = speedups.get((row.method, row.height, row.width), {})
            chosen = row.chosen()
            writer.writerow(
                [row.section, row.method, row.height, row.width, row.pixels, row.labels, row.tol, len(row.times),
                 CLOCK["name"], f"{row.median:.6g}", f"{min(chosen):.6g}" if chosen else "",
                 f"{max(chosen):.6g}" if chosen else "", f"{row.wall_median:.6g}", f"{row.cpu_median:.6g}",
                 row.iterations, f"{row.max_prob_diff:.3g}", row.note]
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,128,256,512,1024", help="square image sides for the Grady comparison")
    parser.add_argument("--labels", type=int, default=3, help="labels of the Grady comparison")
    parser.add_argument("--tol", type=float, default=1e-4, help="relative residual tolerance of every iterative solver")
    parser.add_argument("--beta", type=float, default=130.0)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method and size (fewer within --budget)")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds of timed runs per method and size")
    parser.add_argument("--rawks-shape", default="96x128", help="H x W of the RAWKS comparison")
    parser.add_argument("--rawks-labels", type=int, default=21)
    parser.add_argument("--out", default=os.path.join("docs", "figures"), help="folder for the CSV, JSON and PNG")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads, and (when run as a script) the BLAS/OpenMP threads of numpy and scipy (default: their own choice)",
    )
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="clock of the medians, speed-ups and plot; 'cpu' (with --threads 1) is steadier on a shared machine",
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny run that checks the script works")
    parser.add_argument("--skip-grady", action="store_true")
    parser.add_argument("--skip-rawks", action="store_true")
    parser.add_argument(
        "--methods", default="",
        help="comma-separated substrings: only the Grady methods whose name contains one (e.g. 'f32,skimage')",
    )
    parser.add_argument("--note", default="", help="a line about the run for the tables' header (e.g. 'machine shared')")
    parser.add_argument(
        "--write-docs", nargs="?", const=os.path.join("docs", "benchmarks.md"), default=None, metavar="PATH",
        help="also write the tables into PATH (default docs/benchmarks.md) between its <!-- NAME:begin/end --> markers",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.repeats, args.budget, args.rawks_shape, args.rawks_labels = "24", 1, 5.0, "12x16", 3
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    CLOCK["name"] = args.clock
    rawks_height, rawks_width = (int(v) for v in args.rawks_shape.lower().split("x"))
    os.makedirs(args.out, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    stem = os.path.join(args.out, f"compare-{device}{'-smoke' if args.smoke else ''}")

    def log(message):
        print(message, file=sys.stderr, flush=True)

    info = machine_info(argv)
    info["note"] = args.note
    log(f"{info['cpu']}, torch threads {info['torch_threads']}, GPU {info['gpu']}")
    rows = []
    if not args.skip_grady:
        methods = [m for m in args.methods.split(",") if m]
        rows += run_grady(sizes, args.labels, args.tol, args.beta, args.repeats, args.budget, log, methods)
    if not args.skip_rawks:
        rows += run_rawks(rawks_height, rawks_width, args.rawks_labels, args.tol, args.repeats, args.budget, log)
    print(format_tables(rows, info))
    write_csv(rows, stem + ".csv")
    with open(stem + ".json", "w") as f:
        json.dump(dict(info, arguments=vars(args)), f, indent=2)
    plotted = plot(rows, stem + ".png", info)
    log(f"wrote {stem}.csv, {stem}.json" + (f", {stem}.png" if plotted else " (no plot: matplotlib missing or no Grady rows)"))
    if args.write_docs:
        appended = write_docs(args.write_docs, doc_blocks(rows, info, device))
        log(f"wrote the tables into {args.write_docs}" + (f" (markers appended: {', '.join(appended)})" if appended else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
