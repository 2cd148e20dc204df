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

from . import _checks, memory
from .autograd import Normalize, RandomWalkSolve, SolveRecord
from .backends import get_backend
from .coefficients import grady_edge_coefficients, grady_node_coefficients, pad_last, shifted_pair
from .options import PropagationOptions
from .solve.choose import choose_solver
from .solve.options import SolverOptions, SolveStats, warn_not_converged
from .systems import compact_labels

# The reach threshold tau of each model: the total weight S = sum_l Z_l at or below which a
# pixel counts as unreachable (docs/numerics.md, "Reachability", gives the reasoning).
# "rawks": S is the probability that a walk from the pixel reaches a scribble before it is
# killed; 1e-18 is ten times sqrt of float32's smallest normal number (1.1e-19), so S, its
# square and 1 / S stay normal floats in both dtypes, and the iterative solvers resolve P to about
# 1e-5 down to it in float32 (measured on learned boundaries). "grady": the walk is never
# killed, so S is exactly 1 on every component joined to a seed and 0 elsewhere.
OPTION_NAMES = PropagationOptions.names()

REACH_THRESHOLDS = {"rawks": 1e-18, "grady": 0.5}


def reach_threshold(model: str = "rawks", dtype: torch.dtype = torch.float32, min_weight: float | None = None) -> float:
    """tau: the total weight sum_l Z_l at or below which a pixel counts as unreachable.

    ``REACH_THRESHOLDS[model]``, or ``min_weight`` when given; never below sqrt(smallest
    normal number of ``dtype``) (float32: 1.1e-19, float64: 1.5e-154), above which Z / sum Z
    and its derivative 1 / sum Z are finite. The same on every backend.
    """
    tau = REACH_THRESHOLDS[model] if min_weight is None else float(min_weight)
    return max(tau, math.sqrt(torch.finfo(dtype).tiny))


# The largest boundary score of the "rawks" model; larger scores are clamped to it (and get
# a zero gradient). A walk that enters a pixel at the ceiling survives with exp(-80) = 2e-35,
# far below the reach threshold, so nothing behind such a wall is reachable through it
# anyway; 4 exp(80) = 2e35 leaves float32 a factor of 1500 of headroom for the sums of the
# multigrid hierarchy. The same for both dtypes, so float32 and float64 agree.
RAWKS_SCORE_CEILING = 80.0


def rawks_score_ceiling(dtype: torch.dtype | None = None) -> float:
    """The largest boundary score of the "rawks" model (the same for every dtype)."""
    return RAWKS_SCORE_CEILING


@dataclass
class PropagationResult:
    """What :func:`propagate` computed.

    Per-pixel tensors have the batch layout; per-system tensors ([S]) follow the solved
    (image, label) pairs listed in ``image_index`` and ``label_index``.
    """

    P: torch.Tensor  # [N, L, H, W] probabilities; absent labels are exactly 0
    Z: torch.Tensor  # [N, L, H, W] partition functions (1 / 0 on seeds, 0 for absent labels)
    reachable: torch.Tensor  # [N, H, W] bool, sum_l Z_l above reach_threshold(model, dtype, min_weight)
    has_seeds: torch.Tensor  # [N] bool
    image_index: torch.Tensor  # [S] int64
    label_index: torch.Tensor  # [S] int64
    iterations: torch.Tensor  # [S] int64, CG iterations of the forward solve (0 for "scipy")
    error: torch.Tensor  # [S] certified estimate of the largest error of P (at pixels with S >= tau)
    residual: torch.Tensor  # [S] final true relative residual ||b - A z|| / ||b|| of the forward solve
    converged: torch.Tensor  # [S] bool, error <= rtol (with atol, see propagate)
    backend: str
    model: str
    preconditioner: str = "multigrid"  # "jacobi" or "multigrid" (CG backends), "none" ("scipy")
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
    def adjoint_error(self) -> torch.Tensor | None:
        """[S] certified estimate of the adjoint's gradient error relative to the largest gradient."""
        return None if self._record.adjoint is None else self._record.adjoint.error

    @property
    def adjoint_converged(self) -> torch.Tensor | None:
        return None if self._record.adjoint is None else self._record.adjoint.converged

    def detach(self) -> PropagationResult:
        """The same result with P and Z cut from the graph (adjoint statistics still arrive)."""
        return replace(self, P=self.P.detach(), Z=self.Z.detach())


def _grid_ndim(seeds) -> int:
    """2 for images ([N, H, W] seeds), 3 for volumes ([N, D, H, W] seeds): the seeds say."""
    return 3 if isinstance(seeds, torch.Tensor) and seeds.dim() == 4 else 2


def _check_boundary(boundary: torch.Tensor, model: str, ndim: int = 2) -> tuple[torch.Tensor, bool]:
    """Returns the scores as [N, *grid] (or the edges as [N, ndim, *grid]) and whether they are edges."""
    _checks.check_tensor("boundary", boundary)
    _checks.check_float_dtype("boundary", boundary)
    shape = tuple(boundary.shape)
    if boundary.dim() == ndim + 1:
        scores, edges = boundary, False
    elif boundary.dim() == ndim + 2 and shape[1] == 1:
        scores, edges = boundary[:, 0], False
    elif boundary.dim() == ndim + 2 and shape[1] == ndim and model == "grady":
        scores, edges = boundary, True
    else:
        grid = "H, W" if ndim == 2 else "D, H, W"
        expected = f"(N, {grid}) or (N, 1, {grid})" + (
            f" or (N, {ndim}, {grid}) edge weights" if model == "grady" else ""
        )
        seeds_say = "" if ndim == 2 else " (the seeds are [N, D, H, W]: a volume)"
        raise ValueError(f"`boundary` must have shape {expected} for model={model!r}{seeds_say}, got {shape}")
    if any(n == 0 for n in scores.shape[-ndim:]):
        names = "H >= 1 and W >= 1" if ndim == 2 else "D >= 1, H >= 1 and W >= 1"
        raise ValueError(f"`boundary` must have {names}, got shape {shape}")
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
    ndim = seeds.dim() - 1 if seeds.dim() in (3, 4) else 2
    expected = (scores.shape[0],) + tuple(scores.shape[-ndim:])
    grid = "(N, H, W)" if ndim == 2 else "(N, D, H, W)"
    if tuple(seeds.shape) != expected:
        raise ValueError(f"`seeds` must have shape {grid} = {expected} to match `boundary`, got {tuple(seeds.shape)}")
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


def _coefficients(scores: torch.Tensor, edges: bool, model: str, ndim: int = 2):
    """(diag, right, down, deep): deep is None on images, the edges are None for "rawks"."""
    if model == "rawks":  # unit edges: no edge arrays at all (build_stencil makes the cut ones)
        diag = 2.0 * ndim * torch.exp(torch.clamp(scores, max=rawks_score_ceiling(scores.dtype)))
        return diag, None, None, None
    # P is invariant to a common scale of the Grady conductances, so each image's are
    # normalised (the largest edge weight is 1, the smallest score 0) with a detached factor:
    # the gradient is unchanged, and neither a shift of the scores nor a scale of the edges
    # can overflow or underflow the dtype. Conductances below the dtype's range after that
    # (a contrast beyond exp(87) in float32) are 0: the edge is cut.
    per_image = (-1,) + (1,) * ndim
    if edges:
        used = [shifted_pair(scores[:, axis], axis)[0].flatten(1) for axis in range(ndim)]  # edges in the grid
        used = torch.cat(used, dim=1).detach()
        largest = used.amax(dim=1) if used.shape[1] else used.new_ones(used.shape[0])
        largest = torch.where(largest > 0, largest, torch.ones_like(largest)).view((-1, 1) + (1,) * ndim)
        coefficients = grady_edge_coefficients(scores / largest)
    else:
        coefficients = grady_node_coefficients(scores - scores.detach().flatten(1).amin(dim=1).view(per_image), ndim)
    return coefficients + (None,) * (4 - len(coefficients))


def propagate(
    boundary: torch.Tensor,
    seeds: torch.Tensor,
    num_labels: int,
    model: str = "rawks",
    *,
    rtol: float = 1e-3,
    atol: float = 0.0,
    maxiter: int | None = None,
    backend: str = "auto",
    ignore_index: int = -1,
    check_every: int | None = None,
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
        rtol, atol: what "converged" means. The forward solve stops when, at every pixel,
            the certified error estimate of each Z_l is at most max(rtol max(S, tau), atol)
            with S = sum_l Z_l: P is then accurate to about rtol wherever S >= tau. The
            adjoint solve of ``backward`` stops when the estimated error of the gradient is
            at most rtol times its largest entry (or atol). rtol = atol = 0 solves to the
            rounding floor of the dtype (docs/numerics.md).
        maxiter: iteration limit of the CG solves (default 10 (H + W) + 1000).
        backend: "auto", "torch", "triton" or "scipy". "auto" picks triton on CUDA; on the
            CPU the direct solver "scipy" for "grady" images of at most 512 x 512 pixels
            (when ``preconditioner`` is "auto" too), "torch" otherwise (rule and
            measurements: docs/multigrid.md).
        ignore_index: the value of unseeded pixels in ``seeds``.
        check_every: iterations between the host's convergence checks (default: every
            iteration on the CPU, 2 with multigrid and 8 with Jacobi on CUDA).
        strict: raise :class:`ConvergenceError` instead of warning when a solve fails.
        preconditioner: for the CG backends, "multigrid" (a symmetric V-cycle, iterations
            nearly independent of the image size; what "auto" picks), or "jacobi" (diagonal;
            its solves are certified by a multigrid cycle, so on learned boundaries it often
            fails to converge within ``maxiter``, and says so).
        min_weight: override of the reach threshold tau (default
            ``REACH_THRESHOLDS[model]``: 1e-18 for "rawks", 0.5 for "grady"). Pixels whose
            total weight S = sum_l Z_l is at or below tau are unreachable: P uniform over
            the labels present, zero gradient.

    Returns:
        A :class:`PropagationResult`; ``P`` is [N, L, H, W] and differentiable with
        respect to ``boundary``.
    """
    if torch._C._are_functorch_transforms_active():
        raise RuntimeError(
            "rawks_triton.propagate does not support torch.func transforms (vmap, grad, jacrev, jvp, ...): the "
            "solve runs outside autograd's dispatcher and has no batching or forward-mode rule. Batch images along "
            "the first dimension instead of vmap, and take gradients with torch.autograd (loss.backward() or "
            'torch.autograd.grad) (docs/numerics.md, "Gradients").'
        )
    options = PropagationOptions(**{name: value for name, value in locals().items() if name in OPTION_NAMES})
    num_labels = options.check_labels(num_labels, model)
    ndim = _grid_ndim(seeds)
    scores, edges = _check_boundary(boundary, model, ndim)
    seeds = _check_seeds(seeds, scores, num_labels, options.ignore_index)
    n_images, grid = seeds.shape[0], tuple(seeds.shape[1:])
    voxels = math.prod(grid)
    where = " x ".join(str(n) for n in grid) + (" pixels" if ndim == 2 else " voxels")
    systems = compact_labels(seeds, num_labels, options.ignore_index)
    backend, preconditioner = choose_solver(
        options.backend, options.preconditioner, scores.device, grid[-2], grid[-1], model, depth=math.prod(grid[:-2])
    )
    scores = scores.contiguous()
    dtype, device = scores.dtype, scores.device
    tau = reach_threshold(model, dtype, options.min_weight)
    options = options.solver_options(preconditioner, tau)

    memory.check_fits(
        backend,
        systems.num_systems,
        n_images,
        voxels,
        where,
        dtype,
        device,
        backward=scores.requires_grad and torch.is_grad_enabled(),
    )
    record = SolveRecord()
    Z = scores.new_zeros((n_images * num_labels if systems.num_systems < n_images * num_labels else 0,) + grid)
    if systems.num_systems:
        diag, right, down, deep = _coefficients(scores, edges, model, ndim)
        try:
            Zc = RandomWalkSolve.apply(
                diag, right, down, deep, systems, get_backend(backend), options, record, model == "rawks"
            )
        except (RuntimeError, MemoryError) as err:
            if not memory.is_allocation_failure(err) or isinstance(err, memory.PropagationMemoryError):
                raise
            raise memory.PropagationMemoryError(
                f"rawks_triton.propagate: out of memory during the solve of {systems.num_systems} systems of "
                f"{where} in {dtype} ({err}). {memory.advice()}."
            ) from err
        if systems.num_systems == n_images * num_labels:  # every label in every image: already in order
            Z = Zc
        else:
            Z = Z.index_copy(0, systems.image_index * num_labels + systems.label_index, Zc)
        del Zc
        stats = record.forward
        iterations, error, residual, converged = stats.iterations, stats.error, stats.residual, stats.converged
    else:
        # No seed anywhere: P is uniform and its gradient 0, but P stays part of the graph (as a
        # seed-free image inside a seeded batch does), so that backward() works as usual.
        if scores.requires_grad:
            Z = Z + 0.0 * scores.sum()
        record.forward = record.adjoint = SolveStats.empty(dtype, device)  # nothing to solve, either way
        iterations, error, residual, converged = (
            record.forward.iterations,
            record.forward.error,
            record.forward.residual,
            record.forward.converged,
        )
    Z = Z.view((n_images, num_labels) + grid)

    # Rounding can leave iterates a hair below 0; P is built from the non-negative part.
    with torch.no_grad():
        total = Z.clamp(min=0.0).sum(dim=1)
    reachable = total > tau
    if model == "grady" and systems.num_systems:
        edge_arrays = (right, down) + ((deep,) if ndim == 3 else ())
        converged = _check_partition_of_unity(total, edge_arrays, systems, options, converged)
    present = systems.present.to(dtype)
    count = present.sum(dim=1, keepdim=True)
    # Unreachable pixels: uniform over the labels present (over all labels without seeds).
    uniform = torch.where(count > 0, present / count.clamp(min=1), torch.full_like(present, 1.0 / num_labels))
    P = Normalize.apply(Z, total, reachable, uniform.view((n_images, num_labels) + (1,) * ndim))
    return PropagationResult(
        P=P,
        Z=Z,
        reachable=reachable,
        has_seeds=systems.present.any(dim=1),
        image_index=systems.image_index,
        label_index=systems.label_index,
        iterations=iterations,
        error=error,
        residual=residual,
        converged=converged,
        backend=backend,
        model=model,
        preconditioner=preconditioner,
        _record=record,
    )


def _check_partition_of_unity(total, edges, systems, options: SolverOptions, converged: torch.Tensor):
    """Grady: sum_l Z_l is exactly 1 on a pixel connected to a seed and 0 elsewhere.

    So it is the same at both ends of every edge of nonzero conductance. A total far from
    both 0 and 1, or different across such an edge, means that the solve did not resolve
    the system in this dtype:
    the conductance contrast between a region's internal edges and the edges that connect it
    to the seeds is beyond what rounding leaves of it (docs/numerics.md, "Grady contrast").
    The solve's stopping rule bounds each Z_l by rtol, so an honest solve stays within a few
    rtol (or, at rtol = 0, the dtype's rounding) of 0 or 1. Returns ``converged`` with the
    systems of such images marked not converged, after a ConvergenceWarning (ConvergenceError
    with ``strict``).
    """
    count = systems.present.sum(dim=1).clamp(min=1).to(total.dtype)  # [N] labels present
    eps = torch.finfo(total.dtype).eps
    bound = count * max(10.0 * options.rtol, 1e3 * eps) + options.atol * count
    bound = bound.view((-1,) + (1,) * (total.dim() - 1))
    off = torch.minimum(total, (total - 1.0).abs()) > bound  # [N, *grid]
    for axis, weight in enumerate(edges):  # the two ends of every edge of nonzero conductance
        here, there = shifted_pair(total, axis)
        jump = (shifted_pair(weight, axis)[0] > 0) & ((there - here).abs() > bound)
        off |= pad_last(jump, axis).roll(1, dims=total.dim() - 1 - axis)  # marked at the far end
    # only images whose solves all converged: the others have warned already
    failed = systems.per_image_sum((~converged).to(total.dtype).to(total.device))
    bad_images = off.flatten(1).any(dim=1) & (failed == 0)
    if not bool(bad_images.any()):
        return converged
    n = int(bad_images.nonzero()[0])
    values = total[n][off[n]]
    message = (
        f"grady: the probabilities of {int(bad_images.sum())} of {bad_images.numel()} images do not sum to 1 "
        f"(image {n}: {int(off[n].sum())} pixels with sum_l Z_l between {float(values.min()):.3g} and "
        f"{float(values.max()):.3g}, where it is 0 or 1, the same across every edge of nonzero "
        f"conductance): the contrast between strong and weak "
        f"conductances is beyond what {str(total.dtype).replace('torch.', '')} resolves. Solve in float64, "
        f'or limit the range of the scores / edge weights (docs/numerics.md, "Grady contrast").'
    )
    warn_not_converged(message, options.strict)
    return converged & ~bad_images[systems.image_index]


class RandomWalkPropagation(nn.Module):
    """Dense label probabilities from sparse seeds and boundary scores, differentiable.

    ``options`` are the keyword options of :func:`propagate` (rtol, atol, maxiter, backend,
    ignore_index, check_every, strict, preconditioner, min_weight), checked on construction.
    ``forward(boundary, seeds) -> P`` with the shapes of :func:`propagate`; the full
    :class:`PropagationResult` of the last call (P and Z detached) is ``last_result``.
    """

    def __init__(self, num_labels: int, model: str = "rawks", **options):
        super().__init__()
        self.options = PropagationOptions(**options)  # the keyword options of propagate, checked here
        self.num_labels = self.options.check_labels(num_labels, model)
        self.model = model
        self.last_result: PropagationResult | None = None

    def forward(self, boundary: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        result = propagate(boundary, seeds, self.num_labels, self.model, **self.options.as_dict())
        self.last_result = result.detach()
        return result.P

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.as_dict().items())
        return f"num_labels={self.num_labels}, model={self.model!r}, {opts}"
