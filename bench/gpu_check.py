"""GPU check of the Triton backend: correctness against the torch backend, then timings.

    python -m bench.gpu_check                      # on a machine with a CUDA GPU
    python -m bench.gpu_check --write-docs docs/benchmarks.md

1. Correctness on CUDA, both models, float32 and float64, 64x64 up to 1024x1024, each
   preconditioner: the triton backend's P and gradient (of a fixed random linear loss)
   against the torch backend's (the same algorithm), with tolerances that follow from the
   solves' tolerance: each backend's P is within about ``rtol`` of the exact P wherever
   S >= tau, and its gradient within a few ``rtol`` of the largest entry
   (docs/numerics.md), so the two may differ by ``P_FACTOR`` (``GRAD_FACTOR``) times the
   sum of their accuracies, where a solve's accuracy is ``max(rtol, its certified error
   estimate)`` (a solve that stalled at the rounding floor is held to what it reports).
   Every input is drawn from seeded generators: the same problems and loss in every run.
2. Timings with ``triton.testing.do_bench`` (median and 20-80 percentiles) of forward and
   forward+backward at 512x512, batch 8, 3 labels per image, the default rtol, triton
   against torch in the same run, for each preconditioner.
3. Volumes (each preconditioner, as on images: the 7-point CG and multigrid kernels): the
   same correctness check on 2 volumes of 3 labels (``--volume-sizes``), and the timings of
   forward and forward+backward for 8 volumes of 64^3 with 3 labels (``--volume-bench-size``,
   ``--volume-batch``), triton against torch. On CUDA these are on by default; with
   ``--device cpu`` only when given (the interpreter is far too slow for 64^3).
4. Achieved bandwidth of the CG iterations against a device-to-device copy measured in
   the same run: bytes per iteration are counted as in docs/kernels.md ("Bytes per CG
   iteration"), times the forward iterations of every system, over the forward time. The
   count leaves out the multigrid cycle's own traffic, the host's convergence checks and
   the certifications, so the figure is a lower bound of the traffic the solve moves.

Without a GPU, ``--device cpu`` runs the same code on CPU tensors under the Triton
interpreter with wall-clock timing, as a smoke test of this script (tests/test_gpu_check.py);
its timings mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
import warnings
import zlib

import torch

CORRECTNESS_SIZES = (64, 128, 256, 512, 1024)
# The solves of the correctness check: tighter than the default, above each dtype's rounding
# floor (float32 resolves P to about 2e-5 at rtol 1e-4, docs/numerics.md).
CHECK_RTOL = {torch.float32: 1e-4, torch.float64: 1e-8}
# Error of one backend against the exact solution, in units of its accuracy (as in
# tests/test_learned_boundaries.py; docs/numerics.md measured at most 1.5 for P and 3.5
# for the gradient relative to its largest entry).
P_FACTOR, GRAD_FACTOR = 5.0, 10.0
# Rounding of the comparison itself, in units of the dtype's machine epsilon.
ROUNDING = 100.0
BENCH_RTOL = 1e-3  # the timings run at the library's default tolerance
DATA_SEED = 0
VOLUME_SIZES = (16, 64)  # the volume correctness check on CUDA
VOLUME_BENCH_SIZE, VOLUME_BATCH = 64, 8  # the volume timings on CUDA: 8 volumes of 64^3


def vector_passes(jacobi: bool) -> int:  # the same on images and volumes
    """Vector passes (each element of a system's vector read or written once) per CG iteration.

    Launch 1 reads r (or z) and p_old, writes p_new and A p: 4. Launch 2 reads x, r, p and
    A p, writes x and r: 6. Another preconditioner adds its own traffic (not counted) and
    one pass more to read z in the r' z reduction (r is then read twice more).
    """
    return 10 if jacobi else 12


def coefficient_passes(jacobi: bool, volume: bool = False) -> int:
    """Per-image coefficient passes per system and iteration: d, right, down (and deep on
    volumes), plus 1/d twice for Jacobi."""
    return (4 if volume else 3) + (2 if jacobi else 0)


def bytes_per_iteration(
    num_systems: int, pixels: int, dtype: torch.dtype, jacobi: bool = True, volume: bool = False
) -> int:
    element = torch.finfo(dtype).bits // 8
    return (vector_passes(jacobi) + coefficient_passes(jacobi, volume)) * num_systems * pixels * element


def framed_span(size: int, volume: bool) -> int:
    """hi - lo of the frame of a size x size image or size^3 volume: the positions the kernels move."""
    row = size + 2
    return size * row * row - 2 * row - 2 if volume else size * row - 2


def timer(device: torch.device, cpu_repeats: int = 3):
    """(median, p20, p80) milliseconds of fn(): do_bench on CUDA, wall clock elsewhere."""
    if device.type == "cuda":
        from triton.testing import do_bench

        def cuda_time(fn, warmup=25, rep=200):
            ms = do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8])
            return tuple(ms)

        return cuda_time

    def wall_time(fn):
        fn()  # warm-up
        samples = []
        for _ in range(cpu_repeats):
            start = time.perf_counter()
            fn()
            samples.append(1e3 * (time.perf_counter() - start))
        samples.sort()
        return statistics.median(samples), samples[0], samples[-1]

    return wall_time


def problem(size: int, batch: int, labels: int, model: str, dtype, device, volume: bool = False):
    if volume:
        return volume_problem(size, batch, labels, dtype, device)
    from bench.problems import make_batch

    b = make_batch(size, size, labels, batch, dtype=dtype, device=device)
    return b.inputs(model), b.seeds


def volume_problem(size: int, batch: int, labels: int, dtype, device):
    """``batch`` size^3 volumes: node scores uniform in [0, 2), and per volume and label a
    seed cube of 2^3 voxels at a random place (drawn from a generator seeded by the shape)."""
    generator = torch.Generator().manual_seed(zlib.crc32(repr((DATA_SEED, "volume", size, batch, labels)).encode()))
    scores = 2.0 * torch.rand((batch, size, size, size), generator=generator, dtype=torch.float64)
    seeds = torch.full((batch, size, size, size), -1, dtype=torch.int64)
    corners = torch.randint(0, max(size - 1, 1), (batch, labels, 3), generator=generator)
    for n in range(batch):
        for label in range(labels):
            z, y, x = corners[n, label].tolist()
            seeds[n, z : z + 2, y : y + 2, x : x + 2] = label
    return scores.to(device=device, dtype=dtype), seeds.to(device)


def loss_weights(shape, dtype, device, *key) -> torch.Tensor:
    """The incoming gradient of the check: standard normal, from a generator seeded by ``key``
    (drawn on the CPU, so every device gets the same numbers)."""
    generator = torch.Generator().manual_seed(zlib.crc32(repr((DATA_SEED,) + key).encode()))
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)


def accuracy(result, rtol: float, adjoint: bool = False) -> float:
    """max(rtol, the largest certified error estimate of the forward (and adjoint) solve)."""
    errors = [result.error] + ([result.adjoint_error] if adjoint else [])
    return max([rtol] + [float(e.max()) for e in errors if e is not None and e.numel()])


def converged(result) -> bool:
    adjoint = result.adjoint_converged
    return bool(result.converged.all()) and (adjoint is None or bool(adjoint.all()))


def compare_backends(model, dtype, size, preconditioner, device, batch=2, labels=3, volume=False) -> dict:
    """One correctness row: triton against torch on the same problem and loss (images, or
    size^3 volumes)."""
    import rawks_triton as rt

    rtol = CHECK_RTOL[dtype]
    boundary, seeds = problem(size, batch, labels, model, dtype, device, volume)
    leaves, results = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rt.ConvergenceWarning)  # reported in the row instead
        for backend in ("triton", "torch"):
            leaves[backend] = boundary.clone().requires_grad_(True)
            results[backend] = rt.propagate(
                leaves[backend], seeds, labels, model=model, backend=backend, rtol=rtol, preconditioner=preconditioner
            )
        tri, ref = results["triton"], results["torch"]
        # Pixels whose reachability rounding cannot flip: S at least 10 tau, or below tau / 10,
        # in both solves. The loss ignores the others (there P jumps between its two definitions).
        tau = rt.reach_threshold(model, dtype)
        S = {k: r.Z.detach().sum(1) for k, r in results.items()}
        settled = ((S["triton"] >= 10 * tau) & (S["torch"] >= 10 * tau)) | (
            (S["triton"] <= tau / 10) & (S["torch"] <= tau / 10)
        )
        key = (model, str(dtype), size, preconditioner) + (("volume",) if volume else ())
        weights = loss_weights(tuple(tri.P.shape), dtype, device, *key)
        weights = weights * settled.unsqueeze(1)
        grads = {}
        for backend, result in results.items():
            (grads[backend],) = torch.autograd.grad((result.P * weights).sum(), leaves[backend])
    eps = torch.finfo(dtype).eps
    acc_tri, acc_ref = accuracy(tri, rtol), accuracy(ref, rtol)
    p_tol = P_FACTOR * (acc_tri + acc_ref) + ROUNDING * eps
    g_tol = GRAD_FACTOR * (accuracy(tri, rtol, adjoint=True) + accuracy(ref, rtol, adjoint=True)) + ROUNDING * eps
    reach_mismatch = int(((tri.reachable != ref.reachable) & settled).sum())
    both = (tri.reachable & ref.reachable & settled).unsqueeze(1).expand_as(tri.P)
    p_diff = float(torch.where(both, (tri.P - ref.P).detach().abs(), torch.zeros_like(tri.P)).max())
    g_scale = float(grads["torch"].abs().max())
    g_diff = float((grads["triton"] - grads["torch"]).abs().max()) / max(g_scale, torch.finfo(dtype).tiny)
    finite = all(bool(torch.isfinite(t).all()) for t in (tri.P, grads["triton"]))
    # Non-convergence is reported, and is a mismatch only where torch converged (the same
    # algorithm stalling in both, at the rounding floor of the dtype, is a property of the problem).
    status_ok = converged(tri) or not converged(ref)
    ok = finite and status_ok and reach_mismatch == 0 and p_diff <= p_tol and g_diff <= g_tol
    return dict(
        model=model,
        dtype=str(dtype).replace("torch.", ""),
        size=size,
        volume=volume,
        preconditioner=preconditioner,
        rtol=rtol,
        p_diff=p_diff,
        p_tol=p_tol,
        grad_rel_diff=g_diff,
        grad_tol=g_tol,
        reach_mismatch=reach_mismatch,
        error=float(max(acc_tri, acc_ref)),
        converged=converged(tri),
        torch_converged=converged(ref),
        iterations=int(tri.iterations.max()),
        torch_iterations=int(ref.iterations.max()),
        adjoint_iterations=int(tri.adjoint_iterations.max()),
        torch_adjoint_iterations=int(ref.adjoint_iterations.max()),
        ok=ok,
    )


def grid_name(size: int, volume: bool) -> str:
    return f"{size}^3" if volume else str(size)


def check_correctness(
    sizes, models, device, log, preconditioners=("multigrid", "jacobi"), volume_sizes=()
) -> list[dict]:
    """Images of every size with each preconditioner, then volumes with each preconditioner."""
    rows = []
    for model in models:
        for dtype in (torch.float32, torch.float64):
            cases = [(p, size, False) for p in preconditioners for size in sizes]
            cases += [(p, size, True) for p in preconditioners for size in volume_sizes]
            for preconditioner, size, volume in cases:
                row = compare_backends(model, dtype, size, preconditioner, device, volume=volume)
                log(
                    f"  {model:5} {row['dtype']:7} {preconditioner:9} {grid_name(size, volume):>5}  "
                    f"max|dP| {row['p_diff']:.1e} "
                    f"(tol {row['p_tol']:.1e})  grad rel {row['grad_rel_diff']:.1e} (tol {row['grad_tol']:.1e})  "
                    f"iters {row['iterations']}/{row['torch_iterations']}  "
                    f"{'converged' if row['converged'] else 'NOT converged'}  {'ok' if row['ok'] else 'MISMATCH'}"
                )
                rows.append(row)
    return rows


def copy_bandwidth(device, measure, nbytes=1 << 30) -> float:
    """GB/s of a device-to-device copy of ``nbytes`` (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = measure(lambda: dst.copy_(src))[0]
    return 2 * nbytes / (ms * 1e-3) / 1e9


def time_solves(size, batch, labels, models, device, measure, preconditioners, log, volume=False) -> list[dict]:
    import rawks_triton as rt

    rows = []
    grid = (size,) * (3 if volume else 2)
    for model in models:
        boundary, seeds = problem(size, batch, labels, model, torch.float32, device, volume)
        key = ("timing", model, size) + (("volume",) if volume else ())
        weights = loss_weights((batch, labels) + grid, torch.float32, device, *key)
        for preconditioner in preconditioners:
            for backend in ("torch", "triton"):
                kw = dict(model=model, backend=backend, rtol=BENCH_RTOL, preconditioner=preconditioner)
                b = boundary.clone().requires_grad_(True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", rt.ConvergenceWarning)  # the row says whether it converged
                    result = rt.propagate(b, seeds, labels, **kw)
                    (result.P * weights).sum().backward()  # a loss whose adjoint is not trivial (sum_l P = 1)

                    def forward(boundary=boundary, seeds=seeds, kw=kw):
                        return rt.propagate(boundary, seeds, labels, **kw)

                    def forward_backward(b=b, seeds=seeds, kw=kw, weights=weights):
                        (rt.propagate(b, seeds, labels, **kw).P * weights).sum().backward()

                    fwd, fwd_bwd = measure(forward), measure(forward_backward)
                # Bytes of the triton kernels' CG passes (docs/kernels.md) times the forward
                # iterations of every system; the torch backend moves other (more) traffic.
                # The kernels move the framed range [lo, hi) of every vector (framed_span).
                iterations = int(result.iterations.sum())
                jacobi = preconditioner == "jacobi"
                per_iteration = bytes_per_iteration(1, framed_span(size, volume), torch.float32, jacobi, volume)
                gbps = per_iteration * iterations / (fwd[0] * 1e-3) / 1e9 if backend == "triton" else None
                row = dict(
                    model=model,
                    backend=backend,
                    preconditioner=preconditioner,
                    size=size,
                    volume=volume,
                    batch=batch,
                    labels=labels,
                    forward_ms=fwd,
                    forward_backward_ms=fwd_bwd,
                    max_iterations=int(result.iterations.max()),
                    max_adjoint_iterations=int(result.adjoint_iterations.max()),
                    systems=int(result.iterations.numel()),
                    converged=converged(result),
                    gbps=gbps,
                )
                log(
                    f"  {model:5} {backend:6} {preconditioner:9} {grid_name(size, volume):>5} "
                    f"fwd {fwd[0]:8.2f} ms  fwd+bwd {fwd_bwd[0]:8.2f} ms  "
                    f"iters {row['max_iterations']}/{row['max_adjoint_iterations']}  "
                    + (f"{gbps:.0f} GB/s" if gbps is not None else "")
                    + ("" if row["converged"] else "  NOT converged")
                )
                rows.append(row)
    return rows


def tables(check_rows, time_rows, copy_gbps, info) -> str:
    lines = [f"Device: {info['device']}; {info['date']}; torch {info['torch']}, triton {info['triton']}.", ""]
    rtols = " / ".join(f"{rtol:g} {str(dtype).replace('torch.', '')}" for dtype, rtol in CHECK_RTOL.items())
    lines += [
        f"Correctness, triton against torch on the same device (2 images or volumes (size^3), 3 labels, seeded "
        f"data and loss, "
        f"rtol {rtols}). Tolerances: {P_FACTOR:g} (P) and {GRAD_FACTOR:g} (gradient, relative to its largest "
        f"entry) times the sum of both solves' accuracies, max(rtol, certified error estimate):",
        "",
        "| model | dtype | preconditioner | size | max abs dP | tol | grad rel diff | tol | worst estimate | "
        "iterations triton/torch (fwd, adjoint) | converged | ok |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in check_rows:
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['preconditioner']} | {grid_name(r['size'], r['volume'])} | "
            f"{r['p_diff']:.1e} | "
            f"{r['p_tol']:.1e} | {r['grad_rel_diff']:.1e} | {r['grad_tol']:.1e} | {r['error']:.1e} | "
            f"{r['iterations']}/{r['torch_iterations']}, {r['adjoint_iterations']}/{r['torch_adjoint_iterations']} | "
            f"{'yes' if r['converged'] else 'no'} | {'yes' if r['ok'] else 'NO'} |"
        )
    lines += [
        "",
        f"Timings ({info['timer']}, median [20%, 80%] ms), float32, rtol {BENCH_RTOL:g}, a random "
        f"linear loss; device-to-device copy: {copy_gbps:.0f} GB/s in the same run. CG GB/s: the triton kernels' "
        "CG passes (docs/kernels.md) over the forward time, a lower bound (the multigrid cycle, host checks and "
        "certifications are not counted).",
        "",
        "| model | preconditioner | backend | size | batch x labels | forward ms | fwd+bwd ms | "
        "max iterations (fwd, adjoint) | converged | CG GB/s | % of copy | speed-up fwd+bwd vs torch |",
        "|---|---|---|---:|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    base = {(r["model"], r["preconditioner"], r["volume"]): r for r in time_rows if r["backend"] == "torch"}
    for r in time_rows:
        ref = base.get((r["model"], r["preconditioner"], r["volume"]))
        speedup = f"{ref['forward_backward_ms'][0] / r['forward_backward_ms'][0]:.2f}x" if ref else "-"
        f, fb = r["forward_ms"], r["forward_backward_ms"]
        gbps = "-" if r["gbps"] is None else f"{r['gbps']:.0f}"
        share = "-" if r["gbps"] is None else f"{100 * r['gbps'] / copy_gbps:.0f}%"
        lines.append(
            f"| {r['model']} | {r['preconditioner']} | {r['backend']} | {grid_name(r['size'], r['volume'])} | "
            f"{r['batch']} x {r['labels']} | "
            f"{f[0]:.2f} [{f[1]:.2f}, {f[2]:.2f}] | {fb[0]:.2f} [{fb[1]:.2f}, {fb[2]:.2f}] | "
            f"{r['max_iterations']}, {r['max_adjoint_iterations']} | {'yes' if r['converged'] else 'no'} | "
            f"{gbps} | {share} | {speedup} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(CORRECTNESS_SIZES))
    parser.add_argument("--bench-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--labels", type=int, default=3)
    parser.add_argument(
        "--preconditioners", nargs="+", default=["multigrid", "jacobi"], choices=["multigrid", "jacobi"]
    )
    parser.add_argument("--models", nargs="+", default=["rawks", "grady"], choices=["rawks", "grady"])
    parser.add_argument(
        "--volume-sizes", type=int, nargs="*", help=f"volume correctness sizes (CUDA default {list(VOLUME_SIZES)})"
    )
    parser.add_argument(
        "--volume-bench-size", type=int, help=f"volume timing size, 0 for none (CUDA default {VOLUME_BENCH_SIZE})"
    )
    parser.add_argument("--volume-batch", type=int, default=VOLUME_BATCH)
    parser.add_argument("--cpu-repeats", type=int, default=3, help="timed calls per measurement without CUDA")
    parser.add_argument("--write-docs", metavar="PATH", help="write the tables between <!-- gpu-check --> markers")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or --device cpu with TRITON_INTERPRET=1 (smoke test)")
        return 2
    import triton

    from rawks_triton.backends import triton_available

    if not triton_available(device):
        print(f"triton cannot run on {device}: use a CUDA device, or --device cpu with TRITON_INTERPRET=1 (smoke test)")
        return 2
    info = dict(
        device=torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor()}), Triton interpreter",
        date=datetime.date.today().isoformat(),
        torch=torch.__version__,
        triton=triton.__version__,
        timer="`triton.testing.do_bench`" if device.type == "cuda" else "wall clock",
    )
    # The volume cases run on CUDA by default; under the interpreter only when asked for.
    on_gpu = device.type == "cuda"
    volume_sizes = args.volume_sizes if args.volume_sizes is not None else list(VOLUME_SIZES) if on_gpu else []
    volume_bench = args.volume_bench_size if args.volume_bench_size is not None else VOLUME_BENCH_SIZE * on_gpu
    log = print
    log(f"{info['device']}  {info['date']}")
    log("correctness:")
    check_rows = check_correctness(args.sizes, args.models, device, log, args.preconditioners, volume_sizes)
    measure = timer(device, args.cpu_repeats)
    copy_gbps = copy_bandwidth(device, measure, nbytes=(1 << 30) if device.type == "cuda" else (1 << 22))
    log(f"device-to-device copy: {copy_gbps:.0f} GB/s")
    log("timings:")
    time_rows = time_solves(
        args.bench_size, args.batch, args.labels, args.models, device, measure, args.preconditioners, log
    )
    if volume_bench:
        time_rows += time_solves(
            volume_bench,
            args.volume_batch,
            args.labels,
            args.models,
            device,
            measure,
            args.preconditioners,
            log,
            volume=True,
        )
    text = tables(check_rows, time_rows, copy_gbps, info)
    print()
    print(text)
    correct = all(r["ok"] for r in check_rows)
    if args.write_docs and not correct:
        print(f"not writing {args.write_docs}: the correctness check failed (no timings of a wrong answer)")
    elif args.write_docs:
        from bench.compare import write_docs

        write_docs(args.write_docs, {"gpu-check": text})
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
