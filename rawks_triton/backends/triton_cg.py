"""The ``"triton"`` backend: launchers for the kernels in :mod:`rawks_triton.kernels`.

Launchers own shapes, allocation, block sizes and grids; the kernels only compute. One
CG iteration of every system is two launches (see :mod:`rawks_triton.kernels.cg`); the
host looks at the device only every ``check_every`` iterations (:func:`rawks_triton.cg.run_pcg`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from ..solve.options import SolverOptions
from ..solve.pcg import CertifiedPCG, run_pcg
from ..solve.rules import AdjointRule, ForwardRule
from ..kernels import (
    MAX_PARTIALS,
    cg_direction_matvec_kernel,
    cg_update_kernel,
    coefficient_gradients_kernel,
    dot_partials_kernel,
    stencil_residual_kernel,
)
from ..systems import LabelSystems, Stencil

MAX_GRID_Y = 65535


@dataclass(frozen=True)
class LaunchConfig:
    block: int  # pixels per loop step of a program
    num_warps: int
    pixels_per_program: int  # target chunk of a CG program: T = min(cdiv(HW, this), MAX_PARTIALS)


# The configurations the launchers choose from; `python -m rawks_triton.aot` compiles all of them.
# Four elements per thread: with eight per thread the fused direction/matvec kernel needs
# 157 (fp32) and 162 (fp64) registers on sm_90 (aot table), four keep it near 100 and 80.
# Not tuned on a GPU yet (no device was lent; see docs/benchmarks.md). No autotuning: the CG
# kernels update x and r in place, so timing trial runs would corrupt the solve.
LAUNCH_CONFIGS = {
    torch.float32: LaunchConfig(block=1024, num_warps=8, pixels_per_program=4096),
    torch.float64: LaunchConfig(block=512, num_warps=8, pixels_per_program=4096),
}
GRADIENT_BLOCK = 1024
GRADIENT_WARPS = 4


PROGRAMS_PER_SM = 4  # enough programs in flight to hide memory latency


def num_partials(hw: int, num_systems: int, config: LaunchConfig, num_sms: int = 0) -> int:
    """T, the programs per system: one per ``pixels_per_program`` pixels, more when the batch
    is too small to give every SM ``PROGRAMS_PER_SM`` programs, never more than one per BLOCK
    pixels or MAX_PARTIALS."""
    wanted = max(triton.cdiv(hw, config.pixels_per_program), triton.cdiv(PROGRAMS_PER_SM * num_sms, max(num_systems, 1)))
    return max(1, min(wanted, triton.cdiv(hw, config.block), MAX_PARTIALS))


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0


class TritonOperator:
    """The stencil of a batch bound to its systems, with launchers for the kernels."""

    def __init__(self, stencil: Stencil, image_index: torch.Tensor, groups):
        n_images, height, width = stencil.shape
        self.groups = groups
        self.hw, self.width = height * width, width
        if self.hw >= 2**31:
            raise ValueError(f"images must have fewer than 2**31 pixels, got {height} x {width}")
        self.stencil = stencil
        self.image_index = image_index.contiguous()
        self.num_systems = int(image_index.numel())
        self.config = LAUNCH_CONFIGS[stencil.diag.dtype]
        self.T = num_partials(self.hw, self.num_systems, self.config, _sm_count(stencil.diag.device))

    def residual(self, b, x, out, rz_part=None, rr_part=None):
        """out = b - A x (or A x when b is None); partial sums of out' M out and out' out when given."""
        st, cfg = self.stencil, self.config
        reduce = rz_part is not None
        dummy = out
        stencil_residual_kernel[(self.num_systems, self.T)](
            b if b is not None else dummy, x, out,
            st.diag, st.right, st.down, st.inv_diag,
            self.image_index,
            rz_part if reduce else dummy, rr_part if reduce else dummy,
            self.hw, self.width, self.T,
            HAS_B=b is not None, REDUCE=reduce, BLOCK=cfg.block, num_warps=cfg.num_warps,
        )
        return out

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        return self.residual(None, x, torch.empty_like(x))


class TritonPCG(CertifiedPCG):
    """Device state of the batched PCG: vectors [S, H, W], partial sums [S, T], scalars [S].

    Jacobi (``preconditioner=None``) is fused into the two CG launches. Any other
    preconditioner is an object whose ``apply(r, out)`` writes z = M r for [S, H, W]
    vectors (M symmetric positive definite on the free pixels, z = 0 on seeds); it runs
    between the two launches, followed by one reduction launch for r' z.

    Which systems are active is decided on the host at the checks (the stopping rules of
    :mod:`rawks_triton.cg`, a few torch reductions) and written to ``active_cur``; the
    kernels skip inactive systems (they return at once) and never deactivate one
    themselves (their ``tol2`` is 0).
    """

    def __init__(self, op: TritonOperator, rhs: torch.Tensor, rule, options: SolverOptions, preconditioner=None, certify=None):
        S, T = op.num_systems, op.T
        self._init_certification(S, options, certify, rhs.dtype, rhs.device, op.stencil.shape[1:])
        self.op = op
        self.rule = rule
        self.groups = op.groups
        self.preconditioner = preconditioner
        self.jacobi = preconditioner is None
        self.b = rhs.contiguous()
        self.x = torch.zeros_like(self.b)
        self.r = torch.empty_like(self.b)
        self.p = [torch.zeros_like(self.b), torch.empty_like(self.b)]
        self.ap = torch.empty_like(self.b)
        self.z = torch.empty_like(self.b)  # M r: written by the preconditioner, or on the host for Jacobi
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
        op, cfg = self.op, self.op.config
        self.preconditioner.apply(self.r, self.z)
        dot_partials_kernel[(op.num_systems, op.T)](
            self.r, self.z, self.active_cur, self.rz_part, op.hw, op.T,
            BLOCK=cfg.block, num_warps=cfg.num_warps,
        )

    def step(self):
        op, cfg = self.op, self.op.config
        st = op.stencil
        p_old, p_new = self.p[self.current], self.p[1 - self.current]
        grid = (op.num_systems, op.T)
        # Launch 1 reads r (and forms M r) with fused Jacobi, z otherwise.
        cg_direction_matvec_kernel[grid](
            self.r if self.jacobi else self.z, p_old, p_new, self.ap,
            st.diag, st.right, st.down, st.inv_diag,
            op.image_index, self.tol2,
            self.rz_part, self.rr_part, self.pap_part,
            self.rz_cur, self.rz_next, self.active_cur, self.active_next,
            op.hw, op.width, op.T,
            JACOBI=self.jacobi, BLOCK=cfg.block, MAX_PARTIALS=MAX_PARTIALS, num_warps=cfg.num_warps,
        )
        cg_update_kernel[grid](
            self.x, self.r, p_new, self.ap,
            st.inv_diag,
            op.image_index, self.count,
            self.rz_part, self.rr_part, self.pap_part,
            self.rz_cur, self.rz_next, self.active_cur, self.active_next,
            op.hw, op.T,
            JACOBI=self.jacobi, BLOCK=cfg.block, MAX_PARTIALS=MAX_PARTIALS, num_warps=cfg.num_warps,
        )
        self.current = 1 - self.current
        if not self.jacobi:
            self._precondition()
        # The iteration's CG coefficients, for the spectral floor of the error estimates:
        # alpha = r'z / p'Ap (rz_cur after launch 2), beta = r_new'z_new / r'z.
        active = self.active_cur != 0
        rz = self.rz_cur
        alpha = torch.where(active, rz / self.pap_part.sum(dim=1), torch.zeros_like(rz))
        beta = torch.where(active & (rz > 0), self.rz_part.sum(dim=1) / torch.where(rz > 0, rz, torch.ones_like(rz)), torch.zeros_like(rz))
        self._record(torch.nan_to_num(alpha, nan=0.0, posinf=0.0).clamp(min=0.0), torch.nan_to_num(beta, nan=0.0, posinf=0.0))

    # ---- the hooks of CertifiedPCG ------------------------------------------------------------

    def _z(self) -> torch.Tensor:
        if self.jacobi:  # the fused kernels never store M r
            self.groups.multiply(self.r, self.op.stencil.inv_diag, out=self.z)
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
            view = (-1,) + (1,) * (self.x.dim() - 1)
            self.p[self.current].mul_((~restart).to(self.x.dtype).view(view))
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


class TritonBackend:
    name = "triton"

    def __init__(self, stencil: Stencil, systems: LabelSystems, options: SolverOptions):
        self.preconditioner = None  # Jacobi, fused into the CG kernels
        self.stencil = stencil
        self.certifier = None
        if options.preconditioner == "multigrid":
            # The hierarchy is built once per image and serves the forward and the adjoint solve.
            self.preconditioner = self._multigrid(stencil, systems)
        elif options.preconditioner != "jacobi":
            raise ValueError(f"`preconditioner` must be 'jacobi' or 'multigrid' with backend='triton', got {options.preconditioner!r}")
        n_images = stencil.shape[0]
        if n_images > MAX_GRID_Y:
            raise ValueError(f"backend='triton' takes at most {MAX_GRID_Y} images per call, got {n_images}")
        self.op = TritonOperator(stencil, systems.image_index, systems.groups)
        self.systems = systems
        self.options = options
        self.maxiter = options.maxiter_for(*stencil.shape[1:])
        counts = torch.bincount(systems.image_index, minlength=n_images)
        self.first_system = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])

    @staticmethod
    def _multigrid(stencil, systems):
        from .triton_multigrid import multigrid_preconditioner

        return multigrid_preconditioner(stencil, systems.image_index)

    def _certify(self):
        """The multigrid cycle certifies Jacobi solves (see rawks_triton.cg)."""
        if self.preconditioner is not None:
            return None
        if self.certifier is None:
            self.certifier = self._multigrid(self.stencil, self.systems)
        return self.certifier.apply

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.matvec(x)

    def _solve(self, rhs, rule):
        rhs = (rhs() if callable(rhs) else rhs).contiguous()
        rhs_norm = torch.linalg.vector_norm(rhs.flatten(1), dim=1)
        pcg = TritonPCG(self.op, rhs, rule, self.options, self.preconditioner, certify=self._certify())
        del rhs
        done = run_pcg(pcg, self.maxiter, self.options.checks_every(rhs_norm.device))
        stats = pcg.stats(rhs_norm, self.maxiter, done)
        x = pcg.x
        del pcg
        return x, stats

    def solve(self, rhs):
        return self._solve(rhs, ForwardRule(self.options, self.op.groups))

    def solve_adjoint(self, rhs, x_forward: torch.Tensor):
        return self._solve(rhs, AdjointRule(self.options, self.op.groups, x_forward.contiguous(), self.stencil.diag))

    def coefficient_gradients(self, adjoint, x, Z, edges: bool):
        n_images, hw = self.op.stencil.shape[0], self.op.hw
        shape = self.op.stencil.shape
        grad_diag = torch.empty(shape, dtype=x.dtype, device=x.device)
        grad_right = torch.empty_like(grad_diag) if edges else grad_diag
        grad_down = torch.empty_like(grad_diag) if edges else grad_diag
        coefficient_gradients_kernel[(triton.cdiv(hw, GRADIENT_BLOCK), n_images)](
            adjoint.contiguous(), x.contiguous(), Z.contiguous(),
            self.first_system,
            grad_diag, grad_right, grad_down,
            hw, self.op.width,
            EDGES=edges, BLOCK=GRADIENT_BLOCK, num_warps=GRADIENT_WARPS,
        )
        return grad_diag, (grad_right if edges else None), (grad_down if edges else None)


def aot_specs():
    """Every kernel of this launcher with every dtype and constexpr choice it makes (rawks_triton.aot)."""
    from ..aot import kernel_spec

    specs = []
    for dtype, cfg in LAUNCH_CONFIGS.items():
        ty = {torch.float32: "fp32", torch.float64: "fp64"}[dtype]
        tiles = dict(BLOCK=cfg.block)
        for has_b, reduce in ((False, False), (True, True)):  # matvec; residual with its partials
            specs.append(kernel_spec("stencil_residual", stencil_residual_kernel, ty,
                                     dict(HAS_B=has_b, REDUCE=reduce, **tiles), cfg.num_warps))
        for jacobi in (True, False):
            constexprs = dict(JACOBI=jacobi, **tiles, MAX_PARTIALS=MAX_PARTIALS)
            specs.append(kernel_spec("cg_direction_matvec", cg_direction_matvec_kernel, ty, constexprs, cfg.num_warps))
            specs.append(kernel_spec("cg_update", cg_update_kernel, ty, constexprs, cfg.num_warps))
        specs.append(kernel_spec("dot_partials", dot_partials_kernel, ty, tiles, cfg.num_warps))
        for edges in (False, True):
            specs.append(kernel_spec("coefficient_gradients", coefficient_gradients_kernel, ty,
                                     dict(EDGES=edges, BLOCK=GRADIENT_BLOCK), GRADIENT_WARPS))
    return specs
