"""Preconditioned CG over all systems in plain torch ops (CPU or CUDA): the iteration of the
torch backend, driven by :func:`rawks_triton.solve.pcg.run_pcg`."""

from __future__ import annotations

import torch

from ...solve.options import SolverOptions
from ...solve.pcg import CertifiedPCG
from ...solve.protocols import Operator, Preconditioner


class TorchPCG(CertifiedPCG):
    """Preconditioned CG over all systems in plain torch ops (CPU or CUDA).

    ``operator`` (:class:`rawks_triton.solve.protocols.Operator`) and ``preconditioner``
    (:class:`rawks_triton.solve.protocols.Preconditioner`: symmetric positive definite on
    the free pixels, 0 on seeds) work on framed [S, size] vectors, one system per row.
    ``certify(r, out)`` is the error estimator of the final test (default: the
    preconditioner; the Jacobi backends pass a multigrid cycle, see
    :mod:`rawks_triton.solve.pcg`).

    Buffers are allocated once per working set. A system that is no longer active keeps
    alpha = 0 (its ``rz`` is 0), so it stops changing; ``iterations`` counts the
    iterations during which it was active. Converged systems are dropped from the working
    set at the host checks once they are a quarter of it; ``refresh`` brings every
    system back.
    """

    def __init__(
        self,
        operator: Operator,
        preconditioner: Preconditioner,
        rhs: torch.Tensor,
        rule,
        options: SolverOptions,
        certify=None,
        grid_shape=(),
    ):
        count = rhs.shape[0]
        self._init_certification(count, options, certify, rhs.dtype, rhs.device, grid_shape)
        self._full_operator = operator
        self._full_preconditioner = preconditioner
        self._full_rule = rule
        self._full_b = rhs
        self._full_x = torch.zeros_like(rhs)
        self._full_iterations = torch.zeros(count, dtype=torch.int64, device=rhs.device)
        self._full_active = torch.ones(count, dtype=torch.bool, device=rhs.device)
        self._batch_shape = (-1,) + (1,) * (rhs.dim() - 1)
        self._work_on_all()
        self.r.copy_(rhs)
        self._restart()

    # ---- working set ------------------------------------------------------------------------

    @property
    def groups(self):
        return self.op.groups

    def _work_on_all(self):
        self._rows = None
        self.op, self.rule, self.b = self._full_operator, self._full_rule, self._full_b
        self.preconditioner = self._full_preconditioner
        self.x, self.iterations_working = self._full_x, self._full_iterations
        self.active = self._full_active.clone()
        self.r = self.z = self.p = self.ap = None  # the working set's vectors go before the full ones come
        self._allocate()

    def _allocate(self):
        self.r = torch.empty_like(self.x)
        self.z = torch.empty_like(self.x)
        self.p = torch.empty_like(self.x)
        self.ap = torch.zeros_like(self.x)  # operators may leave positions outside the image unwritten

    @property
    def _buffer(self) -> torch.Tensor:
        """Scratch for the measures: A p is dead between an iteration's update and the next one."""
        return self.ap

    def _store(self):
        """Write the working systems' solutions, counts and flags into the full arrays."""
        if self._rows is not None:
            self._full_x.index_copy_(0, self._rows, self.x)
            self._full_iterations.index_copy_(0, self._rows, self.iterations_working)
            self._full_active.index_copy_(0, self._rows, self.active)
        else:
            self._full_active.copy_(self.active)

    def _compact(self, keep: torch.Tensor):
        """Continue with the working systems ``keep`` only (indices into the working set)."""
        self._store()
        rows = keep if self._rows is None else self._rows.index_select(0, keep)
        for part in (self._full_operator, self._full_preconditioner, self.op, self.preconditioner):
            part.release()  # views and the cycle's buffers, until the full set is worked on again
        self.op = self._full_operator.restrict(rows)
        self.preconditioner = self._full_preconditioner.restrict(rows)
        self.rule = self._full_rule.restrict(rows)
        self.b = self._full_b.index_select(0, rows)
        self.iterations_working = self._full_iterations.index_select(0, rows)
        self.rz, self.active = self.rz.index_select(0, keep), self.active.index_select(0, keep)
        # one vector at a time, so that at most one old and one new working vector coexist
        self.x = self.x.index_select(0, keep)  # the full x stays in _full_x
        self.ap = None
        self.r = self.r.index_select(0, keep)
        self.z = self.z.index_select(0, keep)
        self.p = self.p.index_select(0, keep)
        self.ap = torch.zeros_like(self.x)
        self._rows = rows

    def _working(self, t: torch.Tensor) -> torch.Tensor:
        return t if self._rows is None else t.index_select(0, self._rows)

    def _write_working(self, full: torch.Tensor, values: torch.Tensor) -> None:
        if self._rows is None:
            full.copy_(values)
        else:
            full.index_copy_(0, self._rows, values)

    def _working_iterations(self) -> torch.Tensor:
        return self.iterations_working

    def _full_size(self, t: torch.Tensor) -> torch.Tensor:
        """[S_working] -> [S] (0 for the systems outside the working set)."""
        if self._rows is None:
            return t.clone()
        return t.new_zeros(self._full_b.shape[0]).index_copy_(0, self._rows, t)

    # ---- the iteration ----------------------------------------------------------------------

    @staticmethod
    def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """[S] inner products of the rows of two [S, ...] contiguous tensors: a batched BLAS
        dot that reads both once, with no product array."""
        n = u.shape[0]
        return torch.bmm(u.reshape(n, 1, -1), v.reshape(n, -1, 1)).view(n)

    def _restart(self, z_current: bool = False):
        """Directions from the current residual ``r`` (z = M r, computed unless ``z_current``)."""
        if not z_current:
            self.preconditioner.apply(self.r, self.z, scratch=self.ap)
        self.p.copy_(self.z)
        self.rz = self._dot(self.r, self.z) * self.active

    def step(self):
        p, r = self.p, self.r
        ap = self.op.matvec(p, out=self.ap)
        # rz = 0 for inactive systems gives alpha = 0; p'Ap <= 0 (breakdown) gives 0/0 or x/0 -> 0.
        alpha = torch.nan_to_num_(self.rz / self._dot(p, ap), nan=0.0, posinf=0.0, neginf=0.0).clamp_(min=0.0)
        self.x.addcmul_(alpha.view(self._batch_shape), p)
        r.addcmul_(alpha.view(self._batch_shape), ap, value=-1.0)
        z = self.preconditioner.apply(r, self.z, scratch=self.ap)  # A p is dead after the update
        rz_new = self._dot(r, z)
        beta = torch.nan_to_num_(rz_new / self.rz, nan=0.0, posinf=0.0, neginf=0.0)
        torch.addcmul(z, beta.view(self._batch_shape), p, out=p)
        self.iterations_working += self.active
        self.rz = rz_new * self.active
        self._record(self._full_size(alpha), self._full_size(beta))

    # ---- the hooks of CertifiedPCG ------------------------------------------------------------

    def _z(self) -> torch.Tensor:
        return self.z

    def _prepare_rule(self, z_for_scale: torch.Tensor | None = None, full: bool = True):
        self._store()
        self._full_rule.prepare(self._full_x, z_for_scale, full)
        if self._rows is not None:
            self.rule = self._full_rule.restrict(self._rows)

    def _deactivate(self, passes: torch.Tensor):
        self.active &= ~passes
        self.rz = self.rz * self.active

    def _activate(self, active: torch.Tensor, restart: torch.Tensor):
        # Residual replacement: r and z are now the true ones and the directions p are kept,
        # so a system that goes on keeps its Krylov space (a restart would lose it, which
        # costs many iterations on ill-conditioned problems); ``restart`` systems take p = z.
        self.active = active
        self._full_active.copy_(active)
        if bool(restart.any()):
            torch.where(restart.view(self._batch_shape), self.z, self.p, out=self.p)
        self.rz = self._dot(self.r, self.z) * self.active

    def _x_rows(self, rows: torch.Tensor) -> torch.Tensor:
        self._store()
        return self._full_x.index_select(0, rows)

    def _set_x_rows(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        self._full_x.index_copy_(0, rows, values)

    def _true_residual(self, first: bool):
        self._store()
        working = None
        if self._rows is not None:
            working = (self._rows, self.p)
            self._work_on_all()
        self.op.matvec(self.x, out=self.ap)
        torch.sub(self.b, self.ap, out=self.r)
        self.preconditioner.apply(self.r, self.z, scratch=self.ap)
        if working is not None:  # systems dropped from the working set restart from p = z
            rows, p = working
            self.p.copy_(self.z)
            self.p.index_copy_(0, rows, p)

    def any_active(self) -> bool:
        working = self.active.numel()
        count = int(self.active.sum())
        if 0 < count and working - count >= max(1, working // 4):
            keep = self.active.nonzero().squeeze(1)
            rows = keep if self._rows is None else self._rows.index_select(0, keep)
            # Only when the systems left still share their images' coefficients (whole images
            # done): a per-system gather of the coefficients and of the hierarchy would cost
            # more memory than the whole solve's vectors.
            if self._full_operator.groups.restrict(rows).covers_every_image:
                self._compact(keep)
        return count > 0

    # ---- results ----------------------------------------------------------------------------

    @property
    def solution(self) -> torch.Tensor:
        """[S, ...] the iterates of every system."""
        self._store()
        return self._full_x

    @property
    def iterations(self) -> torch.Tensor:
        """[S] int64, iterations during which each system was active."""
        self._store()
        return self._full_iterations
