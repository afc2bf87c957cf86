"""Moved to harness/environments.py (benchmarks use it too, and benchmarks import no test code).

Re-exported here so that tests importing ``tests.integration.environments`` keep working unchanged.
"""

from harness.environments import *  # noqa: F403
