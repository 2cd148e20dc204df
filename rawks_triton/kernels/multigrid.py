"""Triton kernels of the multigrid cycle (rawks_triton/multigrid.py gives the method).

Every level is framed as the CG vectors are (:mod:`rawks_triton.kernels.stencil`): a grid
of h x w unknowns in a frame of (h + 2) x (w + 2) with a zero border, flattened, ``size``
= (h + 2)(w + 2) entries, ``row`` = w + 2. Level 0 is the CG's own layout, so the cycle
reads the CG's residual and writes its z in place.

* vectors are contiguous [S, size], system s at ``s * size``; coefficients are contiguous
  [G, size] and system s reads row ``image_index[s]`` (the systems of an image share its
  coefficients); offsets are int64;
* program (s, b) owns a block of positions of system s: [0, size) for the Jacobi step,
  the restriction (its output, border written 0) and the prolongation (which changes
  the pixels only), the frame's [lo, hi) for the residual, which goes through the stencil
  helpers of the CG. The residual buffers of the cycle are allocated with zeros, so their
  positions outside [lo, hi) are 0.
"""

import triton
import triton.language as tl

from .stencil import load_stencil, stencil_product


# fmt: off
@triton.jit
def mg_residual_kernel(
    rhs_ptr, x_ptr, out_ptr,  # [S, size]
    diag_ptr, right_ptr, down_ptr,  # [G, size]
    image_index_ptr,  # [S]
    size, row, lo, hi,
    BLOCK: tl.constexpr,
):
    """out = rhs - A x on [lo, hi) of one level."""
    s = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = (offs >= lo) & (offs < hi)
    v_base = s * size
    c_base = tl.load(image_index_ptr + s).to(tl.int64) * size
    # The hierarchy is 2D: the 5-point product (no deep coefficients, no plane stride).
    b_x, b_xr, b_xl, b_xd, b_xu, b_xb, b_xf = load_stencil(x_ptr, v_base, offs, m, row, 0, False)
    b_ax = stencil_product(
        diag_ptr, right_ptr, down_ptr, down_ptr, c_base, offs, m, row, 0, b_x, b_xr, b_xl, b_xd, b_xu, b_xb, b_xf, False
    )
    b_out = tl.load(rhs_ptr + v_base + offs, mask=m, other=0.0) - b_ax
    tl.store(out_ptr + v_base + offs, b_out, mask=m)
# fmt: on


# fmt: off
@triton.jit
def mg_jacobi_kernel(
    x_ptr, r_ptr,  # [S, size]
    inv_diag_ptr,  # [G, size]
    image_index_ptr,  # [S]
    size, weight,
    FIRST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """x += weight D^-1 r, or x = weight D^-1 r when FIRST (the smoothing from x = 0), on [0, size)."""
    s = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_in = offs < size
    v_base = s * size
    c_base = tl.load(image_index_ptr + s).to(tl.int64) * size
    b_r = tl.load(r_ptr + v_base + offs, mask=m_in, other=0.0)
    b_inv = tl.load(inv_diag_ptr + c_base + offs, mask=m_in, other=0.0)
    b_step = weight * b_inv * b_r
    if not FIRST:
        b_step += tl.load(x_ptr + v_base + offs, mask=m_in, other=0.0)
    tl.store(x_ptr + v_base + offs, b_step.to(x_ptr.dtype.element_ty), mask=m_in)
# fmt: on


@triton.jit
def frame_block(image_index_ptr, size, row, height, width, BLOCK: tl.constexpr):
    """System s, the row of its coefficients, this program's positions, their (y, x) in the
    frame and whether they are pixels (inside the border)."""
    s = tl.program_id(0).to(tl.int64)
    n = tl.load(image_index_ptr + s).to(tl.int64)
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_in = offs < size
    y = offs // row
    x = offs % row
    return s, n, offs, m_in, y, x, m_in & (y >= 1) & (y <= height) & (x >= 1) & (x <= width)


# fmt: off
@triton.jit
def mg_restrict_kernel(
    res_ptr,  # [S, size] fine residual
    p_ptr,  # [G, size] fine prolongation weights
    out_ptr,  # [S, coarse_size] coarse right-hand side, border written 0
    image_index_ptr,  # [S]
    size, row, coarse_size, coarse_row, coarse_height, coarse_width,
    BLOCK: tl.constexpr,
):
    """out[J] = sum of p_i res_i over the 2x2 block of fine pixels i of coarse pixel J."""
    s, n, offs, m_in, cy, cx, m_block = frame_block(
        image_index_ptr, coarse_size, coarse_row, coarse_height, coarse_width, BLOCK
    )
    # top-left pixel of the block in the fine frame (an odd last row/column pairs with the border)
    fine = (2 * cy - 1) * row + 2 * cx - 1
    v_base = s * size
    p_base = n * size
    b_sum = tl.zeros([BLOCK], dtype=res_ptr.dtype.element_ty)
    for corner in tl.static_range(4):
        f = fine + (corner // 2) * row + (corner % 2)
        b_res = tl.load(res_ptr + v_base + f, mask=m_block, other=0.0)
        b_p = tl.load(p_ptr + p_base + f, mask=m_block, other=0.0)
        b_sum += b_p * b_res
    tl.store(out_ptr + s * coarse_size + offs, b_sum.to(out_ptr.dtype.element_ty), mask=m_in)
# fmt: on


# fmt: off
@triton.jit
def mg_prolong_kernel(
    x_ptr,  # [S, size] fine iterate, corrected in place
    coarse_x_ptr,  # [S, coarse_size]
    p_ptr,  # [G, size]
    image_index_ptr,  # [S]
    size, row, height, width, coarse_size, coarse_row, scale,
    BLOCK: tl.constexpr,
):
    """x_i += scale p_i e_J for every fine pixel i of coarse block J."""
    s, n, offs, _, fy, fx, m_pixel = frame_block(image_index_ptr, size, row, height, width, BLOCK)
    coarse = ((fy + 1) // 2) * coarse_row + (fx + 1) // 2
    v_base = s * size
    b_p = tl.load(p_ptr + n * size + offs, mask=m_pixel, other=0.0)
    b_e = tl.load(coarse_x_ptr + s * coarse_size + coarse, mask=m_pixel, other=0.0)
    b_x = tl.load(x_ptr + v_base + offs, mask=m_pixel, other=0.0)
    tl.store(x_ptr + v_base + offs, (b_x + scale * b_p * b_e).to(x_ptr.dtype.element_ty), mask=m_pixel)
# fmt: on
