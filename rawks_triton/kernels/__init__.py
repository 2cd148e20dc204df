"""The Triton kernels of rawks_triton. They compute and assume checked, contiguous, framed
input (:mod:`rawks_triton.kernels.stencil` gives the layout); the launchers in
:mod:`rawks_triton.backends.triton` own shapes, allocation and grids."""

from .cg import cg_direction_matvec_kernel, cg_update_kernel, dot_partials_kernel
from .gradients import coefficient_gradients_kernel
from .multigrid import mg_jacobi_kernel, mg_prolong_kernel, mg_residual_kernel, mg_restrict_kernel
from .stencil import MAX_PARTIALS, load_stencil, stencil_product, stencil_residual_kernel

__all__ = [
    "MAX_PARTIALS",
    "cg_direction_matvec_kernel",
    "cg_update_kernel",
    "coefficient_gradients_kernel",
    "dot_partials_kernel",
    "load_stencil",
    "mg_jacobi_kernel",
    "mg_prolong_kernel",
    "mg_residual_kernel",
    "mg_restrict_kernel",
    "stencil_product",
    "stencil_residual_kernel",
]
