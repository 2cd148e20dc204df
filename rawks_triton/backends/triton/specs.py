"""Every Triton kernel of the backend with every dtype and constexpr choice its launcher makes.

:func:`kernel_specs` is the list that ``python -m rawks_triton.aot`` compiles for sm_80
and sm_90; a launcher that gains a kernel or a constexpr choice adds it here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...kernels import (
    MAX_PARTIALS,
    cg_direction_matvec_kernel,
    cg_update_kernel,
    coefficient_gradients_kernel,
    dot_partials_kernel,
    mg_jacobi_kernel,
    mg_prolong_kernel,
    mg_residual_kernel,
    mg_restrict_kernel,
    stencil_residual_kernel,
)
from . import multigrid
from .operator import GRADIENT_WARPS, LAUNCH_CONFIGS, gradient_block, launch_config


@dataclass(frozen=True)
class KernelSpec:
    """One compilation: a ``@triton.jit`` function with its full signature.

    ``signature`` maps every argument name to a Triton type string ("*fp32", "*fp64",
    "*i32", "i32", "i64", "fp32", ...) or to "constexpr"; ``constexprs`` gives the value of
    every "constexpr" argument. ``name`` is what the table prints.
    """

    name: str
    fn: object
    signature: dict
    constexprs: dict = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3


INDEX_POINTERS = ("image_index_ptr", "first_system_ptr")  # int64 tensors
FLAG_POINTERS = ("active_cur_ptr", "active_next_ptr", "active_ptr", "iterations_ptr")  # int32 tensors
DTYPES = {torch.float32: "fp32", torch.float64: "fp64"}


def kernel_spec(name: str, fn, dtype: str, constexprs: dict, num_warps: int = 4, **types) -> KernelSpec:
    """A spec by the naming rules of rawks_triton.kernels: ``*_ptr`` arguments point to ``dtype``
    ("fp32"/"fp64") unless they are index or flag pointers, other non-constexpr arguments are
    i32 sizes; ``types`` overrides single arguments."""
    signature = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in types:
            signature[arg] = types[arg]
        elif arg in INDEX_POINTERS:
            signature[arg] = "*i64"
        elif arg in FLAG_POINTERS:
            signature[arg] = "*i32"
        elif arg.endswith("_ptr"):
            signature[arg] = f"*{dtype}"
        else:
            signature[arg] = "i32"
    label = ",".join([dtype] + [f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in constexprs.items()])
    return KernelSpec(f"{name}[{label}]", fn, signature, dict(constexprs), num_warps)


def cg_specs() -> list[KernelSpec]:
    """The stencil, CG and gradient kernels (operator.py, pcg.py), for images (THREE_D=0)
    and volumes (THREE_D=1)."""
    specs = []
    for dtype, cfg in LAUNCH_CONFIGS.items():
        ty, tiles = DTYPES[dtype], dict(BLOCK=cfg.block)
        for three_d in (False, True):
            cfg_3d = launch_config(dtype, three_d)
            tiles_3d = dict(BLOCK=cfg_3d.block)
            for has_b, reduce in ((False, False), (True, True)):  # matvec; residual with its partials
                constexprs = dict(HAS_B=has_b, REDUCE=reduce, THREE_D=three_d, **tiles_3d)
                specs.append(kernel_spec("stencil_residual", stencil_residual_kernel, ty, constexprs, cfg_3d.num_warps))
            for jacobi in (True, False):  # fused Jacobi; another preconditioner (multigrid)
                constexprs = dict(JACOBI=jacobi, THREE_D=three_d, **tiles_3d, MAX_PARTIALS=MAX_PARTIALS)
                specs.append(
                    kernel_spec("cg_direction_matvec", cg_direction_matvec_kernel, ty, constexprs, cfg_3d.num_warps)
                )
            if three_d and cfg_3d != cfg:  # cg_update has no stencil: only its block differs on volumes
                for jacobi in (True, False):
                    constexprs = dict(JACOBI=jacobi, **tiles_3d, MAX_PARTIALS=MAX_PARTIALS)
                    specs.append(kernel_spec("cg_update", cg_update_kernel, ty, constexprs, cfg_3d.num_warps))
                specs.append(kernel_spec("dot_partials", dot_partials_kernel, ty, tiles_3d, cfg_3d.num_warps))
        for jacobi in (True, False):
            constexprs = dict(JACOBI=jacobi, **tiles, MAX_PARTIALS=MAX_PARTIALS)
            specs.append(kernel_spec("cg_update", cg_update_kernel, ty, constexprs, cfg.num_warps))
        specs.append(kernel_spec("dot_partials", dot_partials_kernel, ty, tiles, cfg.num_warps))
        for three_d in (False, True):
            for edges in (False, True):
                constexprs = dict(EDGES=edges, THREE_D=three_d, BLOCK=gradient_block(three_d))
                specs.append(
                    kernel_spec("coefficient_gradients", coefficient_gradients_kernel, ty, constexprs, GRADIENT_WARPS)
                )
    return specs


def multigrid_specs() -> list[KernelSpec]:
    """The kernels of the multigrid cycle (multigrid.py), for images (THREE_D=0) and volumes
    (THREE_D=1; the Jacobi step is position-wise, one kernel for both)."""
    specs, warps = [], multigrid.NUM_WARPS
    for ty in DTYPES.values():
        tiles = dict(BLOCK=multigrid.BLOCK)
        for first in (True, False):
            specs.append(
                kernel_spec("mg_jacobi", mg_jacobi_kernel, ty, dict(FIRST=first, **tiles), warps, weight="fp32")
            )
        for three_d in (False, True):
            grid, grid_warps = dict(THREE_D=three_d, **tiles), multigrid.grid_warps(three_d)
            specs.append(kernel_spec("mg_residual", mg_residual_kernel, ty, grid, grid_warps))
            specs.append(kernel_spec("mg_restrict", mg_restrict_kernel, ty, grid, grid_warps))
            specs.append(kernel_spec("mg_prolong", mg_prolong_kernel, ty, grid, grid_warps, scale="fp32"))
    return specs


def kernel_specs() -> list[KernelSpec]:
    """Every kernel of the triton backend with every choice its launchers make."""
    return cg_specs() + multigrid_specs()
