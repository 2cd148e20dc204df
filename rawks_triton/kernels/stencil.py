"""Triton kernels: the 5-point stencil operator A = diag(d) - W on a batch of systems.

Layout shared by every kernel in this package:

* vectors are contiguous [S, H, W] (one (image, label) system per leading index),
  addressed as ``s * HW + i`` with i the flat pixel index, offsets in int64;
* coefficients are contiguous [N, H, W] per image, addressed as ``n * HW + i`` with
  n = image_index[s], so the labels of an image share one copy;
* ``right[i]`` is the weight of edge (i, i+1) and is 0 in the last column, ``down[i]``
  the weight of edge (i, i+W) and is 0 in the last row. With those zeros, the flat
  neighbours i +- 1 that wrap to another row contribute 0 * finite = 0, so no column
  index is needed; only the ends of the flat range are masked.
* the per-system work is split into T programs, program t owning a contiguous chunk of
  pixels; partial sums of the reductions are written per (system, program) as [S, T]
  and reduced by the next kernel with a tree sum over T (T <= MAX_PARTIALS).
"""

import triton
import triton.language as tl

MAX_PARTIALS = 256


@triton.jit
def chunk_bounds(t, HW, T, BLOCK: tl.constexpr):
    """The pixel range [lo, hi) of program t, a multiple of BLOCK long."""
    chunk = tl.cdiv(tl.cdiv(HW, T), BLOCK) * BLOCK
    lo = t * chunk
    hi = tl.minimum(lo + chunk, HW)
    return lo, hi


@triton.jit
def stencil_weights(diag_ptr, right_ptr, down_ptr, c_base, offs, mask, HW, W):
    """d_i and the weights of the edges to the right, left, down and up neighbours of i."""
    d = tl.load(diag_ptr + c_base + offs, mask=mask, other=0.0)
    w_right = tl.load(right_ptr + c_base + offs, mask=mask, other=0.0)
    w_left = tl.load(right_ptr + c_base + offs - 1, mask=mask & (offs >= 1), other=0.0)
    w_down = tl.load(down_ptr + c_base + offs, mask=mask, other=0.0)
    w_up = tl.load(down_ptr + c_base + offs - W, mask=mask & (offs >= W), other=0.0)
    return d, w_right, w_left, w_down, w_up


@triton.jit
def stencil_residual_kernel(
    b_ptr, x_ptr, out_ptr,  # [S, HW]
    diag_ptr, right_ptr, down_ptr, inv_diag_ptr,  # [N, HW]
    image_index_ptr,  # [S]
    rz_part_ptr, rr_part_ptr,  # [S, T]
    HW, W, T,
    HAS_B: tl.constexpr,
    REDUCE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out = b - A x (HAS_B) or out = A x; with REDUCE, the partial sums of out M out and out out.

    Starts and restarts CG (r = b - A x, with the Jacobi products r' M r and r' r), and is
    the plain matrix-vector product used by tests.
    """
    s = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    n = tl.load(image_index_ptr + s).to(tl.int64)
    v_base = s * HW
    c_base = n * HW
    lo, hi = chunk_bounds(t, HW, T, BLOCK)
    acc_rz = tl.zeros([BLOCK], dtype=out_ptr.dtype.element_ty)
    acc_rr = tl.zeros([BLOCK], dtype=out_ptr.dtype.element_ty)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < hi
        d, w_right, w_left, w_down, w_up = stencil_weights(diag_ptr, right_ptr, down_ptr, c_base, offs, m, HW, W)
        x = tl.load(x_ptr + v_base + offs, mask=m, other=0.0)
        x_right = tl.load(x_ptr + v_base + offs + 1, mask=m & (offs + 1 < HW), other=0.0)
        x_left = tl.load(x_ptr + v_base + offs - 1, mask=m & (offs >= 1), other=0.0)
        x_down = tl.load(x_ptr + v_base + offs + W, mask=m & (offs + W < HW), other=0.0)
        x_up = tl.load(x_ptr + v_base + offs - W, mask=m & (offs >= W), other=0.0)
        y = d * x - (w_right * x_right + w_left * x_left + w_down * x_down + w_up * x_up)
        if HAS_B:
            y = tl.load(b_ptr + v_base + offs, mask=m, other=0.0) - y
        tl.store(out_ptr + v_base + offs, y, mask=m)
        if REDUCE:
            inv_d = tl.load(inv_diag_ptr + c_base + offs, mask=m, other=0.0)
            acc_rz += y * inv_d * y
            acc_rr += y * y
    if REDUCE:
        tl.store(rz_part_ptr + s * T + t, tl.sum(acc_rz, axis=0))
        tl.store(rr_part_ptr + s * T + t, tl.sum(acc_rr, axis=0))
