"""Triton kernels: one Jacobi-preconditioned CG iteration of every system in two launches.

Iteration i, per system s (M = diag(inv_diag), the Jacobi preconditioner):

  launch 1, ``cg_direction_matvec_kernel``
      rz = sum(partials of r' M r),  rr = sum(partials of r' r)      (from launch 2 of i-1)
      active = active and rr > tol^2;  beta = rz / rz_prev
      p_new = M r + beta p_old   (at i and its 4 neighbours: no stored z = M r)
      Ap = A p_new;  partials of p_new' Ap
  launch 2, ``cg_update_kernel``
      alpha = rz / sum(partials of p' Ap)
      x += alpha p_new;  r -= alpha Ap;  partials of r' M r and r' r

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

from .stencil import chunk_bounds, stencil_weights


@triton.jit
def _direction(r_ptr, p_ptr, inv_diag_ptr, v_base, c_base, offs, mask, beta, JACOBI: tl.constexpr):
    """p_new = z + beta p_old at ``offs`` (0 where masked), z = M r (JACOBI) or z read from r_ptr."""
    r = tl.load(r_ptr + v_base + offs, mask=mask, other=0.0)
    p = tl.load(p_ptr + v_base + offs, mask=mask, other=0.0)
    if JACOBI:
        r = tl.load(inv_diag_ptr + c_base + offs, mask=mask, other=0.0) * r
    return r + beta * p


@triton.jit
def _tree_sum(part_ptr, s, T, MAX_PARTIALS: tl.constexpr):
    """Sum of the T partial sums of system s (a tree reduction)."""
    k = tl.arange(0, MAX_PARTIALS)
    return tl.sum(tl.load(part_ptr + s * T + k, mask=k < T, other=0.0), axis=0)


@triton.jit
def cg_direction_matvec_kernel(
    z_ptr, p_old_ptr, p_new_ptr, ap_ptr,  # [S, HW]; z_ptr holds r when JACOBI, else z = M r
    diag_ptr, right_ptr, down_ptr, inv_diag_ptr,  # [N, HW]
    image_index_ptr, tol2_ptr,  # [S]
    rz_part_ptr, rr_part_ptr, pap_part_ptr,  # [S, T]
    rz_cur_ptr, rz_next_ptr, active_cur_ptr, active_next_ptr,  # [S]
    HW, W, T,
    JACOBI: tl.constexpr,
    BLOCK: tl.constexpr,
    MAX_PARTIALS: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    rz = _tree_sum(rz_part_ptr, s, T, MAX_PARTIALS)
    rr = _tree_sum(rr_part_ptr, s, T, MAX_PARTIALS)
    active = (tl.load(active_cur_ptr + s) != 0) & (rr > tl.load(tol2_ptr + s))
    if t == 0:
        tl.store(rz_next_ptr + s, rz)
        tl.store(active_next_ptr + s, active.to(tl.int32))
    if active:
        rz_prev = tl.load(rz_cur_ptr + s)
        beta = tl.where(rz_prev > 0, rz / tl.where(rz_prev > 0, rz_prev, 1.0), 0.0)
        n = tl.load(image_index_ptr + s).to(tl.int64)
        v_base = s * HW
        c_base = n * HW
        lo, hi = chunk_bounds(t, HW, T, BLOCK)
        acc = tl.zeros([BLOCK], dtype=ap_ptr.dtype.element_ty)
        for start in range(lo, hi, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            m = offs < hi
            p = _direction(z_ptr, p_old_ptr, inv_diag_ptr, v_base, c_base, offs, m, beta, JACOBI)
            p_right = _direction(z_ptr, p_old_ptr, inv_diag_ptr, v_base, c_base, offs + 1, m & (offs + 1 < HW), beta, JACOBI)
            p_left = _direction(z_ptr, p_old_ptr, inv_diag_ptr, v_base, c_base, offs - 1, m & (offs >= 1), beta, JACOBI)
            p_down = _direction(z_ptr, p_old_ptr, inv_diag_ptr, v_base, c_base, offs + W, m & (offs + W < HW), beta, JACOBI)
            p_up = _direction(z_ptr, p_old_ptr, inv_diag_ptr, v_base, c_base, offs - W, m & (offs >= W), beta, JACOBI)
            d, w_right, w_left, w_down, w_up = stencil_weights(diag_ptr, right_ptr, down_ptr, c_base, offs, m, HW, W)
            ap = d * p - (w_right * p_right + w_left * p_left + w_down * p_down + w_up * p_up)
            tl.store(p_new_ptr + v_base + offs, p, mask=m)
            tl.store(ap_ptr + v_base + offs, ap, mask=m)
            acc += p * ap
        tl.store(pap_part_ptr + s * T + t, tl.sum(acc, axis=0))


@triton.jit
def cg_update_kernel(
    x_ptr, r_ptr, p_ptr, ap_ptr,  # [S, HW]
    inv_diag_ptr,  # [N, HW]
    image_index_ptr, iterations_ptr,  # [S]
    rz_part_ptr, rr_part_ptr, pap_part_ptr,  # [S, T]
    rz_cur_ptr, rz_next_ptr, active_cur_ptr, active_next_ptr,  # [S]
    HW, T,
    JACOBI: tl.constexpr,
    BLOCK: tl.constexpr,
    MAX_PARTIALS: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    active = tl.load(active_next_ptr + s) != 0
    rz = tl.load(rz_next_ptr + s)
    if t == 0:
        tl.store(rz_cur_ptr + s, rz)
        tl.store(active_cur_ptr + s, active.to(tl.int32))
        tl.store(iterations_ptr + s, tl.load(iterations_ptr + s) + active.to(tl.int32))
    if active:
        p_ap = _tree_sum(pap_part_ptr, s, T, MAX_PARTIALS)
        alpha = tl.where(p_ap > 0, rz / tl.where(p_ap > 0, p_ap, 1.0), 0.0)
        n = tl.load(image_index_ptr + s).to(tl.int64)
        v_base = s * HW
        c_base = n * HW
        lo, hi = chunk_bounds(t, HW, T, BLOCK)
        acc_rz = tl.zeros([BLOCK], dtype=x_ptr.dtype.element_ty)
        acc_rr = tl.zeros([BLOCK], dtype=x_ptr.dtype.element_ty)
        for start in range(lo, hi, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            m = offs < hi
            x = tl.load(x_ptr + v_base + offs, mask=m, other=0.0)
            r = tl.load(r_ptr + v_base + offs, mask=m, other=0.0)
            p = tl.load(p_ptr + v_base + offs, mask=m, other=0.0)
            ap = tl.load(ap_ptr + v_base + offs, mask=m, other=0.0)
            x += alpha * p
            r -= alpha * ap
            tl.store(x_ptr + v_base + offs, x, mask=m)
            tl.store(r_ptr + v_base + offs, r, mask=m)
            if JACOBI:
                acc_rz += r * tl.load(inv_diag_ptr + c_base + offs, mask=m, other=0.0) * r
            acc_rr += r * r
        if JACOBI:
            tl.store(rz_part_ptr + s * T + t, tl.sum(acc_rz, axis=0))
        tl.store(rr_part_ptr + s * T + t, tl.sum(acc_rr, axis=0))


@triton.jit
def dot_partials_kernel(
    u_ptr, v_ptr,  # [S, HW]
    active_ptr,  # [S]
    part_ptr,  # [S, T]
    HW, T,
    BLOCK: tl.constexpr,
):
    """Partial sums of u' v per (system, program), for the systems still active."""
    s = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    if tl.load(active_ptr + s) != 0:
        v_base = s * HW
        lo, hi = chunk_bounds(t, HW, T, BLOCK)
        acc = tl.zeros([BLOCK], dtype=u_ptr.dtype.element_ty)
        for start in range(lo, hi, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            m = offs < hi
            acc += tl.load(u_ptr + v_base + offs, mask=m, other=0.0) * tl.load(v_ptr + v_base + offs, mask=m, other=0.0)
        tl.store(part_ptr + s * T + t, tl.sum(acc, axis=0))
