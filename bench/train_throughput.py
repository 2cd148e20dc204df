"""Images per second of one training step of the reference trainer at 320 x 480.

    python -m bench.train_throughput                          # CPU (and CUDA when present), prints a table
    python -m bench.train_throughput --threads 2 --write-docs docs/benchmarks.md

One step is what :meth:`rawks_triton.training.Trainer.train_step` does: the forward pass
of Q and B (the small default networks), the propagation P of the scribbles with B
(protocols ``joint``; the library's ``"auto"`` choice, as in training: multigrid CG in
float32, torch on the CPU and Triton on CUDA), the loss, the backward pass through the
adjoint solve, and the Adam updates. The
``sparse`` protocol (cross-entropy of Q on the scribbles, no B, no propagation) is timed
beside it as the cost of the networks alone. The scenes are the synthetic set at 320 x
480 (3 labels), so no data are needed. Each configuration takes ``--warmup`` untimed
steps, then ``--repeats`` timed ones; the table gives the median images/s and the
slowest and fastest step. Nothing is asserted: this is a measurement.

``--write-docs PATH`` replaces the text between ``<!-- train-throughput:begin -->`` and
``<!-- train-throughput:end -->`` in PATH with the table; without the markers it only prints.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.harness import cpu_model
from bench.markers import write_between_markers

BEGIN, END = "<!-- train-throughput:begin -->", "<!-- train-throughput:end -->"


def time_steps(
    protocol: str,
    device: str,
    batch_size: int,
    height: int,
    width: int,
    warmup: int,
    repeats: int,
    propagation_scale: float,
) -> list[float]:
    """Seconds of each timed training step."""
    from rawks_triton.training import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            data="synthetic",
            data_options={"train_count": batch_size, "val_count": 0, "height": height, "width": width},
            protocol=protocol,
            steps=warmup + repeats,
            batch_size=batch_size,
            device=device,
            augment=False,
            propagation_scale=propagation_scale,
            figures=0,
            progress=False,
            out=out,
        )
        trainer = Trainer(config)
        for i in range(batch_size):  # generate the scenes before timing
            trainer.splits.train[i]
        seconds = []
        for step in range(warmup + repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainer.train_step(step)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if step >= warmup:
                seconds.append(time.perf_counter() - start)
        return seconds


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_model()} ({os.cpu_count()} cores), {torch.get_num_threads()} torch threads"


def table(rows: list[dict], args) -> str:
    lines = [
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC with "
        f"`python -m bench.train_throughput {' '.join(args.argv)}` (torch {torch.__version__}, "
        f"{args.height} x {args.width} synthetic scenes, 3 labels, small default networks, batch {args.batch_size}; "
        f"median of {args.repeats} steps after {args.warmup} untimed).",
        "",
        "| device | protocol | propagation | images/s (median) | slowest - fastest | ms per step (median) |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        s = r["seconds"]
        median = statistics.median(s)
        lines.append(
            f"| {r['device']} | {r['protocol']} | {r['propagation']} | {args.batch_size / median:.2f} | "
            f"{args.batch_size / max(s):.2f} - {args.batch_size / min(s):.2f} | {1000 * median:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.train_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--devices", default="auto", help="comma-separated: cpu, cuda (default: cpu, and cuda when present)"
    )
    parser.add_argument("--protocols", default="joint,sparse")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--propagation-scale", type=float, default=1.0, help="1 (default): full resolution; 0.25: the paper's"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--write-docs", type=Path, help="write the table between the train-throughput markers of this file"
    )
    args = parser.parse_args(argv)
    args.argv = argv
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = (
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" else args.devices.split(",")
    )
    rows = []
    for device in devices:
        for protocol in args.protocols.split(","):
            propagation = "-" if protocol in ("sparse", "dense") else f"auto, scale {args.propagation_scale:g}"
            print(f"timing {protocol} on {device} ...", file=sys.stderr, flush=True)
            seconds = time_steps(
                protocol,
                device,
                args.batch_size,
                args.height,
                args.width,
                args.warmup,
                args.repeats,
                args.propagation_scale,
            )
            rows.append(
                {"device": device_name(device), "protocol": protocol, "propagation": propagation, "seconds": seconds}
            )
    text = table(rows, args)
    print(text)
    if args.write_docs is not None:
        if args.write_docs.is_file() and write_between_markers(args.write_docs, "train-throughput", text):
            print(f"wrote the table into {args.write_docs}", file=sys.stderr)
        else:
            print(f"{args.write_docs} has no {BEGIN} ... {END} markers: printed only", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
