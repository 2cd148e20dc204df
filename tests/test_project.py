"""Project structure: imports run one way down the layers, one version source, the typed
marker, the options written once, and a clear error without triton."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pathlib
import subprocess
import sys

import pytest

import rawks_triton
from rawks_triton.options import PropagationOptions

PACKAGE = pathlib.Path(rawks_triton.__file__).parent

# Bottom to top: a module may import its own layer and the layers below, never above.
LAYERS = [
    ["kernels"],
    ["_checks", "coefficients", "solve.layout", "solve.stencil", "solve.options", "solve.choose", "solve"],
    ["systems", "solve.rules", "solve.protocols", "solve.pcg", "reference", "memory"],
    ["solve.multigrid"],
    ["backends"],
    ["aot", "autograd", "options"],
    ["propagation"],
    ["random_walker_weights"],
    ["random_walker", "loss", "testing"],
    ["training", "demo"],
    ["cli", "cli_scribbles"],
]


def _is_module(name: str) -> bool:
    path = PACKAGE.joinpath(*name.split(".")) if name else PACKAGE
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _rank(module: str) -> int:
    """The layer of ``rawks_triton.<module>`` (the longest listed prefix decides); the package
    itself (``from rawks_triton import __version__``) imports every layer: the top one."""
    if module == "":
        return len(LAYERS) - 1
    best, rank = -1, None
    for level, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, rank = len(name), level
    assert rank is not None, f"rawks_triton.{module} is in no layer of tests/test_project.py"
    return rank


def _imports(path: pathlib.Path):
    """(line, imported rawks_triton module relative to the package) for every import in the file."""
    # the package a relative import starts from (for __init__.py, the package itself)
    package_parts = list(path.relative_to(PACKAGE).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [".".join(base + [alias.name]) for alias in node.names]
                # `from . import name` imports a module, or an attribute of the package
                names = [name if _is_module(name) else ".".join(base) for name in names]
            elif node.module and node.module.split(".")[0] == "rawks_triton":
                names = [node.module.removeprefix("rawks_triton").lstrip(".")]
            else:
                continue
            for name in names:
                yield node.lineno, name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "rawks_triton":
                    yield node.lineno, alias.name.removeprefix("rawks_triton").lstrip(".")


def test_imports_run_down_the_layers():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        if module == "__init__":
            continue  # the package's public face re-exports from every layer
        for line, target in _imports(path):
            if target and _rank(target) > _rank(module):
                upward.append(f"rawks_triton.{module} (line {line}) imports rawks_triton.{target}")
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_one_version_source():
    from importlib.metadata import version

    assert version("rawks-triton") == rawks_triton.__version__
    assert "version" not in (PACKAGE.parent / "pyproject.toml").read_text().split("[project]")[1].split("[")[0].replace(
        'dynamic = ["version"]', ""
    )


def test_typed_marker_is_shipped():
    assert (PACKAGE / "py.typed").exists()
    assert 'rawks_triton = ["py.typed"]' in (PACKAGE.parent / "pyproject.toml").read_text()


def test_propagate_keywords_are_the_options_dataclass():
    """propagate's keyword-only parameters, their defaults and PropagationOptions agree."""
    keyword_only = {
        name: p.default
        for name, p in inspect.signature(rawks_triton.propagate).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    fields = {f.name: f.default for f in dataclasses.fields(PropagationOptions)}
    assert keyword_only == fields


def test_module_rejects_an_unknown_option_by_name():
    with pytest.raises(TypeError, match="tolerance"):
        rawks_triton.RandomWalkPropagation(2, tolerance=1e-3)
    with pytest.raises(ValueError, match="`rtol`"):
        rawks_triton.RandomWalkPropagation(2, rtol=-1.0)


def test_without_triton_the_library_works_and_backend_triton_says_what_to_install():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, rawks_triton\n"
        "b = torch.zeros(1, 5, 6); s = torch.full((1, 5, 6), -1); s[0, 0, 0] = 0; s[0, 4, 5] = 1\n"
        "r = rawks_triton.propagate(b, s, 2)\n"
        "assert r.backend == 'torch' and bool(r.converged.all())\n"
        "try:\n"
        "    rawks_triton.propagate(b, s, 2, backend='triton')\n"
        "except ValueError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "rawks-triton[triton]" in out.stdout and "`backend`" in out.stdout


def test_backends_meet_the_protocols():
    import torch

    from rawks_triton.backends import get_backend
    from rawks_triton.coefficients import rawks_coefficients
    from rawks_triton.solve.choose import triton_available
    from rawks_triton.solve.options import SolverOptions
    from rawks_triton.solve.protocols import Backend, Operator, Preconditioner
    from rawks_triton.systems import build_stencil, compact_labels

    seeds = torch.full((1, 5, 6), -1)
    seeds[0, 0, 0], seeds[0, 4, 5] = 0, 1
    systems = compact_labels(seeds, 2, -1)
    stencil = build_stencil(*rawks_coefficients(torch.zeros(1, 5, 6, dtype=torch.float64)), systems.free)
    names = ["scipy", "torch"] + (["triton"] if triton_available(torch.device("cpu")) else [])
    for name in names:
        for preconditioner in ("jacobi", "multigrid"):
            backend = get_backend(name)(stencil, systems, SolverOptions(preconditioner=preconditioner))
            assert isinstance(backend, Backend), (name, preconditioner)
            if name == "torch":
                assert isinstance(backend.op, Operator)
                assert isinstance(backend.preconditioner, Preconditioner)
            if name == "triton" and preconditioner == "multigrid":
                assert isinstance(backend.preconditioner, Preconditioner)
