"""Public API: ``propagate`` and the ``RandomWalkPropagation`` module.

Path of the data: boundary scores -> stencil coefficients (:mod:`.coefficients`) ->
compacted label systems (:mod:`.systems`) -> solve and adjoint (:mod:`.autograd`, a
backend from :mod:`.backends`) -> partition functions Z -> probabilities P = Z / sum Z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from . import _checks
from .autograd import RandomWalkSolve, SolveRecord
from .backends import BACKENDS, choose_solver, get_backend
from .cg import SolverOptions
from .coefficients import grady_edge_coefficients, grady_node_coefficients, rawks_coefficients
from .systems import compact_labels

MODELS = ("rawks", "grady")
PRECONDITIONERS = ("jacobi", "multigrid")  # what preconditioner="auto" chooses from


def reach_threshold(dtype: torch.dtype, min_weight: float = 0.0) -> float:
    """Total weight sum_l Z_l at or below which a pixel counts as unreachable.

    The larger of ``min_weight`` and sqrt(smallest normal number); above the latter,
    Z / sum Z and its derivative 1 / sum Z are finite with room to spare (float32:
    1.1e-19, float64: 1.5e-154).
    """
    return max(float(min_weight), math.sqrt(torch.finfo(dtype).tiny))


def rawks_score_ceiling(dtype: torch.dtype) -> float:
    """Largest boundary score used by the "rawks" model; larger scores are clamped to it.

    Half the exponent range, so that 4 exp(B) and its square stay finite (float32: 43,
    float64: 353). A pixel at the ceiling is a wall: exp(-43) is far below float32 precision.
    """
    return float(math.floor(0.5 * math.log(torch.finfo(dtype).max)) - 1)


@dataclass
class PropagationResult:
    """What :func:`propagate` computed.

    Per-pixel tensors have the batch layout; per-system tensors ([S]) follow the solved
    (image, label) pairs listed in ``image_index`` and ``label_index``.
    """

    P: torch.Tensor  # [N, L, H, W] probabilities; absent labels are exactly 0
    Z: torch.Tensor  # [N, L, H, W] partition functions (1 / 0 on seeds, 0 for absent labels)
    reachable: torch.Tensor  # [N, H, W] bool, sum_l Z_l above reach_threshold(dtype, min_weight)
    has_seeds: torch.Tensor  # [N] bool
    image_index: torch.Tensor  # [S] int64
    label_index: torch.Tensor  # [S] int64
    iterations: torch.Tensor  # [S] int64, CG iterations of the forward solve (0 for "scipy")
    residual: torch.Tensor  # [S] final true relative residual of the forward solve
    converged: torch.Tensor  # [S] bool
    backend: str
    model: str
    preconditioner: str = "jacobi"  # "jacobi" or "multigrid" (CG backends), "none" ("scipy")
    _record: SolveRecord = field(default_factory=SolveRecord, repr=False)

    @property
    def num_systems(self) -> int:
        return int(self.image_index.numel())

    @property
    def adjoint_iterations(self) -> torch.Tensor | None:
        """[S] iterations of the adjoint solve, once ``backward`` has run; else None."""
        return None if self._record.adjoint is None else self._record.adjoint.iterations

    @property
    def adjoint_residual(self) -> torch.Tensor | None:
        return None if self._record.adjoint is None else self._record.adjoint.residual

    @property
    def adjoint_converged(self) -> torch.Tensor | None:
        return None if self._record.adjoint is None else self._record.adjoint.converged

    def detach(self) -> "PropagationResult":
        """The same result with P and Z cut from the graph (adjoint statistics still arrive)."""
        return replace(self, P=self.P.detach(), Z=self.Z.detach())


def _check_boundary(boundary: torch.Tensor, model: str) -> tuple[torch.Tensor, bool]:
    """Returns the scores as [N, H, W] (or the edges as [N, 2, H, W]) and whether they are edges."""
    _checks.check_tensor("boundary", boundary)
    _checks.check_float_dtype("boundary", boundary)
    shape = tuple(boundary.shape)
    if boundary.dim() == 3:
        scores, edges = boundary, False
    elif boundary.dim() == 4 and shape[1] == 1:
        scores, edges = boundary[:, 0], False
    elif boundary.dim() == 4 and shape[1] == 2 and model == "grady":
        scores, edges = boundary, True
    else:
        expected = "(N, H, W) or (N, 1, H, W)" + (" or (N, 2, H, W) edge weights" if model == "grady" else "")
        raise ValueError(f"`boundary` must have shape {expected} for model={model!r}, got {shape}")
    if scores.shape[-1] == 0 or scores.shape[-2] == 0:
        raise ValueError(f"`boundary` must have H >= 1 and W >= 1, got shape {shape}")
    _checks.check_finite("boundary", scores)
    if model == "rawks" and scores.numel() and float(scores.detach().min()) < 0:
        raise ValueError(
            f"`boundary` must be >= 0 for model='rawks' (negative scores make the path sum diverge), "
            f"got minimum {float(scores.detach().min()):.6g}; pass the scores through softplus or relu"
        )
    if edges and scores.numel() and float(scores.detach().min()) < 0:
        raise ValueError(f"`boundary` edge weights must be >= 0, got minimum {float(scores.detach().min()):.6g}")
    return scores, edges


def _check_seeds(seeds, scores: torch.Tensor, num_labels: int, ignore_index: int) -> torch.Tensor:
    _checks.check_tensor("seeds", seeds)
    if seeds.dtype.is_floating_point or seeds.dtype.is_complex or seeds.dtype == torch.bool:
        raise TypeError(f"`seeds` must have an integer dtype (int64 label map), got {seeds.dtype}")
    expected = (scores.shape[0],) + tuple(scores.shape[-2:])
    if tuple(seeds.shape) != expected:
        raise ValueError(f"`seeds` must have shape (N, H, W) = {expected} to match `boundary`, got {tuple(seeds.shape)}")
    if seeds.device != scores.device:
        raise ValueError(f"`seeds` must be on the device of `boundary` ({scores.device}), got {seeds.device}")
    seeds = seeds.long()
    bad = (seeds != ignore_index) & ((seeds < 0) | (seeds >= num_labels))
    if bool(bad.any()):
        values = torch.unique(seeds[bad])[:5].tolist()
        raise ValueError(
            f"`seeds` must hold labels in [0, {num_labels}) or ignore_index={ignore_index}, "
            f"got {int(bad.sum())} pixel(s) with other values, e.g. {values}"
        )
    return seeds.contiguous()


def _check_options(
    num_labels, model, rtol, atol, maxiter, backend, ignore_index, check_every, strict, preconditioner
) -> SolverOptions:
    _checks.check_int("num_labels", num_labels, minimum=1)
    _checks.check_choice("model", model, MODELS)
    _checks.check_choice("backend", backend, BACKENDS)
    _checks.check_choice("preconditioner", preconditioner, ("auto",) + PRECONDITIONERS)
    rtol = _checks.check_nonnegative_real("rtol", rtol)
    atol = _checks.check_nonnegative_real("atol", atol)
    if maxiter is not None:
        maxiter = _checks.check_int("maxiter", maxiter, minimum=1)
    ignore_index = _checks.check_int("ignore_index", ignore_index)
    if 0 <= ignore_index < num_labels:
        raise ValueError(f"`ignore_index` must lie outside [0, {num_labels}) (the labels), got {ignore_index}")
    check_every = _checks.check_int("check_every", check_every, minimum=1)
    if not isinstance(strict, bool):
        raise TypeError(f"`strict` must be a bool, got {type(strict).__name__}")
    return SolverOptions(
        rtol=rtol, atol=atol, maxiter=maxiter, check_every=check_every, strict=strict, preconditioner=preconditioner
    )


def _coefficients(scores: torch.Tensor, edges: bool, model: str):
    if model == "rawks":
        return rawks_coefficients(torch.clamp(scores, max=rawks_score_ceiling(scores.dtype)))
    diag, right, down = grady_edge_coefficients(scores) if edges else grady_node_coefficients(scores)
    if not bool(torch.isfinite(diag).all()):
        what = "edge weights are too large" if edges else "scores are too negative (exp(-(B_i + B_j) / 2) overflows)"
        raise ValueError(
            f"`boundary`: the Grady conductances overflow {scores.dtype}: the {what}. The model is invariant "
            f"to a common scale of the weights (a common shift of the scores): rescale them"
        )
    return diag, right, down


def propagate(
    boundary: torch.Tensor,
    seeds: torch.Tensor,
    num_labels: int,
    model: str = "rawks",
    *,
    rtol: float = 1e-4,
    atol: float = 0.0,
    maxiter: int | None = None,
    backend: str = "auto",
    ignore_index: int = -1,
    check_every: int = 8,
    strict: bool = False,
    preconditioner: str = "auto",
    min_weight: float | None = None,
) -> PropagationResult:
    """Propagate seed labels to every pixel by random-walk hitting probabilities.

    Args:
        boundary: [N, H, W] or [N, 1, H, W] float32/float64 boundary scores (>= 0 for
            "rawks"), or [N, 2, H, W] non-negative (right, down) edge weights for "grady".
        seeds: [N, H, W] integer label map, labels in [0, num_labels) or ``ignore_index``.
        num_labels: L, the size of the label space (only labels present are solved).
        model: "rawks" (node costs, d = 4 exp(B), unit edges) or "grady" (conductances).
        rtol, atol: stop a system when ||b - A z|| <= max(rtol ||b||, atol).
        maxiter: iteration limit of the CG solves (default 10 (H + W) + 1000).
        backend: "auto", "torch", "triton" or "scipy". "auto" picks triton on CUDA; on the
            CPU the direct solver "scipy" for "grady" images of at most 512 x 512 pixels
            (when ``preconditioner`` is "auto" too), "torch" otherwise (rule and
            measurements: docs/multigrid.md).
        ignore_index: the value of unseeded pixels in ``seeds``.
        check_every: iterations between the host's convergence checks.
        strict: raise :class:`ConvergenceError` instead of warning when a solve fails.
        preconditioner: for the CG backends, "jacobi" (diagonal), "multigrid" (a symmetric
            V-cycle, iterations nearly independent of the image size) or "auto": multigrid
            for the torch backend from 128 x 128 ("grady") or 512 x 512 ("rawks") pixels,
            Jacobi below and on triton.
        min_weight: pixels whose total weight sum_l Z_l is at or below it are flagged
            unreachable (P uniform over the labels present, zero gradient). Default
            ``rtol``: an iterative solve to ``rtol`` does not resolve weights below it.

    Returns:
        A :class:`PropagationResult`; ``P`` is [N, L, H, W] and differentiable with
        respect to ``boundary``.
    """
    options = _check_options(
        num_labels, model, rtol, atol, maxiter, backend, ignore_index, check_every, strict, preconditioner
    )
    if min_weight is not None:
        min_weight = _checks.check_nonnegative_real("min_weight", min_weight)
    scores, edges = _check_boundary(boundary, model)
    seeds = _check_seeds(seeds, scores, num_labels, ignore_index)
    n_images, height, width = seeds.shape
    systems = compact_labels(seeds, num_labels, ignore_index)
    backend, preconditioner = choose_solver(backend, options.preconditioner, scores.device, height, width, model)
    options = replace(options, preconditioner=preconditioner)
    scores = scores.contiguous()
    dtype, device = scores.dtype, scores.device

    record = SolveRecord()
    Z = scores.new_zeros((n_images * num_labels, height, width))
    if systems.num_systems:
        diag, right, down = _coefficients(scores, edges, model)
        Zc = RandomWalkSolve.apply(
            diag, right, down, systems, get_backend(backend), options, record, model == "rawks"
        )
        Z = Z.index_copy(0, systems.image_index * num_labels + systems.label_index, Zc)
        stats = record.forward
        iterations, residual, converged = stats.iterations, stats.residual, stats.converged
    else:
        iterations = torch.zeros(0, dtype=torch.int64, device=device)
        residual = torch.zeros(0, dtype=dtype, device=device)
        converged = torch.zeros(0, dtype=torch.bool, device=device)
    Z = Z.view(n_images, num_labels, height, width)

    # Rounding can leave iterates a hair below 0; P is built from the non-negative part.
    weights = torch.clamp(Z, min=0.0)
    total = weights.sum(dim=1)
    reachable = total > reach_threshold(dtype, rtol if min_weight is None else min_weight)
    present = systems.present.to(dtype)
    count = present.sum(dim=1, keepdim=True)
    # Unreachable pixels: uniform over the labels present (over all labels without seeds).
    uniform = torch.where(count > 0, present / count.clamp(min=1), torch.full_like(present, 1.0 / num_labels))
    safe_total = torch.where(reachable, total, torch.ones_like(total))
    P = torch.where(reachable.unsqueeze(1), weights / safe_total.unsqueeze(1), uniform.view(n_images, num_labels, 1, 1))
    return PropagationResult(
        P=P,
        Z=Z,
        reachable=reachable,
        has_seeds=systems.present.any(dim=1),
        image_index=systems.image_index,
        label_index=systems.label_index,
        iterations=iterations,
        residual=residual,
        converged=converged,
        backend=backend,
        model=model,
        preconditioner=preconditioner,
        _record=record,
    )


class RandomWalkPropagation(nn.Module):
    """Dense label probabilities from sparse seeds and boundary scores, differentiable.

    ``forward(boundary, seeds) -> P`` with the shapes of :func:`propagate`; the full
    :class:`PropagationResult` of the last call (P and Z detached) is ``last_result``.
    """

    def __init__(
        self,
        num_labels: int,
        model: str = "rawks",
        *,
        rtol: float = 1e-4,
        atol: float = 0.0,
        maxiter: int | None = None,
        backend: str = "auto",
        ignore_index: int = -1,
        check_every: int = 8,
        strict: bool = False,
        preconditioner: str = "auto",
        min_weight: float | None = None,
    ):
        super().__init__()
        if min_weight is not None:
            _checks.check_nonnegative_real("min_weight", min_weight)
        _check_options(
            num_labels, model, rtol, atol, maxiter, backend, ignore_index, check_every, strict, preconditioner
        )
        self.num_labels = num_labels
        self.model = model
        self.options = dict(
            rtol=rtol, atol=atol, maxiter=maxiter, backend=backend, ignore_index=ignore_index,
            check_every=check_every, strict=strict, preconditioner=preconditioner, min_weight=min_weight,
        )
        self.last_result: PropagationResult | None = None

    def forward(self, boundary: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        result = propagate(boundary, seeds, self.num_labels, self.model, **self.options)
        self.last_result = result.detach()
        return result.P

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"num_labels={self.num_labels}, model={self.model!r}, {opts}"
