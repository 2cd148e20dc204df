"""GPU check of the Triton backend: correctness against the torch backend, then timings.

    python -m bench.gpu_check                      # on a machine with a CUDA GPU
    python -m bench.gpu_check --write-docs docs/benchmarks.md

1. Correctness on CUDA, both models, float32 and float64, 64x64 up to 1024x1024: the
   triton backend's P against the torch backend's (same algorithm) and the relative
   residual of every system; the adjoint (gradient of a random linear loss) likewise.
2. Timings with ``triton.testing.do_bench`` (median and 20-80 percentiles) of forward and
   forward+backward at 512x512, batch 8, 3 labels per image, rtol 1e-4, triton against
   torch in the same run, for each available preconditioner.
3. Achieved bandwidth of the CG iterations against a device-to-device copy measured in
   the same run: bytes per iteration are counted as in docs/benchmarks.md ("Bytes per CG
   iteration"), times iterations, over the solve time.

Without a GPU, ``--device cpu`` runs the same code on CPU tensors under the Triton
interpreter with wall-clock timing, as a smoke test of this script (tests/test_gpu_check.py);
its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time

import torch

CORRECTNESS_SIZES = (64, 128, 256, 512, 1024)


def vector_passes(jacobi: bool) -> int:
    """Vector passes ([S, H, W], each element read or written once) per CG iteration.

    Launch 1 reads r (or z) and p_old, writes p_new and A p: 4. Launch 2 reads x, r, p and
    A p, writes x and r: 6. Another preconditioner adds its own traffic (not counted) and
    one pass more to read z in the r' z reduction (r is then read twice more).
    """
    return 10 if jacobi else 12


def coefficient_passes(jacobi: bool) -> int:
    """Per-image coefficient passes per system and iteration: d, right, down (+ 1/d twice for Jacobi)."""
    return 5 if jacobi else 3


def bytes_per_iteration(num_systems: int, pixels: int, dtype: torch.dtype, jacobi: bool = True) -> int:
    element = torch.finfo(dtype).bits // 8
    return (vector_passes(jacobi) + coefficient_passes(jacobi)) * num_systems * pixels * element


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


def problem(size: int, batch: int, labels: int, model: str, dtype, device):
    from bench.problems import make_batch

    b = make_batch(size, size, labels, batch, dtype=dtype, device=device)
    return b.inputs(model), b.seeds


def check_correctness(sizes, models, device, log) -> list[dict]:
    import rawks_triton as rt

    rows = []
    for model in models:
        for dtype in (torch.float32, torch.float64):
            rtol = 1e-5 if dtype == torch.float32 else 1e-8
            for size in sizes:
                boundary, seeds = problem(size, 2, 3, model, dtype, device)
                weights = torch.randn((2, 3, size, size), dtype=dtype, device=device)
                out = {}
                for backend in ("triton", "torch"):
                    b = boundary.clone().requires_grad_(True)
                    result = rt.propagate(b, seeds, 3, model=model, backend=backend, rtol=rtol)
                    (result.P * weights).sum().backward()
                    out[backend] = (result, b.grad)
                (tri, g_tri), (ref, g_ref) = out["triton"], out["torch"]
                p_diff = float((tri.P - ref.P).detach().abs().max())
                g_diff = float((g_tri - g_ref).abs().max() / g_ref.abs().max().clamp(min=1e-30))
                ok = bool(tri.converged.all()) and bool(tri.adjoint_converged.all())
                ok = ok and p_diff <= 1e3 * rtol and g_diff <= 1e3 * rtol
                row = dict(model=model, dtype=str(dtype).replace("torch.", ""), size=size, p_diff=p_diff,
                           grad_rel_diff=g_diff, residual=float(tri.residual.max()),
                           iterations=int(tri.iterations.max()), torch_iterations=int(ref.iterations.max()), ok=ok)
                log(f"  {model:5} {row['dtype']:7} {size:5}  max|dP| {p_diff:.2e}  grad rel {g_diff:.2e}  "
                    f"iters {row['iterations']}/{row['torch_iterations']}  {'ok' if ok else 'MISMATCH'}")
                rows.append(row)
    return rows


def copy_bandwidth(device, measure, nbytes=1 << 30) -> float:
    """GB/s of a device-to-device copy of ``nbytes`` (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = measure(lambda: dst.copy_(src))[0]
    return 2 * nbytes / (ms * 1e-3) / 1e9


def time_solves(size, batch, labels, models, device, measure, preconditioners, log) -> list[dict]:
    import rawks_triton as rt

    rows = []
    for model in models:
        boundary, seeds = problem(size, batch, labels, model, torch.float32, device)
        for preconditioner in preconditioners:
            for backend in ("torch", "triton"):
                kw = dict(model=model, backend=backend, rtol=1e-4, preconditioner=preconditioner)
                try:
                    result = rt.propagate(boundary, seeds, labels, **kw)
                except ValueError as err:  # e.g. a preconditioner this backend does not have
                    log(f"  {model} {backend} {preconditioner}: skipped ({err})")
                    continue
                b = boundary.clone().requires_grad_(True)

                def forward():
                    return rt.propagate(boundary, seeds, labels, **kw)

                def forward_backward():
                    rt.propagate(b, seeds, labels, **kw).P.sum().backward()

                fwd, fwd_bwd = measure(forward), measure(forward_backward)
                iterations = int(result.iterations.sum())  # summed over systems
                pixels = size * size
                systems = int(result.iterations.numel())
                passes = bytes_per_iteration(1, pixels, torch.float32, preconditioner == "jacobi")
                row = dict(model=model, backend=backend, preconditioner=preconditioner, size=size, batch=batch,
                           labels=labels, forward_ms=fwd, forward_backward_ms=fwd_bwd,
                           max_iterations=int(result.iterations.max()), systems=systems,
                           gbps=passes * iterations / (fwd[0] * 1e-3) / 1e9)
                log(f"  {model:5} {backend:6} {preconditioner:9} fwd {fwd[0]:8.2f} ms  fwd+bwd {fwd_bwd[0]:8.2f} ms  "
                    f"iters {row['max_iterations']}  {row['gbps']:.0f} GB/s")
                rows.append(row)
    return rows


def tables(check_rows, time_rows, copy_gbps, info) -> str:
    lines = [f"Device: {info['device']}; {info['date']}; torch {info['torch']}, triton {info['triton']}.", ""]
    lines += ["Correctness, triton against torch on the same device (2 images, 3 labels, rtol 1e-5 fp32 / 1e-8 fp64):", "",
              "| model | dtype | size | max abs dP | grad rel diff | max residual | iterations triton/torch | ok |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in check_rows:
        lines.append(f"| {r['model']} | {r['dtype']} | {r['size']} | {r['p_diff']:.1e} | {r['grad_rel_diff']:.1e} | "
                     f"{r['residual']:.1e} | {r['iterations']}/{r['torch_iterations']} | {'yes' if r['ok'] else 'NO'} |")
    lines += ["", f"Timings (`triton.testing.do_bench`, median [20%, 80%] ms), float32, rtol 1e-4; "
              f"device-to-device copy: {copy_gbps:.0f} GB/s in the same run.", "",
              "| model | preconditioner | backend | size | batch x labels | forward ms | fwd+bwd ms | max iterations | CG GB/s | % of copy | speed-up fwd+bwd vs torch |",
              "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    base = {(r["model"], r["preconditioner"]): r for r in time_rows if r["backend"] == "torch"}
    for r in time_rows:
        ref = base.get((r["model"], r["preconditioner"]))
        speedup = f"{ref['forward_backward_ms'][0] / r['forward_backward_ms'][0]:.2f}x" if ref else "-"
        f, fb = r["forward_ms"], r["forward_backward_ms"]
        lines.append(f"| {r['model']} | {r['preconditioner']} | {r['backend']} | {r['size']} | {r['batch']} x {r['labels']} | "
                     f"{f[0]:.2f} [{f[1]:.2f}, {f[2]:.2f}] | {fb[0]:.2f} [{fb[1]:.2f}, {fb[2]:.2f}] | {r['max_iterations']} | "
                     f"{r['gbps']:.0f} | {100 * r['gbps'] / copy_gbps:.0f}% | {speedup} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(CORRECTNESS_SIZES))
    parser.add_argument("--bench-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--labels", type=int, default=3)
    parser.add_argument("--preconditioners", nargs="+", default=["jacobi", "multigrid"])
    parser.add_argument("--models", nargs="+", default=["rawks", "grady"], choices=["rawks", "grady"])
    parser.add_argument("--cpu-repeats", type=int, default=3, help="timed calls per measurement without CUDA")
    parser.add_argument("--write-docs", metavar="PATH", help="write the tables between <!-- gpu-check --> markers")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or --device cpu with TRITON_INTERPRET=1 (smoke test)")
        return 2
    import triton

    info = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor()}), Triton interpreter",
                date=datetime.date.today().isoformat(), torch=torch.__version__, triton=triton.__version__)
    log = print
    log(f"{info['device']}  {info['date']}")
    log("correctness:")
    check_rows = check_correctness(args.sizes, args.models, device, log)
    measure = timer(device, args.cpu_repeats)
    copy_gbps = copy_bandwidth(device, measure, nbytes=(1 << 30) if device.type == "cuda" else (1 << 22))
    log(f"device-to-device copy: {copy_gbps:.0f} GB/s")
    log("timings:")
    time_rows = time_solves(args.bench_size, args.batch, args.labels, args.models, device, measure, args.preconditioners, log)
    text = tables(check_rows, time_rows, copy_gbps, info)
    print()
    print(text)
    if args.write_docs:
        from bench.compare import write_docs

        write_docs(args.write_docs, {"gpu-check": text})
    return 0 if all(r["ok"] for r in check_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
