"""The keyword options of :func:`rawks_triton.propagate` and
:class:`rawks_triton.RandomWalkPropagation`, checked in one place."""

from __future__ import annotations

from dataclasses import dataclass, fields

from . import _checks
from .solve.choose import BACKENDS
from .solve.options import SolverOptions

MODELS = ("rawks", "grady")
PRECONDITIONERS = ("jacobi", "multigrid")  # what preconditioner="auto" chooses from


@dataclass(frozen=True)
class PropagationOptions:
    """What a propagation is asked for (the meaning of each field: :func:`rawks_triton.propagate`).

    Every field is checked on construction; an error names the argument, what was expected
    and what was given.
    """

    rtol: float = 1e-3
    atol: float = 0.0
    maxiter: int | None = None
    backend: str = "auto"
    ignore_index: int = -1
    check_every: int | None = None
    strict: bool = False
    preconditioner: str = "auto"
    min_weight: float | None = None

    def __post_init__(self):
        checked = dict(
            rtol=_checks.check_nonnegative_real("rtol", self.rtol),
            atol=_checks.check_nonnegative_real("atol", self.atol),
            maxiter=None if self.maxiter is None else _checks.check_int("maxiter", self.maxiter, minimum=1),
            backend=_checks.check_choice("backend", self.backend, BACKENDS),
            ignore_index=_checks.check_int("ignore_index", self.ignore_index),
            check_every=None if self.check_every is None else _checks.check_int("check_every", self.check_every, 1),
            preconditioner=_checks.check_choice("preconditioner", self.preconditioner, ("auto",) + PRECONDITIONERS),
            min_weight=None
            if self.min_weight is None
            else _checks.check_nonnegative_real("min_weight", self.min_weight),
        )
        if not isinstance(self.strict, bool):
            raise TypeError(f"`strict` must be a bool, got {type(self.strict).__name__}")
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def check_labels(self, num_labels, model) -> int:
        """Checks ``num_labels`` and ``model`` against these options; returns num_labels."""
        num_labels = _checks.check_int("num_labels", num_labels, minimum=1)
        _checks.check_choice("model", model, MODELS)
        if 0 <= self.ignore_index < num_labels:
            raise ValueError(f"`ignore_index` must lie outside [0, {num_labels}) (the labels), got {self.ignore_index}")
        return num_labels

    def solver_options(self, preconditioner: str, tau: float) -> SolverOptions:
        """The solver's options once the preconditioner is chosen and the reach threshold known."""
        return SolverOptions(
            rtol=self.rtol,
            atol=self.atol,
            maxiter=self.maxiter,
            check_every=self.check_every,
            strict=self.strict,
            preconditioner=preconditioner,
            tau=tau,
        )

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.names()}
