"""A one-minute demonstration on a synthetic image: propagate scribbles with both models.

python -m rawks_triton.demo
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from .propagation import propagate
from .training.networks import hand_made_boundary


def synthetic_scene(height: int = 96, width: int = 128, seed: int = 0):
    """Three regions (background, disc, box) with noise, their truth and one scribble each."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    truth = torch.zeros(height, width, dtype=torch.long)
    truth[((yy - 0.5 * height) ** 2 + (xx - 0.3 * width) ** 2) < (0.25 * height) ** 2] = 1
    truth[(yy > 0.2 * height) & (yy < 0.8 * height) & (xx > 0.62 * width) & (xx < 0.88 * width)] = 2
    image = truth.float() * 0.4 + 0.08 * torch.randn(height, width, generator=g)
    seeds = torch.full((height, width), -1, dtype=torch.long)
    seeds[5, 5 : width - 5] = 0
    seeds[height // 2, int(0.2 * width) : int(0.4 * width)] = 1
    seeds[int(0.3 * height) : int(0.7 * height), int(0.75 * width)] = 2
    return image, truth, seeds


# The hand-made boundary of ``rawks propagate``, tuned for this scene: a linear ramp above a
# higher threshold (the scene's noise makes gradients up to about 0.05 inside regions).
DEMO_GAIN = 60.0
DEMO_THRESHOLD = 0.05


def main() -> None:
    image, truth, seeds = synthetic_scene()
    boundary = hand_made_boundary(image[None], gain=DEMO_GAIN, threshold=DEMO_THRESHOLD, power=1.0)  # [1, 1, H, W]
    print(f"synthetic image {tuple(image.shape)}, 3 labels, {int((seeds >= 0).sum())} scribbled pixels")
    print(f"{'model':8} {'backend':8} {'accuracy':>9} {'iterations':>11} {'time [ms]':>10}")
    for model in ("rawks", "grady"):
        for backend in ("scipy", "torch"):
            start = time.perf_counter()
            result = propagate(boundary, seeds[None], 3, model, backend=backend)
            elapsed = 1e3 * (time.perf_counter() - start)
            accuracy = float((result.P.argmax(1)[0] == truth).float().mean())
            print(f"{model:8} {backend:8} {100 * accuracy:8.2f}% {int(result.iterations.max()):11d} {elapsed:10.1f}")


# What the two runs of train_demo share; the count of steps and scenes are its arguments.
DEMO_SETTINGS = dict(data="synthetic", batch_size=4, eval_every=10**9, log_every=20, checkpoint_every=100, figures=4)
# Steps per protocol (README and docs/training.md give the measured time); 400 steps gave Q
# 87.6 against 85.0 mIoU, 300 steps 86.7 against 84.5.
DEMO_STEPS = 300


def default_jobs() -> int:
    """The runs side by side: 2 where this process may use 2 or more CPUs, else 1 (one after the other)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
        cpus = os.cpu_count() or 1
    return min(2, cpus)


def _train_metrics(config):
    from .training import train

    return train(config).metrics


def _train_all(configs: dict, jobs: int) -> dict:
    """{run name: metrics} of every config, in ``jobs`` processes (1: here, one after the other)."""
    if jobs <= 1:
        return {name: _train_metrics(config) for name, config in configs.items()}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # a fresh torch in each process, whatever the parent holds
    with ProcessPoolExecutor(max_workers=min(jobs, len(configs)), mp_context=context) as pool:
        futures = {name: pool.submit(_train_metrics, config) for name, config in configs.items()}
        return {name: future.result() for name, future in futures.items()}


def train_demo(
    out="runs/demo",
    steps: int = DEMO_STEPS,
    threads=None,
    train_count: int = 64,
    val_count: int = 32,
    progress=True,
    jobs: int | None = None,
):
    """Train the joint protocol (RAWKS) and the sparse-loss baseline on the synthetic set; print and write the table.

    ``threads``: torch CPU threads of each run (None: the trainer's default, 1 on the CPU;
    training/threads.py). ``jobs``: runs side by side, each in its own process (None:
    :func:`default_jobs`); with 2 the baseline shows no progress bar, so that the bars do not mix.
    Returns {run name: metrics by split}; ``out``/results.md holds the table.
    """
    from .training import TrainConfig, format_table
    from .training.threads import resolve_threads

    out = Path(out)
    start = time.perf_counter()
    jobs = default_jobs() if jobs is None else jobs
    runs = (("joint (RAWKS)", "joint"), ("sparse-loss baseline", "sparse"))
    shown = resolve_threads(threads, "cpu")
    print(
        f"rawks demo: training Q and B on the synthetic set for {steps} steps (joint, RAWKS) and the "
        f"sparse-loss baseline for as many steps, {'side by side' if jobs > 1 else 'one after the other'}, "
        f"each on {shown} CPU thread{'s' if shown > 1 else ''} (--jobs, --threads); results go to {out}/"
    )
    configs = {
        name: TrainConfig(
            protocol=protocol,
            steps=steps,
            out=str(out / protocol),
            progress=progress and (jobs <= 1 or protocol == "joint"),
            threads=threads,
            data_options={"train_count": train_count, "val_count": val_count},
            **DEMO_SETTINGS,
        )
        for name, protocol in runs
    }
    results = _train_all(configs, jobs)
    table = format_table(results, f"Synthetic set, {steps} steps each, batch 4 (rawks demo)")
    seconds = time.perf_counter() - start
    (out / "results.md").write_text(table + f"\n\nTotal time: {seconds / 60:.1f} min ({seconds:.0f} s).\n")
    print()
    print(table)
    print()
    print(f"finished in {seconds / 60:.1f} min ({seconds:.0f} s)")
    print(f"table: {out / 'results.md'}")
    print(
        f"figures: {out / 'joint' / 'figures'} (image, scribbles, the learned boundaries B, P, w, Q, truth) "
        f"and {out / 'sparse' / 'figures'} (no B)"
    )
    print(f"metrics: {out / 'joint' / 'metrics.csv'}, checkpoints: {out / 'joint' / 'checkpoint.pt'}")
    return results


if __name__ == "__main__":
    main()
