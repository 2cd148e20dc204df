"""Iterations, setup time and memory of multigrid-preconditioned CG against Jacobi-PCG.

The problem: a piecewise-constant scene of Voronoi regions, one scribble per
region, labels cycling over ``--labels``. Boundary scores are exactly 0 inside the regions
and ``--border`` on their borders; the "rawks" model (d = 4 exp(B), unit edges: a pure
Laplacian inside the regions, killing only on the borders) and the "grady" node model
(conductance exp(-(B_i + B_j) / 2)) are built from the same scores. "grady-image" is the
harder case of scikit-image's own conductances (beta 130 on the noisy grey-level scene of
bench/problems.py), the problem of bench/compare.py.

Every solve is the library's own path (FramedOperator, TorchMultigrid, TorchPCG,
run_pcg), in float32 on the CPU, to rtol 1e-4 under the per-pixel stopping rule of
rawks_triton.solve.rules (the tables in docs/multigrid.md were measured under the older residual-norm
rule). Reported per size and model:

* iterations (the largest over the systems) of Jacobi-PCG and of multigrid-PCG;
* setup: seconds to build the hierarchy (one image), and seconds of the whole solve;
* memory, counted exactly as the bytes of the tensors that each part holds: the solver
  (the padded stencil coefficients and CG's seven vectors per system) and what multigrid
  adds (every level's coefficients, transfer weights, the coarsest inverse and the
  cycle's work buffers).

Iteration counts and memory do not depend on the machine's load; the times do.

    python -m bench.multigrid_iterations                       # 128 .. 2048, Jacobi up to 512
    python -m bench.multigrid_iterations --write docs/multigrid.md

``--volumes``: the same measurement on volumes (7-point systems): a 3D Voronoi scene of
side ``--volume-sizes``, isotropic and with z conductances ``--z-ratio`` times the in-plane
ones (slices thicker than the pixels), and, with ``--acdc DIR``, the cardiac MRI volumes
of DIR/*.h5 (``image`` [D, H, W] in [0, 1], ``scribble`` 0..3, 4 = none) with
scikit-image's conductances on the anisotropic grid (:func:`acdc_problem`).
"""

from __future__ import annotations

import argparse
import time
import zlib

import numpy as np
import torch

from bench.markers import write_between_markers
from bench.problems import region_borders
from rawks_triton.backends.torch.multigrid import TorchMultigrid
from rawks_triton.backends.torch.operator import FramedOperator, JacobiPreconditioner
from rawks_triton.backends.torch.pcg import TorchPCG
from rawks_triton.coefficients import grady_edge_coefficients, grady_node_coefficients, rawks_coefficients
from rawks_triton.solve.multigrid import MultigridOptions, build_hierarchy
from rawks_triton.solve.options import SolverOptions
from rawks_triton.solve.pcg import run_pcg
from rawks_triton.solve.rules import ForwardRule
from rawks_triton.systems import build_stencil, compact_labels, right_hand_sides

MODELS = ("grady", "rawks", "grady-image")


def regions_scene(size: int, num_labels: int, num_regions: int, border: float):
    """(scores [1, H, W] float64, seeds [1, H, W] int64) of a Voronoi scene, H = W = size."""
    rng = np.random.default_rng(zlib.crc32(repr(("mg-scene", size, num_regions)).encode()))
    sites = rng.random((num_regions, 2)) * size
    yy, xx = np.mgrid[0:size, 0:size]
    region = np.argmin((yy[None] - sites[:, 0, None, None]) ** 2 + (xx[None] - sites[:, 1, None, None]) ** 2, axis=0)
    edge = region_borders(region)
    seeds = np.full((size, size), -1)
    half = max(1, size // 32)
    for k in range(num_regions):
        y, x = int(sites[k, 0]), int(sites[k, 1])
        row = seeds[y, max(0, x - half) : x + half + 1]
        inside = region[y, max(0, x - half) : x + half + 1] == k
        row[inside] = k % num_labels
    scores = np.where(edge, border, 0.0)
    return torch.from_numpy(scores)[None], torch.from_numpy(seeds)[None]


def problem(model: str, size: int, num_labels: int, border: float, dtype):
    if model == "grady-image":
        from bench.problems import make_batch

        batch = make_batch(size, size, num_labels, dtype=torch.float64)
        coefficients = grady_edge_coefficients(batch.grady_edges)
        seeds = batch.seeds
    else:
        scores, seeds = regions_scene(size, num_labels, 4 * num_labels, border)
        coefficients = rawks_coefficients(scores) if model == "rawks" else grady_node_coefficients(scores)
    systems = compact_labels(seeds, num_labels, -1)
    coefficients = tuple(c.to(dtype) for c in coefficients)
    stencil = build_stencil(*coefficients, systems.free, unit_edges=model == "rawks")
    return stencil, systems, right_hand_sides(coefficients[1], coefficients[2], systems)


def tensor_bytes(*objects) -> int:
    """Bytes of the distinct tensor storages reachable from ``objects`` (lists, dicts, attributes)."""
    seen, total, stack = set(), 0, list(objects)
    while stack:
        obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            key = obj.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += obj.untyped_storage().nbytes()
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            stack.extend(vars(obj).values())
    return total


def solve(stencil, systems, rhs, preconditioner: str, options: MultigridOptions, maxiter: int):
    """(iterations, seconds of the whole solve, seconds of the hierarchy, solver bytes, multigrid bytes)."""
    start = time.perf_counter()
    op = FramedOperator.from_stencil(stencil, systems.image_index)
    setup = 0.0
    levels = None
    if preconditioner == "multigrid":
        levels = build_hierarchy(stencil, options, framed=op.per_image)
        setup = time.perf_counter() - start
        cycle = TorchMultigrid(levels, systems.image_index, options)
    else:
        cycle = JacobiPreconditioner(op.per_image["inv_diag"], systems.image_index)
    solver = SolverOptions(rtol=RTOL, preconditioner=preconditioner)
    b = op.frame.frame(rhs)
    pcg = TorchPCG(op, cycle, b, ForwardRule(solver, op.groups), solver, grid_shape=tuple(rhs.shape[1:]))
    done = run_pcg(pcg, maxiter, solver.checks_every(rhs.device))
    seconds = time.perf_counter() - start
    solver_bytes = tensor_bytes(op.per_image) + 7 * rhs.shape[0] * op.frame.size * rhs.element_size()
    buffers = () if levels is None else (levels, cycle._buffers)
    # level 0 shares the solver's coefficients: count only the storage that multigrid adds
    extra = tensor_bytes(op.per_image, *buffers) - tensor_bytes(op.per_image)
    op.release()
    iterations = int(pcg.iterations.max())
    if not pcg.stats(torch.linalg.vector_norm(b.flatten(1), dim=1), maxiter, done).all_converged:
        iterations = -iterations  # did not converge
    return iterations, seconds, setup, solver_bytes, extra


def regions_volume(side: int, depth: int, num_labels: int, num_regions: int, border: float):
    """(scores [1, D, S, S] float64, seeds [1, D, S, S]) of a 3D Voronoi scene (sites drawn in
    the unit cube, so a volume of few slices cuts the same regions), one scribble per region."""
    rng = np.random.default_rng(zlib.crc32(repr(("mg-volume", side, depth, num_regions)).encode()))
    sites = rng.random((num_regions, 3))
    zz, yy, xx = np.meshgrid(
        (np.arange(depth) + 0.5) / depth, (np.arange(side) + 0.5) / side, (np.arange(side) + 0.5) / side, indexing="ij"
    )
    distance = sum((g[None] - sites[:, i, None, None, None]) ** 2 for i, g in enumerate((zz, yy, xx)))
    region = np.argmin(distance, axis=0)
    edge = np.zeros(region.shape, dtype=bool)
    for dim in range(3):
        step = np.diff(region, axis=dim) != 0
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[dim], hi[dim] = slice(0, -1), slice(1, None)
        edge[tuple(lo)] |= step
        edge[tuple(hi)] |= step
    seeds = np.full(region.shape, -1)
    half = max(1, side // 32)
    for k in range(num_regions):
        z, y, x = (int(c * n) for c, n in zip(sites[k], region.shape, strict=True))
        row = seeds[z, y, max(0, x - half) : x + half + 1]
        row[region[z, y, max(0, x - half) : x + half + 1] == k] = k % num_labels
    scores = np.where(edge, border, 0.0)
    return torch.from_numpy(scores)[None], torch.from_numpy(seeds)[None]


def volume_problem(model: str, side: int, depth: int, z_ratio: float, num_labels: int, border: float, dtype):
    """The stencil, systems and right-hand sides of a Voronoi volume; ``z_ratio`` multiplies
    the z conductances ("rawks": unit in-plane edges, z edges ``z_ratio``, d = exp(B) times
    the degree of an interior voxel, which is 6 exp(B) when isotropic)."""
    scores, seeds = regions_volume(side, depth, num_labels, 4 * num_labels, border)
    scores = scores.to(dtype)  # the coefficients in the solver's precision, as propagate makes them
    if model == "rawks":
        diag, right, down, deep = rawks_coefficients(scores, 3)
        diag = torch.exp(scores) * (4.0 + 2.0 * z_ratio)
    else:
        _, right, down, deep = grady_node_coefficients(scores, 3)
    coefficients = grady_edge_coefficients(torch.stack([right, down, deep * z_ratio], dim=1))
    if model == "rawks":
        coefficients = (diag,) + coefficients[1:]
    return volume_systems(coefficients, seeds, num_labels, dtype)


def volume_systems(coefficients, seeds, num_labels: int, dtype):
    systems = compact_labels(seeds, num_labels, -1)
    diag, right, down, deep = (c.to(dtype) for c in coefficients)
    stencil = build_stencil(diag, right, down, systems.free, deep=deep)
    return stencil, systems, right_hand_sides(right, down, systems, deep=deep)


ACDC_SPACING = (10.0, 1.5, 1.5)  # mm, (z, y, x): ACDC's typical slice thickness and pixel size


def acdc_problem(path: str, beta: float, dtype, spacing=ACDC_SPACING):
    """A cardiac MRI volume with its scribbles (4 labels) and scikit-image's conductances on
    the anisotropic grid: w = g_a (exp(-beta' (dI / s_a)^2) + 1e-10) along axis a, beta' =
    beta / (10 std(I)) as in scikit-image, s_a the spacing in units of the in-plane pixel,
    and g_a = (s_x / s_a)^2 the finite-volume factor (face area over distance) relative to
    the in-plane edges: 1/44 along z for 10 mm slices of 1.5 mm pixels."""
    import h5py

    with h5py.File(path, "r") as f:
        image = torch.from_numpy(f["image"][()]).double()
        scribble = torch.from_numpy(f["scribble"][()].astype(np.int64))
    seeds = torch.where(scribble < 4, scribble, torch.full_like(scribble, -1))[None]
    unit = min(spacing)
    scaled = beta / (10.0 * float(image.std()))
    weights = []
    for dim in (2, 1, 0):  # x, y, z
        s = spacing[dim] / unit
        gradient = torch.diff(image, dim=dim) / s
        w = (torch.exp(-scaled * gradient**2) + 1e-10) * (1.0 / s) ** 2
        weights.append(torch.cat([w, torch.zeros_like(image.narrow(dim, 0, 1))], dim=dim))
    return volume_systems(grady_edge_coefficients(torch.stack(weights)[None]), seeds, 4, dtype)


def volume_table(args, options: MultigridOptions, dtype) -> list[str]:
    """Iterations on Voronoi volumes (isotropic and thick-slice) and on the ACDC volumes."""
    lines = [
        f"{args.dtype}, rtol {RTOL:g}, {args.labels} labels (ACDC: 4), border score {args.border:g}; {options}",
        "",
        "| model | volume | z / in-plane conductance | systems | multigrid iterations | levels by block (x y z) "
        "| grid complexity | solver memory (MiB) | hierarchy + cycle buffers (MiB) |",
        "| " + " | ".join(["---"] * 9) + " |",
    ]
    print("\n".join(lines), flush=True)
    cases = []
    for ratio in [1.0] + [float(r) for r in args.z_ratio.split(",") if r]:
        for model in args.models.split(","):
            for side in (int(v) for v in args.volume_sizes.split(",")):
                depth = side if ratio == 1.0 else max(1, round(side * args.thick_depth))
                cases.append((model, f"{depth}x{side}x{side}", f"{ratio:.4g}", side, depth, ratio))
    for model, name, ratio_text, side, depth, ratio in cases:
        problem = volume_problem(model, side, depth, ratio, args.labels, args.border, dtype)
        lines.append(_volume_row(args, options, model, name, ratio_text, problem))
    if args.acdc:
        import glob
        import os

        for path in sorted(glob.glob(os.path.join(args.acdc, "*.h5")))[: args.acdc_count]:
            stencil, systems, rhs = acdc_problem(path, args.beta, dtype)
            z_ratio = (ACDC_SPACING[2] / ACDC_SPACING[0]) ** 2
            name = f"{os.path.basename(path)[:-3]} ({'x'.join(map(str, stencil.shape[1:]))})"
            lines.append(_volume_row(args, options, "grady-acdc", name, f"{z_ratio:.4g}", (stencil, systems, rhs)))
    return lines


def _volume_row(args, options, model, name, ratio_text, problem) -> str:
    stencil, systems, rhs = problem
    iterations, _, _, solver_bytes, extra = solve(stencil, systems, rhs, "multigrid", options, 300)
    levels = build_hierarchy(stencil, options)
    complexity = sum(level.diag[0].numel() for level in levels) / levels[0].diag[0].numel()
    summary = _block_counts([level.block for level in levels[:-1]])
    shown = str(iterations) if iterations >= 0 else f"{-iterations}, stalled"
    mib = 1 / 2**20
    line = (
        f"| {model} | {name} | {ratio_text} | {systems.num_systems} | {shown} | {summary} | {complexity:.2f} "
        f"| {solver_bytes * mib:.1f} | {extra * mib:.1f} |"
    )
    print(line, flush=True)
    return line


def _block_counts(blocks) -> str:
    """'2x2x2: 1, 2x2x1: 2, one axis: 9': how many levels aggregate blocks of each kind (x y z)."""
    kinds = {}
    for block in blocks:
        name = "one axis" if sum(f == 2 for f in block) == 1 else "x".join(map(str, reversed(block)))
        kinds[name] = kinds.get(name, 0) + 1
    return ", ".join(
        f"{name}: {count}" for name, count in sorted(kinds.items(), key=lambda item: item[0] == "one axis")
    )


RTOL = 1e-4  # the per-pixel stopping rule of rawks_triton.solve.rules (docs/numerics.md)


def time_backends(sizes, labels, models, repeats: int) -> list[str]:
    """Median seconds of forward + backward through :func:`rawks_triton.propagate` on the CPU
    for the direct solver and for CG with each preconditioner, and what "auto" picks; the
    table that backs the rule of :func:`rawks_triton.solve.choose.choose_solver`."""
    import rawks_triton as rt
    from bench.problems import make_batch
    from rawks_triton.solve.choose import choose_solver

    methods = (("scipy", "jacobi"), ("torch", "jacobi"), ("torch", "multigrid"))
    lines = [
        "| model | size | labels | "
        + " | ".join(f"{b} {p if b != 'scipy' else 'direct'} (ms)" for b, p in methods)
        + " | fastest | auto picks |",
        "| " + " | ".join(["---"] * (len(methods) + 5)) + " |",
    ]
    print("\n".join(lines), flush=True)
    for model in models:
        for height, width in sizes:
            for num_labels in labels:
                batch = make_batch(height, width, num_labels, dtype=torch.float32)
                times = []
                for backend, preconditioner in methods:
                    runs = []
                    for _ in range(repeats):
                        leaf = batch.inputs(model).clone().requires_grad_()
                        start = time.perf_counter()
                        result = rt.propagate(
                            leaf, batch.seeds, num_labels, model, backend=backend, preconditioner=preconditioner
                        )
                        result.P.square().sum().backward()
                        runs.append(time.perf_counter() - start)
                    times.append(sorted(runs)[len(runs) // 2])
                fastest = methods[min(range(len(methods)), key=times.__getitem__)]
                picked = choose_solver("auto", "auto", torch.device("cpu"), height, width, model)
                name = lambda m: m[0] if m[0] == "scipy" else f"{m[0]} {m[1]}"  # noqa: E731
                line = (
                    f"| {model} | {height}x{width} | {num_labels} | "
                    + " | ".join(f"{1e3 * t:.0f}" for t in times)
                    + f" | {name(fastest)} | {name(picked)} |"
                )
                lines.append(line)
                print(line, flush=True)
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="128,256,512,1024,2048")
    parser.add_argument("--models", default="grady,rawks")
    parser.add_argument("--labels", type=int, default=3)
    parser.add_argument("--border", type=float, default=6.0, help="boundary score on the region borders")
    parser.add_argument("--jacobi-max-size", type=int, default=512, help="largest size solved with Jacobi-PCG too")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--smoothing-steps", type=int, default=MultigridOptions.smoothing_steps)
    parser.add_argument("--jacobi-weight", type=float, default=MultigridOptions.jacobi_weight)
    parser.add_argument("--edge-scale", type=float, default=MultigridOptions.coarse_edge_scale)
    parser.add_argument("--correction", type=float, default=MultigridOptions.correction_scale)
    parser.add_argument("--cycle", choices=("V", "W"), default=MultigridOptions.cycle)
    parser.add_argument("--write", metavar="PATH", help="also write the table into PATH between its markers")
    parser.add_argument(
        "--auto-table",
        action="store_true",
        help="instead: time forward + backward of the direct solver and both preconditioners (the auto rule)",
    )
    parser.add_argument("--auto-sizes", default="32x32,64x64,96x128,128x128,192x256,256x256,384x512")
    parser.add_argument("--auto-labels", default="3,21")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--volumes", action="store_true", help="instead: iterations on volumes (7-point systems)")
    parser.add_argument("--volume-sizes", default="16,32,64")
    parser.add_argument("--z-ratio", default="0.025", help="z / in-plane conductance of the thick-slice volumes")
    parser.add_argument("--thick-depth", type=float, default=0.25, help="slices of a thick-slice volume per side")
    parser.add_argument(
        "--semi-coarsening", type=float, default=MultigridOptions.semi_coarsening, help="MultigridOptions field"
    )
    parser.add_argument("--acdc", metavar="DIR", help="also the ACDC volumes DIR/*.h5")
    parser.add_argument("--acdc-count", type=int, default=10)
    parser.add_argument("--beta", type=float, default=130.0, help="scikit-image's beta for the ACDC conductances")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.auto_table:
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.auto_sizes.split(",")]
        labels = [int(v) for v in args.auto_labels.split(",")]
        head = [f"CPU, {torch.get_num_threads()} torch threads, float32 input, rtol 1e-4, median of {args.repeats}", ""]
        print(head[0], flush=True)
        lines = head + time_backends(sizes, labels, args.models.split(","), args.repeats)
        if args.write:
            _write_between_markers(args.write, "auto-rule", "\n".join(lines))
        return
    dtype = getattr(torch, args.dtype)
    options = MultigridOptions(
        smoothing_steps=args.smoothing_steps,
        jacobi_weight=args.jacobi_weight,
        coarse_edge_scale=args.edge_scale,
        correction_scale=args.correction,
        cycle=args.cycle,
        semi_coarsening=args.semi_coarsening,
    )
    if args.volumes:
        lines = volume_table(args, options, dtype)
        if args.write:
            _write_between_markers(args.write, "multigrid-volumes", "\n".join(lines))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    models = args.models.split(",")
    for model in models:
        if model not in MODELS:
            parser.error(f"--models: expected names from {list(MODELS)}, got {model!r}")
    header = (
        "| model | size | systems | Jacobi-PCG iterations | multigrid iterations | hierarchy setup (s) "
        "| multigrid solve (s) | solver memory (MiB) | hierarchy + cycle buffers (MiB) | added |"
    )
    lines = [
        f"{args.dtype}, rtol 1e-4, {args.labels} labels, border score {args.border:g}, {torch.get_num_threads()} torch "
        f"threads; {options}",
        "",
        header,
        "| " + " | ".join(["---"] * 10) + " |",
    ]
    print("\n".join(lines), flush=True)
    for model in models:
        for size in sizes:
            stencil, systems, rhs = problem(model, size, args.labels, args.border, dtype)
            maxiter = 10 * 2 * size + 1000
            jacobi = "-"
            if size <= args.jacobi_max_size:
                jacobi = str(solve(stencil, systems, rhs, "jacobi", options, maxiter)[0])
            its, seconds, setup, solver, extra = solve(stencil, systems, rhs, "multigrid", options, 200)
            mib = 1 / 2**20
            line = (
                f"| {model} | {size}x{size} | {systems.num_systems} | {jacobi} | {its} | {setup:.3f} | {seconds:.2f} "
                f"| {solver * mib:.1f} | {extra * mib:.1f} | {100 * extra / solver:.0f}% |"
            )
            lines.append(line)
            print(line, flush=True)
    if args.write:
        _write_between_markers(args.write, "multigrid-iterations", "\n".join(lines))


def _write_between_markers(path: str, name: str, text: str) -> None:
    if not write_between_markers(path, name, text):
        raise SystemExit(f"--write: {path} has no <!-- {name}:begin --> ... <!-- {name}:end --> markers")


if __name__ == "__main__":
    main()
