"""The orchestrator's clients: the driver API (``client.driver``) and the command line (``client.cli``).

Every Ray call of a client lives here; the CLI uses only the driver's public API.
"""
