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

The config and its defaults are in :mod:`.config`, the checkpoint files in
:mod:`.checkpoint`, the summary and tables in :mod:`.report`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..loss import rawks_loss
from ..propagation import reach_threshold
from . import distributed
from .checkpoint import CHECKPOINT, CheckpointError, load_checkpoint, load_state, save_checkpoint
from .config import TrainConfig
from .data import Sample
from .evaluate import evaluate_splits
from .figures import save_split_figures
from .networks import build_boundary_net, build_segmentation_net
from .progress import progress_bar
from .propagate import propagate_scribbles
from .provenance import RECORD_KEY, training_data_record
from .report import METRICS, MetricsLog, RunSummary
from .splits import Splits, build_splits
from .threads import resolve_threads, torch_threads


class ListApply(nn.Module):
    """Applies a network to a list of batches (images of different sizes): one DDP forward per step."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.net(x) for x in images]


def _image_means(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, H, W] (or [N, D, H, W]) values -> [N] means over ``mask`` (0 for an image with an empty mask)."""
    mask = mask.to(values.dtype)
    dims = tuple(range(1, values.dim()))
    return (values * mask).sum(dim=dims) / mask.sum(dim=dims).clamp(min=1)


def _scribble_cross_entropy(q_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[N] per image: the mean cross-entropy of Q over the pixels with a label (target >= 0)."""
    ce = F.cross_entropy(q_logits, target.clamp(min=0), reduction="none")
    return _image_means(ce, target >= 0)


def reach_penalty(result, num_images: int | None = None) -> torch.Tensor:
    """[N] per image: the mean over its pixels of -log sum_l Z_l (0 for an image without scribbles).

    sum_l Z_l is the probability that a walk from the pixel reaches a scribble before it
    is killed. Eq. 11 alone rewards killing everywhere (large B makes P sharp, as the
    nearest scribble wins), and the boundary network can learn to fill whole objects
    with large scores; this term charges every killed walk, so that walls pay only where
    they separate labels.
    """
    total = result.Z.clamp(min=0).sum(dim=1)  # [N, h, w] or [N, d, h, w]
    dims = tuple(range(1, total.dim()))
    penalty = -torch.log(total + reach_threshold(result.model, total.dtype)).mean(dim=dims)
    penalty = torch.where(result.has_seeds, penalty, torch.zeros_like(penalty))
    if num_images is not None and penalty.shape[0] != num_images:
        # Volumes propagated slice by slice: [N * D] slices -> the mean over each volume's slices.
        penalty = penalty.view(num_images, -1).mean(dim=1)
    return penalty


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
        # Set while run() trains and evaluates, and restored after (threads.py says why 1 on the CPU).
        self.threads = resolve_threads(config.threads, config.device)
        if self.dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(asdict(config), indent=2))
        self.splits: Splits = build_splits(config.data, config.data_root, config.data_options)
        if config.protocol == "dense" and not self.splits.train.has_masks:
            raise ValueError(f"protocol='dense' needs dense masks, and the {config.data} training split has none")
        # What the checkpoints say they were trained on (provenance.py).
        self.data_record = training_data_record(self.config, self.splits)
        torch.manual_seed(config.seed)
        L, C = self.splits.num_labels, self.splits.in_channels
        volume_net = config.volume_net if self.splits.volumetric else None
        self.q_net = build_segmentation_net(config.arch, C, L, config.q_width, config.weights, volume_net).to(
            self.device
        )
        self.b_net = None
        if config.uses_boundaries:
            self.b_net = build_boundary_net(
                config.arch, C, config.b_width, config.weights, config.initial_logit, volume_net
            ).to(self.device)
        self.q_opt = torch.optim.Adam(self.q_net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.b_opt = None
        if self.b_net is not None:
            self.b_opt = torch.optim.Adam(
                self.b_net.parameters(), lr=config.boundary_lr or config.lr, weight_decay=config.weight_decay
            )
        if payload is not None:
            source = out / CHECKPOINT
            load_state(self.q_net, payload["q"], "Q network 'q'", source)
            load_state(self.q_opt, payload["q_opt"], "Q optimiser 'q_opt'", source)
            if self.b_net is not None:
                if payload["b"] is None:
                    raise CheckpointError(
                        f"{source}: protocol {config.protocol!r} needs a boundary network, and the checkpoint has none"
                    )
                load_state(self.b_net, payload["b"], "boundary network 'b'", source)
                load_state(self.b_opt, payload["b_opt"], "boundary optimiser 'b_opt'", source)
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
                P, reachable, result = propagate_scribbles(boundary, scribbles, L, cfg.propagation, images[k])
                if phase == "q-only":
                    P = P.detach()
                value = _image_means(rawks_loss(P, q, cfg.alpha, reachable, reduction="none"), reachable)
                if cfg.reach_weight and phase == "joint":
                    value = value + cfg.reach_weight * reach_penalty(result, len(group))
                if cfg.scribble_weight:
                    value = value + cfg.scribble_weight * _scribble_cross_entropy(q, scribbles)
                # 0 * sum(B) keeps every boundary parameter in the graph (DDP) when no pixel is reachable.
                value = value + 0.0 * boundary.sum()
            else:
                target = scribbles if phase == "sparse" else torch.stack([s.mask for s in group]).to(device)
                value = _scribble_cross_entropy(q, target) + 0.0 * q.sum()
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
        results = evaluate_splits(
            self.splits, self.q_net, self.b_net, cfg.propagation, cfg.alpha, self.device, cfg.progress, timed=True
        )
        for split, metrics in results.items():
            self.log.append(
                {"step": step, "phase": cfg.phase(max(step - 1, 0)), "kind": "eval", "split": split, **metrics}
            )
        if cfg.figures:
            self.figures(step)
        (self.out / "summary.json").write_text(json.dumps({"step": step, "metrics": results}, indent=2))
        return results

    def figures(self, step: int) -> list[Path]:
        cfg = self.config
        return save_split_figures(
            self.splits,
            cfg.figures,
            self.q_net,
            self.b_net,
            cfg.propagation,
            cfg.alpha,
            self.device,
            path=lambda split: self.out / "figures" / f"step{step:06d}_{split}.png",
            title=lambda split: f"{cfg.protocol} on {cfg.data} ({split} split), step {step}",
        )

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
                        # Trained on volumes: the networks are config.volume_net ("per-slice" or "3d").
                        "volumes": self.splits.volumetric,
                    },
                    "train_window": window,
                    RECORD_KEY: self.data_record,
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
        with torch_threads(self.threads):
            return self._run(stop_after)

    def _run(self, stop_after: int | None) -> RunSummary:
        cfg, main = self.config, self.dist.is_main
        end = cfg.steps if stop_after is None else min(cfg.steps, self.start_step + stop_after)
        # Seconds of the current window before window_start: the time spent in it before a resume.
        window_loss, window_steps, window_seconds = (
            float(self.window["loss_sum"]),
            int(self.window["steps"]),
            float(self.window["seconds"]),
        )
        window_start = time.perf_counter()
        results: dict = {}
        step = self.start_step

        def window_state(reduce: bool = True) -> dict:
            # Under DDP each rank sums its own losses; the mean over ranks of the sums, continued
            # by every rank after a resume, gives the same mean over ranks at the next row.
            loss_sum = distributed.all_reduce_mean(self.dist, window_loss) if reduce else window_loss
            return {
                "loss_sum": loss_sum,
                "steps": window_steps,
                "seconds": window_seconds + time.perf_counter() - window_start,
            }

        bar = progress_bar(total=cfg.steps, initial=step, desc=f"train {cfg.protocol}", enabled=cfg.progress and main)
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
                        self.log.append(
                            {
                                "step": step,
                                "phase": cfg.phase(step - 1),
                                "kind": "train",
                                "loss": mean_loss,
                                "images_per_second": speed,
                                "seconds": elapsed,
                            }
                        )
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
                print(
                    f"\ninterrupted at step {step}; checkpoint written to {self.out / CHECKPOINT}; "
                    f"continue with --resume --out {self.out}"
                )
            raise
        bar.close()
        distributed.barrier(self.dist)
        return RunSummary(self.out, step, results, self.out / CHECKPOINT)


def train(
    config: TrainConfig, resume: bool = False, overrides: dict | None = None, stop_after: int | None = None
) -> RunSummary:
    """Build a :class:`Trainer` and run it; see the module docstring."""
    return Trainer(config, resume=resume, overrides=overrides).run(stop_after=stop_after)
