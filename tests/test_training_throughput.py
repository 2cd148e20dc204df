"""bench/train_throughput.py must not rot: a tiny run prints the table and writes it between the markers."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.train_throughput import BEGIN, END, main  # noqa: E402


def test_tiny_run_prints_and_writes_the_table(tmp_path, capsys):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\n{BEGIN}\nNot measured yet.\n{END}\n\nafter\n")
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    args = [
        "--devices",
        "cpu",
        "--height",
        "24",
        "--width",
        "32",
        "--batch-size",
        "1",
        "--warmup",
        "0",
        "--repeats",
        "1",
    ]
    assert main(args + ["--write-docs", str(doc)]) == 0
    printed = capsys.readouterr().out
    for protocol in ("joint", "sparse"):
        assert f"| {protocol} |" in printed
    text = doc.read_text()
    assert "Not measured yet." not in text and "| joint |" in text and text.endswith(f"{END}\n\nafter\n")
    assert main(args + ["--protocols", "sparse", "--write-docs", str(bare)]) == 0
    assert bare.read_text() == "no markers\n" and "has no" in capsys.readouterr().err
