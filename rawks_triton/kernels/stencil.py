"""Triton kernels: the 5- or 7-point stencil operator A = diag(d) - W on a batch of framed systems.

The framed layout (:class:`rawks_triton.solve.layout.Frame`), shared by every kernel here:

* an h x w grid is stored with a one-pixel zero border and flattened: ``size`` =
  (h + 2)(w + 2) numbers, ``row`` = w + 2 between vertically adjacent pixels; the four
  neighbours of flat position k are k -+ 1 and k -+ row. A d x h x w volume is stored the
  same way with a border slice before and after: ``size`` = (d + 2) ``plane``, ``plane`` =
  (h + 2)(w + 2) between adjacent slices, and the two further neighbours are k -+ plane
  (``THREE_D``);
* vectors are contiguous [S, size], system s at ``s * size`` (int64 offsets); coefficients
  are contiguous [N, size] per image, system s reads row ``image_index[s]``, so the labels
  of an image share one copy;
* ``diag``, ``right``, ``down``, ``deep`` and ``inv_diag`` are 0 on the border, ``right[k]``
  (edge k, k + 1) is 0 in the last column, ``down[k]`` (edge k, k + row) in the last row and
  ``deep[k]`` (edge k, k + plane) in the last slice;
* the kernels of the CG work on the flat range [lo, hi) = [o, size - o) from the first to
  the last pixel, o = 1 + row (+ plane in a volume). Every neighbour of a position in it
  lies inside the frame, so the neighbour loads need no masks but the range bound; the
  border positions inside the range have zero coefficients and zero values, so A keeps
  them 0. The positions outside it are never written and are read only as neighbours,
  with zero weight: launchers allocate vectors with zeros, so they stay 0 (a NaN there
  would spread). Blocks start at multiples of BLOCK from position 0 and are masked to
  [lo, hi);
* the per-system range [0, hi) is split into T programs, program t owning a contiguous chunk;
  partial sums of the reductions are written per (system, program) as [S, T] and reduced
  by the next kernel with a tree sum over T (T <= MAX_PARTIALS).

One helper pair serves images and volumes: :func:`load_stencil` and :func:`stencil_product`
take the ``plane`` stride and the ``THREE_D`` constexpr; with ``THREE_D=False`` they load and
compute exactly the 5-point product (``deep`` and ``plane`` are not read).
"""

import triton
import triton.language as tl

MAX_PARTIALS = 256


@triton.jit
def chunk_bounds(t, hi, T, BLOCK: tl.constexpr):
    """The range [start, stop) of program t in [0, hi), a multiple of BLOCK long; the loops
    mask it to [lo, hi). Blocks start at multiples of BLOCK: with a runtime first position
    the address arithmetic of every element is a 64-bit add (1.6 times the registers)."""
    chunk = tl.cdiv(tl.cdiv(hi, T), BLOCK) * BLOCK
    start = t * chunk
    return start, tl.minimum(start + chunk, hi)


@triton.jit
def load_stencil(ptr, base, offs, mask, row, plane, THREE_D: tl.constexpr):
    """The values at ``offs`` and at its right, left, down, up, deep and shallow neighbours
    (k + 1, k - 1, k + row, k - row, k + plane, k - plane), each [BLOCK].

    ``offs`` lies in the frame's [lo, hi) wherever ``mask`` holds, so every neighbour is
    inside the frame: the one mask is the range bound. Without ``THREE_D`` the last two are
    the centre values, not loaded, and :func:`stencil_product` does not use them.
    """
    p_centre = ptr + base + offs
    b_centre = tl.load(p_centre, mask=mask, other=0.0)
    b_right = tl.load(p_centre + 1, mask=mask, other=0.0)
    b_left = tl.load(p_centre - 1, mask=mask, other=0.0)
    b_down = tl.load(p_centre + row, mask=mask, other=0.0)
    b_up = tl.load(p_centre - row, mask=mask, other=0.0)
    if THREE_D:
        b_deep = tl.load(p_centre + plane, mask=mask, other=0.0)
        b_shallow = tl.load(p_centre - plane, mask=mask, other=0.0)
    else:
        b_deep = b_centre
        b_shallow = b_centre
    return b_centre, b_right, b_left, b_down, b_up, b_deep, b_shallow


# fmt: off
@triton.jit
def stencil_product(
    diag_ptr, right_ptr, down_ptr, deep_ptr, c_base, offs, mask, row, plane,
    u, u_right, u_left, u_down, u_up, u_deep, u_shallow,
    THREE_D: tl.constexpr,
):
    """(A u) at ``offs``: d u minus the edge weights times the neighbour values [BLOCK].

    The weight of the edge to the left neighbour is ``right`` there, that of the edge to
    the upper one ``down`` there and that of the edge to the shallow one ``deep`` there; on
    the border all of them are 0. Without ``THREE_D`` this is the 5-point product, term for
    term (the 2D kernels compile to the same code whatever ``deep_ptr`` and ``plane`` are).
    """
    p_right = right_ptr + c_base + offs
    p_down = down_ptr + c_base + offs
    b_d = tl.load(diag_ptr + c_base + offs, mask=mask, other=0.0)
    b_wr = tl.load(p_right, mask=mask, other=0.0)
    b_wl = tl.load(p_right - 1, mask=mask, other=0.0)
    b_wd = tl.load(p_down, mask=mask, other=0.0)
    b_wu = tl.load(p_down - row, mask=mask, other=0.0)
    b_neighbours = b_wr * u_right + b_wl * u_left + b_wd * u_down + b_wu * u_up
    if THREE_D:
        p_deep = deep_ptr + c_base + offs
        b_wb = tl.load(p_deep, mask=mask, other=0.0)
        b_wf = tl.load(p_deep - plane, mask=mask, other=0.0)
        b_neighbours += b_wb * u_deep + b_wf * u_shallow
    return b_d * u - b_neighbours
# fmt: on


@triton.jit
def store_partials(rz_part_ptr, rr_part_ptr, k, acc_rz, acc_rr, WITH_RZ: tl.constexpr):
    """The partials of r' M r (when WITH_RZ) and r' r of one (system, program) at [S, T] index k."""
    if WITH_RZ:
        tl.store(rz_part_ptr + k, tl.sum(acc_rz, axis=0))
    tl.store(rr_part_ptr + k, tl.sum(acc_rr, axis=0))


@triton.jit
def system_of_program(image_index_ptr, size):
    """System s of this program, its chunk t, and the int64 bases of its vector and coefficients."""
    s = tl.program_id(0).to(tl.int64)
    n = tl.load(image_index_ptr + s).to(tl.int64)
    return s, tl.program_id(1), s * size, n * size


# fmt: off
@triton.jit
def stencil_residual_kernel(
    b_ptr, x_ptr, out_ptr,  # [S, size]
    diag_ptr, right_ptr, down_ptr, deep_ptr, inv_diag_ptr,  # [N, size]; deep read only when THREE_D
    image_index_ptr,  # [S]
    rz_part_ptr, rr_part_ptr,  # [S, T]
    size, row, plane, lo, hi, T,
    HAS_B: tl.constexpr,
    REDUCE: tl.constexpr,
    THREE_D: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out = b - A x (HAS_B) or out = A x on [lo, hi); with REDUCE, the partials of out' M out and out' out.

    Starts and restarts CG (r = b - A x, with the Jacobi products r' M r and r' r), and is
    the plain matrix-vector product.
    """
    acc_rz = tl.zeros([BLOCK], dtype=out_ptr.dtype.element_ty)
    acc_rr = tl.zeros([BLOCK], dtype=out_ptr.dtype.element_ty)
    s, t, v_base, c_base = system_of_program(image_index_ptr, size)
    start, stop = chunk_bounds(t, hi, T, BLOCK)
    for first in range(start, stop, BLOCK):
        offs = first + tl.arange(0, BLOCK)
        m = (offs >= lo) & (offs < stop)
        x, x_right, x_left, x_down, x_up, x_deep, x_shallow = load_stencil(x_ptr, v_base, offs, m, row, plane, THREE_D)
        y = stencil_product(
            diag_ptr, right_ptr, down_ptr, deep_ptr, c_base, offs, m, row, plane,
            x, x_right, x_left, x_down, x_up, x_deep, x_shallow, THREE_D,
        )
        if HAS_B:
            y = tl.load(b_ptr + v_base + offs, mask=m, other=0.0) - y
        tl.store(out_ptr + v_base + offs, y, mask=m)
        if REDUCE:
            acc_rz += y * tl.load(inv_diag_ptr + c_base + offs, mask=m, other=0.0) * y
            acc_rr += y * y
    if REDUCE:
        store_partials(rz_part_ptr, rr_part_ptr, s * T + t, acc_rz, acc_rr, True)
# fmt: on
