"""Forward and forward+backward CPU time of multigrid CG on the comparison script's Grady problem.

    python -m bench.multigrid_forward_backward
    python -m bench.multigrid_forward_backward --sizes 256 --repeats 5

(scikit-image's weights, beta 130, 3 labels, float32, rtol 1e-4, one torch thread, CPU-time
median of 3 after one untimed call; the loss of the backward is sum P * w with random w.)
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import torch

from bench.harness import propagate_calls, solver_options, timed_calls
from bench.problems import make_batch

LABELS = 3
RTOL = 1e-4


def measure_size(size: int, repeats: int, labels: int = LABELS):
    """Yields one line per call (forward, forward+backward): median CPU ms, range, iterations, warnings."""
    batch = make_batch(size, size, labels, 1, dtype=torch.float32)
    weights = torch.randn(1, labels, size, size)
    options = solver_options("torch", RTOL, "multigrid")
    forward, forward_backward = propagate_calls(batch.grady_edges, batch.seeds, labels, "grady", weights, **options)
    for name, fn in (("forward", forward), ("forward+backward", forward_backward)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fn()
        _, cpu_seconds = timed_calls(fn, repeats)
        ms = [1e3 * t for t in cpu_seconds]
        adjoint = result.adjoint_iterations
        adjoint_converged = result.adjoint_converged
        yield (
            f"{size}x{size} {name}: median CPU {statistics.median(ms):.0f} ms ({min(ms):.0f}-{max(ms):.0f}), "
            f"iterations fwd {int(result.iterations.max())}, "
            f"adjoint {None if adjoint is None else int(adjoint.max())}, "
            f"adjoint converged {None if adjoint_converged is None else bool(adjoint_converged.all())}, "
            f"warnings {len(caught)}"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.multigrid_forward_backward", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sizes", default="512,1024", help="comma-separated square image sides")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per size, after one untimed call")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for size in (int(s) for s in args.sizes.split(",") if s):
        for line in measure_size(size, args.repeats):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
