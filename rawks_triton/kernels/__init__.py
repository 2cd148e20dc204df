"""The Triton kernels of rawks_triton. They compute and assume checked, contiguous input;
the launchers in :mod:`rawks_triton.backends.triton_cg` own shapes, allocation and grids."""

from .cg import cg_direction_matvec_kernel, cg_update_kernel, dot_partials_kernel
from .gradients import coefficient_gradients_kernel
from .stencil import MAX_PARTIALS, stencil_residual_kernel

__all__ = [
    "MAX_PARTIALS",
    "cg_direction_matvec_kernel",
    "cg_update_kernel",
    "coefficient_gradients_kernel",
    "dot_partials_kernel",
    "stencil_residual_kernel",
]
