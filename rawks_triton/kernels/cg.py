"""Triton kernels: one Jacobi-preconditioned CG iteration of every system in two launches.

Iteration i, per system s (M = diag(inv_diag), the Jacobi preconditioner):

  launch 1, ``cg_direction_matvec_kernel``
      rz = sum(partials of r' M r),  rr = sum(partials of r' r)      (from launch 2 of i-1)
      active = active and rr > tol^2;  beta = rz / rz_prev
      p_new = M r + beta p_old   (at k and its 4 or 6 neighbours: no stored z = M r)
      Ap = A p_new;  partials of p_new' Ap
  launch 2, ``cg_update_kernel``
      alpha = rz / sum(partials of p' Ap)
      x += alpha p_new;  r -= alpha Ap;  partials of r' M r and r' r

Vectors and coefficients are framed (:mod:`rawks_triton.kernels.stencil`); both launches
work on the range [lo, hi) of the frame. b, the coefficients and inv_diag are 0 on the
border, so r, p, A p and x stay exactly 0 there.

Per-system scalars live on the device. Each scalar has a "cur" and a "next" slot so that
no launch reads a slot that a sibling program of the same launch writes: launch 1 reads
``rz_cur``/``active_cur`` and writes ``rz_next``/``active_next``; launch 2 reads the
"next" slots and its program 0 copies them to "cur". ``p`` is double-buffered because
launch 1 reads p_old at neighbours that other programs are rewriting. A system that is
no longer active returns at once from both launches: it stops changing and costs no
memory traffic.

With another preconditioner (``JACOBI=False``, e.g. multigrid), the launcher computes
z = M r between the two launches and writes the partials of r' z itself; launch 1 then
reads z where it would form M r, and launch 2 leaves the r' M r partials alone.
"""

import triton
import triton.language as tl

from .stencil import chunk_bounds, load_stencil, stencil_product, store_partials, system_of_program


@triton.jit
def _tree_sum(part_ptr, s, T, MAX_PARTIALS: tl.constexpr):
    """Sum of the T partial sums of system s (a tree reduction)."""
    k = tl.arange(0, MAX_PARTIALS)
    return tl.sum(tl.load(part_ptr + s * T + k, mask=k < T, other=0.0), axis=0)


# fmt: off
@triton.jit
def cg_direction_matvec_kernel(
    z_ptr, p_old_ptr, p_new_ptr, ap_ptr,  # [S, size]; z_ptr holds r when JACOBI, else z = M r
    diag_ptr, right_ptr, down_ptr, deep_ptr, inv_diag_ptr,  # [N, size]; deep read only when THREE_D
    image_index_ptr, tol2_ptr,  # [S]
    rz_part_ptr, rr_part_ptr, pap_part_ptr,  # [S, T]
    rz_cur_ptr, rz_next_ptr, active_cur_ptr, active_next_ptr,  # [S]
    size, row, plane, lo, hi, T,
    JACOBI: tl.constexpr,
    THREE_D: tl.constexpr,
    BLOCK: tl.constexpr,
    MAX_PARTIALS: tl.constexpr,
):
    s, t, v_base, c_base = system_of_program(image_index_ptr, size)
    rz = _tree_sum(rz_part_ptr, s, T, MAX_PARTIALS)
    rr = _tree_sum(rr_part_ptr, s, T, MAX_PARTIALS)
    active = (tl.load(active_cur_ptr + s) != 0) & (rr > tl.load(tol2_ptr + s))
    if t == 0:
        tl.store(rz_next_ptr + s, rz)
        tl.store(active_next_ptr + s, active.to(tl.int32))
    if active:
        rz_prev = tl.load(rz_cur_ptr + s)
        beta = tl.where(rz_prev > 0, rz / tl.where(rz_prev > 0, rz_prev, 1.0), 0.0)
        start, stop = chunk_bounds(t, hi, T, BLOCK)
        acc = tl.zeros([BLOCK], dtype=ap_ptr.dtype.element_ty)
        for first in range(start, stop, BLOCK):
            offs = first + tl.arange(0, BLOCK)
            m = (offs >= lo) & (offs < stop)
            z, z_right, z_left, z_down, z_up, z_deep, z_shallow = load_stencil(
                z_ptr, v_base, offs, m, row, plane, THREE_D
            )
            if JACOBI:
                inv, inv_right, inv_left, inv_down, inv_up, inv_deep, inv_shallow = load_stencil(
                    inv_diag_ptr, c_base, offs, m, row, plane, THREE_D
                )
                z, z_right, z_left = z * inv, z_right * inv_right, z_left * inv_left
                z_down, z_up = z_down * inv_down, z_up * inv_up
                if THREE_D:
                    z_deep, z_shallow = z_deep * inv_deep, z_shallow * inv_shallow
            q, q_right, q_left, q_down, q_up, q_deep, q_shallow = load_stencil(
                p_old_ptr, v_base, offs, m, row, plane, THREE_D
            )
            p = z + beta * q
            ap = stencil_product(
                diag_ptr, right_ptr, down_ptr, deep_ptr, c_base, offs, m, row, plane,
                p, z_right + beta * q_right, z_left + beta * q_left, z_down + beta * q_down, z_up + beta * q_up,
                z_deep + beta * q_deep, z_shallow + beta * q_shallow, THREE_D,
            )
            tl.store(p_new_ptr + v_base + offs, p, mask=m)
            tl.store(ap_ptr + v_base + offs, ap, mask=m)
            acc += p * ap
        tl.store(pap_part_ptr + s * T + t, tl.sum(acc, axis=0))
# fmt: on


# fmt: off
@triton.jit
def cg_update_kernel(
    x_ptr, r_ptr, p_ptr, ap_ptr,  # [S, size]
    inv_diag_ptr,  # [N, size]
    image_index_ptr, iterations_ptr,  # [S]
    rz_part_ptr, rr_part_ptr, pap_part_ptr,  # [S, T]
    rz_cur_ptr, rz_next_ptr, active_cur_ptr, active_next_ptr,  # [S]
    size, lo, hi, T,
    JACOBI: tl.constexpr,
    BLOCK: tl.constexpr,
    MAX_PARTIALS: tl.constexpr,
):
    s, t, v_base, c_base = system_of_program(image_index_ptr, size)
    active = tl.load(active_next_ptr + s) != 0
    rz = tl.load(rz_next_ptr + s)
    if t == 0:
        tl.store(rz_cur_ptr + s, rz)
        tl.store(active_cur_ptr + s, active.to(tl.int32))
        tl.store(iterations_ptr + s, tl.load(iterations_ptr + s) + active.to(tl.int32))
    if active:
        p_ap = _tree_sum(pap_part_ptr, s, T, MAX_PARTIALS)
        alpha = tl.where(p_ap > 0, rz / tl.where(p_ap > 0, p_ap, 1.0), 0.0)
        start, stop = chunk_bounds(t, hi, T, BLOCK)
        acc_rz = tl.zeros([BLOCK], dtype=x_ptr.dtype.element_ty)
        acc_rr = tl.zeros([BLOCK], dtype=x_ptr.dtype.element_ty)
        for first in range(start, stop, BLOCK):
            offs = first + tl.arange(0, BLOCK)
            m = (offs >= lo) & (offs < stop)
            k = v_base + offs
            b_x = tl.load(x_ptr + k, mask=m, other=0.0)
            b_r = tl.load(r_ptr + k, mask=m, other=0.0)
            b_x += alpha * tl.load(p_ptr + k, mask=m, other=0.0)
            b_r -= alpha * tl.load(ap_ptr + k, mask=m, other=0.0)
            tl.store(x_ptr + k, b_x, mask=m)
            tl.store(r_ptr + k, b_r, mask=m)
            if JACOBI:
                acc_rz += b_r * tl.load(inv_diag_ptr + c_base + offs, mask=m, other=0.0) * b_r
            acc_rr += b_r * b_r
        store_partials(rz_part_ptr, rr_part_ptr, s * T + t, acc_rz, acc_rr, JACOBI)
# fmt: on


# fmt: off
@triton.jit
def dot_partials_kernel(
    u_ptr, v_ptr,  # [S, size]
    active_ptr,  # [S]
    part_ptr,  # [S, T]
    size, lo, hi, T,
    BLOCK: tl.constexpr,
):
    """Partial sums of u' v over [lo, hi) per (system, program), for the systems still active."""
    s = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    if tl.load(active_ptr + s) != 0:
        p_u = u_ptr + s * size
        p_v = v_ptr + s * size
        start, stop = chunk_bounds(t, hi, T, BLOCK)
        acc = tl.zeros([BLOCK], dtype=u_ptr.dtype.element_ty)
        for first in range(start, stop, BLOCK):
            k = first + tl.arange(0, BLOCK)
            m = (k >= lo) & (k < stop)
            acc += tl.load(p_u + k, mask=m, other=0.0) * tl.load(p_v + k, mask=m, other=0.0)
        tl.store(part_ptr + s * T + t, tl.sum(acc, axis=0))
# fmt: on
