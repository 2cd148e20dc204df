"""The benchmark code must not rot: one tiny case of every benchmark, nothing timed.

Runs ``pytest bench/`` on the smoke grid with ``--benchmark-disable`` and
``python -m bench.compare --smoke`` in subprocesses (the benchmark suite has its own
conftest). No assertion here is about time.
"""

import csv
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
        ["-m", "pytest", "bench", "-q", "--benchmark-disable", "-p", "no:cacheprovider", "-rs"],
        RAWKS_BENCH_GRID="smoke",
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) >= 8, output[-4000:]  # 2 benchmarks x 2 models x >= 2 backends
    assert "skipped" not in output and "failed" not in output, output[-4000:]


def test_comparison_script_writes_its_table_csv_and_plot(tmp_path):
    done = run(["-m", "bench.compare", "--smoke", "--out", str(tmp_path)])
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "| rawks torch f64 |" in done.stdout and "paper / this" in done.stdout, done.stdout[-4000:]
    (table,) = tmp_path.glob("compare-*-smoke.csv")  # -cpu or -cuda, by the machine
    with open(table) as f:
        rows = list(csv.DictReader(f))
    methods = {row["method"] for row in rows}
    assert {"rawks torch f64", "rawks torch f32", "scipy spsolve"} <= methods, methods
    assert any(m.startswith("rawks torch cpu jacobi forward+backward") for m in methods), methods
    for row in rows:
        if row["section"] == "grady" and row["runs"] != "0":
            assert math.isfinite(float(row["median_s"])) and float(row["median_s"]) > 0, row
            assert float(row["max_prob_diff"]) < 0.05, row  # every method solves the same problem
    try:
        import skimage  # noqa: F401

        assert "skimage cg_j" in methods and rows[0]["speedup_vs_skimage_cg_j"], rows[0]
    except ImportError:
        assert "scikit-image is not installed" in done.stderr
    try:
        import matplotlib  # noqa: F401

        assert table.with_suffix(".png").stat().st_size > 0
    except ImportError:
        pass
