"""Benchmark harness (bench/run); a package only so that its modules get unique names."""
