"""The multigrid preconditioner: the hierarchy (:mod:`.hierarchy`) and the cycle over a
backend's grid primitives (:mod:`.cycle`). docs/multigrid.md gives the method."""

from .cycle import MultigridCycle
from .hierarchy import Level, MultigridOptions, build_hierarchy, coarsest_inverse

__all__ = ["Level", "MultigridCycle", "MultigridOptions", "build_hierarchy", "coarsest_inverse"]
