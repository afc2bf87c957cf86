"""Moved to harness/k8s_emulator.py (benchmarks use it too, and benchmarks import no test code).

Re-exported here so that tests importing ``tests.integration.k8s_emulator`` keep working unchanged.
"""

from harness.k8s_emulator import *  # noqa: F403
