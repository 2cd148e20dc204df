"""The stencil of a batch on the framed layout, with the launchers of the stencil kernels.

Launchers own shapes, allocation, block sizes and grids; the kernels only compute. Every
vector is framed (:class:`rawks_triton.solve.layout.Frame`): [S, size] with a zero border,
coefficients [N, size] per image, 0 on the border. Images take the 5-point kernels, volumes
the 7-point ones (``THREE_D``, the ``deep`` coefficients and the frame's ``plane`` stride).
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
# Volumes: the 7-point fused direction/matvec loads 21 neighbour values per position (z,
# inv_diag and p_old at 7 points); with four fp32 elements per thread it took 198 registers
# on sm_90 (aot table), so volumes run two per thread in both dtypes.
VOLUME_LAUNCH_CONFIGS = {
    torch.float32: LaunchConfig(block=512, num_warps=8, pixels_per_program=4096),
    torch.float64: LaunchConfig(block=512, num_warps=8, pixels_per_program=4096),
}
GRADIENT_BLOCK = 1024
VOLUME_GRADIENT_BLOCK = 512  # the 3D edge gradients keep three accumulators and 7 loads per system
GRADIENT_WARPS = 4


def launch_config(dtype: torch.dtype, three_d: bool) -> LaunchConfig:
    """The configuration of the CG kernels for images or volumes of ``dtype``."""
    return (VOLUME_LAUNCH_CONFIGS if three_d else LAUNCH_CONFIGS)[dtype]


def gradient_block(three_d: bool) -> int:
    return VOLUME_GRADIENT_BLOCK if three_d else GRADIENT_BLOCK


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

    ``diag``, ``right``, ``down``, ``inv_diag`` and, on volumes, ``deep`` are the framed
    per-image coefficients [N, size]; vectors are [S, size] with a zero border
    (:meth:`new_vector`). ``three_d``: the 7-point kernels (``deep`` and the frame's
    ``plane`` stride) on volumes.
    """

    def __init__(self, stencil: Stencil, image_index: torch.Tensor, groups):
        grid = stencil.shape[1:]
        self.frame = Frame(*grid)
        if self.frame.size >= 2**31:
            shape = " x ".join(map(str, grid))
            raise ValueError(f"grids must have fewer than 2**31 framed positions, got {shape}")
        self.three_d = self.frame.ndim == 3
        self.groups = groups
        self.stencil = stencil
        self.diag, self.right, self.down, self.inv_diag = (
            self.frame.frame(t) for t in (stencil.diag, stencil.right, stencil.down, stencil.inv_diag)
        )
        self.deep = self.frame.frame(stencil.deep) if self.three_d else None
        self.image_index = image_index.contiguous()
        self.num_systems = int(image_index.numel())
        self.config = launch_config(stencil.diag.dtype, self.three_d)
        self.span = self.frame.hi - self.frame.lo  # the positions the CG kernels work on
        self.T = num_partials(self.span, self.num_systems, self.config, _sm_count(stencil.diag.device))

    @property
    def coefficients(self) -> dict:
        """The framed coefficients by name (level 0 of the multigrid hierarchy shares them)."""
        named = dict(diag=self.diag, right=self.right, down=self.down, inv_diag=self.inv_diag)
        return dict(named, deep=self.deep) if self.three_d else named

    @property
    def deep_or_down(self) -> torch.Tensor:
        """The ``deep_ptr`` argument of the kernels: ``deep``, or any coefficient on images
        (the 5-point kernels do not read it)."""
        return self.deep if self.three_d else self.down

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
            self.diag, self.right, self.down, self.deep_or_down, self.inv_diag,
            self.image_index,
            rz_part if reduce else out, rr_part if reduce else out,
            frame.size, frame.row, frame.plane, frame.lo, frame.hi, self.T,
            HAS_B=b is not None, REDUCE=reduce, THREE_D=self.three_d, BLOCK=cfg.block, num_warps=cfg.num_warps,
        )  # fmt: skip
        return out

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """A x for framed [S, size] vectors (a new framed vector)."""
        return self.residual(None, x.contiguous(), self.new_vector())

    def coefficient_gradients(self, adjoint, x, Z, first_system: torch.Tensor, edges: bool, out=None):
        """Per-image framed [N, size] gradients ``(diag, edge_grads)`` from framed [S, size]
        inputs; ``edge_grads`` is (right, down) on images, (right, down, deep) on volumes, and
        None without ``edges``. ``out``: the [N, size] buffers to write ([lo, hi) of each), in
        the same structure, else new ones with zeros."""
        n_images, frame = self.stencil.shape[0], self.frame
        num_edges = frame.ndim if edges else 0
        if out is None:
            zeros = lambda: torch.zeros(n_images, frame.size, dtype=x.dtype, device=x.device)  # noqa: E731
            out = (zeros(), tuple(zeros() for _ in range(num_edges)) if edges else None)
        grad_diag, grad_edges = out
        # Pointers the kernel does not write (no edges, or deep on images) point at grad_diag.
        unused = (grad_diag,) * 3
        grad_right, grad_down, grad_deep = (tuple(grad_edges) if edges else ()) + unused[num_edges:]
        block = gradient_block(self.three_d)
        coefficient_gradients_kernel[(triton.cdiv(frame.hi, block), n_images)](
            adjoint.contiguous(), x.contiguous(), Z.contiguous(),
            first_system,
            grad_diag, grad_right, grad_down, grad_deep,
            frame.size, frame.row, frame.plane, frame.lo, frame.hi,
            EDGES=edges, THREE_D=self.three_d, BLOCK=block, num_warps=GRADIENT_WARPS,
        )  # fmt: skip
        return grad_diag, (tuple(grad_edges) if edges else None)
