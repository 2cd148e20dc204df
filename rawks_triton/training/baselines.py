"""The reference point of the real-data tables: scikit-image's random walker on the same scribbles.

    python -m rawks_triton.training.baselines --data grabcut --data-root ../shared/data/grabcut \
        --data-option scribble_set=scribbles-set-1 --beta 250

scores ``skimage.segmentation.random_walker(image, markers, beta, mode="cg_mg", tol=1e-3)``
with the metrics of :func:`rawks_triton.training.evaluate.evaluate` (pixel error per image
then averaged, IGNORE pixels excluded; mIoU over the pooled confusion matrix), on the
training split, on the held-out split and on both. Needs scikit-image (and pyamg for "cg_mg").
On volumes (``--data acdc-volumes``) the walker runs in 3D; ``--spacing D,H,W`` gives the
voxel size (the slices of ACDC are far thicker than its pixels).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from .data import DATASETS, IGNORE, parse_option_pairs
from .evaluate import ConfusionMatrix
from .progress import progress_bar


def random_walker_labels(sample, beta: float, mode: str = "cg_mg", tol: float = 1e-3, spacing=None) -> np.ndarray:
    """scikit-image's walker on one sample (an image, or a volume in 3D; ``spacing``: its voxel size)."""
    from skimage.segmentation import random_walker

    image = sample.image.numpy()
    markers = sample.scribbles.numpy() + 1  # scikit-image: 0 = unlabelled, labels from 1
    if image.shape[0] == 1:
        extra = {} if spacing is None else {"spacing": tuple(spacing)}
        labels = random_walker(image[0].astype(np.float64), markers, beta=beta, mode=mode, tol=tol, **extra)
    else:
        labels = random_walker(
            image.transpose(1, 2, 0).astype(np.float64), markers, beta=beta, mode=mode, tol=tol, channel_axis=-1
        )
    return labels - 1


def score(dataset, beta: float, mode: str = "cg_mg", tol: float = 1e-3, progress: bool = False, spacing=None) -> dict:
    cm = ConfusionMatrix(dataset.num_labels)
    errors = []
    start = time.perf_counter()
    for i in progress_bar(range(len(dataset)), enabled=progress, desc=f"random walker beta={beta:g}", leave=False):
        sample = dataset[i]
        prediction = torch.from_numpy(random_walker_labels(sample, beta, mode, tol, spacing)).long()
        truth = sample.mask
        cm.update(prediction, truth)
        valid = truth != IGNORE
        errors.append(100.0 * float(((prediction != truth) & valid).sum()) / max(int(valid.sum()), 1))
    metrics = {
        "images": len(dataset),
        "miou": 100 * cm.miou(),
        "accuracy": 100 * cm.accuracy(),
        "seconds": time.perf_counter() - start,
    }
    if dataset.num_labels == 2:
        metrics["pixel_error"] = sum(errors) / len(errors) if errors else math.nan
    return metrics


def main(argv=None) -> int:
    from .splits import build_splits

    parser = argparse.ArgumentParser(
        prog="python -m rawks_triton.training.baselines", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data", required=True, choices=DATASETS)
    parser.add_argument("--data-root")
    parser.add_argument("--data-option", action="append", default=[])
    parser.add_argument("--beta", type=float, action="append", help="repeatable (default 250)")
    parser.add_argument("--mode", default="cg_mg")
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--spacing", help="volumes: the voxel size D,H,W (default: 1,1,1)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    spacing = None
    if args.spacing:
        try:
            spacing = tuple(float(v) for v in args.spacing.split(","))
        except ValueError:
            parser.error(f"--spacing expects three numbers D,H,W, got {args.spacing!r}")
        if len(spacing) != 3 or min(spacing) <= 0:
            parser.error(f"--spacing expects three positive numbers D,H,W, got {args.spacing!r}")
    splits = build_splits(args.data, args.data_root, parse_option_pairs(args.data_option))
    results = {}
    for beta in args.beta or [250.0]:
        row = {"train": score(splits.train, beta, args.mode, args.tol, True, spacing)}
        if splits.val is not None:
            row["val"] = score(splits.val, beta, args.mode, args.tol, True, spacing)
        results[f"beta={beta:g}"] = row
        print(f"beta={beta:g}: " + json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "data": args.data,
                    "options": args.data_option,
                    "mode": args.mode,
                    "tol": args.tol,
                    "spacing": spacing,
                    "results": results,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
