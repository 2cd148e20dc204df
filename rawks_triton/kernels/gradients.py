"""Triton kernel: gradients of the loss with respect to the stencil coefficients, in one pass.

With lambda the adjoint solution (0 on seeds), x the solution (0 on seeds) and Z = x plus
the seed indicator of the system's label, per image n and pixel i (sums over the systems
l of the image, which are contiguous: ``first_system[n] <= s < first_system[n + 1]``):

    dL/dd_i        = -sum_l lambda_l[i] x_l[i]
    dL/dright_i    =  sum_l lambda_l[i] Z_l[i+1] + lambda_l[i+1] Z_l[i]   (0 in the last column)
    dL/ddown_i     =  sum_l lambda_l[i] Z_l[i+W] + lambda_l[i+W] Z_l[i]   (0 in the last row)

Each program owns a block of pixels of one image and loops over its systems: no atomics,
the same result every run.
"""

import triton
import triton.language as tl


@triton.jit
def coefficient_gradients_kernel(
    adjoint_ptr, x_ptr, z_ptr,  # [S, HW]
    first_system_ptr,  # [N + 1]
    grad_diag_ptr, grad_right_ptr, grad_down_ptr,  # [N, HW]
    HW, W,
    EDGES: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < HW
    has_right = m & ((offs % W) != W - 1)
    has_down = m & (offs + W < HW)
    first = tl.load(first_system_ptr + n)
    last = tl.load(first_system_ptr + n + 1)
    acc_d = tl.zeros([BLOCK], dtype=grad_diag_ptr.dtype.element_ty)
    acc_r = tl.zeros([BLOCK], dtype=grad_diag_ptr.dtype.element_ty)
    acc_dn = tl.zeros([BLOCK], dtype=grad_diag_ptr.dtype.element_ty)
    for s in range(first, last):
        base = s * HW  # s is int64: first_system is an int64 tensor
        lam = tl.load(adjoint_ptr + base + offs, mask=m, other=0.0)
        acc_d -= lam * tl.load(x_ptr + base + offs, mask=m, other=0.0)
        if EDGES:
            z = tl.load(z_ptr + base + offs, mask=m, other=0.0)
            lam_right = tl.load(adjoint_ptr + base + offs + 1, mask=has_right, other=0.0)
            z_right = tl.load(z_ptr + base + offs + 1, mask=has_right, other=0.0)
            lam_down = tl.load(adjoint_ptr + base + offs + W, mask=has_down, other=0.0)
            z_down = tl.load(z_ptr + base + offs + W, mask=has_down, other=0.0)
            acc_r += tl.where(has_right, lam * z_right + lam_right * z, 0.0)
            acc_dn += tl.where(has_down, lam * z_down + lam_down * z, 0.0)
    c_base = n * HW
    tl.store(grad_diag_ptr + c_base + offs, acc_d, mask=m)
    if EDGES:
        tl.store(grad_right_ptr + c_base + offs, acc_r, mask=m)
        tl.store(grad_down_ptr + c_base + offs, acc_dn, mask=m)
