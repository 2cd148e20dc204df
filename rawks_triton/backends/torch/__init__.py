"""The plain-torch backend (CPU or CUDA): matrix-free stencil products on the framed layout
and batched PCG with the multigrid or the Jacobi preconditioner."""

from __future__ import annotations

import torch

from ...solve.multigrid import build_hierarchy
from ...solve.options import SolverOptions
from ...solve.pcg import run_pcg
from ...solve.rules import AdjointRule, ForwardRule
from ...systems import LabelSystems, Stencil, coefficient_gradients
from .multigrid import TorchMultigrid
from .operator import FramedOperator, JacobiPreconditioner
from .pcg import TorchPCG

__all__ = ["TorchBackend"]


class TorchBackend:
    name = "torch"

    def __init__(self, stencil: Stencil, systems: LabelSystems, options: SolverOptions):
        self.op = FramedOperator.from_stencil(stencil, systems.image_index)
        self.frame = self.op.frame
        self.systems = systems
        self.options = options
        self.stencil = stencil
        self.certifier = None
        if options.preconditioner == "multigrid":
            self.preconditioner = self._multigrid()
            self.stencil = None  # the framed coefficients and the hierarchy hold all that is needed
        else:
            self.preconditioner = JacobiPreconditioner(self.op.per_image["inv_diag"], systems.image_index)
        self.shape = stencil.shape
        self.maxiter = options.maxiter_for(*self.shape[1:])

    def _multigrid(self) -> TorchMultigrid:
        """The V-cycle, its level 0 sharing the operator's framed coefficients."""
        return TorchMultigrid(build_hierarchy(self.stencil, framed=self.op.per_image), self.systems.image_index)

    def _certify(self):
        """The error estimator of the final test: the preconditioner itself for multigrid; for
        Jacobi a multigrid cycle (built on first use), since r / d misses errors behind walls."""
        if self.options.preconditioner == "multigrid":
            return None
        if self.certifier is None:
            self.certifier = self._multigrid()
        return self.certifier.apply

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """A x for [S, H, W] vectors (tests and diagnostics; the solver uses the framed layout)."""
        framed = self.frame.frame(x)
        out = self.op.matvec(framed, torch.zeros_like(framed))
        self.op.release()
        return self.frame.unframe(out)

    def _solve(self, rhs, rule):
        """Solve in the framed layout; ``rhs`` is an [S, H, W] tensor or a function that makes
        one (then no unframed copy outlives the framing). Returns the framed solution."""
        b = self.frame.frame(rhs() if callable(rhs) else rhs)
        rhs = None
        rhs_norm = torch.linalg.vector_norm(b.flatten(1), dim=1)
        pcg = TorchPCG(
            self.op, self.preconditioner, b, rule, self.options, certify=self._certify(), grid_shape=self.shape[1:]
        )
        del b
        try:
            done = run_pcg(pcg, self.maxiter, self.options.checks_every(rhs_norm.device))
        finally:
            self.op.release()
            self.preconditioner.release()  # the cycle's work buffers are made again for the next solve
        stats = pcg.stats(rhs_norm, self.maxiter, done)
        x = pcg.solution
        del pcg  # r, p, z, A p and b go before the caller unframes x
        return x, stats

    def solve(self, rhs):
        """The forward solve A x = b of every system: [S, H, W] -> ([S, H, W], SolveStats)."""
        x, stats = self._solve(rhs, ForwardRule(self.options, self.op.groups))
        return self.frame.unframe(x), stats

    def solve_adjoint(self, rhs, x_forward: torch.Tensor):
        """The adjoint solve A lambda = g with the same operator (A is symmetric);
        ``x_forward`` [S, H, W] is the forward solution (for the stopping rule)."""
        rule = AdjointRule(self.options, self.op.groups, self.frame.frame(x_forward), self.op.per_image["diag"])
        x, stats = self._solve(rhs, rule)
        return self.frame.unframe(x), stats

    def coefficient_gradients(self, adjoint, x, Z, edges: bool):
        return coefficient_gradients(adjoint, x, Z, self.systems, edges)
