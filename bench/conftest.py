"""Configuration of the pytest-benchmark suite: which grid, devices, backends and dtype.

Options of ``pytest bench/`` (each also read from an environment variable):

* ``--bench-grid`` (``RAWKS_BENCH_GRID``): ``default`` (the whole grid, minus the cases
  above the work cap of the device), ``full`` (every case, however long), or ``smoke``
  (one tiny case per benchmark: what ``tests/test_bench_smoke.py`` runs with
  ``--benchmark-disable``).
* ``--bench-max-work`` (``RAWKS_BENCH_MAX_WORK``): the cap of the grid in system-pixels
  (H x W x images x labels present). Default: 2**18 on the CPU (128 x 96 with 21 labels and
  256 x 256 with 3 labels fit), none on CUDA. Given explicitly, it applies to every grid
  but smoke and every device.
* ``--bench-threads`` (``RAWKS_BENCH_THREADS``): torch's intra-op threads (default: torch's
  own choice). On a machine shared with other work use 1: torch's threads wait for each
  other at every operation and, with the cores oversubscribed, a solve can take many
  times longer than on one thread.

Environment variables only:

* ``RAWKS_BENCH_DEVICES``: comma-separated devices for the torch backend (default: cuda
  when available, else cpu). Triton always runs on cuda, scipy on the host.
* ``RAWKS_BENCH_DTYPE``: ``float32`` (default) or ``float64``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from bench.problems import ASPECTS, BATCHES, LABEL_CASES, SIZES, shape_of

DEFAULT_CPU_WORK = 2**18
RTOL = 1e-3  # the library default: P and the gradient to about 1e-3 (docs/numerics.md)


GRIDS = ("default", "full", "smoke")
_OPTIONS = {}  # the command line's --bench-* values, set in pytest_configure


def pytest_addoption(parser):
    group = parser.getgroup("rawks-bench", "rawks_triton benchmark grid")
    group.addoption("--bench-grid", choices=GRIDS, default=None, help="default (capped), full or smoke")
    group.addoption("--bench-max-work", type=float, default=None, help="largest H x W x images x labels to run")
    group.addoption("--bench-threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")


def pytest_configure(config):
    _OPTIONS["grid"] = config.getoption("--bench-grid", default=None)
    _OPTIONS["max_work"] = config.getoption("--bench-max-work", default=None)
    threads = config.getoption("--bench-threads", default=None) or os.environ.get("RAWKS_BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))


def grid_name() -> str:
    name = _OPTIONS.get("grid") or os.environ.get("RAWKS_BENCH_GRID", "default")
    if name not in GRIDS:
        raise ValueError(f"RAWKS_BENCH_GRID / --bench-grid must be one of {list(GRIDS)}, got {name!r}")
    return name


@dataclass(frozen=True)
class Case:
    size: int
    aspect: str
    labels: str  # a key of LABEL_CASES
    batch: int

    @property
    def shape(self) -> tuple[int, int]:
        return shape_of(self.size, self.aspect)

    @property
    def work(self) -> int:
        """System-pixels: the pixels of every solved (image, label) system."""
        height, width = self.shape
        return height * width * self.batch * LABEL_CASES[self.labels][1]

    def __str__(self) -> str:
        height, width = self.shape
        return f"{height}x{width}-L{self.labels}-B{self.batch}"


def cases() -> list[Case]:
    if grid_name() == "smoke":
        return [Case(16, "square", "21c", 2)]
    return [
        Case(size, aspect, labels, batch)
        for size in SIZES
        for aspect in ASPECTS
        for labels in LABEL_CASES
        for batch in BATCHES
    ]


@dataclass(frozen=True)
class Target:
    backend: str
    device: str
    preconditioner: str | None  # None for the direct solver

    def __str__(self) -> str:
        return "-".join(p for p in (self.backend, self.device, self.preconditioner) if p)


def targets() -> list[Target]:
    """Every backend this machine has, with every preconditioner the library has."""
    from rawks_triton.options import PRECONDITIONERS
    from rawks_triton.solve.choose import triton_available

    cuda = torch.cuda.is_available()
    devices = os.environ.get("RAWKS_BENCH_DEVICES", "cuda" if cuda else "cpu").split(",")
    out = []
    for device in devices:
        out += [Target("torch", device, p) for p in PRECONDITIONERS]
    # Listed everywhere and skipped without CUDA: on the CPU triton only runs in its
    # interpreter, which is not a speed path.
    if not cuda or triton_available(torch.device("cuda")):
        out += [Target("triton", "cuda", p) for p in PRECONDITIONERS]
    out.append(Target("scipy", "cpu", None))
    return out


def max_work(target: Target) -> float:
    grid = grid_name()
    if grid == "smoke":
        return float("inf")
    if _OPTIONS.get("max_work") is not None:
        return float(_OPTIONS["max_work"])
    if "RAWKS_BENCH_MAX_WORK" in os.environ:
        return float(os.environ["RAWKS_BENCH_MAX_WORK"])
    if grid == "full":
        return float("inf")
    return DEFAULT_CPU_WORK if target.device == "cpu" else float("inf")


def bench_dtype() -> torch.dtype:
    name = os.environ.get("RAWKS_BENCH_DTYPE", "float32")
    if name not in ("float32", "float64"):
        raise ValueError(f"RAWKS_BENCH_DTYPE must be 'float32' or 'float64', got {name!r}")
    return getattr(torch, name)


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        grid = cases()
        metafunc.parametrize("case", grid, ids=[str(c) for c in grid])
    if "target" in metafunc.fixturenames:
        found = targets()
        metafunc.parametrize("target", found, ids=[str(t) for t in found])
