"""The certified PCG driver shared by the iterative backends.

A backend supplies an iteration (:class:`rawks_triton.solve.protocols.Iteration`) with
``step()`` (one CG iteration of every active system, no host synchronisation), ``check()``
(the host looks at the measures, every ``check_every`` iterations), ``any_active()``, and
``refresh(reactivate)`` (recompute the true residual b - A x, certify it, restart the
directions, reactivate the systems that still fail and are still making progress); the
host side of that, common to every backend, is :class:`CertifiedPCG`. A solve never says
"converged" from the recursively updated residual: the final answer is always certified on
the true residual, with the rules of :mod:`rawks_triton.solve.rules`, which test the
*preconditioned* residual zeta = M r, an estimate of the error z* - z (exact when
M = A^-1; the multigrid cycle is close to that on every scale, which is why it is also the
certifier of Jacobi solves). docs/numerics.md gives the derivation and the measurements.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .options import SolverOptions, SolveStats, relative_residual
from .rules import tiny

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
# A recursive measure that has not halved for options.stagnation_window iterations, or that
# has grown this much above its best since the last certification.
DIVERGENCE = 1e3
# A true measure this much above the recursive one: the solve is past its rounding floor,
# and the directions are restarted (p = z) instead of kept.
RESTART_GAP = 10.0


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
                ~torch.isfinite(self.certified_measure)
                | (plain <= PROGRESS * self.certified_measure)
                | (certified <= 2.0)
            )
            # Never return worse than the best certified iterate (a float32 solve pushed past
            # its floor can drift): systems that got worse go back to it, stalled.
            # Only systems that iterated since the last refresh have a fallback (see below): a
            # system that stopped keeps its x (its measure may differ in the last bits).
            worse = plain > self.certified_measure
            rows = [r for r in self._fallback if bool(worse[r])]
            if rows:
                error, rr, failing, plain = error.clone(), rr.clone(), failing.clone(), plain.clone()
                self._set_x_rows(
                    torch.tensor(rows, device=worse.device), torch.stack([self._fallback[r][0] for r in rows])
                )
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
            for r, values in zip(rows.tolist(), self._x_rows(rows), strict=True):
                self._fallback[r] = (values.clone(), error[r].clone(), rr[r].clone())
        if not first:
            self.certified_measure = torch.minimum(self.certified_measure, plain)
        self._last_certified = plain.clone()
        self.final_error, self.final_rr, self.final_converged = error, rr, ~failing
        # Residual replacement keeps the directions of a system whose recursive measure still
        # tracked the true one; past the rounding floor (a large gap) it restarts from p = z.
        gap = plain / self._last_recursive.clamp(min=tiny(plain))
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
