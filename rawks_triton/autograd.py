"""The autograd op: stencil coefficients -> partition functions Z of every (image, label) system.

Forward solves A z_l = b_l for every system; backward solves the adjoint system
A lambda_l = dLoss/dz_l with the same operator (A is symmetric) and turns (lambda, z)
into gradients of the coefficients (d and the edges) in one pass. Autograd chains those
to the boundary scores through the plain-torch coefficient formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import memory
from .solve.options import SolverOptions, SolveStats, report
from .systems import LabelSystems, build_stencil, right_hand_sides

SECOND_DERIVATIVE = (
    "rawks_triton: the random-walk propagation has no second derivative: backward was asked for a graph of "
    "the gradient (create_graph=True, or torch.autograd.grad(..., create_graph=True)), and the adjoint "
    "solve's own derivative is not implemented. Use create_graph=False for the part of the loss that goes "
    'through propagate (docs/numerics.md, "Gradients").'
)


@dataclass
class SolveRecord:
    """Statistics of the forward solve, and of the adjoint solve once backward has run."""

    forward: SolveStats | None = None
    adjoint: SolveStats | None = None


class RandomWalkSolve(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        diag,
        right,
        down,
        deep,
        systems: LabelSystems,
        backend_cls,
        options: SolverOptions,
        record: SolveRecord,
        unit_edges: bool,
    ):
        # No local reference to the stencil: a backend that keeps only its own layout of it
        # (the torch backend) lets the original go.
        stencil = build_stencil(diag, right, down, systems.free, unit_edges=unit_edges, deep=deep)
        backend = backend_cls(stencil, systems, options)
        del stencil
        # the right-hand sides are made inside the backend, which keeps them in its own layout
        Z, stats = backend.solve(lambda: right_hand_sides(right, down, systems, diag.dtype, deep=deep))
        record.forward = stats
        report(stats, options, "forward", systems.image_index, systems.label_index, options.preconditioner)
        Z += systems.seed_indicator(Z.dtype)  # x is 0 on seeds, so Z = x + the seed indicator, in place
        ctx.backend, ctx.systems, ctx.options, ctx.record = backend, systems, options, record
        ctx.save_for_backward(Z)
        return Z

    @staticmethod
    def backward(ctx, grad_Z):
        if torch.is_grad_enabled():
            raise RuntimeError(SECOND_DERIVATIVE)
        with torch.no_grad():
            return RandomWalkSolve._backward(ctx, grad_Z)

    @staticmethod
    def _backward(ctx, grad_Z):
        (Z,) = ctx.saved_tensors
        systems = ctx.systems
        x = Z * systems.free_mask(Z.dtype)  # the solution: Z off the seeds
        # Pixels where every label's solution is exactly 0 (components that no seed reaches)
        # get a zero gradient: there the system can be singular (Grady model), and z = 0
        # there is a definition, not a solution.
        support = (systems.per_image_sum(x.abs()) > 0).index_select(0, systems.image_index)
        g = grad_Z.masked_fill(~(support & systems.free.index_select(0, systems.image_index)), 0.0)
        # A NaN or Inf in the incoming gradient propagates, as through any torch op: the
        # gradient of every pixel of that image is NaN (the adjoint solve couples all of an
        # image's pixels); the other images are solved as usual.
        nonfinite = ~torch.isfinite(g).flatten(1).all(dim=1)
        poisoned = systems.per_image_sum(nonfinite.to(g.dtype)) > 0  # [N]
        if bool(poisoned.any()):
            g.masked_fill_(poisoned.index_select(0, systems.image_index).view((-1,) + (1,) * systems.ndim), 0.0)
        # The adjoint right-hand side carries 1 / S, up to 1 / tau = 1e18 behind walls, and its
        # solution more: p'Ap would overflow float32. The system is linear, so each image's
        # right-hand sides are scaled by their largest entry (one factor per image, so that
        # the stopping rule's gradient scale, which mixes an image's labels, stays consistent).
        largest = systems.groups.image_max(g.abs().flatten(1).amax(dim=1))  # [N]
        scale = torch.where(largest > 0, largest, torch.ones_like(largest)).index_select(0, systems.image_index)
        per_system = (-1,) + (1,) * systems.ndim
        g.div_(scale.view(per_system))
        held = [g]
        del g  # handed over: the backend drops it once it holds its own copy
        try:
            adjoint, stats = ctx.backend.solve_adjoint(held.pop, x)
        except (RuntimeError, MemoryError) as err:
            if not memory.is_allocation_failure(err):
                raise
            raise memory.PropagationMemoryError(
                f"rawks_triton: out of memory during the adjoint solve of backward ({err}). {memory.advice()}."
            ) from err
        adjoint.mul_(scale.view(per_system))
        ctx.record.adjoint = stats
        report(stats, ctx.options, "adjoint", systems.image_index, systems.label_index, ctx.options.preconditioner)
        edges = any(ctx.needs_input_grad[1:4])
        grad_diag, grad_edges = ctx.backend.coefficient_gradients(adjoint, x, Z, edges)
        grads = [grad_diag] + (list(grad_edges) if grad_edges is not None else [None] * systems.ndim)
        grads += [None] * (3 - systems.ndim)  # no deep edges on images
        if bool(poisoned.any()):
            nan = poisoned.view((-1,) + (1,) * systems.ndim)
            grads = [None if t is None else t.masked_fill(nan, float("nan")) for t in grads]
        return (*grads, None, None, None, None, None)


class Normalize(torch.autograd.Function):
    """P = max(Z, 0) / S with S = sum_l max(Z_l, 0) where reachable, ``uniform`` elsewhere.

    A function of its own so that backward needs only Z and P, which exist anyway, instead
    of autograd's saved intermediates (the clamped Z and the quotient: two more [N, L, H, W]
    arrays held between forward and backward). With g = dLoss/dP:

        dLoss/dZ_m = (g_m - sum_l g_l P_l) / S    where reachable and Z_m >= 0, else 0.
    """

    @staticmethod
    def forward(ctx, Z, total, reachable, uniform):
        P = Z.clamp(min=0.0).div_(torch.where(reachable, total, torch.ones_like(total)).unsqueeze(1))
        P = torch.where(reachable.unsqueeze(1), P, uniform, out=P)
        ctx.save_for_backward(Z, P, total, reachable)
        return P

    @staticmethod
    def backward(ctx, grad_P):
        Z, P, total, reachable = ctx.saved_tensors
        if torch.is_grad_enabled():
            raise RuntimeError(SECOND_DERIVATIVE)
        with torch.no_grad():
            safe = torch.where(reachable, total, torch.ones_like(total)).unsqueeze(1)
            grad = grad_P - (grad_P * P).sum(dim=1, keepdim=True)
            grad.div_(safe)
            grad.masked_fill_(~(reachable.unsqueeze(1) & (Z >= 0)), 0.0)
        return grad, None, None, None
