"""The RAWKS training loss (paper eq. 11): fit the predictor Q to the propagated labels P.

Per pixel x, with P(x) the random-walk label distribution and Q(x) = softmax(q_logits(x)):

    loss(x) = w(x) KL(P(x) || Q(x)) + H(P(x)),     w(x) = exp(-alpha H(P(x))),

summed over the pixels that the walk reaches (``reachable``) and divided by their number.

What is differentiated, and why:

* Q receives the gradient of w KL(P || Q), that is of -w sum_l P_l log Q_l: a
  cross-entropy towards P, down-weighted where P is uncertain.
* P (hence the boundary network, through the adjoint solve) receives the gradients of
  both KL(P || Q) (P is pulled towards what Q predicts) and H(P) (P is pushed to be
  confident, which is what makes the boundary network put walls between differently
  labelled scribbles).
* w is detached by default (``detach_weight=True``): it is a per-pixel confidence used
  as a weight, not something to optimise. Differentiating it would add
  -alpha w KL dH/dP, a reward for making P *uncertain* wherever P and Q disagree,
  which fights the entropy term and lets the boundaries escape the loss by blurring P.
  ``detach_weight=False`` keeps the full derivative for experiments.

Pixels flagged unreachable by :func:`rawks_triton.propagate` (P uniform there by
definition) contribute nothing and get a zero gradient. Entropies are in nats; with
``alpha`` = a, a pixel has w(x) < 1/2 exactly when H(P(x)) > ln 2 / a.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _checks

DEFAULT_ALPHA = 2.0
REDUCTIONS = ("mean", "sum", "none")


def _xlogx(p: torch.Tensor) -> torch.Tensor:
    """p log p with 0 log 0 = 0 and a finite derivative (log of the smallest normal) at p = 0."""
    return p * torch.log(p.clamp(min=torch.finfo(p.dtype).tiny))


def entropy(P: torch.Tensor) -> torch.Tensor:
    """H(P) = -sum_l P_l log P_l in nats, [N, L, H, W] -> [N, H, W]."""
    return -_xlogx(P).sum(dim=1)


def loss_weights(P: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """w = exp(-alpha H(P)), [N, L, H, W] -> [N, H, W] in (0, 1]."""
    return torch.exp(-alpha * entropy(P))


@dataclass
class RawksLossTerms:
    """Per-pixel terms of the loss, [N, H, W] each; ``mask`` marks the pixels that count."""

    loss: torch.Tensor
    weight: torch.Tensor
    kl: torch.Tensor
    entropy: torch.Tensor
    mask: torch.Tensor


def _check_inputs(P, q_logits, alpha, reachable, reduction):
    _checks.check_tensor("P", P)
    _checks.check_tensor("q_logits", q_logits)
    _checks.check_float_dtype("P", P)
    _checks.check_float_dtype("q_logits", q_logits)
    if P.dim() not in (4, 5):
        raise ValueError(f"`P` must have shape (N, L, H, W) or, for volumes, (N, L, D, H, W), got {tuple(P.shape)}")
    if tuple(q_logits.shape) != tuple(P.shape):
        raise ValueError(f"`q_logits` must have the shape of `P` {tuple(P.shape)}, got {tuple(q_logits.shape)}")
    if q_logits.device != P.device:
        raise ValueError(f"`q_logits` must be on the device of `P` ({P.device}), got {q_logits.device}")
    alpha = _checks.check_nonnegative_real("alpha", alpha)
    expected = (P.shape[0],) + tuple(P.shape[2:])
    if reachable is not None:
        _checks.check_tensor("reachable", reachable)
        if reachable.dtype != torch.bool:
            raise TypeError(f"`reachable` must be a bool tensor, got {reachable.dtype}")
        if tuple(reachable.shape) != expected:
            grid = "(N, H, W)" if P.dim() == 4 else "(N, D, H, W)"
            raise ValueError(f"`reachable` must have shape {grid} = {expected}, got {tuple(reachable.shape)}")
        if reachable.device != P.device:
            raise ValueError(f"`reachable` must be on the device of `P` ({P.device}), got {reachable.device}")
    _checks.check_choice("reduction", reduction, REDUCTIONS)
    return alpha


def rawks_loss_terms(
    P: torch.Tensor,
    q_logits: torch.Tensor,
    alpha: float = DEFAULT_ALPHA,
    reachable: torch.Tensor | None = None,
    *,
    detach_weight: bool = True,
) -> RawksLossTerms:
    """The per-pixel terms of :func:`rawks_loss` (zero where ``reachable`` is False)."""
    alpha = _check_inputs(P, q_logits, alpha, reachable, "none")
    if not isinstance(detach_weight, bool):
        raise TypeError(f"`detach_weight` must be a bool, got {type(detach_weight).__name__}")
    mask = torch.ones_like(P[:, 0], dtype=torch.bool) if reachable is None else reachable
    log_q = torch.log_softmax(q_logits.to(P.dtype), dim=1)
    H = entropy(P)
    kl = _xlogx(P).sum(dim=1) - (P * log_q).sum(dim=1)
    w = torch.exp(-alpha * (H.detach() if detach_weight else H))
    # torch.where (not a product) so that masked pixels pass back an exact zero.
    zero = torch.zeros_like(H)
    loss = torch.where(mask, w * kl + H, zero)
    return RawksLossTerms(
        loss=loss, weight=w, kl=torch.where(mask, kl, zero), entropy=torch.where(mask, H, zero), mask=mask
    )


def rawks_loss(
    P: torch.Tensor,
    q_logits: torch.Tensor,
    alpha: float = DEFAULT_ALPHA,
    reachable: torch.Tensor | None = None,
    *,
    reduction: str = "mean",
    detach_weight: bool = True,
) -> torch.Tensor:
    """sum_x w(x) KL(P(x) || Q(x)) + H(P(x)) over the reachable pixels (paper eq. 11).

    Args:
        P: [N, L, H, W] (or, for volumes, [N, L, D, H, W]) label probabilities from
            :func:`rawks_triton.propagate` (differentiable with respect to the boundary scores).
        q_logits: logits of the segmentation network in P's shape, Q = softmax(q_logits).
        alpha: >= 0, the sharpness of the weights w = exp(-alpha H(P)).
        reachable: optional [N, *grid] bool, ``PropagationResult.reachable``; pixels
            where it is False contribute nothing.
        reduction: "mean" (over the counted pixels; 0 when there are none), "sum",
            or "none" (the [N, *grid] per-pixel loss, 0 on uncounted pixels).
        detach_weight: treat w as a constant (default; see the module docstring).
    """
    _check_inputs(P, q_logits, alpha, reachable, reduction)
    terms = rawks_loss_terms(P, q_logits, alpha, reachable, detach_weight=detach_weight)
    if reduction == "none":
        return terms.loss
    total = terms.loss.sum()
    if reduction == "sum":
        return total
    return total / terms.mask.sum().clamp(min=1).to(total.dtype)
