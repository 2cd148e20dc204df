"""How many CPU threads torch uses while ``rawks`` trains, evaluates and propagates.

A training step on the CPU is thousands of small ops: the multigrid cycles and CG updates
of every solve take tens of microseconds each. With a team of two or more OpenMP threads
every such op ends at a barrier, and on a machine that runs other work the OS often gives
one of the team's cores to another process, so the op waits a scheduler time slice for
it. Measured on a 2-core CPU at load average 4.7 to 7.1 (docs/training.md, "Threads"): a
step of ``rawks demo`` took 0.29-0.64 s with one thread and 2.8-10.8 s with two, and
``aten::addcmul_`` went from 17 us to 3.5 ms a call; ``rawks propagate`` of one 321x481
image took 0.36 s and 14.0 s. So the default is one thread on the CPU
(``DEFAULT_CPU_THREADS``); ``--threads N`` chooses N.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

DEFAULT_CPU_THREADS = 1


def resolve_threads(threads: int | None, device="cpu") -> int | None:
    """``threads`` if given; otherwise DEFAULT_CPU_THREADS on a CPU device and None (torch's choice) on a GPU."""
    if threads is not None:
        return threads
    return DEFAULT_CPU_THREADS if torch.device(device).type == "cpu" else None


@contextmanager
def torch_threads(threads: int | None):
    """Run the block with ``threads`` torch CPU threads (None: unchanged), then restore the previous count."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
