"""How much memory a propagation needs, how much there is, and the error when it does not fit.

The model (docs/numerics.md, "Memory"): a solve holds a few vectors per solved (image,
label) system and a few coefficient arrays per image, each of H x W elements of the
working dtype. The factors are upper ends of what was measured on the CPU (peak resident
memory of forward, and of forward + backward, with 2, 4 and 8 labels per image; the
multigrid preconditioner, float32, 1024 x 1024) and counted on the Triton backend; they
include the outputs P and Z.
"""

from __future__ import annotations

import os
import resource

import torch

# (per system, per image) arrays of H x W elements at the peak.
FACTORS = {
    # forward only, forward + backward
    "torch": ((12, 12), (19, 16)),
    "triton": ((14, 12), (21, 16)),
    # sparse LU in float64: the factors' fill-in, per image, grows like n log n; about 60 arrays
    # of float64 at 1024 x 1024 (measured), plus the float64 right-hand sides and solutions
    "scipy": ((6, 60), (9, 60)),
}


class PropagationMemoryError(MemoryError):
    """A propagation would not fit in the memory of its device; the message says what to do."""


def estimate_bytes(
    backend: str, num_systems: int, n_images: int, voxels: int, dtype: torch.dtype, backward: bool
) -> int:
    """Bytes at the peak for ``voxels`` pixels (or voxels) per image."""
    per_system, per_image = FACTORS.get(backend, FACTORS["torch"])[1 if backward else 0]
    itemsize = 8 if backend == "scipy" else torch.finfo(dtype).bits // 8
    return int((per_system * num_systems + per_image * n_images) * voxels * itemsize)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_bytes(device: torch.device) -> tuple[int | None, str]:
    """(bytes that a new allocation can still get, where the number comes from), or (None, reason)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached), f"free memory of {torch.cuda.get_device_name(device)}"
    if device.type != "cpu":
        return None, f"no estimate of the memory of {device.type} devices"
    limits = []
    meminfo = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                meminfo[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    if "MemAvailable" in meminfo:
        limits.append((meminfo["MemAvailable"], "available RAM"))
    # a container's memory limit (cgroup v2, then v1)
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        most, used = _read_int(limit), _read_int(usage)
        if most is not None and used is not None and most < 2**60:
            limits.append((max(0, most - used), "the container's memory limit"))
            break
    # the process's address-space limit (ulimit -v)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        size = None
        try:
            with open("/proc/self/statm") as f:
                size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            pass
        if size is not None:
            limits.append((max(0, soft - size), "the process's address-space limit (ulimit -v)"))
    if not limits:
        return None, "no estimate of the free memory on this system"
    return min(limits)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def advice() -> str:
    return (
        "Propagate fewer labels per call (or images per batch), use float32 instead of float64, or propagate at a "
        "lower resolution (rawks train --propagation-scale)"
    )


def check_fits(
    backend: str,
    num_systems: int,
    n_images: int,
    voxels: int,
    where: str,
    dtype: torch.dtype,
    device: torch.device,
    backward: bool,
) -> None:
    """Raise :class:`PropagationMemoryError` before allocating when the estimate exceeds what is
    available; ``where`` describes the grid ("512 x 512 pixels")."""
    need = estimate_bytes(backend, num_systems, n_images, voxels, dtype, backward)
    have, source = available_bytes(device)
    if have is None or need <= have:
        return
    what = "forward and backward" if backward else "the forward solve"
    raise PropagationMemoryError(
        f"rawks_triton.propagate: {what} of {num_systems} systems of {where} in {dtype} "
        f"({n_images} images, backend {backend!r}) needs about {_gib(need)}, more than the {_gib(have)} of "
        f'{source}. {advice()} (the memory model: docs/numerics.md, "Memory").'
    )


def is_allocation_failure(err: BaseException) -> bool:
    """An allocator's out-of-memory error (CPU or CUDA)."""
    if isinstance(err, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())
