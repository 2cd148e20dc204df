"""The batched PCG of the triton backend: device state and the launches of one iteration.

One CG iteration of every system is two launches (see :mod:`rawks_triton.kernels.cg`);
the host looks at the device only every ``check_every`` iterations
(:func:`rawks_triton.solve.pcg.run_pcg`).
"""

from __future__ import annotations

import torch

from ...kernels import MAX_PARTIALS, cg_direction_matvec_kernel, cg_update_kernel, dot_partials_kernel
from ...solve.options import SolverOptions
from ...solve.pcg import CertifiedPCG
from .operator import TritonOperator


class TritonPCG(CertifiedPCG):
    """Device state of the batched PCG: framed vectors [S, size], partial sums [S, T], scalars [S].

    Jacobi (``preconditioner=None``) is fused into the two CG launches. Any other
    preconditioner is an object whose ``apply(r, out)`` writes z = M r for framed [S, size]
    vectors (M symmetric positive definite on the free pixels, z = 0 on seeds and on the
    border); it runs between the two launches, followed by one reduction launch for r' z.

    Which systems are active is decided on the host at the checks (the stopping rules of
    :mod:`rawks_triton.solve.rules`, a few torch reductions) and written to ``active_cur``; the
    kernels skip inactive systems (they return at once) and never deactivate one
    themselves (their ``tol2`` is 0).
    """

    def __init__(
        self, op: TritonOperator, rhs: torch.Tensor, rule, options: SolverOptions, preconditioner=None, certify=None
    ):
        S, T = op.num_systems, op.T
        self._init_certification(S, options, certify, rhs.dtype, rhs.device, op.stencil.shape[1:])
        self.op = op
        self.rule = rule
        self.groups = op.groups
        self.preconditioner = preconditioner
        self.jacobi = preconditioner is None
        self.b = rhs.contiguous()  # framed [S, size], 0 on the border
        # Zeros: the kernels write [lo, hi) only, so the rest of the border stays 0.
        self.x = op.new_vector()
        self.r = op.new_vector()
        self.p = [op.new_vector(), op.new_vector()]
        self.ap = op.new_vector()
        self.z = op.new_vector()  # M r: written by the preconditioner, or on the host for Jacobi
        self._buffer = torch.empty_like(self.b)
        new = dict(dtype=rhs.dtype, device=rhs.device)
        self.tol2 = torch.zeros(S, **new)
        self.rz_part = torch.zeros(S, T, **new)
        self.rr_part = torch.zeros(S, T, **new)
        self.pap_part = torch.zeros(S, T, **new)
        self.rz_cur, self.rz_next = torch.ones(S, **new), torch.empty(S, **new)
        ints = dict(dtype=torch.int32, device=rhs.device)
        self.active_cur, self.active_next = torch.ones(S, **ints), torch.empty(S, **ints)
        self.count = torch.zeros(S, **ints)
        self.current = 0
        self._true_residual(first=True)

    def _precondition(self):
        """z = M r and the partials of r' z (the systems still active)."""
        op, cfg, frame = self.op, self.op.config, self.op.frame
        self.preconditioner.apply(self.r, self.z)
        dot_partials_kernel[(op.num_systems, op.T)](
            self.r, self.z, self.active_cur, self.rz_part, frame.size, frame.lo, frame.hi, op.T,
            BLOCK=cfg.block, num_warps=cfg.num_warps,
        )  # fmt: skip

    def step(self):
        op, cfg, frame = self.op, self.op.config, self.op.frame
        p_old, p_new = self.p[self.current], self.p[1 - self.current]
        grid = (op.num_systems, op.T)
        # Launch 1 reads r (and forms M r) with fused Jacobi, z otherwise.
        cg_direction_matvec_kernel[grid](
            self.r if self.jacobi else self.z, p_old, p_new, self.ap,
            op.diag, op.right, op.down, op.deep_or_down, op.inv_diag,
            op.image_index, self.tol2,
            self.rz_part, self.rr_part, self.pap_part,
            self.rz_cur, self.rz_next, self.active_cur, self.active_next,
            frame.size, frame.row, frame.plane, frame.lo, frame.hi, op.T,
            JACOBI=self.jacobi, THREE_D=op.three_d, BLOCK=cfg.block, MAX_PARTIALS=MAX_PARTIALS,
            num_warps=cfg.num_warps,
        )  # fmt: skip
        cg_update_kernel[grid](
            self.x, self.r, p_new, self.ap,
            op.inv_diag,
            op.image_index, self.count,
            self.rz_part, self.rr_part, self.pap_part,
            self.rz_cur, self.rz_next, self.active_cur, self.active_next,
            frame.size, frame.lo, frame.hi, op.T,
            JACOBI=self.jacobi, BLOCK=cfg.block, MAX_PARTIALS=MAX_PARTIALS, num_warps=cfg.num_warps,
        )  # fmt: skip
        self.current = 1 - self.current
        if not self.jacobi:
            self._precondition()
        # The iteration's CG coefficients, for the spectral floor of the error estimates:
        # alpha = r'z / p'Ap (rz_cur after launch 2), beta = r_new'z_new / r'z.
        active = self.active_cur != 0
        rz = self.rz_cur
        alpha = torch.where(active, rz / self.pap_part.sum(dim=1), torch.zeros_like(rz))
        positive = active & (rz > 0)
        beta = torch.where(
            positive, self.rz_part.sum(dim=1) / torch.where(rz > 0, rz, torch.ones_like(rz)), torch.zeros_like(rz)
        )
        self._record(
            torch.nan_to_num(alpha, nan=0.0, posinf=0.0).clamp(min=0.0), torch.nan_to_num(beta, nan=0.0, posinf=0.0)
        )

    # ---- the hooks of CertifiedPCG ------------------------------------------------------------

    def _z(self) -> torch.Tensor:
        if self.jacobi:  # the fused kernels never store M r
            self.groups.multiply(self.r, self.op.inv_diag, out=self.z)
        return self.z

    def _working(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def _write_working(self, full: torch.Tensor, values: torch.Tensor) -> None:
        full.copy_(values)

    def _working_iterations(self) -> torch.Tensor:
        return self.count.to(torch.int64)

    def _prepare_rule(self, z_for_scale: torch.Tensor | None = None, full: bool = True):
        self.rule.prepare(self.x, z_for_scale, full)

    def _deactivate(self, passes: torch.Tensor):
        self.active_cur.mul_((~passes).to(torch.int32))

    def _activate(self, active: torch.Tensor, restart: torch.Tensor):
        # Residual replacement (see TorchPCG._activate): the kernels left p and rz_cur of
        # inactive systems as they were, so the next launch 1 goes on with beta = r'z / rz_cur;
        # a restart is beta = 0 against a zero direction.
        self.active_cur.copy_(active.to(torch.int32))
        if bool(restart.any()):
            self.p[self.current].mul_((~restart).to(self.x.dtype).unsqueeze(1))
            self.rz_cur.masked_fill_(restart, 1.0)

    def _x_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return self.x.index_select(0, rows)

    def _set_x_rows(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        self.x.index_copy_(0, rows, values)

    def _true_residual(self, first: bool):
        """r = b - A x with the partials of r' M r and r' r; z = M r and r' z for a general M."""
        self.active_cur.fill_(1)  # the reductions of the restart cover every system
        self.op.residual(self.b, self.x, self.r, self.rz_part, self.rr_part)
        if not self.jacobi:
            self._precondition()

    def any_active(self) -> bool:
        return bool((self.active_cur != 0).any())

    @property
    def iterations(self) -> torch.Tensor:
        return self.count.to(torch.int64)
