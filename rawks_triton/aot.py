"""Ahead-of-time compilation of every Triton kernel for sm_80 and sm_90, with no GPU.

``python -m rawks_triton.aot`` compiles each kernel, for each dtype and constexpr
combination that a launcher can choose, to PTX and cubin with the ptxas bundled in the
triton wheel, prints a table (kernel, target, registers, spills, shared memory, cubin
bytes) and exits non-zero if any compilation fails. The interpreter forgives dtype mixing
and non-constexpr shapes; this is the check that the kernels really compile.

The list of what to compile is :func:`rawks_triton.backends.triton.specs.kernel_specs`;
it is imported when the command runs, after ``TRITON_INTERPRET`` is settled (an
interpreted kernel cannot be compiled).
"""

from __future__ import annotations

import argparse
import sys
import time

TARGETS = (("cuda", 80, 32), ("cuda", 90, 32))


def compile_spec(spec, target: tuple):
    """Compile one spec for one (backend, arch, warp_size) target; returns the compiled kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    missing = set(spec.fn.arg_names) - set(spec.signature)
    if missing:
        raise ValueError(f"{spec.name}: signature lacks arguments {sorted(missing)}")
    source = ASTSource(spec.fn, spec.signature, constexprs=spec.constexprs)
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages, "enable_fp_fusion": True}
    return triton.compile(source, target=GPUTarget(*target), options=options)


def resource_usage(cubin: bytes) -> dict:
    """Registers, stack and local (spilled) bytes per thread from the cuobjdump bundled with triton."""
    import os
    import re
    import subprocess
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, timeout=60).stdout
    fields = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", text))
    return {
        "registers": int(fields["REG"]) if "REG" in fields else None,
        "local": int(fields["LOCAL"]) if "LOCAL" in fields else None,
    }


def _metadata(compiled) -> dict:
    cubin = compiled.asm.get("cubin")
    usage = resource_usage(cubin) if cubin else {}
    return {
        "registers": usage.get("registers"),
        "local": usage.get("local"),
        "shared": getattr(compiled.metadata, "shared", None),
        "cubin_bytes": len(cubin) if cubin else None,
    }


def run(targets=TARGETS, specs=None, out=sys.stdout) -> int:
    """Compile ``specs`` (default: every kernel of the triton backend) for ``targets``; 1 on any failure."""
    if specs is None:
        from .backends.triton.specs import kernel_specs

        specs = kernel_specs()
    if not specs:
        print("no kernels found", file=out)
        return 1
    rows, failures = [], []
    start = time.perf_counter()
    for spec in specs:
        for target in targets:
            arch = f"sm_{target[1]}"
            try:
                meta = _metadata(compile_spec(spec, target))
                rows.append((spec.name, arch, meta))
            except Exception as err:  # report every failure, then exit non-zero
                failures.append((spec.name, arch, f"{type(err).__name__}: {err}"))
    columns = (("registers", "regs"), ("local", "spill B"), ("shared", "shared B"), ("cubin_bytes", "cubin B"))
    header = f"{'kernel':<66} {'target':<6} " + " ".join(f"{title:>8}" for _, title in columns)
    print(header, file=out)
    print("-" * len(header), file=out)
    for name, arch, meta in rows:
        cells = " ".join(f"{'-' if meta[key] is None else meta[key]:>8}" for key, _ in columns)
        print(f"{name:<66} {arch:<6} {cells}", file=out)
    for name, arch, message in failures:
        print(f"FAILED {name} {arch}: {message.splitlines()[0] if message else ''}", file=out)
    elapsed = time.perf_counter() - start
    print(f"{len(rows)} compiled, {len(failures)} failed, {elapsed:.1f} s", file=out)
    return 1 if failures else 0


def main(argv=None) -> int:
    import os

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        # Interpreted kernels cannot be compiled; this command always compiles.
        if any(m.startswith("rawks_triton.kernels") for m in sys.modules):
            raise SystemExit(
                "rawks_triton.aot: the kernels were imported under TRITON_INTERPRET=1; run it in a fresh process"
            )
        os.environ["TRITON_INTERPRET"] = "0"
    parser = argparse.ArgumentParser(prog="python -m rawks_triton.aot", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", choices=(80, 90), help="only these targets")
    args = parser.parse_args(argv)
    targets = tuple(t for t in TARGETS if not args.arch or t[1] in args.arch)
    return run(targets)


if __name__ == "__main__":
    sys.exit(main())
