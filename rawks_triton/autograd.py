"""The autograd op: stencil coefficients -> partition functions Z of every (image, label) system.

Forward solves A z_l = b_l for every system; backward solves the adjoint system
A lambda_l = dLoss/dz_l with the same operator (A is symmetric) and turns (lambda, z)
into gradients of the coefficients (d, right, down) in one pass. Autograd chains those
to the boundary scores through the plain-torch coefficient formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cg import SolveStats, SolverOptions, report
from .systems import LabelSystems, build_stencil, right_hand_sides


@dataclass
class SolveRecord:
    """Statistics of the forward solve, and of the adjoint solve once backward has run."""

    forward: SolveStats | None = None
    adjoint: SolveStats | None = None


class RandomWalkSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, diag, right, down, systems: LabelSystems, backend_cls, options: SolverOptions, record: SolveRecord, unit_edges: bool):
        stencil = build_stencil(diag, right, down, systems.free, unit_edges=unit_edges)
        rhs = right_hand_sides(right, down, systems)
        backend = backend_cls(stencil, systems, options)
        x, stats = backend.solve(rhs)
        record.forward = stats
        report(stats, options, "forward", systems.image_index, systems.label_index, options.preconditioner)
        Z = x + systems.seed_indicator(x.dtype)
        ctx.backend, ctx.systems, ctx.options, ctx.record = backend, systems, options, record
        ctx.save_for_backward(x, Z)
        return Z

    @staticmethod
    def backward(ctx, grad_Z):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "rawks_triton: the random-walk propagation has no second derivative: backward was asked for a "
                "graph of the gradient (create_graph=True, or torch.autograd.grad(..., create_graph=True)), and "
                "the adjoint solve's own derivative is not implemented. Use create_graph=False for the part of "
                "the loss that goes through propagate (docs/numerics.md, \"Gradients\")."
            )
        with torch.no_grad():
            return RandomWalkSolve._backward(ctx, grad_Z)

    @staticmethod
    def _backward(ctx, grad_Z):
        x, Z = ctx.saved_tensors
        systems = ctx.systems
        # Pixels where every label's solution is exactly 0 (components that no seed reaches)
        # get a zero gradient: there the system can be singular (Grady model), and z = 0
        # there is a definition, not a solution.
        support = (systems.per_image_sum(x.abs()) > 0).index_select(0, systems.image_index)
        g = torch.where(support & systems.free.index_select(0, systems.image_index), grad_Z, torch.zeros_like(grad_Z))
        # A NaN or Inf in the incoming gradient propagates, as through any torch op: the
        # gradient of every pixel of that image is NaN (the adjoint solve couples all of an
        # image's pixels); the other images are solved as usual.
        nonfinite = ~torch.isfinite(g).flatten(1).all(dim=1)
        poisoned = systems.per_image_sum(nonfinite.to(g.dtype)) > 0  # [N]
        if bool(poisoned.any()):
            g = torch.where(poisoned.index_select(0, systems.image_index).view(-1, 1, 1), torch.zeros_like(g), g)
        adjoint, stats = ctx.backend.solve_adjoint(g.contiguous())
        ctx.record.adjoint = stats
        report(stats, ctx.options, "adjoint", systems.image_index, systems.label_index, ctx.options.preconditioner)
        edges = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        grads = ctx.backend.coefficient_gradients(adjoint, x, Z, edges)
        if bool(poisoned.any()):
            nan = poisoned.view(-1, 1, 1)
            grads = tuple(None if t is None else t.masked_fill(nan, float("nan")) for t in grads)
        grad_diag, grad_right, grad_down = grads
        return grad_diag, grad_right, grad_down, None, None, None, None, None
