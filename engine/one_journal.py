"""One journal per queen: a driver attaches only to a queen that uses its journal and its configuration.

A queen is found by name in a Ray namespace; two configurations that share a namespace (the default one,
``deploy-orchestrator``, for instance) would otherwise share a queen, and the second driver's deployments
would go silently into the first one's journal.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from engine.config import EnterpriseConfig


def config_fingerprint(config: EnterpriseConfig) -> str:
    """SHA-256 of the configuration's content as loaded and validated (so comments, key order and the
    camelCase or snake_case spelling of a key do not count; every value does)."""
    body = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def queen_identity(config: EnterpriseConfig, journal_path: str | Path) -> dict[str, Any]:
    """What a queen says of itself in ``ready()`` and a driver compares with its own."""
    source = config.source
    return {
        "journal": str(_resolved(journal_path)),
        "config": str(source) if source is not None else None,
        "config_hash": config_fingerprint(config),
    }


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def identity_mismatch(running: dict[str, Any], mine: dict[str, Any], namespace: str) -> str | None:
    """Why a driver with identity ``mine`` must not use the queen that answered ``running`` (None: it may)."""
    same_journal = _resolved(str(running.get("journal", ""))) == _resolved(str(mine["journal"]))
    same_config = running.get("config_hash") == mine["config_hash"]
    if same_journal and same_config:
        return None
    differs = " and ".join(
        part for part, same in (("journal", same_journal), ("configuration", same_config)) if not same
    )
    return (
        f"the orchestrator running in Ray namespace '{namespace}' uses another {differs}: its journal is "
        f"{running.get('journal')} (configuration {running.get('config') or 'unknown'}), this driver's is "
        f"{mine['journal']} (configuration {mine['config']}). One orchestrator drives one journal with one "
        f"configuration: use the running one's configuration (ORCH_CONFIG, ORCH_HOME or --config), give "
        f"this configuration a Ray namespace of its own (the `namespace:` key of enterprise_config.yaml, "
        f"now '{namespace}'), or stop the running orchestrator first"
    )
