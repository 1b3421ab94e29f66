"""Temporary: moved to `medvl.benchmarks.base` (see `medvl.eval.benchmarks`); goes once nothing imports it."""

from medvl.benchmarks.base import LETTERS, BenchmarkData, BenchmarkError, VQAItem, closed_as_choice, yes_no_answer

__all__ = ["LETTERS", "BenchmarkData", "BenchmarkError", "VQAItem", "closed_as_choice", "yes_no_answer"]
