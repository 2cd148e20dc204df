"""Benchmarks of rawks_triton: a pytest-benchmark suite and a comparison with the tools
people use today (``python -m bench.compare``). See docs/benchmarks.md."""
