"""bench/gpu_check.py cannot rot: its whole path runs on CPU tensors under the interpreter."""


import pytest
import torch

from rawks_triton.backends import triton_available


@pytest.mark.interpreter
@pytest.mark.skipif(not triton_available(torch.device("cpu")), reason="needs TRITON_INTERPRET=1")
def test_gpu_check_runs_on_cpu_and_writes_its_table(tmp_path, capsys):
    from bench import gpu_check

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- gpu-check:begin -->\nold\n<!-- gpu-check:end -->\n")
    args = ["--device", "cpu", "--sizes", "6", "--bench-size", "6", "--batch", "1", "--labels", "2",
            "--models", "rawks", "--preconditioners", "jacobi", "--cpu-repeats", "1", "--write-docs", str(doc)]
    assert gpu_check.main(args) == 0
    text = doc.read_text()
    assert "old" not in text and "| rawks | float64 | 6 |" in text and "| rawks | jacobi | triton | 6 |" in text
    assert "MISMATCH" not in capsys.readouterr().out


def test_bytes_per_iteration_counts_the_fused_passes():
    from bench.gpu_check import bytes_per_iteration

    # 10 vector passes + 5 coefficient passes of 4-byte elements, per system
    assert bytes_per_iteration(3, 512 * 512, torch.float32) == 15 * 3 * 512 * 512 * 4
    assert bytes_per_iteration(1, 100, torch.float64, jacobi=False) == 15 * 100 * 8
