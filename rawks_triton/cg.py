"""Batched preconditioned conjugate gradients: options, the stopping rules, the driver and
the plain-torch iteration.

What "converged" means (docs/numerics.md gives the derivation and the measurements). The
user reads P = Z / S with S = sum_l Z_l, and, after ``backward``, the gradient with respect
to the boundary scores. A residual norm ||b - A z|| <= rtol ||b|| bounds neither: on learned
boundaries S spans twenty orders of magnitude, and a normwise test stops long before the
pixels behind a wall are solved. The rules here test the *preconditioned* residual
zeta = M r, an estimate of the error z* - z (exact when M = A^-1; the multigrid cycle is
close to that on every scale, which is why it is also the certifier of Jacobi solves),
pixel by pixel:

* forward (:class:`ForwardRule`): |zeta_i| <= max(rtol max(S_i, tau), atol) at every pixel,
  so the error of P_l = Z_l / S at pixels with S >= tau is about rtol;
* adjoint (:class:`AdjointRule`): d_i |zeta_i| |x_i| <= max(rtol G, atol) per system, with
  G = max_i d_i sum_l |lambda_l,i| |x_l,i| the image's gradient scale: d_i sum_l lambda_l,i
  x_l,i is the gradient with respect to log d_i (the score itself for "rawks"), so this
  bounds the error of the gradient relative to its largest entry.

The driver (:func:`run_pcg`) is shared by the iterative backends. A backend supplies an
iteration object with ``step()`` (one CG iteration of every active system, no host
synchronisation), ``check()`` (the host looks at the measures, every ``check_every``
iterations), ``any_active()``, and ``refresh(reactivate)`` (recompute the true residual
b - A x, certify it, restart the directions, reactivate the systems that still fail and
are still making progress). A solve never says "converged" from the recursively updated
residual: the final answer is always certified on the true residual.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

# Refreshes (true residual, certification, restart) a solve may take. In "floor" mode
# (rtol = atol = 0) a solve goes on while each refresh at least halves the true error.
MAX_REFRESHES = 4
MAX_FLOOR_REFRESHES = 16
# A refresh that does not bring the certified error of a system down by this factor since
# the previous one means the solve is at its rounding floor: the system stops, "stalled".
PROGRESS = 0.5
# Floor mode: refresh once the recursive measure claims this much progress since the last
# certified one (the recursive residual goes on falling after the true one has stopped).
DECOUPLING = 1e-3
# A recursive measure that has not halved for this many iterations (multigrid, Jacobi) is
# checked on the true residual: a refresh then tells a stall from slow progress.
STAGNATION_WINDOW = {"multigrid": 30, "jacobi": 300}
# ... or has grown this much above its best since the last certification.
DIVERGENCE = 1e3
# A true measure this much above the recursive one: the solve is past its rounding floor,
# and the directions are restarted (p = z) instead of kept.
RESTART_GAP = 10.0


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

    def maxiter_for(self, height: int, width: int) -> int:
        """``maxiter`` or, when None, a bound that grows with the image side as Jacobi-PCG does."""
        if self.maxiter is not None:
            return self.maxiter
        return 10 * (height + width) + 1000

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
    def empty(cls, dtype: torch.dtype, device) -> "SolveStats":
        """The statistics of a solve without systems."""
        new = dict(dtype=dtype, device=device)
        none = torch.zeros(0, dtype=torch.bool, device=device)
        return cls(torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(0, **new), torch.zeros(0, **new), none, none)

    def to(self, device) -> "SolveStats":
        return SolveStats(
            self.iterations.to(device), self.error.to(device), self.residual.to(device), self.converged.to(device),
            self.stalled.to(device), self.maxiter, self.hit_maxiter,
        )


def relative_residual(true_rr: torch.Tensor, rhs_norm: torch.Tensor) -> torch.Tensor:
    r_norm = torch.sqrt(true_rr)
    return torch.where(rhs_norm > 0, r_norm / torch.where(rhs_norm > 0, rhs_norm, torch.ones_like(rhs_norm)), r_norm)


def _tiny(t: torch.Tensor) -> float:
    return torch.finfo(t.dtype).tiny


class ForwardRule:
    """Converged when |zeta_i| <= max(rtol max(S_i, tau), atol) at every pixel of the system.

    S is the sum over the image's systems of the current iterates (at free pixels, where
    every test is made, that is sum_l Z_l). ``prepare`` computes the per-image thresholds
    from the iterates; ``measure`` is max_i |zeta_i| / threshold_i (<= 1: passes), ``error``
    max_i |zeta_i| / max(S_i, tau), the estimated error of P.
    """

    kind = "forward"

    def __init__(self, options: SolverOptions, groups):
        self.rtol, self.atol, self.tau = options.rtol, options.atol, options.tau
        self.groups = groups  # the full set of systems: ImageGroups of the backend's layout
        self._scale = None  # [N, M] max(S, tau)
        self._inv_threshold = None

    def prepare(self, x_full: torch.Tensor, z_full: torch.Tensor | None = None, full: bool = True) -> None:
        scale = self.groups.image_sum(x_full).clamp_(min=self.tau)  # [N, M]
        threshold = scale * self.rtol
        if self.atol > 0 or self.rtol == 0:
            threshold.clamp_(min=max(self.atol, _tiny(scale)))
        self._scale, self._inv_threshold = scale, threshold.reciprocal_()

    def restrict(self, rows: torch.Tensor) -> "ForwardRule":
        return self  # per-image weights: the layout gathers them

    def _max_weighted(self, groups, z, inv_img, buffer):
        weighted = groups.multiply(z, inv_img, out=buffer)
        return torch.linalg.vector_norm(weighted.flatten(1), ord=math.inf, dim=1)

    def measure(self, groups, z: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
        return self._max_weighted(groups, z, self._inv_threshold, buffer)

    def error(self, groups, z: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
        return self._max_weighted(groups, z, self._scale.reciprocal(), buffer)


class AdjointRule:
    """Converged when d_i |zeta_i| |x_i| <= max(rtol G, atol) at every pixel of the system.

    x is the forward solution of the system, d the stencil diagonal and G, per image, the
    largest d_i sum_l |lambda_l,i| |x_l,i| of the current adjoint iterates lambda (of zeta
    when every lambda is still 0). ``error`` is max_i d_i |zeta_i| |x_i| / G.
    """

    kind = "adjoint"

    def __init__(self, options: SolverOptions, groups, x_forward: torch.Tensor, diag: torch.Tensor):
        self.rtol, self.atol = options.rtol, options.atol
        self.groups = groups
        self.x_forward = x_forward  # [S, M] the forward solutions in the backend's layout
        self.x_working = x_forward
        self.diag = diag  # [N, M] per image
        self._gradient_scale = None

    def _scale(self, lam: torch.Tensor) -> torch.Tensor:
        """[N] max_i d_i sum_l |lam_l,i| |x_l,i| (products in an order that cannot overflow first)."""
        per_pixel = self.groups.image_sum(torch.mul(lam, self.x_forward).abs_()).mul_(self.diag)
        return torch.linalg.vector_norm(per_pixel.flatten(1), ord=math.inf, dim=1)

    def prepare(self, x_full: torch.Tensor, z_full: torch.Tensor | None = None, full: bool = True) -> None:
        """``full=False``: keep the gradient scale G of the last full preparation (it settles
        within a few iterations; the certification always recomputes it)."""
        if not full and self._gradient_scale is not None:
            return
        scale = self._scale(x_full)
        if z_full is not None and bool((scale == 0).any()):
            scale = torch.where(scale > 0, scale, self._scale(z_full))
        self._gradient_scale = scale
        # An image whose gradient scale is 0 (no incoming gradient reaches its pixels) has
        # nothing left to solve: its measure is 0. The division by the per-image threshold
        # comes last, so that a tiny scale cannot make an infinite weight (0 * inf = NaN).
        self._threshold = torch.clamp(self.rtol * scale, min=max(self.atol, _tiny(scale)))
        self._scale_or_tiny = torch.clamp(scale, min=_tiny(scale))
        self._nothing = scale == 0

    def restrict(self, rows: torch.Tensor) -> "AdjointRule":
        rule = AdjointRule.__new__(AdjointRule)
        rule.__dict__.update(self.__dict__)
        rule.x_working = self.x_forward.index_select(0, rows)
        return rule

    def _max_weighted(self, groups, z, per_image, buffer):
        torch.mul(z, self.x_working, out=buffer).abs_()
        weighted = groups.multiply(buffer, self.diag, out=buffer)
        largest = torch.linalg.vector_norm(weighted.flatten(1), ord=math.inf, dim=1)
        image = groups.image_index
        return torch.where(self._nothing[image], torch.zeros_like(largest), largest / per_image[image])

    def measure(self, groups, z: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
        return self._max_weighted(groups, z, self._threshold, buffer)

    def error(self, groups, z: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
        return self._max_weighted(groups, z, self._scale_or_tiny, buffer)


def run_pcg(iteration, maxiter: int, check_every: int) -> int:
    """Drive ``iteration`` until every system is certified converged, stalled, or ``maxiter``.

    Returns the number of iterations run (the largest count of any system).
    """
    done = 0
    refreshes = 0
    certified = True  # x0 = 0, so r = b is exact and the first measure is a certified one
    iteration.check()
    while iteration.any_active() and done < maxiter:
        for _ in range(min(check_every, maxiter - done)):
            iteration.step()
        done += min(check_every, maxiter - done)
        certified = False
        iteration.check()
        if not iteration.any_active() and refreshes < iteration.max_refreshes:
            iteration.refresh(reactivate=True)
            refreshes += 1
            certified = True
    if not certified:
        iteration.refresh(reactivate=False)
    return done


class CertifiedPCG:
    """The host side that every iterative backend shares: checks, certification, stalls.

    A subclass holds the device state and provides ``rule``, ``groups`` and ``_buffer`` of
    its working systems, ``_z()`` (M r of the current residual, working systems),
    ``_working(t)`` (an [S] tensor restricted to the working systems), ``_prepare_rule(z)``,
    ``_deactivate(passes)``, ``_activate(mask)`` (all systems; restarts the directions from
    the true residual) and ``_true_residual()`` (every system working; r = b - A x, and
    z = M r unless ``first``).
    """

    def _init_certification(self, count: int, options: SolverOptions, certify, dtype, device, shape) -> None:
        self.options = options
        self.max_refreshes = MAX_FLOOR_REFRESHES if options.floor_mode else MAX_REFRESHES
        self._certify = certify
        self.stalled = torch.zeros(count, dtype=torch.bool, device=device)
        self.certified_measure = torch.full((count,), math.inf, dtype=dtype, device=device)
        # Jacobi solves: the factor by which the certifier found the preconditioner's own
        # estimate optimistic at the last refresh (1 when the certifier is the preconditioner).
        self.calibration = torch.ones(count, dtype=dtype, device=device)
        self._best_recursive = torch.full((count,), math.inf, dtype=dtype, device=device)
        self._best_at = torch.zeros(count, dtype=torch.int64, device=device)
        self._window = options.stagnation_window(shape)
        self._checked = False
        self._checks = 0
        # The CG coefficients since the last restart ([S] float64 each, alpha = 0 once a system
        # is inactive) and the smallest Ritz value of M A seen so far (see _spectrum_floor).
        self._alphas: list[torch.Tensor] = []
        self._betas: list[torch.Tensor] = []
        self.spectrum_floor = torch.ones(count, dtype=torch.float64, device=device)
        self._last_recursive = torch.full((count,), math.inf, dtype=dtype, device=device)
        self._last_certified = torch.full((count,), math.inf, dtype=dtype, device=device)
        self._last_predicted = torch.full((count,), math.inf, dtype=dtype, device=device)
        # system -> (x, error, r'r) of its best certified iterate, for each system that goes on
        # after a failed certification (only those: a system that stops drops its entry, and
        # x = 0 is never one); a fallback is a failing iterate by construction
        self._fallback: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _record(self, alpha: torch.Tensor, beta: torch.Tensor) -> None:
        """Keep one iteration's CG coefficients of every system ([S], 0 for inactive ones)."""
        self._alphas.append(alpha.double())
        self._betas.append(beta.double())

    def _spectrum_floor(self) -> torch.Tensor:
        """[S] the smallest eigenvalue of M A seen by CG: min over restarts of the smallest Ritz
        value of the Lanczos matrix T of the coefficients, clamped to (0, 1].

        The preconditioned residual z = M r = (M A) e shrinks the error components of M A's
        small eigenvalues by those eigenvalues, so the error estimates are divided by this
        floor: for the multigrid cycle on learned boundaries it is about 0.3 to 0.7, for
        high-contrast Grady weights about 0.1, for Jacobi orders of magnitude smaller. The
        bound |e| <= |M r| / lambda_min(M A) holds exactly in the energy norm; per pixel it is
        the estimate that the measurements of docs/numerics.md check.
        """
        if not self._alphas:
            return self.spectrum_floor
        from scipy.linalg import eigvalsh_tridiagonal

        a = torch.stack(self._alphas, dim=1).cpu().numpy()  # [S, k]
        b = torch.stack(self._betas, dim=1).cpu().numpy()
        valid = np.cumprod(a > 0, axis=1).astype(bool)
        steps = valid.sum(axis=1)
        ritz = np.ones(a.shape[0])
        for s in np.flatnonzero(steps):
            n = int(steps[s])
            inv_a = 1.0 / a[s, :n]
            diag = inv_a.copy()
            diag[1:] += b[s, : n - 1] * inv_a[:-1]
            off = np.sqrt(np.clip(b[s, : n - 1], 0.0, None)) * inv_a[:-1]
            if not (np.all(np.isfinite(diag)) and np.all(np.isfinite(off))):
                continue
            # O(n): the smallest eigenvalue only (LAPACK stebz)
            ritz[s] = float(eigvalsh_tridiagonal(diag, off, select="i", select_range=(0, 0))[0]) if n > 1 else diag[0]
        ritz = torch.from_numpy(np.where(ritz > 0, ritz, 1.0)).to(self.spectrum_floor.device)
        self.spectrum_floor = torch.minimum(self.spectrum_floor, ritz.clamp(max=1.0))
        return self.spectrum_floor

    def _spectral_factor(self, working: bool = True) -> torch.Tensor:
        floor = self._spectrum_floor()
        return (1.0 / (self._working(floor) if working else floor)).to(self.certified_measure.dtype)

    def check(self):
        """The host check: recursive measures of the working systems; deactivate those that pass."""
        if not self._checked:  # x = 0: r = b is the true residual, so this check certifies
            self._checked = True
            self._certify_true_residual(reactivate=True, first=True)
            return
        self._checks += 1
        self._prepare_rule(full=self._checks % 4 == 0)
        plain = self.rule.measure(self.groups, self._z(), self._buffer)
        # A prediction of what the certification will find (see _certify_true_residual): the
        # estimate over the spectral floor, times the calibration, the factor by which the
        # certifications so far found the predictions optimistic (for Jacobi the multigrid
        # cycle sees more than r / d; in float32 the recursive residual drifts from the true one).
        measure = plain * self._working(self.calibration)
        if bool((measure <= 1.0).any()):  # candidates: only they need the eigenvalue problem
            measure = measure * self._spectral_factor()
        self._write_working(self._last_predicted, measure)
        if self.options.floor_mode:
            passes = plain <= DECOUPLING * self._working(self._last_certified)
        else:
            passes = measure <= 1.0
        # Progress is judged on the plain measure (the spectral factor grows as CG finds M A's
        # small eigenvalues, which is knowledge, not a lack of progress). No halving for a
        # window of iterations, or growth far above the best: verify on the true residual.
        iterations = self._working_iterations()
        best, best_at = self._working(self._best_recursive), self._working(self._best_at)
        improved = plain <= PROGRESS * best
        diverging = plain > DIVERGENCE * best
        best = torch.where(improved, plain, best)
        best_at = torch.where(improved, iterations, best_at)
        self._write_working(self._best_recursive, best)
        self._write_working(self._best_at, best_at)
        self._write_working(self._last_recursive, plain)
        self._deactivate(passes | diverging | (iterations - best_at >= self._window))

    def refresh(self, reactivate: bool):
        """True residual b - A x of every system, its certified measure; reactivate those that fail."""
        self._true_residual(first=False)
        self._certify_true_residual(reactivate)

    def _certify_true_residual(self, reactivate: bool, first: bool = False):
        z = self._z()
        self._prepare_rule(z if first else None)
        factor = self._spectral_factor(working=False)
        plain = self.rule.measure(self.groups, z, self._buffer)
        error = self.rule.error(self.groups, z, self._buffer) * factor
        if self._certify is not None:
            # Jacobi: the multigrid cycle sees errors that r / d misses (behind walls, and
            # where the Krylov space has not reached yet); the larger estimate counts.
            certify_z = self._certify(self.r, torch.empty_like(self.r))
            by_cycle = self.rule.measure(self.groups, certify_z, self._buffer)
            error = torch.maximum(error, self.rule.error(self.groups, certify_z, self._buffer))
            certified = torch.maximum(plain * factor, by_cycle)
            plain = torch.maximum(plain, by_cycle)
        else:
            certified = plain * factor
        if not first:
            predicted = self._last_predicted
            known = torch.isfinite(predicted) & (predicted > 0)
            ratio = certified / torch.where(known, predicted, torch.ones_like(predicted))
            self.calibration = torch.where(known, self.calibration * ratio, self.calibration).clamp_(1.0, 1e6)
        rr = torch.linalg.vector_norm(self.r.flatten(1), dim=1).square()
        failing = certified > 1.0
        # Progress is measured against the best certification after the start: the measure
        # at x = 0 is no baseline (the max-norm of M b can grow before it falls). Within a
        # factor of 2 of the tolerance a system always gets one more round (now calibrated).
        if first or not torch.isfinite(self.certified_measure).any():
            progressed = torch.ones_like(failing)
        else:
            progressed = (
                ~torch.isfinite(self.certified_measure) | (plain <= PROGRESS * self.certified_measure) | (certified <= 2.0)
            )
            # Never return worse than the best certified iterate (a float32 solve pushed past
            # its floor can drift): systems that got worse go back to it, stalled.
            # Only systems that iterated since the last refresh have a fallback (see below): a
            # system that stopped keeps its x (its measure may differ in the last bits).
            worse = plain > self.certified_measure
            rows = [r for r in self._fallback if bool(worse[r])]
            if rows:
                error, rr, failing, plain = error.clone(), rr.clone(), failing.clone(), plain.clone()
                self._set_x_rows(torch.tensor(rows, device=worse.device), torch.stack([self._fallback[r][0] for r in rows]))
                for r in rows:
                    _, error[r], rr[r] = self._fallback[r]
                    failing[r], plain[r] = True, self.certified_measure[r]
        self.stalled |= failing & ~progressed
        active = failing & progressed & ~self.stalled if reactivate else torch.zeros_like(failing)
        better = plain <= self.certified_measure
        for r in [r for r in self._fallback if not bool(active[r])]:
            del self._fallback[r]  # a system that stops keeps its x; its fallback is not needed
        if bool(active.any()) and not first:  # systems that go on keep their best iterate to fall back on
            rows = (active & better).nonzero().squeeze(1)
            for r, values in zip(rows.tolist(), self._x_rows(rows)):
                self._fallback[r] = (values.clone(), error[r].clone(), rr[r].clone())
        if not first:
            self.certified_measure = torch.minimum(self.certified_measure, plain)
        self._last_certified = plain.clone()
        self.final_error, self.final_rr, self.final_converged = error, rr, ~failing
        # Residual replacement keeps the directions of a system whose recursive measure still
        # tracked the true one; past the rounding floor (a large gap) it restarts from p = z.
        gap = plain / self._last_recursive.clamp(min=_tiny(plain))
        restart = first | (gap > RESTART_GAP)
        self._best_recursive = plain.clone()
        self._best_at = self.iterations.clone()
        self._alphas, self._betas = [], []  # a new Lanczos sequence (the floor seen so far is kept)
        self._activate(active, restart)

    def stats(self, rhs_norm: torch.Tensor, maxiter: int, done: int) -> SolveStats:
        return SolveStats(
            iterations=self.iterations.clone(),
            error=self.final_error,
            residual=relative_residual(self.final_rr, rhs_norm),
            converged=self.final_converged,
            stalled=self.stalled & ~self.final_converged,
            maxiter=maxiter,
            hit_maxiter=done >= maxiter > 0,
        )


class TorchPCG(CertifiedPCG):
    """Preconditioned CG over all systems in plain torch ops (CPU or CUDA).

    ``operator`` works on [S, ...] vectors (one system per row, in the layout it chooses)
    and provides ``matvec(x, out)``, ``precondition(r, out)`` (symmetric positive definite
    on the free pixels, 0 on seeds), ``groups`` (:class:`rawks_triton.systems.ImageGroups`
    of its systems) and ``restrict(rows)`` (the operator of a subset of the systems).
    ``certify(r, out)`` is the error estimator of the final test (default: the
    preconditioner; the Jacobi backends pass a multigrid cycle, see the module docstring).

    Buffers are allocated once per working set. A system that is no longer active keeps
    alpha = 0 (its ``rz`` is 0), so it stops changing; ``iterations`` counts the
    iterations during which it was active. Converged systems are dropped from the working
    set at the host checks once they are a quarter of it; ``refresh`` brings every
    system back.
    """

    def __init__(self, operator, rhs: torch.Tensor, rule, options: SolverOptions, certify=None, grid_shape=()):
        count = rhs.shape[0]
        self._init_certification(count, options, certify, rhs.dtype, rhs.device, grid_shape)
        self._full_operator = operator
        self._full_rule = rule
        self._full_b = rhs
        self._full_x = torch.zeros_like(rhs)
        self._full_iterations = torch.zeros(count, dtype=torch.int64, device=rhs.device)
        self._full_active = torch.ones(count, dtype=torch.bool, device=rhs.device)
        self._batch_shape = (-1,) + (1,) * (rhs.dim() - 1)
        self._work_on_all()
        self.r.copy_(rhs)
        self._restart()

    # ---- working set ------------------------------------------------------------------------

    @property
    def groups(self):
        return self.op.groups

    def _work_on_all(self):
        self._rows = None
        self.op, self.rule, self.b = self._full_operator, self._full_rule, self._full_b
        self.x, self.iterations_working = self._full_x, self._full_iterations
        self.active = self._full_active.clone()
        self.r = self.z = self.p = self.ap = None  # the working set's vectors go before the full ones come
        self._allocate()

    def _allocate(self):
        self.r = torch.empty_like(self.x)
        self.z = torch.empty_like(self.x)
        self.p = torch.empty_like(self.x)
        self.ap = torch.zeros_like(self.x)  # operators may leave positions outside the image unwritten

    @property
    def _buffer(self) -> torch.Tensor:
        """Scratch for the measures: A p is dead between an iteration's update and the next one."""
        return self.ap

    def _store(self):
        """Write the working systems' solutions, counts and flags into the full arrays."""
        if self._rows is not None:
            self._full_x.index_copy_(0, self._rows, self.x)
            self._full_iterations.index_copy_(0, self._rows, self.iterations_working)
            self._full_active.index_copy_(0, self._rows, self.active)
        else:
            self._full_active.copy_(self.active)

    def _compact(self, keep: torch.Tensor):
        """Continue with the working systems ``keep`` only (indices into the working set)."""
        self._store()
        rows = keep if self._rows is None else self._rows.index_select(0, keep)
        self._full_operator.release()  # its cycle's buffers, until the full set is worked on again
        self.op.release()
        self.op = self._full_operator.restrict(rows)
        self.rule = self._full_rule.restrict(rows)
        self.b = self._full_b.index_select(0, rows)
        self.iterations_working = self._full_iterations.index_select(0, rows)
        self.rz, self.active = self.rz.index_select(0, keep), self.active.index_select(0, keep)
        # one vector at a time, so that at most one old and one new working vector coexist
        self.x = self.x.index_select(0, keep)  # the full x stays in _full_x
        self.ap = None
        self.r = self.r.index_select(0, keep)
        self.z = self.z.index_select(0, keep)
        self.p = self.p.index_select(0, keep)
        self.ap = torch.zeros_like(self.x)
        self._rows = rows

    def _working(self, t: torch.Tensor) -> torch.Tensor:
        return t if self._rows is None else t.index_select(0, self._rows)

    def _write_working(self, full: torch.Tensor, values: torch.Tensor) -> None:
        if self._rows is None:
            full.copy_(values)
        else:
            full.index_copy_(0, self._rows, values)

    def _working_iterations(self) -> torch.Tensor:
        return self.iterations_working

    def _full_size(self, t: torch.Tensor) -> torch.Tensor:
        """[S_working] -> [S] (0 for the systems outside the working set)."""
        if self._rows is None:
            return t.clone()
        return t.new_zeros(self._full_b.shape[0]).index_copy_(0, self._rows, t)

    # ---- the iteration ----------------------------------------------------------------------

    @staticmethod
    def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """[S] inner products of the rows of two [S, ...] contiguous tensors: a batched BLAS
        dot that reads both once, with no product array."""
        n = u.shape[0]
        return torch.bmm(u.reshape(n, 1, -1), v.reshape(n, -1, 1)).view(n)

    def _restart(self, z_current: bool = False):
        """Directions from the current residual ``r`` (z = M r, computed unless ``z_current``)."""
        if not z_current:
            self.op.precondition(self.r, out=self.z, scratch=self.ap)
        self.p.copy_(self.z)
        self.rz = self._dot(self.r, self.z) * self.active

    def step(self):
        p, r = self.p, self.r
        ap = self.op.matvec(p, out=self.ap)
        # rz = 0 for inactive systems gives alpha = 0; p'Ap <= 0 (breakdown) gives 0/0 or x/0 -> 0.
        alpha = torch.nan_to_num_(self.rz / self._dot(p, ap), nan=0.0, posinf=0.0, neginf=0.0).clamp_(min=0.0)
        self.x.addcmul_(alpha.view(self._batch_shape), p)
        r.addcmul_(alpha.view(self._batch_shape), ap, value=-1.0)
        z = self.op.precondition(r, out=self.z, scratch=self.ap)  # A p is dead after the update
        rz_new = self._dot(r, z)
        beta = torch.nan_to_num_(rz_new / self.rz, nan=0.0, posinf=0.0, neginf=0.0)
        torch.addcmul(z, beta.view(self._batch_shape), p, out=p)
        self.iterations_working += self.active
        self.rz = rz_new * self.active
        self._record(self._full_size(alpha), self._full_size(beta))

    # ---- the hooks of CertifiedPCG ------------------------------------------------------------

    def _z(self) -> torch.Tensor:
        return self.z

    def _prepare_rule(self, z_for_scale: torch.Tensor | None = None, full: bool = True):
        self._store()
        self._full_rule.prepare(self._full_x, z_for_scale, full)
        if self._rows is not None:
            self.rule = self._full_rule.restrict(self._rows)

    def _deactivate(self, passes: torch.Tensor):
        self.active &= ~passes
        self.rz = self.rz * self.active

    def _activate(self, active: torch.Tensor, restart: torch.Tensor):
        # Residual replacement: r and z are now the true ones and the directions p are kept,
        # so a system that goes on keeps its Krylov space (a restart would lose it, which
        # costs many iterations on ill-conditioned problems); ``restart`` systems take p = z.
        self.active = active
        self._full_active.copy_(active)
        if bool(restart.any()):
            torch.where(restart.view(self._batch_shape), self.z, self.p, out=self.p)
        self.rz = self._dot(self.r, self.z) * self.active

    def _x_rows(self, rows: torch.Tensor) -> torch.Tensor:
        self._store()
        return self._full_x.index_select(0, rows)

    def _set_x_rows(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        self._full_x.index_copy_(0, rows, values)

    def _true_residual(self, first: bool):
        self._store()
        working = None
        if self._rows is not None:
            working = (self._rows, self.p)
            self._work_on_all()
        self.op.matvec(self.x, out=self.ap)
        torch.sub(self.b, self.ap, out=self.r)
        self.op.precondition(self.r, out=self.z, scratch=self.ap)
        if working is not None:  # systems dropped from the working set restart from p = z
            rows, p = working
            self.p.copy_(self.z)
            self.p.index_copy_(0, rows, p)

    def any_active(self) -> bool:
        working = self.active.numel()
        count = int(self.active.sum())
        if 0 < count and working - count >= max(1, working // 4):
            keep = self.active.nonzero().squeeze(1)
            rows = keep if self._rows is None else self._rows.index_select(0, keep)
            # Only when the systems left still share their images' coefficients (whole images
            # done): a per-system gather of the coefficients and of the hierarchy would cost
            # more memory than the whole solve's vectors.
            if self._full_operator.groups.restrict(rows).per_image is not None:
                self._compact(keep)
        return count > 0

    # ---- results ----------------------------------------------------------------------------

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
            "Increase `maxiter` or loosen `rtol`." if preconditioner == "multigrid"
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
    import sys

    frame = sys._getframe(1)  # report(), stacklevel 1
    level = 1
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not (name == "rawks_triton" or name.startswith("rawks_triton.") or name == "torch" or name.startswith("torch.")):
            return level
        frame = frame.f_back
        level += 1
    return level
