"""Benchmarks: `python -m bench all [--quick]` runs them all and writes BENCHMARKS.md (see bench/README.md)."""
