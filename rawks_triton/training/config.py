"""What defines a training run: :class:`TrainConfig`, its defaults and the protocols.

The defaults are written once, here: the ``rawks train`` flags are made from the fields
that carry a help text (:func:`command_line_fields`), with the same defaults.
"""

from __future__ import annotations

import math
import os
import typing
from dataclasses import dataclass, field, fields
from numbers import Real
from pathlib import Path

from .. import _checks
from ..loss import DEFAULT_ALPHA
from ..options import MODELS
from .data.registry import DATASETS, parse_options
from .networks import ARCHS, VOLUME_NETS
from .propagate import VOLUME_PROPAGATIONS, PropagationSettings

PROTOCOLS = ("joint", "joint-then-q", "sparse", "dense")


def _flag(default, help: str, default_help: str | None = None):
    """A field that is also a ``rawks train`` flag; ``default_help`` says what a None default means."""
    return field(default=default, metadata={"help": help, "default_help": default_help})


@dataclass
class TrainConfig:
    """Everything that defines a run (saved in every checkpoint)."""

    data: str = _flag("synthetic", f"the data set: {', '.join(DATASETS)}")
    data_root: str | None = _flag(None, "the folder that holds the data set (not needed for synthetic)")
    data_options: dict = field(default_factory=dict)  # --data-option KEY=VALUE; see data/registry.py
    protocol: str = _flag("joint", f"the training protocol: {', '.join(PROTOCOLS)}")
    steps: int = _flag(300, "training steps")
    q_only_steps: int | None = _flag(None, "joint-then-q: the last steps that train Q alone", "half of --steps")
    batch_size: int = _flag(4, "images per step and process")
    lr: float = _flag(2e-3, "Adam learning rate of Q")
    boundary_lr: float | None = _flag(None, "Adam learning rate of B", "--lr")
    lr_schedule: str = _flag("cosine", "learning-rate schedule: cosine or constant")
    weight_decay: float = 0.0
    clip_grad: float = 5.0
    alpha: float = _flag(DEFAULT_ALPHA, "loss weights w = exp(-alpha H(P))")
    reach_weight: float = _flag(0.0, "weight of the survival term -log sum_l Z_l; 0: eq. 11 alone")
    scribble_weight: float = _flag(
        1.0,
        "weight of Q's cross-entropy on the scribbled pixels, added to Q's loss on P (joint and q-only phases); "
        "0: eq. 11 alone",
    )
    arch: str = _flag("small", f"the networks: {', '.join(ARCHS)}; the ResNets need torchvision")
    q_width: int = _flag(32, "channels of the small Q network")
    b_width: int = _flag(16, "channels of the small B network")
    weights: str | None = _flag(None, "local ResNet trunk weights (a state-dict file); nothing is downloaded")
    volume_net: str = _flag(
        "per-slice", "networks on volumes (acdc-volumes): per-slice (the 2D networks on every slice) or 3d"
    )
    initial_logit: float = -10.0
    model: str = _flag("rawks", f"propagation model: {' or '.join(MODELS)}")
    backend: str = _flag(
        "auto",
        "solver backend: auto (the library's choice: multigrid CG, torch on CPU, triton on CUDA), "
        "scipy, torch or triton",
    )
    rtol: float = _flag(1e-3, "accuracy of P and of the gradient that the solves certify")
    min_weight: float | None = _flag(None, "unreachable at or below this total weight", "the model's, 1e-18 for rawks")
    walker_beta: float | None = _flag(
        None,
        "model grady on images: start from scikit-image's random walker at this beta; the conductances are "
        "the walker's times exp(-(B_i + B_j) / 2), so B = 0 is the walker itself",
        "none: B alone",
    )
    propagation_scale: float = _flag(1.0, "propagate at this fraction of the resolution; the paper used 0.25")
    volume_propagation: str = _flag(
        "3d", "on volumes: 3d (one walk through the whole volume) or slices (each slice on its own, in 2D)"
    )
    augment: bool = True  # --no-augment
    seed: int = _flag(0, "seed of the networks, the batch order and the flips")
    eval_every: int = _flag(100, "steps between evaluations and figures")
    checkpoint_every: int = _flag(50, "steps between checkpoints")
    log_every: int = _flag(10, "steps between training rows of metrics.csv")
    figures: int = _flag(4, "images per figure, 0 for none")
    device: str = _flag("cpu", "cpu, cuda, cuda:1, ...")
    threads: int | None = _flag(
        None,
        "torch CPU threads while training and evaluating",
        "1 on the CPU, where more threads make the small ops of a step wait on a busy machine; torch's choice on a GPU",
    )
    out: str = _flag("runs/train", "run folder")
    progress: bool = True  # --no-progress; bars are shown only when stderr is a terminal

    def __post_init__(self):
        for name in ("data_root", "weights", "out"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, os.fspath(value))

    def validate(self, check_files: bool = True) -> TrainConfig:
        """Raise ValueError/TypeError naming the first bad field; ``check_files=False`` skips the `weights` file."""
        _checks.check_choice("data", self.data, DATASETS)
        parse_options(self.data, self.data_options)
        _checks.check_choice("protocol", self.protocol, PROTOCOLS)
        _checks.check_choice("arch", self.arch, ARCHS)
        _checks.check_choice("model", self.model, MODELS)
        _checks.check_choice("volume_net", self.volume_net, VOLUME_NETS)
        _checks.check_choice("volume_propagation", self.volume_propagation, VOLUME_PROPAGATIONS)
        if self.volume_net == "3d" and self.arch != "small":
            raise ValueError(f"volume_net='3d' is a small network: it needs arch='small', got arch={self.arch!r}")
        _checks.check_choice("lr_schedule", self.lr_schedule, ("cosine", "constant"))
        for name in ("steps", "batch_size", "q_width", "b_width", "eval_every", "checkpoint_every", "log_every"):
            _checks.check_int(name, getattr(self, name), minimum=1)
        _checks.check_int("figures", self.figures, minimum=0)
        _checks.check_int("seed", self.seed, minimum=0)
        if self.threads is not None:
            _checks.check_int("threads", self.threads, minimum=1)
        for name in ("lr", "weight_decay", "clip_grad", "alpha", "rtol", "reach_weight", "scribble_weight"):
            _checks.check_nonnegative_real(name, getattr(self, name))
        if self.boundary_lr is not None:
            _checks.check_nonnegative_real("boundary_lr", self.boundary_lr)
        if self.min_weight is not None:
            _checks.check_nonnegative_real("min_weight", self.min_weight)
        if self.walker_beta is not None:
            if _checks.check_nonnegative_real("walker_beta", self.walker_beta) <= 0:
                raise ValueError(f"`walker_beta` must be > 0, got {self.walker_beta}")
            if self.model != "grady":
                raise ValueError(f"`walker_beta` needs model='grady' (the walker's conductances), got {self.model!r}")
            if self.data == "acdc-volumes":
                raise ValueError("`walker_beta` is for images; acdc-volumes propagates the boundary scores alone")
        scale = _checks.check_nonnegative_real("propagation_scale", self.propagation_scale)
        if not 0 < scale <= 1:
            raise ValueError(f"`propagation_scale` must be in (0, 1], got {scale}")
        if self.q_only_steps is not None:
            _checks.check_int("q_only_steps", self.q_only_steps, minimum=0)
            if self.q_only_steps >= self.steps:
                raise ValueError(f"`q_only_steps` must be < `steps` ({self.steps}), got {self.q_only_steps}")
            if self.protocol != "joint-then-q" and self.q_only_steps:
                raise ValueError(f"`q_only_steps` is only for protocol='joint-then-q', got protocol={self.protocol!r}")
        for name in ("data_root", "weights", "device", "out", "backend"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"`{name}` must be a str, got {type(value).__name__} ({value!r})")
        if not isinstance(self.data_options, dict):
            raise TypeError(
                f"`data_options` must be a dict, got {type(self.data_options).__name__} ({self.data_options!r})"
            )
        if (
            isinstance(self.initial_logit, bool)
            or not isinstance(self.initial_logit, Real)
            or not math.isfinite(self.initial_logit)
        ):
            raise TypeError(f"`initial_logit` must be a finite real number, got {self.initial_logit!r}")
        for name in ("augment", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` must be a bool, got {getattr(self, name)!r}")
        if check_files and self.weights is not None and not Path(self.weights).is_file():
            raise ValueError(f"`weights` must be a local state-dict file, got {self.weights!r} (no such file)")
        return self

    @property
    def uses_boundaries(self) -> bool:
        return self.protocol in ("joint", "joint-then-q")

    @property
    def joint_steps(self) -> int:
        if self.protocol != "joint-then-q":
            return self.steps
        q_only = self.steps // 2 if self.q_only_steps is None else self.q_only_steps
        return self.steps - q_only

    def phase(self, step: int) -> str:
        """What step ``step`` (0-based) trains: "joint", "q-only", "sparse" or "dense"."""
        if self.protocol in ("sparse", "dense"):
            return self.protocol
        return "joint" if step < self.joint_steps else "q-only"

    def learning_rate(self, base: float, step: int) -> float:
        if self.lr_schedule == "constant":
            return base
        return base * 0.5 * (1.0 + math.cos(math.pi * step / self.steps))

    @property
    def propagation(self) -> PropagationSettings:
        return PropagationSettings(
            self.model,
            self.backend,
            self.rtol,
            self.min_weight,
            self.propagation_scale,
            self.volume_propagation,
            self.walker_beta,
        )

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from ``asdict`` output; unknown keys raise ValueError (nothing is dropped silently)."""
        if not isinstance(values, dict):
            raise TypeError(f"a TrainConfig needs a dict of fields, got {type(values).__name__}")
        unknown = sorted(str(k) for k in set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}")
        return cls(**values)


def show_default(value) -> str:
    """A default as the help text shows it: 0.002, not 2e-03; 2, not 2.0."""
    return format(value, "g") if isinstance(value, float) else str(value)


def command_line_fields() -> list[tuple[str, type, object, str]]:
    """(field name, value type, default, help with the default) of every TrainConfig field that is a flag."""
    hints = typing.get_type_hints(TrainConfig)
    flags = []
    for f in fields(TrainConfig):
        if "help" not in f.metadata:
            continue
        kinds = [k for k in typing.get_args(hints[f.name]) if k is not type(None)] or [hints[f.name]]
        shown = f.metadata["default_help"] or (None if f.default is None else show_default(f.default))
        text = f.metadata["help"] + ("" if shown is None else f" (default: {shown})")
        flags.append((f.name, kinds[0], f.default, text))
    return flags
