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
speed goals (met or not) and every size and peer where this library is slower. Peers
that are not installed (``pip install -e .[bench]``) are left out with a note.

This module is the command line; the runs are in bench/harness.py, the tables, CSV, plot and
docs blocks in bench/report.py.
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
        value = (
            arg.split("=", 1)[1]
            if arg.startswith("--threads=")
            else argv[i + 1]
            if arg == "--threads" and i + 1 < len(argv)
            else None
        )
        if value is not None:
            for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(name, value)


if __name__ == "__main__":
    _pin_library_threads(sys.argv[1:])


import argparse  # noqa: E402
import json  # noqa: E402

import torch  # noqa: E402

from bench.harness import CLOCK, run_grady, run_rawks  # noqa: E402
from bench.report import doc_blocks, format_tables, machine_info, plot, write_csv, write_docs  # noqa: E402

__all__ = ["main", "write_docs"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
        "--threads",
        type=int,
        default=None,
        help="torch threads, and (when run as a script) the BLAS/OpenMP threads of numpy and scipy "
        "(default: their own choice)",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="clock of the medians, speed-ups and plot; 'cpu' (with --threads 1) is steadier on a shared machine",
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny run that checks the script works")
    parser.add_argument("--skip-grady", action="store_true")
    parser.add_argument("--skip-rawks", action="store_true")
    parser.add_argument(
        "--methods",
        default="",
        help="comma-separated substrings: only the Grady methods whose name contains one (e.g. 'f32,skimage')",
    )
    parser.add_argument(
        "--note", default="", help="a line about the run for the tables' header (e.g. 'machine shared')"
    )
    parser.add_argument(
        "--write-docs",
        nargs="?",
        const=os.path.join("docs", "benchmarks.md"),
        default=None,
        metavar="PATH",
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
    log(
        f"wrote {stem}.csv, {stem}.json"
        + (f", {stem}.png" if plotted else " (no plot: matplotlib missing or no Grady rows)")
    )
    if args.write_docs:
        appended = write_docs(args.write_docs, doc_blocks(rows, info, device))
        log(
            f"wrote the tables into {args.write_docs}"
            + (f" (markers appended: {', '.join(appended)})" if appended else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
