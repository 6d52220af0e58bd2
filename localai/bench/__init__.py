"""Benchmarks: workloads, metrics with vLLM's names, data- and tensor-parallel launchers, reports."""
