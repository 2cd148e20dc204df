"""rawks_triton: fast, differentiable random-walk label propagation.

    P = rawks_triton.RandomWalkPropagation(num_labels=3)(boundary, seeds)

See docs/ for the mathematics, the API with shapes and the numerical limits.
"""

from .loss import rawks_loss
from .memory import PropagationMemoryError
from .propagation import PropagationResult, RandomWalkPropagation, propagate, reach_threshold
from .random_walker import random_walker
from .solve.options import ConvergenceError, ConvergenceWarning

__all__ = [
    "ConvergenceError",
    "ConvergenceWarning",
    "PropagationMemoryError",
    "PropagationResult",
    "RandomWalkPropagation",
    "propagate",
    "random_walker",
    "rawks_loss",
    "reach_threshold",
]
__version__ = "0.1.0"
