"""The chaos matrix (issue 8, item 6): cases, faults and checks shared by benchmarks/chaos.py and
tests/integration/test_chaos.py. Not part of the product: it drives the orchestrator from outside."""
