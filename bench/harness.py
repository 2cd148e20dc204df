"""The harness of ``python -m bench.compare``: timing, the reference solve, the method registry
and the runners of the Grady and RAWKS comparisons (bench/report.py prints and writes them).

The timing helpers (:func:`first_call`, :func:`timed_calls`, :func:`measure`), the solver
options and ``propagate`` closures (:func:`solver_options`, :func:`propagate_calls`) and
:func:`cpu_model` serve the other benchmark scripts too.
"""

from __future__ import annotations

import functools
import importlib
import math
import platform
import statistics
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse.linalg as spla
import torch

import rawks_triton as rt
from bench.problems import make_batch, make_scene
from rawks_triton.options import PRECONDITIONERS
from rawks_triton.random_walker import image_edge_weights, random_walker_with_stats
from rawks_triton.reference import assemble_matrix

PAPER_RAWKS_MS = 800.0  # RAWKS paper: random-walk solve per 128 x 96 image, CPU, 21 labels
PEERS = ("skimage cg_j", "skimage cg_mg", "skimage bf", "scipy spsolve")
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


def timed_calls(fn, repeats: int, budget: float = math.inf, first: float = 0.0) -> tuple[list, list]:
    """Up to ``repeats`` timed calls (at least one) that fit in ``budget`` at ``first`` seconds each.

    Returns wall-clock and CPU seconds. On a machine shared with other work the CPU time of
    a single-threaded run is the steadier measure of the work done.
    """
    count = repeats if math.isinf(budget) else min(repeats, int(budget / max(first, 1e-9)))
    times, cpu_times = [], []
    for _ in range(max(1, count)):
        cpu_start, start = time.process_time(), time.perf_counter()
        fn()
        _synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return times, cpu_times


def measure(fn, repeats: int, budget: float = math.inf):
    """One untimed call, then :func:`timed_calls`: (the first call's result, wall seconds, CPU seconds)."""
    result, first = first_call(fn)
    return (result, *timed_calls(fn, repeats, budget, first))


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---- propagate, as every benchmark calls it ----


def solver_options(backend: str, rtol: float, preconditioner: str | None = None) -> dict:
    """Keyword arguments of ``propagate`` for one backend; ``preconditioner`` None: the backend's own (direct)."""
    options = dict(backend=backend, rtol=rtol)
    if preconditioner is not None:
        options["preconditioner"] = preconditioner
    return options


def propagate_calls(inputs, seeds, num_labels: int, model: str, weights, **options):
    """(forward, forward_backward): ``propagate`` without a graph, and with the backward of sum(P * weights)."""

    def forward():
        with torch.no_grad():
            return rt.propagate(inputs, seeds, num_labels, model, **options)

    def forward_backward():
        leaf = inputs.detach().requires_grad_()
        result = rt.propagate(leaf, seeds, num_labels, model, **options)
        (result.P * weights).sum().backward()
        return result

    return forward, forward_backward


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
                data,
                torch.from_numpy(markers).to(device),
                beta=beta,
                mode=mode,
                tol=tol,
                return_full_prob=True,
                backend=backend,
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
                    (prob, iterations), first = first_call(functools.partial(first_fn, image, markers))
                except (RuntimeError, ValueError, MemoryError) as err:  # one method failing ends none of the others
                    row.note = f"failed: {type(err).__name__}: {err}"
                    skip[name] = "skipped: failed at a smaller size"
                    log(f"  grady {size}x{size} {name}: {row.note}")
                    continue
                if first < budget:
                    row.times, row.cpu_times = timed_calls(
                        functools.partial(timed_fn, image, markers), repeats, budget, first
                    )
                else:  # too slow to repeat: the warm-up run is the measurement
                    row.times, row.cpu_times = [first], [time.process_time() - cpu_start]
            row.iterations = iterations
            row.max_prob_diff = float(np.abs(prob - reference).max())
            if first >= budget:
                row.note = "one run (over the time budget)"
                skip[name] = f"skipped: over the time budget ({budget:g} s) at a smaller size"
            log(
                f"  grady {size}x{size} {name:28s} {row.median * 1e3:10.1f} ms  iterations {iterations or '-':>5s}  "
                f"max |P - P_direct| {row.max_prob_diff:.1e}"
            )
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
        options = solver_options(backend, tol, preconditioner)
        weights = torch.randn((1, labels, height, width), generator=torch.Generator().manual_seed(0)).to(batch.boundary)
        forward, forward_backward = propagate_calls(batch.boundary, batch.seeds, labels, "rawks", weights, **options)
        name = " ".join(
            p for p in ("rawks", backend, device if backend != "scipy" else "", preconditioner or "direct") if p
        )
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
            log(
                f"  rawks {height}x{width} L{labels} {row.method:40s} {row.median * 1e3:9.1f} ms  "
                f"{PAPER_RAWKS_MS / (row.median * 1e3):6.1f}x the paper's solve"
            )
            row._P = result.P.detach().double().cpu()
    for row in rows:
        if reference is not None:
            row.max_prob_diff = float(((row._P - reference).abs() * determined).max())
        del row._P
    return rows
