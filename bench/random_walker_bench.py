"""``rawks_triton.random_walker`` against ``skimage.segmentation.random_walker``, same run.

    python -m bench.random_walker_bench --threads 1 --write-docs docs/benchmarks.md
    python -m bench.random_walker_bench --crossover --threads 1   # the mode="auto" rule

The main table times this library's default call ``random_walker(data, labels)``
(mode "auto") and its modes "cg_j", "cg_mg" and "bf" against scikit-image's "cg_mg"
(pyamg) on: the synthetic noisy scenes of bench/problems.py at 512 x 512 and 1024 x 1024
(3 labels, beta 130), the ACDC cardiac volumes of ``../shared/data/acdc-volumes`` with
their scribbles (4 labels, spacing (10, 1.5, 1.5): slices about 7 times thicker than the
pixels), and a synthetic 128^3 volume (3 labels). Each row: the median and the spread
(min-max) of the timed calls, the ratio to scikit-image's cg_mg, and the share of voxels
whose label agrees with scikit-image's cg_mg.

``--crossover`` times the direct solve ("bf") against CG ("cg_mg" on images, "cg_j" on
volumes while the 3D multigrid is missing) over image and volume sizes: what
:func:`rawks_triton.solve.choose.random_walker_mode` is based on.

A measurement, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import shlex
import statistics
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.harness import cpu_model, first_call, timed_calls
from bench.markers import append_between_markers, write_between_markers
from bench.problems import make_scene

BETA = 130.0
TOL = 1e-3
ACDC_SPACING = (10.0, 1.5, 1.5)  # (slice, row, column), mm-like: the slices are far thicker than the pixels
SHARED_DATA = [Path(__file__).resolve().parents[1] / ".." / "shared" / "data", Path("/work/shared/data")]
CG_J_MAX_VOXELS = 200_000  # larger than this, "ours cg_j" is not run (512^2 takes minutes)
BF_MAX_SEPARATOR = 1100  # larger than this, "ours bf" is not run (minutes per call and GBs of fill-in)
METHODS = ("ours auto (default)", "ours cg_j", "ours cg_mg", "ours bf", "skimage cg_mg")


@dataclass
class Case:
    name: str
    data: np.ndarray
    labels: np.ndarray
    spacing: tuple | None = None
    note: str = ""

    @property
    def size(self) -> str:
        return " x ".join(str(n) for n in self.labels.shape)


@dataclass
class Row:
    case: str
    size: str
    method: str
    times: list = field(default_factory=list)
    agreement: float = math.nan  # share of voxels with scikit-image cg_mg's label
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else math.nan


def synthetic_volume(depth: int, height: int, width: int, num_labels: int, seed: int = 0):
    """A 3D Voronoi scene with noise (grey levels 0.1..0.9, noise 0.05) and scribbles.

    Each region gets a horizontal stroke through its site, in the site's slice and every
    ``depth // 4`` slices from it, kept inside the region. Returns (data, markers 1..L).
    """
    rng = np.random.default_rng(seed)
    sites = np.stack([rng.integers(0, n, num_labels) for n in (depth, height, width)], axis=1)
    zz, yy, xx = np.mgrid[0:depth, 0:height, 0:width]
    best = np.full((depth, height, width), np.inf)
    regions = np.zeros((depth, height, width), dtype=np.int64)
    for label, (z, y, x) in enumerate(sites):
        d = (zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2
        closer = d < best
        best[closer], regions[closer] = d[closer], label
    levels = 0.1 + 0.8 * rng.permutation(num_labels) / max(1, num_labels - 1)
    data = levels[regions] + 0.05 * rng.standard_normal(regions.shape)
    markers = np.zeros(regions.shape, dtype=np.int64)
    half, step = max(1, width // 16), max(1, depth // 4)
    for label, (z, y, x) in enumerate(sites):
        for k in range(-depth, depth + 1, step):
            if 0 <= z + k < depth:
                x0, x1 = max(0, x - half), min(width, x + half + 1)
                inside = regions[z + k, y, x0:x1] == label
                markers[z + k, y, x0:x1][inside] = label + 1
    return data, markers


def acdc_dir() -> Path | None:
    for root in SHARED_DATA:
        if (root / "acdc-volumes").is_dir():
            return root / "acdc-volumes"
    return None


def acdc_cases(limit: int) -> list[Case]:
    """The ACDC volumes with their scribbles as markers (class c -> label c + 1, 4 -> unknown)."""
    import h5py

    folder = acdc_dir()
    cases = []
    for path in sorted(folder.glob("*.h5"))[:limit] if folder else []:
        with h5py.File(path, "r") as f:
            image, scribble = f["image"][:], f["scribble"][:].astype(np.int64)
        labels = np.where(scribble < 4, scribble + 1, 0)
        cases.append(Case(f"ACDC {path.stem}", image, labels, ACDC_SPACING))
    return cases


def methods(spacing, skimage_ok: bool):
    import rawks_triton as rt

    def ours(mode):
        return lambda data, labels: rt.random_walker(data, labels, beta=BETA, tol=TOL, mode=mode, spacing=spacing)

    table = {
        "ours auto (default)": lambda data, labels: rt.random_walker(data, labels, beta=BETA, spacing=spacing),
        "ours cg_j": ours("cg_j"),
        "ours cg_mg": ours("cg_mg"),
        "ours bf": ours("bf"),
    }
    if skimage_ok:
        from skimage.segmentation import random_walker as skimage_random_walker

        table["skimage cg_mg"] = lambda data, labels: skimage_random_walker(
            data, labels, beta=BETA, tol=TOL, mode="cg_mg", spacing=spacing
        )
    return table


def separator(grid) -> int:
    """The product of all sizes but the largest: what the direct solve's fill-in grows with."""
    return math.prod(sorted(grid)[:-1])


def measure(fn, repeats: int, budget: float):
    """(result, wall seconds): one untimed call, then up to ``repeats`` timed ones within ``budget``.

    A first call longer than ``budget`` is the only one, and is kept as the measurement (a
    solve of many seconds has no warm-up worth removing).
    """
    result, first = first_call(fn)
    if first > budget:
        return result, [first]
    return result, timed_calls(fn, repeats, budget, first)[0]


def run_case(case: Case, names, repeats: int, budget: float, skimage_ok: bool, log) -> list[Row]:
    table = methods(case.spacing, skimage_ok)
    rows, outputs = [], {}
    for name in names:
        if name not in table:
            continue
        if name == "ours cg_j" and case.labels.size > CG_J_MAX_VOXELS:
            log(f"{case.name} {case.size} {name}: not run (Jacobi needs minutes at this size)")
            continue
        if name == "ours bf" and separator(case.labels.shape) > BF_MAX_SEPARATOR:
            log(f"{case.name} {case.size} {name}: not run (the direct solve's fill-in is too large)")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, times = measure(lambda fn=table[name]: fn(case.data, case.labels.copy()), repeats, budget)
        outputs[name] = out
        rows.append(Row(case.name, case.size, name, times, note=case.note))
        log(f"{case.name} {case.size} {name}: median {statistics.median(times):.3f} s over {len(times)} runs")
    reference = outputs.get("skimage cg_mg")
    for row in rows:
        if reference is not None:
            row.agreement = float(np.mean(outputs[row.method] == reference))
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [
        "| problem | size | method | median s | spread (min-max) s | runs | vs skimage cg_mg | labels = skimage |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    reference = {(r.case, r.size): r.median for r in rows if r.method == "skimage cg_mg"}
    for r in rows:
        ref = reference.get((r.case, r.size), math.nan)
        ratio = f"{ref / r.median:.2f}x" if math.isfinite(ref) and r.median > 0 else "-"
        agree = f"{100 * r.agreement:.3f}%" if math.isfinite(r.agreement) else "-"
        spread = f"{min(r.times):.3f}-{max(r.times):.3f}" if r.times else "-"
        lines.append(
            f"| {r.case} | {r.size} | {r.method} | {r.median:.3f} | {spread} | {len(r.times)} | {ratio} | {agree} |"
        )
    return "\n".join(lines)


def crossover_rows(image_sizes, volume_sizes, repeats: int, budget: float, log) -> list[Row]:
    rows = []
    cases = []
    for n in image_sizes:
        scene = make_scene(n, n, 3)
        cases.append((Case("scene", scene.image, scene.markers), ("ours bf", "ours cg_mg")))
    for shape in volume_sizes:
        data, markers = synthetic_volume(*shape, 3)
        cases.append((Case("volume", data, markers), ("ours bf", "ours cg_j")))
    for case, names in cases:
        rows += run_case(case, names, repeats, budget, skimage_ok=False, log=log)
    return rows


def format_crossover(rows: list[Row]) -> str:
    lines = [
        "| problem | size | method | median s | spread (min-max) s | runs |",
        "| --- | --- | --- | ---: | --- | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.size} | {r.method} | {r.median:.3f} | {min(r.times):.3f}-{max(r.times):.3f} "
            f"| {len(r.times)} |"
        )
    return "\n".join(lines)


def machine_line(argv, threads: int) -> str:
    command = "python -m bench.random_walker_bench " + shlex.join(argv)
    return (
        f"`{command}` on {datetime.date.today().isoformat()}: {cpu_model()}, {threads} torch thread(s), "
        f"torch {torch.__version__}, Python {platform.python_version()}; wall-clock seconds, the first call "
        f"untimed unless it took longer than the budget; beta {BETA:g}, tol {TOL:g}."
    )


def write_docs(path, blocks: dict) -> None:
    for name, text in blocks.items():
        if not write_between_markers(path, name, text):
            append_between_markers(path, name, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per method (after one untimed call)")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of timed calls per method and problem")
    parser.add_argument("--sizes", default="512,1024", help="image sizes of the synthetic scenes")
    parser.add_argument(
        "--volume-sizes", default="128", help="synthetic volumes: 'N' (N^3) or 'DxHxW', comma-separated ('' for none)"
    )
    parser.add_argument("--acdc", type=int, default=2, help="how many ACDC volumes (if present)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    parser.add_argument("--crossover", action="store_true", help="time bf against CG over sizes instead")
    parser.add_argument("--crossover-sizes", default="128,256,512,1024")
    parser.add_argument("--crossover-volumes", default="16,24,32,40,10x64x64,10x128x128,10x256x216")
    parser.add_argument("--write-docs", default=None, help="a docs page to write the tables into, between markers")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one timed call: the script runs")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    torch.set_num_threads(args.threads)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    def ints(text):
        return [int(s) for s in text.split(",") if s.strip()]

    def shapes(text):  # "32" is 32 x 32 x 32; "10x128x128" is (D, H, W)
        out = []
        for item in (s.strip() for s in text.split(",")):
            if item:
                dims = [int(n) for n in item.split("x")]
                out.append(tuple(dims * 3 if len(dims) == 1 else dims))
        return out

    if args.smoke:
        args.repeats, args.sizes, args.volume_sizes, args.acdc = 1, "24", "8", 0
        args.crossover_sizes, args.crossover_volumes = "16", "6"
    blocks = {}
    machine = machine_line(argv, args.threads)
    if args.crossover:
        rows = crossover_rows(
            ints(args.crossover_sizes), shapes(args.crossover_volumes), args.repeats, args.budget, log
        )
        table = format_crossover(rows)
        blocks["random-walker-crossover"] = f"{machine}\n\n{table}"
    else:
        try:
            import pyamg  # noqa: F401
            import skimage  # noqa: F401

            skimage_ok = True
        except ImportError:
            log("scikit-image or pyamg is not installed: no scikit-image column")
            skimage_ok = False
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in names if m not in METHODS]
        if unknown:
            parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
        cases = []
        for n in ints(args.sizes):
            scene = make_scene(n, n, 3)
            cases.append(Case("noisy scene", scene.image, scene.markers))
        cases += acdc_cases(args.acdc)
        for shape in shapes(args.volume_sizes):
            data, markers = synthetic_volume(*shape, 3)
            cases.append(Case("synthetic volume", data, markers))
        rows = []
        for case in cases:
            rows += run_case(case, names, args.repeats, args.budget, skimage_ok, log)
        table = format_table(rows)
        blocks["random-walker-cpu-machine"] = machine
        blocks["random-walker-cpu"] = table
    print(table)
    if args.write_docs:
        write_docs(args.write_docs, blocks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
