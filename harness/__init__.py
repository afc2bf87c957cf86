"""Real components that tests and benchmarks both start (never imported by the product): a TLS Ray cluster of
several nodes on this machine, a TLS PostgreSQL of its own, and the Kubernetes API emulator with the
Deployment controller a test or benchmark plays. Benchmarks import these from here, never from ``tests/``."""
