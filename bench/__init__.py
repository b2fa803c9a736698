"""End-to-end benchmarks: `make bench` (python -m bench)."""
