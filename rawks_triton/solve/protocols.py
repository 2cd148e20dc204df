"""The small typed protocols through which operators, preconditioners, iterations and
backends meet. Every solver vector is framed ([S, size], :mod:`rawks_triton.solve.layout`)
inside a backend; a backend's ``solve`` takes and returns unframed [S, H, W] tensors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from .layout import ImageGroups
from .options import SolveStats


@runtime_checkable
class Operator(Protocol):
    """A = diag(d) - W of a set of systems on framed vectors."""

    groups: ImageGroups

    def matvec(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out = A x; returns out."""
        ...

    def restrict(self, rows: torch.Tensor) -> Operator:
        """The operator of the systems ``rows`` only."""
        ...

    def release(self) -> None:
        """Free work buffers and cached views (they are made again on use)."""
        ...


@runtime_checkable
class Preconditioner(Protocol):
    """z = M r with M symmetric positive definite on the free pixels and z = 0 on seeds."""

    def apply(self, r: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """out = M r; ``scratch`` (same shape) may be overwritten. Returns out."""
        ...

    def restrict(self, rows: torch.Tensor) -> Preconditioner: ...

    def release(self) -> None: ...


@runtime_checkable
class Iteration(Protocol):
    """What :func:`rawks_triton.solve.pcg.run_pcg` drives (see :mod:`rawks_triton.solve.pcg`)."""

    max_refreshes: int

    def step(self) -> None:
        """One CG iteration of every active system, with no host synchronisation."""
        ...

    def check(self) -> None:
        """The host's look at the measures: deactivate the systems that pass or stall."""
        ...

    def any_active(self) -> bool: ...

    def refresh(self, reactivate: bool) -> None:
        """True residual, certification, restart; reactivate the systems that still fail."""
        ...


Rhs = torch.Tensor | Callable[[], torch.Tensor]


@runtime_checkable
class Backend(Protocol):
    """A solver of the systems of one forward pass, kept by the autograd op for backward.

    Built as ``Backend(stencil, systems, options)`` from the per-image
    :class:`rawks_triton.systems.Stencil` and :class:`rawks_triton.systems.LabelSystems`.
    ``rhs`` is an [S, H, W] tensor or a function that makes one (so that no copy outlives
    the backend's own layout of it).
    """

    name: str

    def solve(self, rhs: Rhs) -> tuple[torch.Tensor, SolveStats]:
        """x [S, H, W] with A x = b for every system (x = 0 on seeds)."""
        ...

    def solve_adjoint(self, rhs: Rhs, x_forward: torch.Tensor) -> tuple[torch.Tensor, SolveStats]:
        """A lambda = g with the same operator (A is symmetric); ``x_forward`` for the stopping rule."""
        ...

    def coefficient_gradients(
        self, adjoint: torch.Tensor, x: torch.Tensor, Z: torch.Tensor, edges: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Per-image [N, H, W] gradients of the loss with respect to (d, right, down)."""
        ...
