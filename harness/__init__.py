"""Environments, fakes, the scenario harness and the real components shared by the tests and the benchmarks: a
TLS Ray cluster of several nodes on this machine (with a Redis for GCS fault tolerance), a TLS PostgreSQL of
its own, and the Kubernetes API emulator with the Deployment controller a test or benchmark plays.

Not test code itself: benchmarks/ imports from here, never from tests/ (tests/unit/test_benchmark_imports.py).
Needs the test extras (moto, kmock); not part of the installed package.
"""
