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

    ``matvec`` and ``precondition`` map [S, H, W] -> [S, H, W]; the preconditioner must be
    symmetric positive definite on the free pixels and return 0 on seeds (Jacobi:
    ``inv_diag * r``). Reductions use torch's pairwise sums.
    """

    def __init__(self, matvec, precondition, rhs: torch.Tensor, tol: torch.Tensor):
        self.matvec = matvec
        self.precondition = precondition
        self.b = rhs
        self.tol2 = tol * tol
        self.x = torch.zeros_like(rhs)
        self.iterations = torch.zeros(rhs.shape[0], dtype=torch.int64, device=rhs.device)
        self._restart(rhs.clone())

    @staticmethod
    def _dot(u, v):
        return (u * v).sum(dim=(1, 2))

    def _restart(self, r):
        self.r = r
        self.rr = self._dot(r, r)
        z = self.precondition(r)
        self.p = z
        self.rz = self._dot(r, z)
        self.active = self.rr > self.tol2

    def step(self):
        ap = self.matvec(self.p)
        p_ap = self._dot(self.p, ap)
        ok = self.active & (p_ap > 0)
        alpha = torch.where(ok, self.rz / torch.where(ok, p_ap, torch.ones_like(p_ap)), torch.zeros_like(p_ap))
        alpha = alpha.view(-1, 1, 1)
        self.x.addcmul_(alpha, self.p)
        self.r.addcmul_(alpha, ap, value=-1.0)
        z = self.precondition(self.r)
        rz_new = self._dot(self.r, z)
        self.rr = self._dot(self.r, self.r)
        has_rz = self.rz > 0
        beta = torch.where(has_rz, rz_new / torch.where(has_rz, self.rz, torch.ones_like(rz_new)), torch.zeros_like(rz_new))
        self.p = torch.addcmul(z, beta.view(-1, 1, 1), self.p)
        self.rz = rz_new
        self.iterations += self.active
        self.active = self.active & (self.rr > self.tol2)

    def any_active(self) -> bool:
        return bool(self.active.any())

    def refresh(self):
        self._restart(self.b - self.matvec(self.x))

    @property
    def true_rr(self):
        return self.rr


def report(stats: SolveStats, options: SolverOptions, what: str, image_index, label_index) -> None:
    """Warn (or raise with ``strict``) when some system did not converge."""
    if stats.all_converged:
        return
    failed = ~stats.converged
    worst = int(torch.argmax(torch.where(failed, stats.residual, torch.zeros_like(stats.residual))))
    if stats.hit_maxiter:
        reason = f"maximum number of iterations reached (maxiter={stats.maxiter})"
    else:
        reason = "the true residual stalled above the tolerance (rounding-error floor)"
    message = (
        f"random-walk {what} solve did not converge for {int(failed.sum())} of {failed.numel()} systems: "
        f"{reason}; worst final relative residual "
        f"{float(stats.residual[worst]):.3e} (image {int(image_index[worst])}, label {int(label_index[worst])}) "
        f"against rtol={options.rtol:g}, atol={options.atol:g}. Increase `maxiter`, loosen `rtol`, "
        f"or solve in float64 if rtol is near the float32 precision."
    )
    if options.strict:
        raise ConvergenceError(message)
    warnings.warn(message, ConvergenceWarning, stacklevel=4)
