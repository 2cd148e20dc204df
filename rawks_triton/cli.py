"""The ``rawks`` command: train, eval, propagate, demo.

    rawks demo                                   # a few minutes on a CPU: train, evaluate, figures
    rawks train --data grabcut --data-root ../shared/data/grabcut --steps 600 --out runs/grabcut
    rawks train --out runs/grabcut --resume      # continue an interrupted run exactly
    rawks eval --checkpoint runs/grabcut/checkpoint.pt
    rawks propagate --image im.jpg --scribbles im-anno.png --unlabelled 0 --map 1=1,2=0 --out out/im   # GrabCut files

Under ``torchrun --nproc_per_node=K -m rawks_triton.cli train ...`` the training runs
with DistributedDataParallel (see :mod:`rawks_triton.training.distributed`).
docs/training.md describes every option.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch


class UsageError(ValueError):
    """A bad command line or input file; reported as ``rawks <command>: error: ...``."""


TRAIN_FLAGS = {
    # flag: (config field, type, help)
    "--data": ("data", str, "synthetic (default), folder, grabcut, acdc or scribblesup"),
    "--data-root": ("data_root", str, "the data folder (not needed for synthetic)"),
    "--protocol": ("protocol", str, "joint (default), joint-then-q, sparse or dense"),
    "--steps": ("steps", int, "training steps (default 300)"),
    "--q-only-steps": ("q_only_steps", int, "joint-then-q: the last steps that train Q alone (default half)"),
    "--batch-size": ("batch_size", int, "images per step and process (default 4)"),
    "--lr": ("lr", float, "Adam learning rate of Q (default 2e-3)"),
    "--boundary-lr": ("boundary_lr", float, "Adam learning rate of B (default: --lr)"),
    "--lr-schedule": ("lr_schedule", str, "cosine (default) or constant"),
    "--alpha": ("alpha", float, "loss weights w = exp(-alpha H(P)) (default 2)"),
    "--reach-weight": ("reach_weight", float, "weight of the survival term -log sum_l Z_l (default 0.01)"),
    "--arch": ("arch", str, "small (default) or resnet18/34/50/101 (needs torchvision)"),
    "--weights": ("weights", str, "local ResNet trunk weights (a state-dict file); nothing is downloaded"),
    "--q-width": ("q_width", int, "channels of the small Q network (default 32)"),
    "--b-width": ("b_width", int, "channels of the small B network (default 16)"),
    "--model": ("model", str, "propagation model: rawks (default) or grady"),
    "--backend": ("backend", str, "auto (the library's choice: multigrid CG, torch on CPU, triton on CUDA), scipy, torch or triton"),
    "--rtol": ("rtol", float, "accuracy of P and of the gradient that the solves certify (default 1e-3)"),
    "--min-weight": ("min_weight", float, "unreachable at or below this total weight (default: the model's, 1e-18 for rawks)"),
    "--propagation-scale": ("propagation_scale", float, "propagate at this fraction of the resolution (paper: 0.25)"),
    "--seed": ("seed", int, "seed of the networks, the batch order and the flips (default 0)"),
    "--eval-every": ("eval_every", int, "steps between evaluations and figures (default 100)"),
    "--checkpoint-every": ("checkpoint_every", int, "steps between checkpoints (default 50)"),
    "--log-every": ("log_every", int, "steps between training rows of metrics.csv (default 10)"),
    "--figures": ("figures", int, "images per figure, 0 for none (default 4)"),
    "--device": ("device", str, "cpu (default), cuda, cuda:1, ..."),
    "--threads": ("threads", int, "torch CPU threads (default: torch's choice)"),
    "--out": ("out", str, "run folder (default runs/train)"),
}


def _add_data_arguments(parser, required_root=False):
    parser.add_argument("--data", choices=("synthetic", "folder", "grabcut", "acdc", "scribblesup"))
    parser.add_argument("--data-root")
    parser.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a loader option, e.g. scribble_set=scribbles-set-2 (repeatable; see docs/training.md)")


def _options(pairs) -> dict:
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"--data-option expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        options[key.strip()] = value.strip()
    return options


# rawks propagate refuses a scribble map that labels more than this fraction of the pixels
# (unless --allow-dense): scribbles are sparse, and a dense map almost always means a
# wrong --unlabelled.
DENSE_SCRIBBLES = 0.5
# labels.png stores a label per pixel in 8 bits.
MAX_LABELS = 256


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rawks", description="Random-walk label propagation: training and tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train Q and B from scribbles", description="Train Q and B from scribbles.")
    for flag, (dest, kind, text) in TRAIN_FLAGS.items():
        if flag in ("--data", "--data-root"):
            continue
        train.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    _add_data_arguments(train)
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--no-augment", action="store_true", help="no random flips")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")

    ev = sub.add_parser("eval", help="evaluate a checkpoint", description="Evaluate a checkpoint on its data or other data.")
    ev.add_argument("--checkpoint", required=True)
    _add_data_arguments(ev)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--threads", type=int)
    ev.add_argument("--figures", type=int, default=0, help="write a figure of this many images per split")
    ev.add_argument("--propagation-scale", type=float, help="propagate at this fraction of the resolution (default: the checkpoint's)")
    ev.add_argument("--out", help="folder for eval.json and figures (default: the checkpoint's folder)")
    ev.add_argument("--no-progress", action="store_true")

    prop = sub.add_parser(
        "propagate", help="scribbles -> dense labels for one image",
        description=(
            "Propagate the scribbles of one image; write labels, probabilities and confidence. "
            "The scribble PNG holds one value per pixel (palette index or grey level): --unlabelled marks "
            "pixels without a scribble, every other value is the label of a scribble (or what --map makes of it). "
            f"A map in which more than {DENSE_SCRIBBLES:.0%} of the pixels would be scribbles is refused unless "
            "--allow-dense is given (usually --unlabelled is wrong: the error names the most frequent value), "
            "and one in which every pixel is a scribble is always refused. A value that is not a label "
            "(0 .. labels-1, from the checkpoint or --num-labels) is an error."
        ),
        epilog=(
            "GrabCut scribbles (0 unlabelled, 1 foreground, 2 background) with a checkpoint trained on "
            "--data grabcut (labels 0 background, 1 foreground): --unlabelled 0 --map 1=1,2=0"
        ),
    )
    prop.add_argument("--image", required=True)
    prop.add_argument("--scribbles", required=True, help="scribble PNG: a label per scribbled pixel, --unlabelled elsewhere")
    prop.add_argument("--unlabelled", type=int, default=255,
                      help="the value of pixels without a scribble (default 255; GrabCut files use 0)")
    prop.add_argument("--map", action="append", default=[], metavar="VALUE=LABEL[,VALUE=LABEL...]",
                      help="the label of each scribble value in the file (repeatable); every scribbled value must be "
                           "mapped. Default: label = value. GrabCut files: --map 1=1,2=0")
    prop.add_argument("--allow-dense", action="store_true",
                      help=f"accept a scribble map that labels more than {100 * DENSE_SCRIBBLES:.0f}%% of the pixels")
    prop.add_argument("--checkpoint", help="use the learned boundaries (and Q) of this checkpoint")
    prop.add_argument("--num-labels", type=int, help="label count (default: from the checkpoint, else the largest label + 1)")
    prop.add_argument("--model", default="rawks", choices=("rawks", "grady"))
    prop.add_argument("--backend", default="auto")
    prop.add_argument("--gain", type=float, default=2000.0, help="without a checkpoint: B = gain * relu(|grad I| - 0.02)^2")
    prop.add_argument("--alpha", type=float, default=None, help="confidence w = exp(-alpha H(P)) (default: the checkpoint's, else 2)")
    prop.add_argument("--out", required=True, help="output prefix: PREFIX_labels.png, PREFIX_probabilities.npy, ...")

    demo = sub.add_parser("demo", help="train on the synthetic set for a few minutes and show the results")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--steps", type=int, default=400)
    demo.add_argument("--threads", type=int, default=None)
    demo.add_argument("--train-count", type=int, default=64, help="training scenes (default 64)")
    demo.add_argument("--val-count", type=int, default=32, help="held-out scenes (default 32)")
    demo.add_argument("--no-progress", action="store_true")
    return parser


# ---- train ---------------------------------------------------------------------------------------


def cmd_train(args) -> int:
    from .training import TrainConfig, train

    given = {dest: getattr(args, dest) for _, (dest, _, _) in TRAIN_FLAGS.items() if getattr(args, dest, None) is not None}
    if args.data_option:
        given["data_options"] = _options(args.data_option)
    if args.no_augment:
        given["augment"] = False
    if args.no_progress:
        given["progress"] = False
    if args.resume:
        out = given.pop("out", None)
        if out is None:
            raise UsageError("--resume needs --out, the folder of the run to continue")
        config = TrainConfig(out=out)
        summary = train(config, resume=True, overrides=given)
    else:
        known = {f.name for f in fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in given.items() if k in known})
        summary = train(config)
    _print_summary(summary)
    return 0


def _print_summary(summary) -> None:
    from .training import format_table

    if summary.metrics:
        print(format_table({"this run": summary.metrics}))
    print(f"run folder: {summary.out} (metrics.csv, figures/, checkpoint.pt)")


# ---- eval ----------------------------------------------------------------------------------------


def cmd_eval(args) -> int:
    from .training.evaluate import evaluate
    from .training.splits import build_splits
    from .training.trainer import format_table, load_checkpoint, networks_from_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    payload = load_checkpoint(args.checkpoint)
    config, q_net, b_net, meta = networks_from_checkpoint(payload, args.device, source=args.checkpoint)
    if args.propagation_scale is not None:
        config = replace(config, propagation_scale=args.propagation_scale).validate()
    data = args.data or config.data
    root = args.data_root if args.data else config.data_root
    options = _options(args.data_option) if args.data else config.data_options
    splits = build_splits(data, root, options)
    if splits.num_labels != meta["num_labels"] or splits.in_channels != meta["in_channels"]:
        raise UsageError(
            f"the checkpoint has {meta['num_labels']} labels and {meta['in_channels']} input channels, "
            f"the data {splits.num_labels} and {splits.in_channels}"
        )
    results = {}
    for split, dataset in (("train", splits.train), ("val", splits.val)):
        if dataset is not None and dataset.has_masks:
            results[split] = evaluate(dataset, q_net, b_net, config.propagation, config.alpha, args.device, not args.no_progress, f"eval {split}")
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    record = {"checkpoint": str(args.checkpoint), "data": data, "data_options": options, "propagation_scale": config.propagation_scale, "metrics": results}
    (out / "eval.json").write_text(json.dumps(record, indent=2))
    if args.figures:
        _eval_figures(out, splits, q_net, b_net, config, args)
    print(format_table({Path(args.checkpoint).parent.name: results}))
    print(f"wrote {out / 'eval.json'}")
    return 0


def _eval_figures(out, splits, q_net, b_net, config, args):
    from .training.figures import figure_rows, save_panels

    for split, dataset in (("train", splits.train), ("val", splits.val)):
        if dataset is None:
            continue
        rows = figure_rows(dataset, args.figures, q_net, b_net, config.propagation, config.alpha, args.device)
        path = save_panels(out / f"eval_{split}.png", rows, f"{Path(args.checkpoint).parent.name}: {split} split")
        print(f"wrote {path}")


# ---- propagate -----------------------------------------------------------------------------------


def hand_made_boundary(image: torch.Tensor, gain: float) -> torch.Tensor:
    """[C, H, W] image -> [1, 1, H, W] boundary scores: gain * relu(|grad of the smoothed image| - 0.02)^2."""
    from .training.networks import gradient_features

    smooth = torch.nn.functional.avg_pool2d(image[None], 3, stride=1, padding=1, count_include_pad=False)
    magnitude = gradient_features(smooth).amax(dim=1, keepdim=True)
    return gain * torch.relu(magnitude - 0.02) ** 2


def parse_value_map(specs: list[str]) -> dict[int, int]:
    """["1=1,2=0", ...] (--map) -> {file value: label}."""
    mapping: dict[int, int] = {}
    for spec in specs:
        for pair in spec.split(","):
            value, sep, label = pair.partition("=")
            try:
                value, label = int(value), int(label)
            except ValueError:
                value = label = None
            if not sep or value is None or label < 0:
                raise UsageError(f"--map expects VALUE=LABEL pairs of integers (label >= 0), e.g. 1=1,2=0; got {pair!r}")
            if mapping.get(value, label) != label:
                raise UsageError(f"--map maps value {value} twice, to {mapping[value]} and to {label}")
            mapping[value] = label
    return mapping


def _most_frequent(values: np.ndarray) -> tuple[int, float]:
    found, counts = np.unique(values, return_counts=True)
    best = int(counts.argmax())
    return int(found[best]), float(counts[best]) / values.size


def scribbles_from_values(raw: np.ndarray, path, unlabelled: int, value_map: dict[int, int], num_labels: int | None,
                          labels_from: str, allow_dense: bool = False) -> tuple[torch.Tensor, int, list[str]]:
    """A scribble PNG's values -> ([H, W] int64 labels, -1 unscribbled; the label count; warnings to print).

    ``num_labels`` None: the largest label + 1. UsageError (naming --unlabelled, --map or
    --num-labels) for a map that would seed (nearly) every pixel, for values that are not
    labels, and for a map without any scribble.
    """
    scribbled = raw != unlabelled
    fraction = float(scribbled.mean())
    top, top_fraction = _most_frequent(raw)
    hint = ""
    if top != unlabelled:
        hint = (f"; the most frequent value is {top} ({100 * top_fraction:.1f}% of the pixels): "
                f"if {top} marks pixels without a scribble, pass --unlabelled {top}")
    if fraction == 1.0:
        raise UsageError(f"{path}: with --unlabelled {unlabelled} (a value no pixel has), every pixel would be a "
                         f"scribble and nothing is left to propagate to{hint}")
    if fraction > DENSE_SCRIBBLES and not allow_dense:
        raise UsageError(f"{path}: with --unlabelled {unlabelled}, {100 * fraction:.1f}% of the pixels would be scribbles; "
                         f"scribbles are sparse, so more than {100 * DENSE_SCRIBBLES:.0f}% is refused (pass --allow-dense "
                         f"if it is meant){hint}")
    if not scribbled.any():
        raise UsageError(f"{path} has no scribbled pixel (every value is --unlabelled={unlabelled})")
    values = sorted(int(v) for v in np.unique(raw[scribbled]))
    if value_map:
        if unlabelled in value_map:
            raise UsageError(f"--map maps {unlabelled}, the --unlabelled value; pixels of that value have no scribble")
        unmapped = [v for v in values if v not in value_map]
        if unmapped:
            raise UsageError(f"{path} holds scribble value(s) {unmapped[:10]} that --map does not map "
                             f"(--map covers {sorted(value_map)}; --unlabelled is {unlabelled}){hint}")
        labels = np.full(raw.shape, -1, dtype=np.int64)
        for value in values:
            labels[raw == value] = value_map[value]
    else:
        labels = np.where(scribbled, raw, -1).astype(np.int64)
    present = sorted(int(v) for v in np.unique(labels[labels >= 0]))
    notes = []
    if num_labels is None:
        num_labels = present[-1] + 1
        if num_labels > MAX_LABELS:
            raise UsageError(f"{path} holds label {present[-1]}; labels.png has room for {MAX_LABELS} labels: "
                             f"pass --unlabelled, --map or --num-labels to say what the values mean{hint}")
        missing = sorted(set(range(num_labels)) - set(present))
        if missing:
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            notes.append(f"{path} has no scribble of label(s) {missing[:10]}{more} below its largest label "
                            f"{num_labels - 1}: they get probability 0, and the outputs use the file's values as labels "
                            "(--map VALUE=LABEL renumbers them, e.g. --map 1=1,2=0 for GrabCut files)")
    else:
        unknown = [v for v in present if v >= num_labels]
        if unknown:
            origin = [v for v in values if value_map.get(v, v) in unknown]
            mapped = " after --map" if value_map else ""
            raise UsageError(f"{path} holds scribble value(s) {origin[:10]} that are not labels{mapped}: the labels are "
                             f"0 .. {num_labels - 1} ({labels_from}); map file values to labels with --map VALUE=LABEL "
                             f"(e.g. --map 1=1,2=0 for GrabCut files) or check --unlabelled ({unlabelled}){hint}")
    return torch.from_numpy(labels), num_labels, notes


def cmd_propagate(args) -> int:
    from PIL import Image

    from .loss import loss_weights
    from .training.data import read_image, read_label_png
    from .training.figures import colour_labels
    from .training.propagate import PropagationSettings, propagate_scribbles

    q_net = b_net = None
    channels, alpha = 3, 2.0
    settings = PropagationSettings(model=args.model, backend=args.backend)
    num_labels, labels_from = args.num_labels, f"--num-labels {args.num_labels}"
    if num_labels is not None and not 1 <= num_labels <= MAX_LABELS:
        raise UsageError(f"--num-labels must be in [1, {MAX_LABELS}], got {num_labels}")
    value_map = parse_value_map(args.map)
    if args.checkpoint:
        from .training.trainer import load_checkpoint, networks_from_checkpoint

        config, q_net, b_net, meta = networks_from_checkpoint(load_checkpoint(args.checkpoint), source=args.checkpoint)
        if b_net is None:
            raise UsageError(f"checkpoint {args.checkpoint} has no boundary network (protocol {config.protocol!r})")
        channels, alpha, settings = meta["in_channels"], config.alpha, config.propagation
        if num_labels is None:
            num_labels, labels_from = meta["num_labels"], f"from the checkpoint {args.checkpoint}"
    if args.alpha is not None:
        alpha = args.alpha
    for path in (args.image, args.scribbles):
        if not Path(path).is_file():
            raise UsageError(f"no file at {path}")
    image = read_image(Path(args.image), channels)
    raw = read_label_png(Path(args.scribbles))
    if raw.shape != tuple(image.shape[1:]):
        raise UsageError(f"scribbles {args.scribbles} are {raw.shape[0]}x{raw.shape[1]}, the image {image.shape[1]}x{image.shape[2]}")
    scribbles, num_labels, notes = scribbles_from_values(
        raw, args.scribbles, args.unlabelled, value_map, num_labels, labels_from, args.allow_dense
    )
    for note in notes:
        print(f"rawks propagate: warning: {note}", file=sys.stderr)
    with torch.no_grad():
        boundary = b_net(image[None]) if b_net is not None else hand_made_boundary(image, args.gain)
        start = time.perf_counter()
        P, reachable, result = propagate_scribbles(boundary, scribbles[None], num_labels, settings)
        seconds = time.perf_counter() - start
        confidence = loss_weights(P, alpha)[0]
    labels = P[0].argmax(0).numpy().astype(np.uint8)
    prefix = Path(args.out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    label_png = Image.fromarray(labels, mode="P")
    label_png.putpalette((np.clip(colour_labels(np.arange(256)) * 255, 0, 255).astype(np.uint8)).reshape(-1).tolist())
    label_png.save(f"{prefix}_labels.png")
    np.save(f"{prefix}_probabilities.npy", P[0].numpy().astype(np.float32))
    Image.fromarray((confidence.clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(f"{prefix}_confidence.png")
    written += [f"{prefix}_labels.png", f"{prefix}_probabilities.npy", f"{prefix}_confidence.png"]
    if q_net is not None:
        with torch.no_grad():
            q_labels = q_net(image[None])[0].argmax(0).numpy().astype(np.uint8)
        q_png = Image.fromarray(q_labels, mode="P")
        q_png.putpalette(label_png.getpalette())
        q_png.save(f"{prefix}_q_labels.png")
        written.append(f"{prefix}_q_labels.png")
    print(f"propagated {int((scribbles >= 0).sum())} scribbled pixels to {labels.size} pixels in {seconds:.2f} s "
          f"({result.backend} backend); {100 * float((~reachable).float().mean()):.2f}% unreachable")
    print("wrote " + ", ".join(written))
    return 0


# ---- demo ----------------------------------------------------------------------------------------


DEMO_SETTINGS = dict(data="synthetic", batch_size=4, eval_every=10**9, log_every=20, checkpoint_every=100, figures=4)


def cmd_demo(args) -> int:
    from .training import TrainConfig, format_table, train

    out = Path(args.out)
    progress = not args.no_progress
    start = time.perf_counter()
    results = {}
    runs = (("joint (RAWKS)", "joint"), ("sparse-loss baseline", "sparse"))
    print(f"rawks demo: training Q and B on the synthetic set for {args.steps} steps per protocol, then the "
          f"sparse-loss baseline for as many steps; results go to {out}/")
    for name, protocol in runs:
        config = TrainConfig(
            protocol=protocol, steps=args.steps, out=str(out / protocol), progress=progress, threads=args.threads,
            data_options={"train_count": args.train_count, "val_count": args.val_count}, **DEMO_SETTINGS,
        )
        summary = train(config)
        results[name] = summary.metrics
    table = format_table(results, f"Synthetic set, {args.steps} steps each, batch 4 (rawks demo)")
    minutes = (time.perf_counter() - start) / 60
    (out / "results.md").write_text(table + f"\n\nTotal time: {minutes:.1f} min.\n")
    print()
    print(table)
    print()
    print(f"finished in {minutes:.1f} min")
    print(f"table: {out / 'results.md'}")
    print(f"figures: {out / 'joint' / 'figures'} and {out / 'sparse' / 'figures'}")
    print(f"metrics: {out / 'joint' / 'metrics.csv'}, checkpoints: {out / 'joint' / 'checkpoint.pt'}")
    return 0


def main(argv=None) -> int:
    from .training.data import DataFolderError
    from .training.trainer import CheckpointError

    args = build_parser().parse_args(argv)
    handler = {"train": cmd_train, "eval": cmd_eval, "propagate": cmd_propagate, "demo": cmd_demo}[args.command]
    try:
        return handler(args)
    except (CheckpointError, DataFolderError, FileNotFoundError, ValueError, ImportError) as err:
        message = " ".join(str(err).split())  # one line, whatever the message held
        print(f"rawks {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
