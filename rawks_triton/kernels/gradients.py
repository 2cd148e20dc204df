"""Triton kernel: gradients of the loss with respect to the stencil coefficients, in one pass.

With lambda the adjoint solution (0 on seeds), x the solution (0 on seeds) and Z = x plus
the seed indicator of the system's label, per image n and framed position k (sums over
the systems l of the image):

    dL/dd_k        = -sum_l lambda_l[k] x_l[k]
    dL/dright_k    =  sum_l lambda_l[k] Z_l[k+1] + lambda_l[k+1] Z_l[k]
    dL/ddown_k     =  sum_l lambda_l[k] Z_l[k+row] + lambda_l[k+row] Z_l[k]
    dL/ddeep_k     =  sum_l lambda_l[k] Z_l[k+plane] + lambda_l[k+plane] Z_l[k]   (THREE_D)

All three vectors are framed (:mod:`rawks_triton.kernels.stencil`) with a zero border, so
the right term is 0 in the last column, the down term 0 in the last row and the deep term
0 in the last slice without a mask: the neighbour there is a border position. The kernel
writes [lo, hi) of the per-image outputs, 0 on the border positions inside it.

Each program owns a block of positions of one image and loops over the image's systems,
which are contiguous (``first_system[n] <= s < first_system[n + 1]``): the per-image
sum needs the range of an image's systems, not the image of a system, so this kernel
takes ``first_system`` where the others take ``image_index``. No atomics: the same result
every run.
"""

import triton
import triton.language as tl


# fmt: off
@triton.jit
def coefficient_gradients_kernel(
    adjoint_ptr, x_ptr, z_ptr,  # [S, size]
    first_system_ptr,  # [N + 1]
    grad_diag_ptr, grad_right_ptr, grad_down_ptr, grad_deep_ptr,  # [N, size]; deep written only when THREE_D
    size, row, plane, lo, hi,
    EDGES: tl.constexpr,
    THREE_D: tl.constexpr,
    BLOCK: tl.constexpr,
):
    n = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = (offs >= lo) & (offs < hi)
    first = tl.load(first_system_ptr + n)
    last = tl.load(first_system_ptr + n + 1)
    acc_d = tl.zeros([BLOCK], dtype=grad_diag_ptr.dtype.element_ty)
    acc_r = tl.zeros([BLOCK], dtype=grad_diag_ptr.dtype.element_ty)
    acc_dn = tl.zeros([BLOCK], dtype=grad_diag_ptr.dtype.element_ty)
    acc_dp = tl.zeros([BLOCK], dtype=grad_diag_ptr.dtype.element_ty)
    for s in range(first, last):
        p_lam = adjoint_ptr + s * size + offs  # s is int64: first_system is an int64 tensor
        p_z = z_ptr + s * size + offs
        b_lam = tl.load(p_lam, mask=m, other=0.0)
        acc_d -= b_lam * tl.load(x_ptr + s * size + offs, mask=m, other=0.0)
        if EDGES:
            b_z = tl.load(p_z, mask=m, other=0.0)
            acc_r += b_lam * tl.load(p_z + 1, mask=m, other=0.0) + tl.load(p_lam + 1, mask=m, other=0.0) * b_z
            acc_dn += b_lam * tl.load(p_z + row, mask=m, other=0.0) + tl.load(p_lam + row, mask=m, other=0.0) * b_z
            if THREE_D:
                acc_dp += (
                    b_lam * tl.load(p_z + plane, mask=m, other=0.0) + tl.load(p_lam + plane, mask=m, other=0.0) * b_z
                )
    c_base = n * size
    tl.store(grad_diag_ptr + c_base + offs, acc_d, mask=m)
    if EDGES:
        tl.store(grad_right_ptr + c_base + offs, acc_r, mask=m)
        tl.store(grad_down_ptr + c_base + offs, acc_dn, mask=m)
        if THREE_D:
            tl.store(grad_deep_ptr + c_base + offs, acc_dp, mask=m)
# fmt: on
