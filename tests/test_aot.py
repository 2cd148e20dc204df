"""`python -m rawks_triton.aot` compiles every kernel for sm_80 and sm_90 without a GPU."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def test_every_kernel_compiles_for_sm80_and_sm90():
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run(
        [sys.executable, "-m", "rawks_triton.aot"], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    rows = [line.split() for line in lines if line.split() and line.split()[1:2] in (["sm_80"], ["sm_90"])]
    names = {row[0].split("[")[0] for row in rows}
    assert {"stencil_residual", "cg_direction_matvec", "cg_update", "dot_partials", "coefficient_gradients"} <= names
    for arch in ("sm_80", "sm_90"):  # every kernel for both targets, with a real cubin
        assert sorted(r[0] for r in rows if r[1] == arch) == sorted({r[0] for r in rows})
    assert all(int(row[-1]) > 1000 for row in rows), "cubin sizes"
    assert "0 failed" in lines[-1]


def test_a_kernel_that_does_not_compile_is_reported_and_fails(tmp_path):
    """The command must fail (exit 1, a FAILED line) on a kernel that only the interpreter accepts."""
    module = tmp_path / "broken_kernel.py"
    module.write_text(
        "import triton, triton.language as tl\n"
        "from rawks_triton.backends.triton.specs import KernelSpec\n"
        "@triton.jit\n"
        "def broken(x_ptr, n):\n"
        "    offs = tl.arange(0, n)\n"  # a non-constexpr shape
        "    tl.store(x_ptr + offs, offs)\n"
        "SPEC = KernelSpec('broken', broken, {'x_ptr': '*fp32', 'n': 'i32'})\n"
    )
    code = (
        "import sys; from rawks_triton import aot; from broken_kernel import SPEC; "
        'sys.exit(aot.run(targets=(("cuda", 90, 32),), specs=[SPEC]))'
    )
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED broken sm_90" in proc.stdout


def test_the_spec_list_names_every_kernel_of_the_package():
    """specs.py is the one list: every @triton.jit kernel of rawks_triton.kernels is in it."""
    code = (
        "import rawks_triton.kernels as k\n"
        "from rawks_triton.backends.triton.specs import kernel_specs\n"
        "listed = {s.fn.__name__ for s in kernel_specs()}\n"
        "kernels = {n for n in k.__all__ if n.endswith('_kernel')}\n"
        "assert listed == kernels, (sorted(listed), sorted(kernels))\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
