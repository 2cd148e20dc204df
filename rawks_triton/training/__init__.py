"""The reference trainer of RAWKS: learn boundaries B and a segmentation network Q from scribbles.

    from rawks_triton.training import TrainConfig, train
    summary = train(TrainConfig(data="synthetic", protocol="joint", steps=300, out="runs/joint"))

Modules: :mod:`.data` and :mod:`.synthetic` (datasets), :mod:`.splits` (train / held-out),
:mod:`.networks` (Q and B), :mod:`.propagate` (P for training), :mod:`.trainer` (the
protocols and the loop), :mod:`.evaluate` (mIoU, abstention, pixel error),
:mod:`.figures` (PNG panels), :mod:`.distributed` (torchrun / DDP). The command line is
``rawks`` (:mod:`rawks_triton.cli`); docs/training.md describes it all.
"""

from .trainer import PROTOCOLS, RunSummary, TrainConfig, Trainer, format_table, load_checkpoint, networks_from_checkpoint, train

__all__ = ["PROTOCOLS", "RunSummary", "TrainConfig", "Trainer", "format_table", "load_checkpoint", "networks_from_checkpoint", "train"]
