"""The ``"triton"`` backend: the solver on framed vectors behind the [S, H, W] interface.

Right-hand sides are framed once on entry (:class:`rawks_triton.solve.layout.Frame`),
solved by :class:`TritonPCG` with the fused Jacobi or the Triton multigrid cycle, and
unframed once on exit. Images ([S, H, W]) and volumes ([S, D, H, W], the 7-point
kernels) take either preconditioner.
"""

from __future__ import annotations

import torch

from ...solve.options import SolverOptions
from ...solve.pcg import run_pcg
from ...solve.rules import AdjointRule, ForwardRule
from ...systems import LabelSystems, Stencil
from .multigrid import multigrid_preconditioner
from .operator import MAX_GRID_Y, TritonOperator
from .pcg import TritonPCG


class TritonBackend:
    name = "triton"

    def __init__(self, stencil: Stencil, systems: LabelSystems, options: SolverOptions):
        if options.preconditioner not in ("jacobi", "multigrid"):
            name = options.preconditioner
            raise ValueError(f"`preconditioner` must be 'jacobi' or 'multigrid' with backend='triton', got {name!r}")
        n_images = stencil.shape[0]
        if n_images > MAX_GRID_Y:
            raise ValueError(f"backend='triton' takes at most {MAX_GRID_Y} images per call, got {n_images}")
        self.stencil = stencil
        self.op = TritonOperator(stencil, systems.image_index, systems.groups)
        self.frame = self.op.frame
        self.systems = systems
        self.options = options
        self.certifier = None  # built on first use
        self.preconditioner = None  # Jacobi, fused into the CG kernels
        if options.preconditioner == "multigrid":
            # The hierarchy is built once per image and serves the forward and the adjoint solve.
            self.preconditioner = self._multigrid()
        self.maxiter = options.maxiter_for(*stencil.shape[1:])
        self.first_system = systems.groups.first_system()

    def _multigrid(self):
        return multigrid_preconditioner(self.stencil, self.systems.image_index, framed=self.op.coefficients)

    def _certify(self):
        """The multigrid cycle certifies Jacobi solves (see rawks_triton.solve.pcg): r / d alone
        misses errors behind walls. The Triton cycle, on images and volumes alike."""
        if self.preconditioner is not None:
            return None
        if self.certifier is None:
            self.certifier = self._multigrid()
        return self.certifier.apply

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """A x for [S, H, W] (or [S, D, H, W]) vectors."""
        return self.frame.unframe(self.op.matvec(self.frame.frame(x)))

    def _solve(self, rhs, rule):
        rhs = self.frame.frame(rhs() if callable(rhs) else rhs)
        rhs_norm = torch.linalg.vector_norm(rhs, dim=1)
        pcg = TritonPCG(self.op, rhs, rule, self.options, self.preconditioner, certify=self._certify())
        del rhs
        done = run_pcg(pcg, self.maxiter, self.options.checks_every(rhs_norm.device))
        stats = pcg.stats(rhs_norm, self.maxiter, done)
        x = self.frame.unframe(pcg.x)
        del pcg
        return x, stats

    def solve(self, rhs):
        return self._solve(rhs, ForwardRule(self.options, self.op.groups))

    def solve_adjoint(self, rhs, x_forward: torch.Tensor):
        return self._solve(rhs, AdjointRule(self.options, self.op.groups, self.frame.frame(x_forward), self.op.diag))

    def coefficient_gradients(self, adjoint, x, Z, edges: bool):
        """Per-image gradients ``(grad_diag, grad_edges)``: ``grad_edges`` is (right, down) on
        images, (right, down, deep) on volumes, None without ``edges``."""
        framed = (self.frame.frame(t) for t in (adjoint, x, Z))
        grad_diag, grad_edges = self.op.coefficient_gradients(*framed, self.first_system, edges)
        if grad_edges is not None:
            grad_edges = tuple(self.frame.unframe(g) for g in grad_edges)
        return self.frame.unframe(grad_diag), grad_edges
