"""The benchmark code must not rot: one tiny case of every benchmark, nothing timed.

Runs ``pytest bench/`` on the smoke grid with ``--benchmark-disable`` in a subprocess (the
benchmark suite has its own conftest) and ``python -m bench.compare --smoke`` in this
process. No assertion here is about time.
"""

import csv
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run(args, **env):
    environment = dict(os.environ, **env)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600
    )


def test_benchmark_suite_runs_one_tiny_case_of_each_benchmark():
    pytest.importorskip("pytest_benchmark")
    done = run(
        [
            "-m",
            "pytest",
            "bench",
            "-q",
            "--benchmark-disable",
            "-p",
            "no:cacheprovider",
            "-rs",
            "--bench-grid",
            "smoke",
            "--bench-threads",
            "1",
        ]
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) >= 8, output[-4000:]  # 2 benchmarks x 2 models x >= 2 backends
    assert "failed" not in output and "error" not in output.lower(), output[-4000:]
    # Only CUDA targets may be skipped (on a machine without CUDA), never a tiny CPU case.
    skips = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    assert all("no CUDA device" in line for line in skips), "\n".join(skips)


DOC = """# Benchmarks

Prose before the markers stays.

<!-- compare-cpu-machine:begin -->
old machine
<!-- compare-cpu-machine:end -->

<!-- compare-cpu:begin -->
old table
<!-- compare-cpu:end -->

<!-- multigrid:begin -->
another script's block
<!-- multigrid:end -->
"""


def test_comparison_script_writes_its_table_csv_plot_and_docs(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import compare

    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC)
    threads = torch.get_num_threads()
    try:
        assert compare.main(["--smoke", "--threads", "1", "--out", str(tmp_path), "--write-docs", str(doc)]) == 0
    finally:
        torch.set_num_threads(threads)
    stdout, stderr = capsys.readouterr()
    assert "| rawks torch f64 |" in stdout and "paper / this" in stdout, stdout[-4000:]
    (table,) = tmp_path.glob("compare-*-smoke.csv")  # -cpu or -cuda, by the machine
    device = "cuda" if "cuda-smoke" in table.name else "cpu"
    with open(table) as f:
        rows = list(csv.DictReader(f))
    methods = {row["method"] for row in rows}
    assert {"rawks torch f64", "rawks torch f32", "scipy spsolve"} <= methods, methods
    assert any(m.startswith("rawks torch cpu jacobi forward+backward") for m in methods), methods
    assert any(m.startswith("rawks scipy direct forward") for m in methods), methods
    for row in rows:
        if row["runs"] != "0":
            assert math.isfinite(float(row["median_s"])) and float(row["median_s"]) > 0, row
            assert float(row["max_prob_diff"]) < 0.05, row  # every method solves the same problem
    try:
        import skimage  # noqa: F401

        assert "skimage cg_j" in methods and rows[0]["speedup_vs_skimage_cg_j"], rows[0]
    except ImportError:
        assert "scikit-image is not installed" in stderr
    try:
        import matplotlib  # noqa: F401

        assert table.with_suffix(".png").stat().st_size > 0
    except ImportError:
        pass

    # --write-docs: every generated block between its markers, everything else untouched.
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nProse before the markers stays.")
    assert "old machine" not in text and "old table" not in text
    assert "<!-- multigrid:begin -->\nanother script's block\n<!-- multigrid:end -->" in text
    for name in (
        f"compare-{device}-machine",
        f"compare-{device}",
        f"rawks-paper-{device}",
        f"compare-{device}-findings",
    ):
        assert text.count(f"<!-- {name}:begin -->") == 1 and text.count(f"<!-- {name}:end -->") == 1, name
    block = text.split(f"<!-- compare-{device}:begin -->")[1].split(f"<!-- compare-{device}:end -->")[0]
    assert "| rawks torch f64 |" in block and "| scipy spsolve |" in block
    assert "--smoke" in text.split(f"<!-- compare-{device}-machine:begin -->")[1]  # the command that made it


def test_write_docs_replaces_only_between_markers(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.report import write_docs

    doc = tmp_path / "doc.md"
    doc.write_text("a\n<!-- x:begin -->\nold\n<!-- x:end -->\nb\n")
    assert write_docs(str(doc), {"x": "new\nlines", "y": ""}) == ["y"]
    assert doc.read_text() == (
        "a\n<!-- x:begin -->\nnew\nlines\n<!-- x:end -->\nb\n\n"
        "<!-- y:begin -->\nNot measured in this run.\n<!-- y:end -->\n"
    )


def test_multigrid_iterations_script_runs_on_a_tiny_size(capsys):
    from bench import multigrid_iterations

    threads = torch.get_num_threads()
    try:
        multigrid_iterations.main(
            ["--sizes", "16", "--models", "rawks,grady", "--jacobi-max-size", "16", "--threads", "1"]
        )
    finally:
        torch.set_num_threads(threads)
    rows = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| rawks |") or line.startswith("| grady |")
    ]
    assert len(rows) == 2, rows
    for row in rows:
        multigrid = int(row.split("|")[5])
        assert multigrid > 0, row  # converged (a negative count means it did not)


def test_multigrid_forward_backward_script_runs_on_a_tiny_size(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import multigrid_forward_backward

    assert capsys.readouterr().out == ""  # importing runs nothing
    threads = torch.get_num_threads()
    try:
        assert multigrid_forward_backward.main(["--sizes", "12", "--repeats", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["12x12 forward", "12x12 forward+backward"], lines
    for line in lines:
        assert int(line.split("iterations fwd ")[1].split(",")[0]) > 0, line


def test_random_walker_bench_runs_on_tiny_sizes_and_writes_its_blocks(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import random_walker_bench

    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC)
    threads = torch.get_num_threads()
    try:
        assert random_walker_bench.main(["--smoke", "--threads", "1", "--write-docs", str(doc)]) == 0
        assert random_walker_bench.main(["--smoke", "--crossover", "--threads", "1", "--write-docs", str(doc)]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "| noisy scene | 24 x 24 | ours auto (default) |" in out and "| volume | 6 x 6 x 6 | ours bf |" in out, out
    text = doc.read_text()
    assert "<!-- multigrid:begin -->\nanother script's block\n<!-- multigrid:end -->" in text
    for name in ("random-walker-cpu-machine", "random-walker-cpu", "random-walker-crossover"):
        assert text.count(f"<!-- {name}:begin -->") == 1 and text.count(f"<!-- {name}:end -->") == 1, name
    assert "--smoke" in text.split("<!-- random-walker-cpu-machine:begin -->")[1]
