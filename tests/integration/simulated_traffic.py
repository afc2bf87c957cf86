"""Moved to harness/simulated_traffic.py (benchmarks use it too, and benchmarks import no test code).

Re-exported here so that tests importing ``tests.integration.simulated_traffic`` keep working unchanged.
"""

from harness.simulated_traffic import *  # noqa: F403
