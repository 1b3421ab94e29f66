"""Temporary: the benchmarks moved to `medvl.benchmarks` (shared by training and evaluation).

This alias keeps `medvl.eval.benchmarks` importable for code not yet moved (the demo); import from
`medvl.benchmarks` instead. It goes once nothing imports it.
"""

from medvl.benchmarks import BENCHMARKS, BenchmarkData, BenchmarkError, VQAItem, load_benchmark

__all__ = ["BENCHMARKS", "BenchmarkData", "BenchmarkError", "VQAItem", "load_benchmark"]
