"""The reference trainer: Q and B from scribbles, with the random-walk propagation P between them.

Protocols (the paper's Table 2):

* ``joint``: Q and B trained together on ``rawks_loss(P(B, scribbles), Q)``.
* ``joint-then-q`` ("train P, Q, then Q"): ``joint`` for the first steps, then the last
  ``q_only_steps`` fine-tune Q alone on the loss with P fixed (B frozen).
* ``sparse``: the baseline, cross-entropy of Q on the scribbled pixels only; no B.
* ``dense``: cross-entropy of Q on the dense truth (datasets with masks); no B.

Everything a step does is a function of (seed, step): the batch (a permutation per
epoch), the flips, the learning rate. A checkpoint holds the step, the networks, the
optimisers and the running sums of the unfinished logging window, so ``resume``
continues an interrupted run exactly (same weights, same metrics.csv rows), and K
processes under ``torchrun`` (DDP) with batch b take the steps of one process with batch K*b.

Checkpoints hold only tensors, dicts, lists, strings and numbers, and are read with
``torch.load(..., weights_only=True)``: a file from someone else cannot run code. A file
that is not a readable checkpoint raises :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from numbers import Real
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import _checks
from ..loss import DEFAULT_ALPHA, rawks_loss
from ..propagation import MODELS, reach_threshold
from . import distributed
from .data import Sample
from .evaluate import evaluate
from .networks import ARCHS, build_boundary_net, build_segmentation_net
from .propagate import PropagationSettings, propagate_scribbles
from .splits import DATASETS, Splits, build_splits, parse_options

PROTOCOLS = ("joint", "joint-then-q", "sparse", "dense")
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
CSV_FIELDS = (
    "step", "phase", "kind", "split", "loss", "q_miou", "q_accuracy", "q_pixel_error", "p_miou", "p_accuracy",
    "p_pixel_error", "p_miou_abstain", "p_pixel_error_abstain", "abstained", "images", "images_per_second", "seconds",
)


@dataclass
class TrainConfig:
    """Everything that defines a run (saved in every checkpoint)."""

    data: str = "synthetic"
    data_root: str | None = None
    data_options: dict = field(default_factory=dict)
    protocol: str = "joint"
    steps: int = 300
    q_only_steps: int | None = None  # joint-then-q: the last steps that train Q alone (default: half)
    batch_size: int = 4
    lr: float = 2e-3
    boundary_lr: float | None = None  # default: lr
    lr_schedule: str = "cosine"  # or "constant"
    weight_decay: float = 0.0
    clip_grad: float = 5.0
    alpha: float = DEFAULT_ALPHA
    reach_weight: float = 0.01  # weight of the survival term mean(-log sum_l Z_l); 0: eq. 11 alone
    arch: str = "small"
    q_width: int = 32
    b_width: int = 16
    weights: str | None = None  # local ResNet trunk weights (state dict file)
    initial_logit: float = -10.0
    model: str = "rawks"
    backend: str = "auto"
    rtol: float = 1e-3
    min_weight: float | None = None
    propagation_scale: float = 1.0
    augment: bool = True
    seed: int = 0
    eval_every: int = 100
    checkpoint_every: int = 50
    log_every: int = 10
    figures: int = 4
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads (None: torch's default)
    out: str = "runs/train"
    progress: bool = True

    def __post_init__(self):
        for name in ("data_root", "weights", "out"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, os.fspath(value))

    def validate(self, check_files: bool = True) -> "TrainConfig":
        """Raise ValueError/TypeError naming the first bad field; ``check_files=False`` skips the `weights` file."""
        _checks.check_choice("data", self.data, DATASETS)
        parse_options(self.data, self.data_options)
        _checks.check_choice("protocol", self.protocol, PROTOCOLS)
        _checks.check_choice("arch", self.arch, ARCHS)
        _checks.check_choice("model", self.model, MODELS)
        _checks.check_choice("lr_schedule", self.lr_schedule, ("cosine", "constant"))
        for name in ("steps", "batch_size", "q_width", "b_width", "eval_every", "checkpoint_every", "log_every"):
            _checks.check_int(name, getattr(self, name), minimum=1)
        _checks.check_int("figures", self.figures, minimum=0)
        _checks.check_int("seed", self.seed, minimum=0)
        if self.threads is not None:
            _checks.check_int("threads", self.threads, minimum=1)
        for name in ("lr", "weight_decay", "clip_grad", "alpha", "rtol", "reach_weight"):
            _checks.check_nonnegative_real(name, getattr(self, name))
        if self.boundary_lr is not None:
            _checks.check_nonnegative_real("boundary_lr", self.boundary_lr)
        if self.min_weight is not None:
            _checks.check_nonnegative_real("min_weight", self.min_weight)
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
            raise TypeError(f"`data_options` must be a dict, got {type(self.data_options).__name__} ({self.data_options!r})")
        if isinstance(self.initial_logit, bool) or not isinstance(self.initial_logit, Real) or not math.isfinite(self.initial_logit):
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
        return PropagationSettings(self.model, self.backend, self.rtol, self.min_weight, self.propagation_scale)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from ``asdict`` output; unknown keys raise ValueError (nothing is dropped silently)."""
        if not isinstance(values, dict):
            raise TypeError(f"a TrainConfig needs a dict of fields, got {type(values).__name__}")
        unknown = sorted(str(k) for k in set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}")
        return cls(**values)


class ListApply(nn.Module):
    """Applies a network to a list of batches (images of different sizes): one DDP forward per step."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.net(x) for x in images]


def _image_means(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, H, W] values -> [N] means over ``mask`` (0 for an image with an empty mask)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=(1, 2)) / mask.sum(dim=(1, 2)).clamp(min=1)


def reach_penalty(result) -> torch.Tensor:
    """[N] per image: the mean over its pixels of -log sum_l Z_l (0 for an image without scribbles).

    sum_l Z_l is the probability that a walk from the pixel reaches a scribble before it
    is killed. Eq. 11 alone rewards killing everywhere (large B makes P sharp, as the
    nearest scribble wins), and the boundary network can learn to fill whole objects
    with large scores; this term charges every killed walk, so that walls pay only where
    they separate labels.
    """
    total = result.Z.clamp(min=0).sum(dim=1)  # [N, h, w]
    penalty = -torch.log(total + reach_threshold(result.model, total.dtype)).mean(dim=(1, 2))
    return torch.where(result.has_seeds, penalty, torch.zeros_like(penalty))


def step_indices(step: int, dataset_size: int, global_batch: int, seed: int) -> tuple[list[int], int]:
    """The dataset indices of global batch ``step`` and its epoch: a permutation per epoch, padded by wrapping."""
    per_epoch = max(1, math.ceil(dataset_size / global_batch))
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(dataset_size, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    order = (order * math.ceil(per_epoch * global_batch / dataset_size + 1))[: per_epoch * global_batch]
    return order[position * global_batch : (position + 1) * global_batch], epoch


def flip_of(seed: int, epoch: int, index: int) -> bool:
    g = torch.Generator().manual_seed((seed * 7_919 + epoch) * 104_729 + index)
    return bool(torch.rand((), generator=g) < 0.5)


def group_by_size(samples: list[Sample]) -> list[list[Sample]]:
    groups: dict[tuple, list[Sample]] = {}
    for s in samples:
        groups.setdefault(tuple(s.image.shape), []).append(s)
    return list(groups.values())


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable, where the platform can open a folder (POSIX)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write, text: bool = False) -> None:
    """Write ``path`` through ``write(file)`` so that a reader sees the old file or the whole new one.

    The data goes to a temporary file in the same folder, is flushed and fsynced, then
    renamed over ``path`` (os.replace is atomic on one file system), and the folder is
    fsynced so that the rename survives a power cut. On an error the temporary file is
    removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w" if text else "wb", **({"newline": ""} if text else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


PLAIN = (str, int, float, bool, type(None))


def _check_plain(value, where: str = "checkpoint") -> None:
    """Raise TypeError unless ``value`` is tensors, dicts, lists, tuples, str, int, float, bool and None."""
    if isinstance(value, (torch.Tensor, *PLAIN)):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}; only str and int keys load with weights_only=True")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}; a checkpoint holds only tensors, "
        "dicts, lists, tuples, str, int, float, bool and None (so that it loads with weights_only=True)"
    )


def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save ``payload`` atomically; TypeError if it holds anything weights_only=True would refuse."""
    _check_plain(payload)
    _atomic_write(path, lambda f: torch.save(payload, f))


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint written by ``rawks train``; the message names it."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No file where a checkpoint was expected."""


EXPECTED = "expected a checkpoint written by `rawks train`"
# What Trainer.checkpoint writes; "train_window" is optional (older checkpoints lack it).
CHECKPOINT_KEYS = ("config", "step", "q", "b", "q_opt", "b_opt", "meta")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0].split(". ")[0] if text else ""
    return f"{type(err).__name__}: {line[:200]}" if line else type(err).__name__


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    if isinstance(value, dict):
        keys = [str(k) for k in list(value)[:6]]
        return f"a dict with keys {keys}{' ...' if len(value) > 6 else ''}"
    return f"a {type(value).__name__}"


def _is_state_dict(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def check_checkpoint(payload, path) -> TrainConfig:
    """The config of a loaded checkpoint; CheckpointError naming ``path`` and the first problem found."""

    def bad(problem: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a usable checkpoint: {problem} ({EXPECTED})")

    if not isinstance(payload, dict):
        raise bad(f"it holds {_describe(payload)}, not the dict of a training checkpoint")
    missing = [k for k in CHECKPOINT_KEYS if k not in payload]
    if missing:
        raise bad(f"it lacks {missing}; it holds {_describe(payload)}")
    try:
        config = TrainConfig.from_dict(payload["config"]).validate(check_files=False)
    except (TypeError, ValueError) as err:
        raise bad(f"its config is invalid: {err}") from None
    step = payload["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise bad(f"'step' must be an int >= 0, got {step!r}")
    meta = payload["meta"]
    for key in ("num_labels", "in_channels"):
        value = meta.get(key) if isinstance(meta, dict) else None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(f"'meta' must hold an int {key} >= 1, got {_describe(meta) if value is None else repr(value)}")
    if not _is_state_dict(payload["q"]):
        raise bad(f"'q' must be a state dict (str -> tensor), got {_describe(payload['q'])}")
    if not isinstance(payload["q_opt"], dict):
        raise bad(f"'q_opt' must be an optimiser state dict, got {_describe(payload['q_opt'])}")
    if config.uses_boundaries:
        if not _is_state_dict(payload["b"]) or not isinstance(payload["b_opt"], dict):
            raise bad(f"protocol {config.protocol!r} needs the boundary network 'b' and its optimiser 'b_opt', "
                      f"got {_describe(payload['b'])} and {_describe(payload['b_opt'])}")
    elif payload["b"] is not None:
        raise bad(f"protocol {config.protocol!r} has no boundary network, but 'b' holds {_describe(payload['b'])}")
    window = payload.get("train_window")
    if window is not None:
        ok = isinstance(window, dict) and isinstance(window.get("steps"), int) and window["steps"] >= 0 and all(
            isinstance(window.get(k), (int, float)) and math.isfinite(window[k]) for k in ("loss_sum", "seconds")
        )
        if not ok:
            raise bad(f"'train_window' must hold loss_sum, steps and seconds, got {window!r}")
    return config


def _load_problem(err: Exception) -> str:
    """What a torch.load error means, in one line."""
    if isinstance(err, PermissionError):
        return f"it cannot be opened ({_first_line(err)})"
    text = str(err)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return (f"it holds a Python object ({refused.group(1)}) besides tensors, containers and numbers, which is "
                "not loaded because loading it could run code from the file")
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    reason = f"{type(err).__name__}: {detail.group(1)[:200]}" if detail else _first_line(err)
    return f"it cannot be read, the file is truncated, corrupt or not a torch.save file ({reason})"


def load_checkpoint(path) -> dict:
    """The payload of a checkpoint written by ``rawks train``, read with ``weights_only=True``.

    Raises :class:`CheckpointNotFoundError` for a missing file and :class:`CheckpointError`
    for anything else that is not a readable, well-formed checkpoint (truncated, corrupt,
    another kind of torch file, objects that only an unsafe load would build, an invalid
    config); the message names the path and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        found = "a folder" if path.is_dir() else "nothing"
        raise CheckpointNotFoundError(f"no checkpoint at {path}: {EXPECTED}, found {found}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on the pickle protocol of a foreign file
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every reader error means the same to the user
        raise CheckpointError(f"{path} is not a usable checkpoint: {_load_problem(err)} ({EXPECTED})") from None
    check_checkpoint(payload, path)
    return payload


def _load_state(target, state, what: str, source) -> None:
    try:
        target.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{source}: its {what} does not fit the network its config describes ({_first_line(err)})") from None


def networks_from_checkpoint(payload: dict, device="cpu", source="the checkpoint"):
    """(config, Q, B or None, meta) rebuilt from a checkpoint, in eval mode.

    ``source`` names the checkpoint in errors (e.g. its path).
    """
    config = check_checkpoint(payload, source)
    meta = payload["meta"]
    q_net = build_segmentation_net(config.arch, meta["in_channels"], meta["num_labels"], config.q_width)
    _load_state(q_net, payload["q"], "Q network 'q'", source)
    b_net = None
    if payload.get("b") is not None:
        b_net = build_boundary_net(config.arch, meta["in_channels"], config.b_width, initial_logit=config.initial_logit)
        _load_state(b_net, payload["b"], "boundary network 'b'", source)
        b_net.to(device).eval()
    return config, q_net.to(device).eval(), b_net, meta


class MetricsLog:
    """metrics.csv of a run (rank 0 only); on resume, rows past the checkpoint are dropped.

    The file is rewritten atomically on resume; rows that do not parse (a line cut short
    by a crash) are dropped with the rows past the checkpoint.
    """

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        rows = []
        if resume_step is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if _step_of(r) is not None and _step_of(r) <= resume_step]

        def write(f):
            writer = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

        _atomic_write(path, write, text=True)

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, CSV_FIELDS).writerow({k: _fmt(row.get(k)) for k in CSV_FIELDS})


def _step_of(row: dict) -> int | None:
    """The step of a metrics.csv row, None for a row cut short or malformed."""
    if None in row or any(value is None for value in row.values()):
        return None
    try:
        return int(row["step"])
    except ValueError:
        return None


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


@dataclass
class RunSummary:
    out: Path
    step: int
    metrics: dict  # split -> metrics of the last evaluation
    checkpoint: Path


class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False, overrides: dict | None = None):
        self.dist = distributed.init_from_environment(config.device)
        out = Path(config.out)
        self.start_step = 0
        payload = None
        # The running sums of the logging window that the checkpoint step fell into.
        self.window = {"loss_sum": 0.0, "steps": 0, "seconds": 0.0}
        if resume:
            payload = load_checkpoint(out / CHECKPOINT)
            config = TrainConfig.from_dict({**payload["config"], "out": str(out), **(overrides or {})})
            self.start_step = payload["step"]
            if payload.get("train_window") is not None:
                self.window = dict(payload["train_window"])
        self.config = config.validate()
        self.out = out
        self.device = torch.device(config.device)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        if self.dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(asdict(config), indent=2))
        self.splits: Splits = build_splits(config.data, config.data_root, config.data_options)
        if config.protocol == "dense" and not self.splits.train.has_masks:
            raise ValueError(f"protocol='dense' needs dense masks, and the {config.data} training split has none")
        torch.manual_seed(config.seed)
        L, C = self.splits.num_labels, self.splits.in_channels
        self.q_net = build_segmentation_net(config.arch, C, L, config.q_width, config.weights).to(self.device)
        self.b_net = None
        if config.uses_boundaries:
            self.b_net = build_boundary_net(config.arch, C, config.b_width, config.weights, config.initial_logit).to(self.device)
        self.q_opt = torch.optim.Adam(self.q_net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.b_opt = None
        if self.b_net is not None:
            self.b_opt = torch.optim.Adam(self.b_net.parameters(), lr=config.boundary_lr or config.lr, weight_decay=config.weight_decay)
        if payload is not None:
            source = out / CHECKPOINT
            _load_state(self.q_net, payload["q"], "Q network 'q'", source)
            _load_state(self.q_opt, payload["q_opt"], "Q optimiser 'q_opt'", source)
            if self.b_net is not None:
                if payload["b"] is None:
                    raise CheckpointError(f"{source}: protocol {config.protocol!r} needs a boundary network, and the checkpoint has none")
                _load_state(self.b_net, payload["b"], "boundary network 'b'", source)
                _load_state(self.b_opt, payload["b_opt"], "boundary optimiser 'b_opt'", source)
        self.q_model = self._wrap(self.q_net)
        self.b_model = self._wrap(self.b_net) if self.b_net is not None else None
        self.log = MetricsLog(out / METRICS, self.start_step if resume else None) if self.dist.is_main else None

    def _wrap(self, net: nn.Module) -> nn.Module:
        wrapped = ListApply(net)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(wrapped, device_ids=device_ids)
        return wrapped

    # ---- one step ----------------------------------------------------------------------------

    def batch(self, step: int) -> list[Sample]:
        """This process's share of global batch ``step``."""
        cfg, world = self.config, self.dist.world_size
        indices, epoch = step_indices(step, len(self.splits.train), cfg.batch_size * world, cfg.seed)
        mine = indices[self.dist.rank :: world]
        samples = []
        for index in mine:
            sample = self.splits.train[index]
            samples.append(sample.flipped() if cfg.augment and flip_of(cfg.seed, epoch, index) else sample)
        return samples

    def loss(self, samples: list[Sample], phase: str) -> torch.Tensor:
        cfg, L, device = self.config, self.splits.num_labels, self.device
        groups = group_by_size(samples)
        images = [torch.stack([s.image for s in g]).to(device) for g in groups]
        q_out = self.q_model(images)
        if phase == "joint":
            b_out = self.b_model(images)
        elif phase == "q-only":
            with torch.no_grad():
                b_out = [self.b_net(x) for x in images]
        # Every image weighs the same: per-image means, averaged over the batch, so that the
        # loss does not depend on how the batch is grouped or split across processes.
        per_image = []
        for k, group in enumerate(groups):
            q = q_out[k]
            scribbles = torch.stack([s.scribbles for s in group]).to(device)
            if phase in ("joint", "q-only"):
                boundary = b_out[k]
                P, reachable, result = propagate_scribbles(boundary, scribbles, L, cfg.propagation)
                if phase == "q-only":
                    P = P.detach()
                value = _image_means(rawks_loss(P, q, cfg.alpha, reachable, reduction="none"), reachable)
                if cfg.reach_weight and phase == "joint":
                    value = value + cfg.reach_weight * reach_penalty(result)
                # 0 * sum(B) keeps every boundary parameter in the graph (DDP) when no pixel is reachable.
                value = value + 0.0 * boundary.sum()
            else:
                target = scribbles if phase == "sparse" else torch.stack([s.mask for s in group]).to(device)
                ce = F.cross_entropy(q, target.clamp(min=0), reduction="none")
                value = _image_means(ce, target >= 0) + 0.0 * q.sum()
            per_image.append(value)
        return torch.cat(per_image).mean()

    def train_step(self, step: int) -> float:
        cfg = self.config
        phase = cfg.phase(step)
        train_b = phase == "joint"
        self.q_net.train()
        if self.b_net is not None:
            self.b_net.train(train_b)
        for opt, base in ((self.q_opt, cfg.lr), (self.b_opt, cfg.boundary_lr or cfg.lr)):
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] = cfg.learning_rate(base, step)
        self.q_opt.zero_grad(set_to_none=True)
        if self.b_opt is not None:
            self.b_opt.zero_grad(set_to_none=True)
        loss = self.loss(self.batch(step), phase)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: the loss is {float(loss)}; lower --lr or --boundary-lr")
        loss.backward()
        nn.utils.clip_grad_norm_(self.q_net.parameters(), cfg.clip_grad)
        self.q_opt.step()
        if train_b:
            nn.utils.clip_grad_norm_(self.b_net.parameters(), cfg.clip_grad)
            self.b_opt.step()
        return float(loss.detach())

    # ---- evaluation, figures, checkpoints ------------------------------------------------------

    def evaluate(self, step: int) -> dict:
        """Metrics of every split (rank 0), figures; returns {split: metrics}."""
        cfg = self.config
        self.q_net.eval()
        if self.b_net is not None:
            self.b_net.eval()
        results = {}
        for split, dataset in (("train", self.splits.train), ("val", self.splits.val)):
            if dataset is None or not dataset.has_masks:
                continue
            start = time.perf_counter()
            metrics = evaluate(
                dataset, self.q_net, self.b_net, cfg.propagation, cfg.alpha, self.device, cfg.progress, desc=f"eval {split}"
            )
            metrics["seconds"] = time.perf_counter() - start
            results[split] = metrics
            self.log.append({"step": step, "phase": cfg.phase(max(step - 1, 0)), "kind": "eval", "split": split, **metrics})
        if cfg.figures:
            self.figures(step)
        (self.out / "summary.json").write_text(json.dumps({"step": step, "metrics": results}, indent=2))
        return results

    def figures(self, step: int) -> list[Path]:
        from .figures import figure_rows, save_panels

        cfg, written = self.config, []
        for split, dataset in (("train", self.splits.train), ("val", self.splits.val)):
            if dataset is None:
                continue
            rows = figure_rows(dataset, cfg.figures, self.q_net, self.b_net, cfg.propagation, cfg.alpha, self.device)
            if rows:
                title = f"{cfg.protocol} on {cfg.data} ({split} split), step {step}"
                written.append(save_panels(self.out / "figures" / f"step{step:06d}_{split}.png", rows, title))
        return written

    def checkpoint(self, step: int, window: dict | None = None) -> Path:
        """Write checkpoint.pt at ``step``; ``window``: the running sums of the unfinished logging window."""
        path = self.out / CHECKPOINT
        window = {"loss_sum": 0.0, "steps": 0, "seconds": 0.0} if window is None else window
        if self.dist.is_main:
            save_checkpoint(
                path,
                {
                    "config": asdict(self.config),
                    "step": step,
                    "q": self.q_net.state_dict(),
                    "b": None if self.b_net is None else self.b_net.state_dict(),
                    "q_opt": self.q_opt.state_dict(),
                    "b_opt": None if self.b_opt is None else self.b_opt.state_dict(),
                    "meta": {
                        "num_labels": self.splits.num_labels,
                        "in_channels": self.splits.in_channels,
                        "class_names": list(self.splits.class_names),
                        "world_size": self.dist.world_size,
                    },
                    "train_window": window,
                },
            )
        return path

    # ---- the loop ------------------------------------------------------------------------------

    def run(self, stop_after: int | None = None) -> RunSummary:
        """Train from the current step to ``config.steps`` (or only ``stop_after`` more steps).

        A train row of metrics.csv averages the losses of the steps since the previous row.
        The running sums of that window (loss, steps, seconds) go into every checkpoint, so
        that a resumed run writes the same rows as an uninterrupted one.
        """
        from tqdm.auto import tqdm

        cfg, main = self.config, self.dist.is_main
        end = cfg.steps if stop_after is None else min(cfg.steps, self.start_step + stop_after)
        # Seconds of the current window before window_start: the time spent in it before a resume.
        window_loss, window_steps, window_seconds = float(self.window["loss_sum"]), int(self.window["steps"]), float(self.window["seconds"])
        window_start = time.perf_counter()
        results: dict = {}
        step = self.start_step

        def window_state(reduce: bool = True) -> dict:
            # Under DDP each rank sums its own losses; the mean over ranks of the sums, continued
            # by every rank after a resume, gives the same mean over ranks at the next row.
            loss_sum = distributed.all_reduce_mean(self.dist, window_loss) if reduce else window_loss
            return {"loss_sum": loss_sum, "steps": window_steps, "seconds": window_seconds + time.perf_counter() - window_start}

        bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.protocol}", disable=not (cfg.progress and main))
        try:
            while step < end:
                loss = self.train_step(step)
                step += 1
                bar.update(1)
                window_loss += loss
                window_steps += 1
                if step % cfg.log_every == 0 or step == cfg.steps:
                    mean_loss = distributed.all_reduce_mean(self.dist, window_loss / window_steps)
                    elapsed = window_seconds + time.perf_counter() - window_start
                    speed = window_steps * cfg.batch_size * self.dist.world_size / max(elapsed, 1e-9)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{speed:.1f}")
                    if main:
                        self.log.append({"step": step, "phase": cfg.phase(step - 1), "kind": "train", "loss": mean_loss, "images_per_second": speed, "seconds": elapsed})
                    window_loss, window_steps, window_seconds, window_start = 0.0, 0, 0.0, time.perf_counter()
                if step % cfg.checkpoint_every == 0 or step == end:
                    self.checkpoint(step, window_state())
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    window_seconds += time.perf_counter() - window_start  # the window's speed leaves evaluation out
                    if main:
                        results = self.evaluate(step)
                    distributed.barrier(self.dist)
                    window_start = time.perf_counter()
        except KeyboardInterrupt:
            # No collective here: the other processes may not have been interrupted at this step.
            self.checkpoint(step, window_state(reduce=False))
            bar.close()
            if main:
                print(f"\ninterrupted at step {step}; checkpoint written to {self.out / CHECKPOINT}; "
                      f"continue with --resume --out {self.out}")
            raise
        bar.close()
        distributed.barrier(self.dist)
        return RunSummary(self.out, step, results, self.out / CHECKPOINT)


def train(config: TrainConfig, resume: bool = False, overrides: dict | None = None, stop_after: int | None = None) -> RunSummary:
    """Build a :class:`Trainer` and run it; see the module docstring."""
    return Trainer(config, resume=resume, overrides=overrides).run(stop_after=stop_after)


def format_table(results: dict, title: str = "") -> str:
    """A markdown table of {run name: {split: metrics}}."""
    columns = [
        ("q_miou", "Q mIoU (val)", "val"),
        ("p_miou", "P mIoU (train)", "train"),
        ("p_miou_abstain", "P mIoU abstaining (train)", "train"),
        ("abstained", "abstained % (train)", "train"),
        ("p_accuracy", "P accuracy (train)", "train"),
        ("p_pixel_error", "P pixel error (train)", "train"),
        ("p_pixel_error", "P pixel error (val)", "val"),
    ]
    used = [c for c in columns if any(c[0] in r.get(c[2], {}) for r in results.values())]
    lines = [title] if title else []
    lines.append("| run | " + " | ".join(c[1] for c in used) + " |")
    lines.append("| --- |" + " ---: |" * len(used))
    for name, r in results.items():
        cells = []
        for key, _, split in used:
            value = r.get(split, {}).get(key)
            cells.append("-" if value is None else f"{value:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = [
    "PROTOCOLS", "CheckpointError", "CheckpointNotFoundError", "RunSummary", "TrainConfig", "Trainer", "format_table",
    "load_checkpoint", "networks_from_checkpoint", "train",
]
