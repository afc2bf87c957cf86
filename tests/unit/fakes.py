"""Moved to harness/fakes.py (benchmarks use it too, and benchmarks import no test code).

Re-exported here so that tests importing ``tests.unit.fakes`` keep working unchanged.
"""

from harness.fakes import *  # noqa: F403
