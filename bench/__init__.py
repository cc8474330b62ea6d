"""Benchmarks of the gateway (run `python -m bench.api_bench --help`)."""
