"""Triton kernels of the multigrid cycle (rawks_triton/multigrid.py gives the method).

Every level is framed as the CG vectors are (:mod:`rawks_triton.kernels.stencil`): a grid
of h x w unknowns in a frame of (h + 2) x (w + 2) with a zero border, flattened, ``size``
= (h + 2)(w + 2) entries, ``row`` = w + 2; a volume level of d x h x w unknowns has a
border slice before and after, ``size`` = (d + 2) ``plane``, ``plane`` = (h + 2)(w + 2)
(``THREE_D``: the 7-point residual, and blocks of ``block_z`` x ``block_y`` x ``block_x``
voxels, each factor 1 or 2, chosen per level by the hierarchy's semi-coarsening). Level 0
is the CG's own layout, so the cycle reads the CG's residual and writes its z in place.

* vectors are contiguous [S, size], system s at ``s * size``; coefficients are contiguous
  [G, size] and system s reads row ``image_index[s]`` (the systems of an image share its
  coefficients); offsets are int64;
* program (s, b) owns a block of positions of system s: [0, size) for the Jacobi step,
  the restriction (its output, border written 0) and the prolongation (which changes
  the pixels only), the frame's [lo, hi) for the residual, which goes through the stencil
  helpers of the CG. The residual buffers of the cycle are allocated with zeros, so their
  positions outside [lo, hi) are 0.

Without ``THREE_D`` the kernels run the 2D code as it was (2x2 blocks; ``deep``, ``plane``,
the depths and the block factors are not read).
"""

import triton
import triton.language as tl

from .stencil import load_stencil, stencil_product


# fmt: off
@triton.jit
def mg_residual_kernel(
    rhs_ptr, x_ptr, out_ptr,  # [S, size]
    diag_ptr, right_ptr, down_ptr, deep_ptr,  # [G, size]; deep read only when THREE_D
    image_index_ptr,  # [S]
    size, row, plane, lo, hi,
    THREE_D: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out = rhs - A x on [lo, hi) of one level (the 5-point product, or 7-point with THREE_D)."""
    s = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = (offs >= lo) & (offs < hi)
    v_base = s * size
    c_base = tl.load(image_index_ptr + s).to(tl.int64) * size
    b_x, b_xr, b_xl, b_xd, b_xu, b_xb, b_xf = load_stencil(x_ptr, v_base, offs, m, row, plane, THREE_D)
    b_ax = stencil_product(
        diag_ptr, right_ptr, down_ptr, deep_ptr, c_base, offs, m, row, plane,
        b_x, b_xr, b_xl, b_xd, b_xu, b_xb, b_xf, THREE_D,
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
    """x += weight D^-1 r, or x = weight D^-1 r when FIRST (the smoothing from x = 0), on [0, size).

    Position-wise: the same kernel serves images and volumes."""
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
def frame_block(image_index_ptr, size, row, plane, depth, height, width, THREE_D: tl.constexpr, BLOCK: tl.constexpr):
    """System s, the row of its coefficients, this program's positions, their (z, y, x) in the
    frame (z = 0 without THREE_D) and whether they are pixels or voxels (inside the border)."""
    s = tl.program_id(0).to(tl.int64)
    n = tl.load(image_index_ptr + s).to(tl.int64)
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_in = offs < size
    if THREE_D:
        z = offs // plane
        in_plane = offs % plane
        m_slice = (z >= 1) & (z <= depth)
    else:
        z = offs * 0
        in_plane = offs
        m_slice = m_in
    y = in_plane // row
    x = in_plane % row
    return s, n, offs, m_in, z, y, x, m_in & m_slice & (y >= 1) & (y <= height) & (x >= 1) & (x <= width)


# fmt: off
@triton.jit
def mg_restrict_kernel(
    res_ptr,  # [S, size] fine residual
    p_ptr,  # [G, size] fine prolongation weights
    out_ptr,  # [S, coarse_size] coarse right-hand side, border written 0
    image_index_ptr,  # [S]
    size, row, plane, coarse_size, coarse_row, coarse_plane, coarse_depth, coarse_height, coarse_width,
    block_z, block_y, block_x,  # the factors (1 or 2) of a volume level's blocks; read only when THREE_D
    THREE_D: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out[J] = sum of p_i res_i over the block of fine pixels i of coarse pixel J (2x2 on
    images; block_z x block_y x block_x on volumes), in C order of the block's positions."""
    s, n, offs, m_in, cz, cy, cx, m_block = frame_block(
        image_index_ptr, coarse_size, coarse_row, coarse_plane, coarse_depth, coarse_height, coarse_width,
        THREE_D, BLOCK,
    )
    if THREE_D:
        # first voxel of the block in the fine frame: factor (c - 1) + 1 along each axis (an
        # odd last slice, row or column pairs with the border)
        fine = (block_z * (cz - 1) + 1) * plane + (block_y * (cy - 1) + 1) * row + block_x * (cx - 1) + 1
    else:
        # top-left pixel of the block in the fine frame (an odd last row/column pairs with the border)
        fine = (2 * cy - 1) * row + 2 * cx - 1
    v_base = s * size
    p_base = n * size
    b_sum = tl.zeros([BLOCK], dtype=res_ptr.dtype.element_ty)
    if THREE_D:
        for corner in tl.static_range(8):
            dz, dy, dx = corner // 4, (corner // 2) % 2, corner % 2
            if (dz < block_z) & (dy < block_y) & (dx < block_x):  # a position of the level's blocks
                f = fine + dz * plane + dy * row + dx
                b_res = tl.load(res_ptr + v_base + f, mask=m_block, other=0.0)
                b_p = tl.load(p_ptr + p_base + f, mask=m_block, other=0.0)
                b_sum += b_p * b_res
    else:
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
    size, row, plane, depth, height, width, coarse_size, coarse_row, coarse_plane,
    block_z, block_y, block_x,  # the factors (1 or 2) of a volume level's blocks; read only when THREE_D
    scale,
    THREE_D: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """x_i += scale p_i e_J for every fine pixel i of coarse block J."""
    s, n, offs, _, fz, fy, fx, m_pixel = frame_block(
        image_index_ptr, size, row, plane, depth, height, width, THREE_D, BLOCK
    )
    if THREE_D:
        coarse = (
            ((fz - 1) // block_z + 1) * coarse_plane + ((fy - 1) // block_y + 1) * coarse_row
            + (fx - 1) // block_x + 1
        )
    else:
        coarse = ((fy + 1) // 2) * coarse_row + (fx + 1) // 2
    v_base = s * size
    b_p = tl.load(p_ptr + n * size + offs, mask=m_pixel, other=0.0)
    b_e = tl.load(coarse_x_ptr + s * coarse_size + coarse, mask=m_pixel, other=0.0)
    b_x = tl.load(x_ptr + v_base + offs, mask=m_pixel, other=0.0)
    tl.store(x_ptr + v_base + offs, (b_x + scale * b_p * b_e).to(x_ptr.dtype.element_ty), mask=m_pixel)
# fmt: on
