"""What a solve is asked for and what it reports: the options, the per-system statistics,
and the warning (or error) when a solve did not converge."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass

import torch

# A recursive measure that has not halved for this many iterations (multigrid, Jacobi) is
# checked on the true residual: a refresh then tells a stall from slow progress.
STAGNATION_WINDOW = {"multigrid": 30, "jacobi": 300}


class ConvergenceWarning(RuntimeWarning):
    """A random-walk solve stopped before its answer met the tolerance."""


class ConvergenceError(RuntimeError):
    """Raised instead of :class:`ConvergenceWarning` when ``strict=True``."""


@dataclass(frozen=True)
class SolverOptions:
    rtol: float = 1e-3
    atol: float = 0.0
    maxiter: int | None = None
    check_every: int | None = None
    strict: bool = False
    preconditioner: str = "multigrid"
    tau: float = 1e-18  # the reach threshold of the model (rawks_triton.propagation.reach_threshold)

    def maxiter_for(self, *grid: int) -> int:
        """``maxiter`` or, when None, a bound that grows with the grid's sides as Jacobi-PCG
        does: 10 (H + W) + 1000 on images, 10 (D + H + W) + 1000 on volumes."""
        if self.maxiter is not None:
            return self.maxiter
        return 10 * sum(grid) + 1000

    def checks_every(self, device: torch.device) -> int:
        """Iterations between host checks: ``check_every``, or every iteration on the CPU (a
        check costs no synchronisation there), every 2 with multigrid and 8 with Jacobi on CUDA."""
        if self.check_every is not None:
            return self.check_every
        if device.type != "cuda":
            return 1
        return 2 if self.preconditioner == "multigrid" else 8

    def stagnation_window(self, shape) -> int:
        """Iterations without progress after which a solve is checked on its true residual.

        Multigrid halves the error every iteration or two; Jacobi-PCG moves information one
        pixel per iteration, so its plateaus last about as long as the image is wide.
        """
        if self.preconditioner == "multigrid":
            return STAGNATION_WINDOW["multigrid"]
        return max(STAGNATION_WINDOW["jacobi"], 2 * sum(int(n) for n in shape))

    @property
    def floor_mode(self) -> bool:
        """rtol = atol = 0: solve to the rounding floor of the dtype."""
        return self.rtol == 0.0 and self.atol == 0.0


@dataclass
class SolveStats:
    """What one batched solve did, per system ([S] tensors)."""

    iterations: torch.Tensor  # [S] int64, iterations that changed the system
    error: torch.Tensor  # [S] the certified error estimate the stopping rule bounds (see the rules)
    residual: torch.Tensor  # [S] final true relative residual ||b - Ax|| / ||b|| (0 when b = 0)
    converged: torch.Tensor  # [S] bool
    stalled: torch.Tensor  # [S] bool, stopped at the rounding floor above the tolerance
    maxiter: int = 0  # the limit the solve ran under (0 for direct solves)
    hit_maxiter: bool = False

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    @classmethod
    def empty(cls, dtype: torch.dtype, device) -> SolveStats:
        """The statistics of a solve without systems."""
        new = dict(dtype=dtype, device=device)
        none = torch.zeros(0, dtype=torch.bool, device=device)
        return cls(
            torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(0, **new), torch.zeros(0, **new), none, none
        )

    def to(self, device) -> SolveStats:
        return SolveStats(
            self.iterations.to(device),
            self.error.to(device),
            self.residual.to(device),
            self.converged.to(device),
            self.stalled.to(device),
            self.maxiter,
            self.hit_maxiter,
        )


def relative_residual(true_rr: torch.Tensor, rhs_norm: torch.Tensor) -> torch.Tensor:
    r_norm = torch.sqrt(true_rr)
    return torch.where(rhs_norm > 0, r_norm / torch.where(rhs_norm > 0, rhs_norm, torch.ones_like(rhs_norm)), r_norm)


def report(stats: SolveStats, options: SolverOptions, what: str, image_index, label_index, preconditioner: str) -> None:
    """Warn (or raise with ``strict``) when some system did not converge.

    The warning is attributed to the caller of :func:`rawks_triton.propagate` (or of the
    backward pass), not to this library's own frames.
    """
    if stats.all_converged:
        return
    failed = ~stats.converged
    worst = int(torch.argmax(torch.where(failed, stats.error, torch.zeros_like(stats.error))))
    measure = "P" if what == "forward" else "the gradient"
    if bool(stats.stalled[failed].all()) or not stats.hit_maxiter:
        reason = "the error stopped decreasing above the tolerance (the rounding floor of the dtype)"
        advice = "More iterations will not help: loosen `rtol` or solve in float64 (docs/numerics.md)."
    else:
        reason = f"maximum number of iterations reached (maxiter={stats.maxiter})"
        advice = (
            "Increase `maxiter` or loosen `rtol`."
            if preconditioner == "multigrid"
            else "Use preconditioner='multigrid' (iterations nearly independent of the image size), "
            "increase `maxiter`, or loosen `rtol`."
        )
    message = (
        f"random-walk {what} solve did not converge for {int(failed.sum())} of {failed.numel()} systems: "
        f"{reason}; worst estimated error of {measure} {float(stats.error[worst]):.3e} "
        f"(image {int(image_index[worst])}, label {int(label_index[worst])}) "
        f"against rtol={options.rtol:g}, atol={options.atol:g}. {advice}"
    )
    warn_not_converged(message, options.strict)


def warn_not_converged(message: str, strict: bool) -> None:
    """ConvergenceError with ``strict``, else a ConvergenceWarning attributed to the caller's line."""
    if strict:
        raise ConvergenceError(message)
    warnings.warn(message, ConvergenceWarning, stacklevel=_caller_stacklevel())


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside rawks_triton and torch (for warnings.warn)."""
    frame = sys._getframe(1)  # report(), stacklevel 1
    level = 1
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not (
            name == "rawks_triton" or name.startswith("rawks_triton.") or name == "torch" or name.startswith("torch.")
        ):
            return level
        frame = frame.f_back
        level += 1
    return level
