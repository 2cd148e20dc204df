"""The reference trainer of RAWKS: learn boundaries B and a segmentation network Q from scribbles.

    from rawks_triton.training import TrainConfig, train
    summary = train(TrainConfig(data="synthetic", protocol="joint", steps=300, out="runs/joint"))

The path of one step: image -> B (:mod:`.networks`) -> boundary scores -> P
(:mod:`.propagate`, the library's solver) -> ``rawks_loss(P, Q)`` (:mod:`.loop`).

Modules: :mod:`.data` (one module per format and the registry of names and options) and
:mod:`.synthetic` (datasets), :mod:`.splits` (train / held-out), :mod:`.networks` (Q and
B), :mod:`.propagate` (P for training), :mod:`.config` (TrainConfig, the protocols and
defaults), :mod:`.loop` (the Trainer: batches, steps, metrics.csv), :mod:`.checkpoint`
(save and load), :mod:`.evaluate` (mIoU, abstention, pixel error), :mod:`.figures` (PNG
panels), :mod:`.report` (summary and tables), :mod:`.distributed` (torchrun / DDP). The
command line is ``rawks`` (:mod:`rawks_triton.cli`); docs/training.md describes it all.
"""

from .checkpoint import CheckpointError, CheckpointNotFoundError, load_checkpoint, networks_from_checkpoint
from .config import PROTOCOLS, TrainConfig
from .data import DATASETS, GrabCutDataset
from .loop import Trainer, train
from .propagate import downsample_scribbles
from .report import RunSummary, format_table

__all__ = [
    "DATASETS",
    "PROTOCOLS",
    "CheckpointError",
    "CheckpointNotFoundError",
    "GrabCutDataset",
    "RunSummary",
    "TrainConfig",
    "Trainer",
    "downsample_scribbles",
    "format_table",
    "load_checkpoint",
    "networks_from_checkpoint",
    "train",
]
