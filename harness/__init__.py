"""Environments, fakes and the scenario harness shared by the tests and the benchmarks.

Not test code itself: benchmarks/ imports from here, never from tests/ (tests/unit/test_benchmark_imports.py).
Needs the test extras (moto, kmock); not part of the installed package.
"""
