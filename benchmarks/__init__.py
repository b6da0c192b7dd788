"""Throughput benchmarks (print numbers; not tests)."""
