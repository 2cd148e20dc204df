"""What the paper measured: mIoU of Q, and of P with and without abstention.

* Q: mIoU of argmax Q against the dense truth of a split (normally the held-out one).
* P: the split's own scribbles propagated with the learned boundaries; mIoU of argmax P
  at 0% abstention, and over the pixels kept when abstaining where w(x) < 1/2 or where
  the walk does not reach (with the fraction abstained).
* Two-class sets also get the pixel error, pixels marked IGNORE (e.g. GrabCut's
  uncertain band) excluded: per image, then averaged over images, as is usual for GrabCut.

mIoU is computed from one confusion matrix over every scored pixel of the split, over the
classes that occur in the truth or the prediction.
"""

from __future__ import annotations

import math
import time

import torch

from ..loss import DEFAULT_ALPHA, loss_weights
from .data import IGNORE, Sample
from .progress import progress_bar
from .propagate import PropagationSettings, propagate_scribbles


class ConfusionMatrix:
    def __init__(self, num_labels: int):
        self.num_labels = num_labels
        self.matrix = torch.zeros(num_labels, num_labels, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, truth: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        valid = truth != IGNORE
        if keep is not None:
            valid &= keep
        index = truth[valid].cpu() * self.num_labels + prediction[valid].cpu()
        self.matrix += torch.bincount(index, minlength=self.num_labels**2).view(self.num_labels, self.num_labels)

    def iou(self) -> torch.Tensor:
        m = self.matrix.double()
        inter = m.diag()
        union = m.sum(0) + m.sum(1) - inter
        return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))

    def miou(self) -> float:
        iou = self.iou()
        present = ~torch.isnan(iou)
        return float(iou[present].mean()) if bool(present.any()) else float("nan")

    def accuracy(self) -> float:
        total = int(self.matrix.sum())
        return float(self.matrix.diag().sum()) / total if total else float("nan")


def _stack(samples: list[Sample], device):
    image = torch.stack([s.image for s in samples]).to(device)
    scribbles = torch.stack([s.scribbles for s in samples]).to(device)
    return image, scribbles


@torch.no_grad()
def predict(
    samples: list[Sample],
    num_labels: int,
    q_net=None,
    b_net=None,
    settings: PropagationSettings | None = None,
    alpha: float = DEFAULT_ALPHA,
    device="cpu",
):
    """Run the networks on samples of one size; returns a dict of [N, ...] tensors.

    Keys: ``q_logits`` (with ``q_net``); ``boundary``, ``P``, ``reachable``, ``weight``
    (with ``b_net``).
    """
    image, scribbles = _stack(samples, device)
    out = {}
    if q_net is not None:
        out["q_logits"] = q_net(image).float()
    if b_net is not None:
        boundary = b_net(image).float()
        P, reachable, _ = propagate_scribbles(boundary, scribbles, num_labels, settings or PropagationSettings(), image)
        out.update(boundary=boundary, P=P, reachable=reachable, weight=loss_weights(P, alpha))
    return out


def evaluate(
    dataset,
    q_net=None,
    b_net=None,
    settings: PropagationSettings | None = None,
    alpha: float = DEFAULT_ALPHA,
    device="cpu",
    progress=False,
    desc="eval",
) -> dict:
    """Metrics of Q and P on every sample of ``dataset`` that has a dense mask.

    Returns a dict with (where applicable) ``q_miou``, ``q_accuracy``, ``q_pixel_error``,
    ``p_miou``, ``p_accuracy``, ``p_pixel_error``, ``p_miou_abstain``,
    ``p_pixel_error_abstain``, ``abstained`` and ``images``; percentages in [0, 100].
    """
    L = dataset.num_labels
    q_cm, p_cm, pa_cm = ConfusionMatrix(L), ConfusionMatrix(L), ConfusionMatrix(L)
    q_err, p_err, pa_err = [], [], []
    abstained = scored = 0
    images = 0
    for i in progress_bar(range(len(dataset)), enabled=progress, desc=desc, leave=False):
        sample = dataset[i]
        if sample.mask is None:
            continue
        images += 1
        truth = sample.mask.to(device)
        valid = truth != IGNORE
        out = predict([sample], L, q_net, b_net, settings, alpha, device)
        if "q_logits" in out:
            q = out["q_logits"][0].argmax(0)
            q_cm.update(q, truth)
            q_err.append(_error(q, truth, valid))
        if "P" in out:
            p = out["P"][0].argmax(0)
            keep = (out["weight"][0] >= 0.5) & out["reachable"][0]
            p_cm.update(p, truth)
            pa_cm.update(p, truth, keep)
            p_err.append(_error(p, truth, valid))
            pa_err.append(_error(p, truth, valid & keep))
            abstained += int((valid & ~keep).sum())
            scored += int(valid.sum())
    metrics = {"images": images}
    if q_net is not None and images:
        metrics.update(q_miou=100 * q_cm.miou(), q_accuracy=100 * q_cm.accuracy())
        if L == 2:
            metrics["q_pixel_error"] = _mean(q_err)
    if b_net is not None and images:
        metrics.update(
            p_miou=100 * p_cm.miou(),
            p_accuracy=100 * p_cm.accuracy(),
            p_miou_abstain=100 * pa_cm.miou(),
            abstained=100 * abstained / max(scored, 1),
        )
        if L == 2:
            metrics.update(p_pixel_error=_mean(p_err), p_pixel_error_abstain=_mean(pa_err))
    return metrics


def evaluate_splits(splits, q_net, b_net, settings, alpha, device, progress=False, timed=False) -> dict:
    """{split: :func:`evaluate` metrics} for the splits ("train", "val") that have dense masks.

    ``timed``: each split's metrics also hold the ``seconds`` its evaluation took (metrics.csv has the column).
    """
    results = {}
    for split, dataset in splits.items():
        if not dataset.has_masks:
            continue
        start = time.perf_counter()
        metrics = evaluate(dataset, q_net, b_net, settings, alpha, device, progress, desc=f"eval {split}")
        if timed:
            metrics["seconds"] = time.perf_counter() - start
        results[split] = metrics
    return results


def _error(prediction, truth, valid) -> float:
    count = int(valid.sum())
    return 100.0 * int(((prediction != truth) & valid).sum()) / count if count else float("nan")


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")
