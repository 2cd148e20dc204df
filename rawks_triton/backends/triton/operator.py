"""The stencil of a batch on the framed layout, with the launchers of the stencil kernels.

Launchers own shapes, allocation, block sizes and grids; the kernels only compute. Every
vector is framed (:class:`rawks_triton.solve.layout.Frame`): [S, size] with a zero border,
coefficients [N, size] per image, 0 on the border.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from ...kernels import MAX_PARTIALS, coefficient_gradients_kernel, stencil_residual_kernel
from ...solve.layout import Frame
from ...systems import Stencil

MAX_GRID_Y = 65535


@dataclass(frozen=True)
class LaunchConfig:
    block: int  # positions per loop step of a program
    num_warps: int
    pixels_per_program: int  # target chunk of a CG program: T = min(cdiv(span, this), MAX_PARTIALS)


# The configurations the launchers choose from; `python -m rawks_triton.aot` compiles all of them.
# Four elements per thread: with eight per thread the fused direction/matvec kernel needs
# 157 (fp32) and 162 (fp64) registers on sm_90 (aot table), four keep it near 100 and 80.
# Not tuned on a GPU yet (see docs/benchmarks.md). No autotuning: the CG kernels update x
# and r in place, so timing trial runs would corrupt the solve.
LAUNCH_CONFIGS = {
    torch.float32: LaunchConfig(block=1024, num_warps=8, pixels_per_program=4096),
    torch.float64: LaunchConfig(block=512, num_warps=8, pixels_per_program=4096),
}
GRADIENT_BLOCK = 1024
GRADIENT_WARPS = 4

PROGRAMS_PER_SM = 4  # enough programs in flight to hide memory latency


def num_partials(hw: int, num_systems: int, config: LaunchConfig, num_sms: int = 0) -> int:
    """T, the programs per system: one per ``pixels_per_program`` positions, more when the
    batch is too small to give every SM ``PROGRAMS_PER_SM`` programs, never more than one
    per BLOCK positions or MAX_PARTIALS."""
    wanted = max(
        triton.cdiv(hw, config.pixels_per_program), triton.cdiv(PROGRAMS_PER_SM * num_sms, max(num_systems, 1))
    )
    return max(1, min(wanted, triton.cdiv(hw, config.block), MAX_PARTIALS))


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0


class TritonOperator:
    """The stencil of a batch bound to its systems, framed once, with launchers for the kernels.

    ``diag``, ``right``, ``down`` and ``inv_diag`` are the framed per-image coefficients
    [N, size]; vectors are [S, size] with a zero border (:meth:`new_vector`).
    """

    def __init__(self, stencil: Stencil, image_index: torch.Tensor, groups):
        n_images, height, width = stencil.shape
        self.frame = Frame(height, width)
        if self.frame.size >= 2**31:
            raise ValueError(f"images must have fewer than 2**31 framed pixels, got {height} x {width}")
        self.groups = groups
        self.stencil = stencil
        self.diag, self.right, self.down, self.inv_diag = (
            self.frame.frame(t) for t in (stencil.diag, stencil.right, stencil.down, stencil.inv_diag)
        )
        self.image_index = image_index.contiguous()
        self.num_systems = int(image_index.numel())
        self.config = LAUNCH_CONFIGS[stencil.diag.dtype]
        self.span = self.frame.hi - self.frame.lo  # the positions the CG kernels work on
        self.T = num_partials(self.span, self.num_systems, self.config, _sm_count(stencil.diag.device))

    @property
    def coefficients(self) -> dict:
        """The framed coefficients by name (level 0 of the multigrid hierarchy shares them)."""
        return dict(diag=self.diag, right=self.right, down=self.down, inv_diag=self.inv_diag)

    def new_vector(self) -> torch.Tensor:
        """A framed [S, size] vector of zeros: the kernels never write outside [lo, hi)."""
        return self.diag.new_zeros(self.num_systems, self.frame.size)

    def residual(self, b, x, out, rz_part=None, rr_part=None):
        """out = b - A x (or A x when b is None) on framed vectors; partials of out' M out and
        out' out when given. Writes [lo, hi) of ``out``."""
        cfg, frame = self.config, self.frame
        reduce = rz_part is not None
        stencil_residual_kernel[(self.num_systems, self.T)](
            b if b is not None else out, x, out,
            self.diag, self.right, self.down, self.inv_diag,
            self.image_index,
            rz_part if reduce else out, rr_part if reduce else out,
            frame.size, frame.row, frame.lo, frame.hi, self.T,
            HAS_B=b is not None, REDUCE=reduce, BLOCK=cfg.block, num_warps=cfg.num_warps,
        )  # fmt: skip
        return out

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """A x for framed [S, size] vectors (a new framed vector)."""
        return self.residual(None, x.contiguous(), self.new_vector())

    def coefficient_gradients(self, adjoint, x, Z, first_system: torch.Tensor, edges: bool, out=None):
        """Per-image framed [N, size] gradients (diag, right, down) from framed [S, size] inputs;
        right and down are None without ``edges``. ``out``: the three [N, size] buffers to write
        ([lo, hi) of each), else new ones with zeros."""
        n_images, frame = self.stencil.shape[0], self.frame
        if out is None:
            zeros = lambda: torch.zeros(n_images, frame.size, dtype=x.dtype, device=x.device)  # noqa: E731
            out = (zeros(), zeros() if edges else None, zeros() if edges else None)
        grad_diag, grad_right, grad_down = out
        grad_right = grad_right if edges else grad_diag
        grad_down = grad_down if edges else grad_diag
        coefficient_gradients_kernel[(triton.cdiv(frame.hi, GRADIENT_BLOCK), n_images)](
            adjoint.contiguous(), x.contiguous(), Z.contiguous(),
            first_system,
            grad_diag, grad_right, grad_down,
            frame.size, frame.row, frame.lo, frame.hi,
            EDGES=edges, BLOCK=GRADIENT_BLOCK, num_warps=GRADIENT_WARPS,
        )  # fmt: skip
        return grad_diag, (grad_right if edges else None), (grad_down if edges else None)
