"""The plain-torch backend: matrix-free stencil products and batched Jacobi-PCG."""

from __future__ import annotations

import torch

from ..cg import SolverOptions, TorchPCG, finish_stats, run_pcg, tolerances
from ..systems import LabelSystems, Stencil, coefficient_gradients, neighbour_sum


class TorchBackend:
    name = "torch"

    def __init__(self, stencil: Stencil, systems: LabelSystems, options: SolverOptions, rhs: torch.Tensor):
        idx = systems.image_index
        # Per-system copies of the per-image coefficients: one gather per forward pass
        # instead of one per iteration.
        self.diag = stencil.diag.index_select(0, idx)
        self.right = stencil.right.index_select(0, idx)
        self.down = stencil.down.index_select(0, idx)
        self.inv_diag = stencil.inv_diag.index_select(0, idx)
        self.systems = systems
        self.options = options
        self.maxiter = options.maxiter_for(*stencil.shape[1:])

    def precondition(self, r: torch.Tensor) -> torch.Tensor:
        return self.inv_diag * r

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.diag * x - neighbour_sum(self.right, self.down, x)

    def solve(self, rhs: torch.Tensor):
        b_norm, tol = tolerances(rhs, self.options)
        pcg = TorchPCG(self.matvec, self.precondition, rhs, tol)
        done = run_pcg(pcg, self.maxiter, self.options.check_every)
        return pcg.x, finish_stats(pcg.iterations, pcg.true_rr, b_norm, tol, self.maxiter, done)

    def coefficient_gradients(self, adjoint, x, Z, edges: bool):
        return coefficient_gradients(adjoint, x, Z, self.systems, edges)
