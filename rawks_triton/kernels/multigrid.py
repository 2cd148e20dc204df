"""Triton kernels of the multigrid cycle (rawks_triton/multigrid.py gives the method).

Layout, shared with the plain-torch cycle so both run on the same hierarchy:

* every level is a grid of h x w unknowns stored in a frame of (h + 2) x (w + 2) with a
  zero border, flattened: ``size`` = (h + 2) (w + 2) entries, ``row`` = w + 2. The flat
  neighbours of position k are k -+ 1 and k -+ row; the coefficients are 0 on the border
  and the right (down) weight is 0 in the last column (row), so no column test is needed,
  only the ends of the flat range are masked;
* vectors are contiguous [S, size], system s at ``s * size``; coefficients are contiguous
  [G, size] and system s reads row ``s // per_group`` (the k = per_group systems of an
  image share its coefficients);
* program (s, b) owns positions [b BLOCK, (b + 1) BLOCK) of system s; offsets are int64.
"""

import triton
import triton.language as tl


@triton.jit
def mg_residual_kernel(
    rhs_ptr, x_ptr, out_ptr,  # [S, size]
    diag_ptr, right_ptr, down_ptr,  # [G, size]
    size, row, per_group,
    BLOCK: tl.constexpr,
):
    """out = rhs - A x on one level."""
    s = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_in = offs < size
    v_base = s * size
    c_base = (s // per_group) * size
    m_right = (offs + 1) < size
    m_left = m_in & (offs >= 1)
    m_down = (offs + row) < size
    m_up = m_in & (offs >= row)
    b_rhs = tl.load(rhs_ptr + v_base + offs, mask=m_in, other=0.0)
    b_x = tl.load(x_ptr + v_base + offs, mask=m_in, other=0.0)
    b_d = tl.load(diag_ptr + c_base + offs, mask=m_in, other=0.0)
    b_wr = tl.load(right_ptr + c_base + offs, mask=m_in, other=0.0)
    b_wl = tl.load(right_ptr + c_base + offs - 1, mask=m_left, other=0.0)
    b_wd = tl.load(down_ptr + c_base + offs, mask=m_in, other=0.0)
    b_wu = tl.load(down_ptr + c_base + offs - row, mask=m_up, other=0.0)
    b_xr = tl.load(x_ptr + v_base + offs + 1, mask=m_right, other=0.0)
    b_xl = tl.load(x_ptr + v_base + offs - 1, mask=m_left, other=0.0)
    b_xd = tl.load(x_ptr + v_base + offs + row, mask=m_down, other=0.0)
    b_xu = tl.load(x_ptr + v_base + offs - row, mask=m_up, other=0.0)
    b_out = b_rhs - b_d * b_x + b_wr * b_xr + b_wl * b_xl + b_wd * b_xd + b_wu * b_xu
    tl.store(out_ptr + v_base + offs, b_out, mask=m_in)


@triton.jit
def mg_jacobi_kernel(
    x_ptr, r_ptr,  # [S, size]
    inv_diag_ptr,  # [G, size]
    size, per_group, weight,
    FIRST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """x += weight D^-1 r, or x = weight D^-1 r when FIRST (the smoothing from x = 0)."""
    s = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_in = offs < size
    v_base = s * size
    b_r = tl.load(r_ptr + v_base + offs, mask=m_in, other=0.0)
    b_inv = tl.load(inv_diag_ptr + (s // per_group) * size + offs, mask=m_in, other=0.0)
    b_step = weight * b_inv * b_r
    if not FIRST:
        b_step += tl.load(x_ptr + v_base + offs, mask=m_in, other=0.0)
    tl.store(x_ptr + v_base + offs, b_step.to(x_ptr.dtype.element_ty), mask=m_in)


@triton.jit
def frame_block(size, row, height, width, BLOCK: tl.constexpr):
    """System s, this program's positions, their (y, x) in the frame and whether they lie inside."""
    s = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_in = offs < size
    y = offs // row
    x = offs % row
    return s, offs, m_in, y, x, m_in & (y >= 1) & (y <= height) & (x >= 1) & (x <= width)


@triton.jit
def mg_restrict_kernel(
    res_ptr,  # [S, size] fine residual
    p_ptr,  # [G, size] fine prolongation weights
    out_ptr,  # [S, coarse_size] coarse right-hand side, border written 0
    size, row, coarse_size, coarse_row, coarse_height, coarse_width, per_group,
    BLOCK: tl.constexpr,
):
    """out[J] = sum of p_i res_i over the 2x2 block of fine pixels i of coarse pixel J."""
    s, offs, m_in, cy, cx, m_block = frame_block(coarse_size, coarse_row, coarse_height, coarse_width, BLOCK)
    # top-left pixel of the block in the fine frame (an odd last row/column pairs with the border)
    fine = (2 * cy - 1) * row + 2 * cx - 1
    v_base = s * size
    p_base = (s // per_group) * size
    b_sum = tl.zeros([BLOCK], dtype=res_ptr.dtype.element_ty)
    for corner in tl.static_range(4):
        f = fine + (corner // 2) * row + (corner % 2)
        b_res = tl.load(res_ptr + v_base + f, mask=m_block, other=0.0)
        b_p = tl.load(p_ptr + p_base + f, mask=m_block, other=0.0)
        b_sum += b_p * b_res
    tl.store(out_ptr + s * coarse_size + offs, b_sum.to(out_ptr.dtype.element_ty), mask=m_in)


@triton.jit
def mg_prolong_kernel(
    x_ptr,  # [S, size] fine iterate, corrected in place
    coarse_x_ptr,  # [S, coarse_size]
    p_ptr,  # [G, size]
    size, row, height, width, coarse_size, coarse_row, per_group, scale,
    BLOCK: tl.constexpr,
):
    """x_i += scale p_i e_J for every fine pixel i of coarse block J."""
    s, offs, _, fy, fx, m_pixel = frame_block(size, row, height, width, BLOCK)
    coarse = ((fy + 1) // 2) * coarse_row + (fx + 1) // 2
    v_base = s * size
    b_p = tl.load(p_ptr + (s // per_group) * size + offs, mask=m_pixel, other=0.0)
    b_e = tl.load(coarse_x_ptr + s * coarse_size + coarse, mask=m_pixel, other=0.0)
    b_x = tl.load(x_ptr + v_base + offs, mask=m_pixel, other=0.0)
    tl.store(x_ptr + v_base + offs, (b_x + scale * b_p * b_e).to(x_ptr.dtype.element_ty), mask=m_pixel)
