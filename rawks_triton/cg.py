"""Batched Jacobi-preconditioned conjugate gradients: the driver and the plain-torch iteration.

The driver (:func:`run_pcg`) is shared by every iterative backend. A backend supplies an
iteration object with ``step()`` (one CG iteration of every system, on the device, no host
synchronisation), ``any_active()`` (the one host synchronisation, made every
``check_every`` iterations) and ``refresh()`` (recompute the true residual b - A x,
restart the directions and reactivate every system whose true residual is above its
tolerance).

Stopping rule, per system s: ||b_s - A x_s||_2 <= max(rtol ||b_s||_2, atol). A system that
meets it stops changing (its step length is forced to 0) while the others go on. When the
recurrence says every system has converged, the true residual is recomputed: float32
recurrences drift, and a solver that says "converged" must mean it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

MAX_REFRESHES = 4
# TorchPCG: per-system BLAS dots for few, large systems on the CPU (see TorchPCG._dot).
DOT_LOOP_MAX_SYSTEMS = 32
DOT_LOOP_MIN_SIZE = 16384


class ConvergenceWarning(RuntimeWarning):
    """A random-walk solve stopped at ``maxiter`` before reaching its tolerance."""


class ConvergenceError(RuntimeError):
    """Raised instead of :class:`ConvergenceWarning` when ``strict=True``."""


@dataclass(frozen=True)
class SolverOptions:
    rtol: float = 1e-4
    atol: float = 0.0
    maxiter: int | None = None
    check_every: int = 8
    strict: bool = False
    preconditioner: str = "jacobi"

    def maxiter_for(self, height: int, width: int) -> int:
        """``maxiter`` or, when None, a bound that grows with the image side as Jacobi-PCG does."""
        if self.maxiter is not None:
            return self.maxiter
        return 10 * (height + width) + 1000


@dataclass
class SolveStats:
    """What one batched solve did, per system ([S] tensors)."""

    iterations: torch.Tensor  # [S] int64, iterations that changed the system
    residual: torch.Tensor  # [S] float, final true relative residual ||b - Ax|| / ||b|| (0 when b = 0)
    converged: torch.Tensor  # [S] bool
    maxiter: int = 0  # the limit the solve ran under (0 for direct solves)
    hit_maxiter: bool = False

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    def to(self, device) -> "SolveStats":
        return SolveStats(
            self.iterations.to(device), self.residual.to(device), self.converged.to(device), self.maxiter, self.hit_maxiter
        )


def tolerances(rhs: torch.Tensor, options: SolverOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-system ||b|| and the absolute tolerance max(rtol ||b||, atol)."""
    b_norm = torch.linalg.vector_norm(rhs.flatten(1), dim=1)
    tol = torch.clamp(options.rtol * b_norm, min=options.atol)
    return b_norm, tol


def finish_stats(iterations, true_rr, b_norm, tol, maxiter: int = 0, done: int = 0) -> SolveStats:
    r_norm = torch.sqrt(true_rr)
    converged = r_norm <= tol
    relative = torch.where(b_norm > 0, r_norm / torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm)), r_norm)
    return SolveStats(
        iterations=iterations, residual=relative, converged=converged, maxiter=maxiter, hit_maxiter=done >= maxiter > 0
    )


def run_pcg(iteration, maxiter: int, check_every: int) -> int:
    """Drive ``iteration`` until every system converged (true residual) or ``maxiter``.

    Returns the number of iterations run (the largest count of any system).
    """
    done = 0
    refreshes = 0
    residual_is_true = True  # x0 = 0, so r = b is exact
    active = iteration.any_active()
    while active and done < maxiter:
        for _ in range(min(check_every, maxiter - done)):
            iteration.step()
        done += min(check_every, maxiter - done)
        residual_is_true = False
        active = iteration.any_active()
        if not active and refreshes < MAX_REFRESHES:
            iteration.refresh()
            refreshes += 1
            residual_is_true = True
            active = iteration.any_active()
    if not residual_is_true:
        iteration.refresh()
    return done


class TorchPCG:
    """One preconditioned CG iteration over all systems in plain torch ops (CPU or CUDA).

    ``operator`` works on [S, ...] vectors (one system per row, in the layout it chooses)
    and provides ``matvec(x, out)`` and ``precondition(r, out)``, writing into ``out``; the
    preconditioner must be symmetric positive definite on the free pixels and give 0 on
    seeds (Jacobi: ``inv_diag * r``). Buffers are allocated once per working set, so an
    iteration is the operator, two inner products, a norm, four fused multiply-adds and a
    few [S] scalar ops. Reductions accumulate in the vectors' dtype (float32 or wider).

    A system that has converged keeps alpha = 0 (its ``rz`` is set to 0), so it stops
    changing; ``iterations`` counts the iterations during which it was active. When the
    operator has ``restrict(rows)`` (the operator of a subset of the systems), converged
    systems are dropped from the working set at the host checks once they are a quarter of
    it ("active-system compaction"); ``refresh`` brings every system back.
    """

    def __init__(self, operator, rhs: torch.Tensor, tol: torch.Tensor):
        self._full_operator = operator
        self._full_b = rhs
        self._full_tol = tol.to(rhs.dtype)
        self._full_x = torch.zeros_like(rhs)
        self._full_iterations = torch.zeros(rhs.shape[0], dtype=torch.int64, device=rhs.device)
        self._batch_shape = (-1,) + (1,) * (rhs.dim() - 1)
        self._rows = None  # indices of the working systems; None: all of them
        self._work_on_all()
        self.r.copy_(rhs)
        self._restart()
        self._true_rr = self._norm(self.r).square()

    def _work_on_all(self):
        self.op, self.b, self.tol = self._full_operator, self._full_b, self._full_tol
        self.x, self.iterations_working = self._full_x, self._full_iterations
        self._rows = None
        self._allocate()

    def _allocate(self):
        self.r = torch.empty_like(self.x)
        self.z = torch.empty_like(self.x)
        self.p = torch.empty_like(self.x)
        self.ap = torch.zeros_like(self.x)  # operators may leave positions outside the image unwritten
        self._product = torch.empty_like(self.x)

    def _store(self):
        """Write the working systems' solutions and counts into the full arrays."""
        if self._rows is not None:
            self._full_x.index_copy_(0, self._rows, self.x)
            self._full_iterations.index_copy_(0, self._rows, self.iterations_working)

    def _compact(self, keep: torch.Tensor):
        """Continue with the working systems ``keep`` only (indices into the working set)."""
        self._store()
        rows = keep if self._rows is None else self._rows.index_select(0, keep)
        self.op = self._full_operator.restrict(rows)
        self.b = self._full_b.index_select(0, rows)
        self.tol = self._full_tol.index_select(0, rows)
        self.iterations_working = self._full_iterations.index_select(0, rows)
        self.rz, self.active = self.rz.index_select(0, keep), self.active.index_select(0, keep)
        x, r, z, p = (t.index_select(0, keep) for t in (self.x, self.r, self.z, self.p))
        self.x = x
        self._allocate()
        self.r.copy_(r)
        self.z.copy_(z)
        self.p.copy_(p)
        self._rows = rows

    def _dot(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """[S] inner products of the rows of two [S, ...] contiguous tensors."""
        if not u.is_cuda and u.shape[0] <= DOT_LOOP_MAX_SYSTEMS and u[0].numel() >= DOT_LOOP_MIN_SIZE:
            # One BLAS dot per system reads both rows once, without the product pass.
            return torch.stack([torch.dot(a, b) for a, b in zip(u.flatten(1), v.flatten(1))])
        return torch.mul(u, v, out=self._product).flatten(1).sum(dim=1)

    @staticmethod
    def _norm(u: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(u.flatten(1), dim=1)

    def _restart(self):
        """Directions from the current residual ``r``; systems above tolerance become active."""
        self.active = self._norm(self.r) > self.tol
        self.op.precondition(self.r, out=self.z)
        self.p.copy_(self.z)
        self.rz = self._dot(self.r, self.z) * self.active

    def step(self):
        p, r = self.p, self.r
        ap = self.op.matvec(p, out=self.ap)
        # rz = 0 for inactive systems gives alpha = 0; p'Ap <= 0 (breakdown) gives 0/0 or x/0 -> 0.
        alpha = torch.nan_to_num_(self.rz / self._dot(p, ap), nan=0.0, posinf=0.0, neginf=0.0).clamp_(min=0.0)
        alpha = alpha.view(self._batch_shape)
        self.x.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1.0)
        z = self.op.precondition(r, out=self.z)
        rz_new = self._dot(r, z)
        beta = torch.nan_to_num_(rz_new / self.rz, nan=0.0, posinf=0.0, neginf=0.0)
        torch.addcmul(z, beta.view(self._batch_shape), p, out=p)
        self.iterations_working += self.active
        self.active &= self._norm(r) > self.tol
        self.rz = rz_new * self.active

    def any_active(self) -> bool:
        working = self.active.numel()
        count = int(self.active.sum())
        if 0 < count and working - count >= max(1, working // 4) and hasattr(self._full_operator, "restrict"):
            self._compact(self.active.nonzero().squeeze(1))
        return count > 0

    def refresh(self):
        """True residual b - A x of every system, restarted directions, reactivation."""
        self._store()
        if self._rows is not None:
            self._work_on_all()
        self.op.matvec(self.x, out=self.ap)
        torch.sub(self.b, self.ap, out=self.r)
        self._restart()
        self._true_rr = self._norm(self.r).square()

    @property
    def solution(self) -> torch.Tensor:
        """[S, ...] the iterates of every system."""
        self._store()
        return self._full_x

    @property
    def iterations(self) -> torch.Tensor:
        """[S] int64, iterations during which each system was active."""
        self._store()
        return self._full_iterations

    @property
    def true_rr(self) -> torch.Tensor:
        """[S] squared norm of the true residual b - A x at the last refresh."""
        return self._true_rr


def report(stats: SolveStats, options: SolverOptions, what: str, image_index, label_index) -> None:
    """Warn (or raise with ``strict``) when some system did not converge."""
    if stats.all_converged:
        return
    failed = ~stats.converged
    worst = int(torch.argmax(torch.where(failed, stats.residual, torch.zeros_like(stats.residual))))
    if stats.hit_maxiter:
        reason = f"maximum number of iterations reached (maxiter={stats.maxiter})"
        advice = "Increase `maxiter`, use preconditioner='multigrid', or loosen `rtol`."
    else:
        reason = "the true residual stalled above the tolerance (rounding-error floor)"
        advice = "More iterations will not help: loosen `rtol` or solve in float64 (docs/numerics.md)."
    message = (
        f"random-walk {what} solve did not converge for {int(failed.sum())} of {failed.numel()} systems: "
        f"{reason}; worst final relative residual "
        f"{float(stats.residual[worst]):.3e} (image {int(image_index[worst])}, label {int(label_index[worst])}) "
        f"against rtol={options.rtol:g}, atol={options.atol:g}. {advice}"
    )
    if options.strict:
        raise ConvergenceError(message)
    warnings.warn(message, ConvergenceWarning, stacklevel=4)
