"""pytest-benchmark suite: ``propagate`` forward, and forward + backward, over the grid.

    pytest bench/                                  # the default grid (see bench/conftest.py)
    pytest bench/ --bench-grid full                # every case
    pytest bench/ --bench-max-work 300000          # cases up to H x W x images x labels = 300000
    pytest bench/ -k "rawks and 96x128"            # a slice of it
    pytest bench/ --benchmark-json out.json        # pytest-benchmark's own outputs

Each benchmark records in ``extra_info`` the solver's iterations (largest and mean over
the systems) and the largest final relative residual, of the forward solve and, for
forward + backward, of the adjoint solve. Benchmarks measure; they assert nothing about time.
"""

from __future__ import annotations

import functools

import pytest
import torch

from bench.conftest import RTOL, bench_dtype, max_work
from bench.harness import first_call, propagate_calls, solver_options
from bench.problems import LABEL_CASES, make_batch

MODELS = ("rawks", "grady")
ROUND_BUDGET_S = 1.0  # aim for this much measured time per benchmark, within [MIN_ROUNDS, MAX_ROUNDS]
MIN_ROUNDS, MAX_ROUNDS = 3, 20


@functools.lru_cache(maxsize=4)
def _batch(height, width, num_labels, present, batch, dtype, device):
    return make_batch(height, width, num_labels, batch, present=present, dtype=dtype, device=device)


def _problem(case, target):
    if target.device == "cuda" and not torch.cuda.is_available():
        pytest.skip(
            f"no CUDA device for {target} (triton is benchmarked on CUDA only: on a CPU it runs in its interpreter)"
        )
    if case.work > max_work(target):
        pytest.skip(
            f"{case.work} system-pixels is above this device's default cap of {max_work(target):.0f}; "
            f"run with --bench-grid full (or --bench-max-work N) to include it"
        )
    if target.backend == "scipy" and case.work > max_work(target) / 4:
        pytest.skip("the direct solver is measured on the smaller cases only (its cost grows faster)")
    num_labels, present = LABEL_CASES[case.labels]
    height, width = case.shape
    dtype = torch.float64 if target.backend == "scipy" else bench_dtype()
    device = "cpu" if target.backend == "scipy" else target.device
    return _batch(height, width, num_labels, present, case.batch, dtype, device), num_labels


def _options(target):
    return solver_options(target.backend, RTOL, target.preconditioner)


def _synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _run(benchmark, fn, device):
    """Warm up once (compilation, caches), then measure enough rounds for ROUND_BUDGET_S."""
    try:
        result, first = first_call(fn)
    except ValueError as err:  # a backend without this preconditioner in this build
        if "preconditioner" not in str(err):
            raise
        pytest.skip(str(err))
    rounds = max(MIN_ROUNDS, min(MAX_ROUNDS, int(ROUND_BUDGET_S / max(first, 1e-6))))

    def timed():
        fn()
        _synchronize(device)

    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)
    return result


def _record(benchmark, result, case, target, model, batch, num_labels):
    iterations = result.iterations.double()
    info = dict(
        model=model,
        backend=target.backend,
        device=str(batch.seeds.device),
        preconditioner=target.preconditioner,
        dtype=str(batch.boundary.dtype).replace("torch.", ""),
        height=case.shape[0],
        width=case.shape[1],
        batch=case.batch,
        num_labels=num_labels,
        systems=result.num_systems,
        rtol=RTOL,
        iterations_max=int(iterations.max()) if iterations.numel() else 0,
        iterations_mean=float(iterations.mean()) if iterations.numel() else 0.0,
        residual_max=float(result.residual.max()) if result.residual.numel() else 0.0,
        converged=bool(result.converged.all()),
        threads=torch.get_num_threads(),
    )
    if result.adjoint_iterations is not None:
        info.update(
            adjoint_iterations_max=int(result.adjoint_iterations.max()),
            adjoint_residual_max=float(result.adjoint_residual.max()),
        )
    benchmark.extra_info.update(info)


@pytest.mark.parametrize("model", MODELS)
def test_forward(benchmark, case, target, model):
    batch, num_labels = _problem(case, target)
    forward, _ = propagate_calls(batch.inputs(model), batch.seeds, num_labels, model, None, **_options(target))
    benchmark.group = f"forward {model} {case}"
    result = _run(benchmark, forward, target.device)
    _record(benchmark, result, case, target, model, batch, num_labels)


@pytest.mark.parametrize("model", MODELS)
def test_forward_backward(benchmark, case, target, model):
    batch, num_labels = _problem(case, target)
    inputs = batch.inputs(model)
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn((case.batch, num_labels) + case.shape, generator=generator).to(inputs)
    _, forward_backward = propagate_calls(inputs, batch.seeds, num_labels, model, weights, **_options(target))
    benchmark.group = f"forward+backward {model} {case}"
    result = _run(benchmark, forward_backward, target.device)
    _record(benchmark, result, case, target, model, batch, num_labels)
