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
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .cli_scribbles import DENSE_SCRIBBLES, MAX_LABELS, UsageError, parse_value_map, scribbles_from_values
from .demo import DEMO_STEPS
from .options import MODELS
from .training import provenance
from .training.config import TrainConfig, command_line_fields
from .training.data.registry import DATASETS, parse_option_pairs
from .training.networks import HAND_MADE_GAIN, HAND_MADE_THRESHOLD
from .training.threads import resolve_threads, torch_threads

THREADS_HELP = "torch CPU threads (default: 1, as for rawks train; see docs/training.md, Threads)"


def _add_data_arguments(parser, data_help: str, root_help: str) -> None:
    parser.add_argument("--data", choices=DATASETS, help=data_help)
    parser.add_argument("--data-root", help=root_help)
    parser.add_argument(
        "--data-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a loader option, e.g. scribble_set=scribbles-set-2 (repeatable; see docs/training.md)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rawks", description="Random-walk label propagation: training and tools.")
    parser.add_argument("--version", action="version", version=f"rawks {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train Q and B from scribbles", description="Train Q and B from scribbles.")
    flags = command_line_fields()
    helps = {name: text for name, _, _, text in flags}
    _add_data_arguments(train, helps["data"], helps["data_root"])
    for name, kind, _, text in flags:
        if name not in ("data", "data_root"):
            # None: not given, so that --resume keeps the checkpoint's value; TrainConfig holds the defaults.
            train.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=text)
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--no-augment", action="store_true", help="no random flips")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")

    ev = sub.add_parser(
        "eval", help="evaluate a checkpoint", description="Evaluate a checkpoint on its data or other data."
    )
    ev.add_argument("--checkpoint", required=True)
    same = "(default: the checkpoint's)"
    _add_data_arguments(ev, f"evaluate on this data set {same}", f"the folder that holds --data {same}")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--threads", type=int, help=THREADS_HELP)
    ev.add_argument("--figures", type=int, default=0, help="write a figure of this many images per split")
    ev.add_argument("--propagation-scale", type=float, help=f"propagate at this fraction of the resolution {same}")
    ev.add_argument(
        "--volume-propagation",
        choices=("3d", "slices"),
        help=f"on volumes: 3d (one walk through the volume) or slices (each slice on its own) {same}",
    )
    ev.add_argument("--out", help="folder for eval.json and figures (default: the checkpoint's folder)")
    ev.add_argument("--no-progress", action="store_true")

    prop = sub.add_parser(
        "propagate",
        help="scribbles -> dense labels for one image",
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
    prop.add_argument(
        "--scribbles", required=True, help="scribble PNG: a label per scribbled pixel, --unlabelled elsewhere"
    )
    unlabelled = "the value of pixels without a scribble (default 255; GrabCut files use 0)"
    prop.add_argument("--unlabelled", type=int, default=255, help=unlabelled)
    prop.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="VALUE=LABEL[,VALUE=LABEL...]",
        help="the label of each scribble value in the file (repeatable); every scribbled value must be "
        "mapped. Default: label = value. GrabCut files: --map 1=1,2=0",
    )
    prop.add_argument(
        "--allow-dense",
        action="store_true",
        help=f"accept a scribble map that labels more than {100 * DENSE_SCRIBBLES:.0f}%% of the pixels",
    )
    prop.add_argument("--checkpoint", help="use the learned boundaries (and Q) of this checkpoint")
    prop.add_argument(
        "--num-labels", type=int, help="label count (default: from the checkpoint, else the largest label + 1)"
    )
    prop.add_argument("--model", default="rawks", choices=MODELS)
    prop.add_argument("--backend", default="auto")
    prop.add_argument(
        "--gain",
        type=float,
        default=HAND_MADE_GAIN,
        help=f"without a checkpoint: B = gain * relu(|grad I| - {HAND_MADE_THRESHOLD:g})^2 "
        f"(default {HAND_MADE_GAIN:g})",
    )
    prop.add_argument(
        "--alpha", type=float, default=None, help="confidence w = exp(-alpha H(P)) (default: the checkpoint's, else 2)"
    )
    prop.add_argument("--threads", type=int, help=THREADS_HELP)
    prop.add_argument("--out", required=True, help="output prefix: PREFIX_labels.png, PREFIX_probabilities.npy, ...")

    demo = sub.add_parser("demo", help="train on the synthetic set for about 3 minutes on a CPU and show the results")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--steps", type=int, default=DEMO_STEPS, help=f"steps per protocol (default {DEMO_STEPS})")
    demo.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    demo.add_argument(
        "--jobs",
        type=int,
        choices=(1, 2),
        help="1: the two runs one after the other; 2: side by side in two processes "
        "(default: 2 where the process may use 2 CPUs or more)",
    )
    demo.add_argument("--train-count", type=int, default=64, help="training scenes (default 64)")
    demo.add_argument("--val-count", type=int, default=32, help="held-out scenes (default 32)")
    demo.add_argument("--no-progress", action="store_true")
    return parser


# ---- train ---------------------------------------------------------------------------------------


def cmd_train(args) -> int:
    from .training import format_table, train

    names = [name for name, _, _, _ in command_line_fields()]
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.data_option:
        given["data_options"] = parse_option_pairs(args.data_option)
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
        config = TrainConfig(**given)
        summary = train(config)
    if summary.metrics:
        print(format_table({"this run": summary.metrics}))
    print(f"run folder: {summary.out} (metrics.csv, figures/, checkpoint.pt)")
    return 0


# ---- eval ----------------------------------------------------------------------------------------


def cmd_eval(args) -> int:
    from .training import format_table, load_checkpoint, networks_from_checkpoint
    from .training.evaluate import evaluate_splits
    from .training.figures import save_split_figures
    from .training.splits import build_splits

    payload = load_checkpoint(args.checkpoint)
    config, q_net, b_net, meta = networks_from_checkpoint(payload, args.device, source=args.checkpoint)
    print(f"checkpoint {args.checkpoint}: {provenance.describe(payload)}")
    if args.propagation_scale is not None:
        config = replace(config, propagation_scale=args.propagation_scale).validate()
    if args.volume_propagation is not None:
        config = replace(config, volume_propagation=args.volume_propagation).validate()
    data = args.data or config.data
    root = args.data_root if args.data else config.data_root
    # Another data set takes only the options given; the checkpoint's own data set keeps its
    # options, with the given ones replacing theirs (e.g. scribble_set=scribbles-set-2).
    given = parse_option_pairs(args.data_option) if args.data_option else {}
    options = given if args.data else {**config.data_options, **given}
    splits = build_splits(data, root, options)
    if (data, root, options) != (config.data, config.data_root, config.data_options):
        given = f"--data {data}" + (f" from {root}" if root else "") + (f", options {options}" if options else "")
        print(f"evaluating on {given}, not on the checkpoint's training data")
    for note in provenance.trained_on_notes(payload, data, splits):
        print(f"rawks eval: warning: {note}", file=sys.stderr)
    if splits.num_labels != meta["num_labels"] or splits.in_channels != meta["in_channels"]:
        raise UsageError(
            f"the checkpoint has {meta['num_labels']} labels and {meta['in_channels']} input channels, "
            f"the data {splits.num_labels} and {splits.in_channels}"
        )
    if splits.volumetric and not meta.get("volumes", False):
        raise UsageError(
            f"the checkpoint was trained on images and --data {data} holds volumes; "
            "evaluate it on images, or train on the volumes (rawks train --data acdc-volumes)"
        )
    if meta.get("volumes", False) and config.volume_net == "3d" and not splits.volumetric:
        raise UsageError(f"the checkpoint's networks are 3D (volume_net '3d') and --data {data} holds images")
    settings, alpha, name = config.propagation, config.alpha, Path(args.checkpoint).parent.name
    threads = resolve_threads(args.threads, args.device)
    with torch_threads(threads):
        results = evaluate_splits(splits, q_net, b_net, settings, alpha, args.device, not args.no_progress)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "checkpoint": str(args.checkpoint),
        "data": data,
        "data_options": options,
        "propagation_scale": config.propagation_scale,
        **({"volume_propagation": config.volume_propagation} if splits.volumetric else {}),
        "metrics": results,
    }
    (out / "eval.json").write_text(json.dumps(record, indent=2))
    if args.figures:
        with torch_threads(threads):
            written = save_split_figures(
                splits,
                args.figures,
                q_net,
                b_net,
                settings,
                alpha,
                args.device,
                path=lambda split: out / f"eval_{split}.png",
                title=lambda split: f"{name}: {split} split",
            )
        for path in written:
            print(f"wrote {path}")
    print(format_table({name: results}))
    print(f"wrote {out / 'eval.json'}")
    return 0


# ---- propagate -----------------------------------------------------------------------------------


def cmd_propagate(args) -> int:
    from PIL import Image

    from .loss import loss_weights
    from .training.data import read_image, read_label_png
    from .training.figures import save_label_png
    from .training.networks import hand_made_boundary
    from .training.propagate import PropagationSettings, propagate_scribbles

    q_net = b_net = payload = None
    channels, alpha = 3, 2.0
    settings = PropagationSettings(model=args.model, backend=args.backend)
    num_labels, labels_from = args.num_labels, f"--num-labels {args.num_labels}"
    if num_labels is not None and not 1 <= num_labels <= MAX_LABELS:
        raise UsageError(f"--num-labels must be in [1, {MAX_LABELS}], got {num_labels}")
    value_map = parse_value_map(args.map)
    if args.checkpoint:
        from .training import load_checkpoint, networks_from_checkpoint

        payload = load_checkpoint(args.checkpoint)
        config, q_net, b_net, meta = networks_from_checkpoint(payload, source=args.checkpoint)
        if b_net is None:
            raise UsageError(f"checkpoint {args.checkpoint} has no boundary network (protocol {config.protocol!r})")
        print(f"checkpoint {args.checkpoint}: {provenance.describe(payload)}")
        channels, alpha, settings = meta["in_channels"], config.alpha, config.propagation
        if num_labels is None:
            num_labels = meta["num_labels"]
            labels_from = (
                f"checkpoint {args.checkpoint}: {provenance.label_space(payload)}; --num-labels N propagates N labels "
                "with its boundaries"
            )
    if args.alpha is not None:
        alpha = args.alpha
    for path in (args.image, args.scribbles):
        if not Path(path).is_file():
            raise UsageError(f"no file at {path}")
    image = read_image(Path(args.image), channels)
    raw = read_label_png(Path(args.scribbles))
    if raw.shape != tuple(image.shape[1:]):
        raise UsageError(
            f"scribbles {args.scribbles} are {raw.shape[0]}x{raw.shape[1]}, the image {image.shape[1]}x{image.shape[2]}"
        )
    scribbles, num_labels, notes = scribbles_from_values(
        raw, args.scribbles, args.unlabelled, value_map, num_labels, labels_from, args.allow_dense
    )
    if payload is not None:
        present = sorted(int(v) for v in scribbles.unique() if v >= 0)
        notes += provenance.label_space_notes(payload, args.checkpoint, present, num_labels, tuple(raw.shape))
    for note in notes:
        print(f"rawks propagate: warning: {note}", file=sys.stderr)
    with torch.no_grad(), torch_threads(resolve_threads(args.threads)):
        boundary = b_net(image[None]) if b_net is not None else hand_made_boundary(image, args.gain)
        start = time.perf_counter()
        P, reachable, result = propagate_scribbles(boundary, scribbles[None], num_labels, settings, image[None])
        seconds = time.perf_counter() - start
        confidence = loss_weights(P, alpha)[0]
        q_labels = None if q_net is None else q_net(image[None])[0].argmax(0).numpy().astype(np.uint8)
    labels = P[0].argmax(0).numpy().astype(np.uint8)
    prefix = Path(args.out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    save_label_png(f"{prefix}_labels.png", labels)
    np.save(f"{prefix}_probabilities.npy", P[0].numpy().astype(np.float32))
    Image.fromarray((confidence.clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(f"{prefix}_confidence.png")
    written += [f"{prefix}_labels.png", f"{prefix}_probabilities.npy", f"{prefix}_confidence.png"]
    if q_labels is not None:
        written.append(str(save_label_png(f"{prefix}_q_labels.png", q_labels)))
    print(
        f"propagated {int((scribbles >= 0).sum())} scribbled pixels to {labels.size} pixels in {seconds:.2f} s "
        f"({result.backend} backend); {100 * float((~reachable).float().mean()):.2f}% unreachable"
    )
    print("wrote " + ", ".join(written))
    return 0


# ---- demo ----------------------------------------------------------------------------------------


def cmd_demo(args) -> int:
    from .demo import train_demo

    train_demo(args.out, args.steps, args.threads, args.train_count, args.val_count, not args.no_progress, args.jobs)
    return 0


def main(argv=None) -> int:
    from .training.checkpoint import CheckpointError
    from .training.data import DataFolderError

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
