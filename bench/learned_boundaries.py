"""Propagation on boundaries that a trained network produces: accuracy against the exact
solve, and the time of forward + backward, for the default path and its peers.

    python -m bench.learned_boundaries --checkpoint runs/lb/checkpoint.pt \\
        --data-root ../shared/data/grabcut --threads 1,2 --write-docs docs/benchmarks.md

The boundary scores B are the output, at full image resolution, of the boundary network of
a ``rawks train`` checkpoint (docs/benchmarks.md gives the training command) on every
``--every``-th GrabCut image, with that image's ``--scribble-set`` scribbles, two labels,
the "rawks" model. On such B the total weight S = sum_l Z_l spans twenty orders of
magnitude: walls of scores 20 to 50 close off pockets.

For each image and method: the share of pixels the method calls unreachable (against the
exact solve's), the largest |P - P_exact| over the pixels both call reachable, the forward
and adjoint iterations (largest over the labels), whether both solves say "converged", and
the time of one forward + backward (loss sum(P * g) with a fixed random g), median and
range over ``--repeats`` timed runs after one untimed run, in one process, for every
thread count of ``--threads``. The reference for accuracy and speed is the "scipy"
backend: sparse LU in float64, exact.

Nothing is asserted: this is a measurement. ``--write-docs PATH`` replaces the text
between ``<!-- learned-boundaries:begin -->`` and ``<!-- learned-boundaries:end -->``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import platform
import statistics
import sys
import warnings

import numpy as np
import torch

import rawks_triton as rt
from bench.harness import timed_calls

METHODS = {
    # name: (propagate keyword arguments, dtype of B)
    "default (float32)": ({}, torch.float32),
    "torch multigrid float64": ({"backend": "torch"}, torch.float64),
    "torch Jacobi float32": ({"backend": "torch", "preconditioner": "jacobi"}, torch.float32),
    "scipy LU float64": ({"backend": "scipy"}, torch.float64),
}
REFERENCE = "scipy LU float64"


def load_problems(checkpoint: str, root: str, scribble_set: str, every: int, scale: float):
    """[(name, B [1, 1, H, W] float32, seeds [1, H, W])] from the checkpoint's boundary network."""
    from rawks_triton.training import GrabCutDataset, load_checkpoint, networks_from_checkpoint

    _, _, b_net, _ = networks_from_checkpoint(load_checkpoint(checkpoint), source=checkpoint)
    if b_net is None:
        raise SystemExit(f"{checkpoint} has no boundary network (train with --protocol joint)")
    dataset = GrabCutDataset(root, scribble_set)
    problems = []
    for index in range(0, len(dataset), every):
        sample = dataset[index]
        with torch.no_grad():
            boundary = b_net(sample.image[None]).float()
        seeds = sample.scribbles[None]
        if scale != 1.0:
            from rawks_triton.training import downsample_scribbles

            size = (round(boundary.shape[-2] * scale), round(boundary.shape[-1] * scale))
            boundary = torch.nn.functional.adaptive_avg_pool2d(boundary, size)
            seeds = downsample_scribbles(seeds, size, 2)
        problems.append((dataset.names[index], boundary, seeds))
    return problems


def forward_backward(boundary, seeds, weights, kwargs, dtype):
    leaf = boundary.to(dtype).clone().requires_grad_(True)
    result = rt.propagate(leaf, seeds, 2, **kwargs)
    (result.P * weights.to(dtype)).sum().backward()
    return result, leaf.grad


def run(problems, methods, threads_list, repeats: int, log=print):
    rows = []
    for name, boundary, seeds in problems:
        g = torch.from_numpy(np.random.default_rng(len(name)).standard_normal((1, 2) + tuple(seeds.shape[-2:])))
        exact, _ = forward_backward(boundary, seeds, g, METHODS[REFERENCE][0], torch.float64)
        exact_P, exact_reach = exact.P.detach(), exact.reachable
        for threads in threads_list:
            torch.set_num_threads(threads)
            times = {}
            for method in methods:
                kwargs, dtype = METHODS[method]
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", rt.ConvergenceWarning)
                    result, _ = forward_backward(boundary, seeds, g, kwargs, dtype)
                    seconds, _ = timed_calls(
                        functools.partial(forward_backward, boundary, seeds, g, kwargs, dtype), repeats
                    )
                both = result.reachable & exact_reach
                diff = (result.P.detach().double() - exact_P).abs().amax(dim=1)
                times[method] = statistics.median(seconds)
                row = dict(
                    image=name,
                    size=f"{seeds.shape[-2]}x{seeds.shape[-1]}",
                    threads=threads,
                    method=method,
                    unreachable=100 * float((~result.reachable).float().mean()),
                    exact_unreachable=100 * float((~exact_reach).float().mean()),
                    max_error=float(diff[both].max()) if bool(both.any()) else 0.0,
                    iterations=f"{int(result.iterations.max())} / {int(result.adjoint_iterations.max())}",
                    converged=bool(result.converged.all()) and bool(result.adjoint_converged.all()) and not caught,
                    median=times[method],
                    low=min(seconds),
                    high=max(seconds),
                )
                rows.append(row)
                log(format_row(row, times.get(REFERENCE)))
            for row in rows:
                if row["image"] == name and row["threads"] == threads and REFERENCE in times:
                    row["speedup"] = times[REFERENCE] / row["median"]
    return rows


HEADER = (
    "| image | size | threads | method | unreachable % (exact) | max abs(P - P_exact) | iterations fwd / adj "
    "| converged | fwd+bwd median s (range) | speed-up vs scipy |"
)


def format_row(row, reference_time=None) -> str:
    speedup = row.get("speedup") or (reference_time / row["median"] if reference_time else None)
    return (
        f"| {row['image']} | {row['size']} | {row['threads']} | {row['method']} | {row['unreachable']:.2f} "
        f"({row['exact_unreachable']:.2f}) | {row['max_error']:.1e} | {row['iterations']} | "
        f"{'yes' if row['converged'] else 'no'} | {row['median']:.3f} ({row['low']:.3f}-{row['high']:.3f}) | "
        f"{'-' if speedup is None else f'{speedup:.2f}x'} |"
    )


def summary(rows, methods, threads_list) -> list[str]:
    lines = [
        "| method | threads | max unreachable % | max abs(P - P_exact) | all converged "
        "| median speed-up vs scipy (range) |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for method in methods:
        for threads in threads_list:
            mine = [r for r in rows if r["method"] == method and r["threads"] == threads]
            if not mine:
                continue
            speedups = [r["speedup"] for r in mine if "speedup" in r]
            lines.append(
                f"| {method} | {threads} | {max(r['unreachable'] for r in mine):.2f} | "
                f"{max(r['max_error'] for r in mine):.1e} | {'yes' if all(r['converged'] for r in mine) else 'no'} | "
                + (f"{statistics.median(speedups):.2f}x ({min(speedups):.2f}-{max(speedups):.2f})" if speedups else "-")
                + " |"
            )
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a `rawks train --protocol joint` checkpoint")
    parser.add_argument("--data-root", default="../shared/data/grabcut")
    parser.add_argument("--scribble-set", default="scribbles-set-1")
    parser.add_argument("--every", type=int, default=5, help="every k-th image in name order (default 5: 6 images)")
    parser.add_argument("--scale", type=float, default=1.0, help="propagate at this fraction of the resolution")
    parser.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--methods",
        default=",".join(m for m in METHODS if "Jacobi" not in m),
        help="comma-separated, from: "
        + ", ".join(METHODS)
        + " (default: all but Jacobi, which takes minutes an image)",
    )
    parser.add_argument("--note", default="")
    parser.add_argument("--write-docs", metavar="PATH")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            parser.error(f"--methods: unknown method {m!r}; known: {list(METHODS)}")
    if REFERENCE not in methods:
        methods.append(REFERENCE)
    threads_list = [int(t) for t in args.threads.split(",")]
    problems = load_problems(args.checkpoint, args.data_root, args.scribble_set, args.every, args.scale)
    print(HEADER)
    print("| --- " * 10 + "|")
    rows = run(problems, methods, threads_list, args.repeats)
    table = [HEADER, "| --- " * 10 + "|"] + [format_row(r) for r in rows]
    lines = (
        [
            f"- machine: {platform.processor() or platform.machine()} "
            f"({torch.get_num_interop_threads()} inter-op threads), "
            f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}",
            f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
            f"- versions: python {platform.python_version()}, torch {torch.__version__}, rawks_triton {rt.__version__}",
            f"- command: `python -m bench.learned_boundaries {' '.join(sys.argv[1:] if argv is None else argv)}`",
        ]
        + ([f"- note: {args.note}"] if args.note else [])
        + ["", *summary(rows, methods, threads_list), "", *table]
    )
    print()
    print("\n".join(summary(rows, methods, threads_list)))
    if args.write_docs:
        from bench.markers import write_between_markers

        if not write_between_markers(args.write_docs, "learned-boundaries", "\n".join(lines)):
            print(f"no learned-boundaries markers in {args.write_docs}; nothing written", file=sys.stderr)


if __name__ == "__main__":
    main()
