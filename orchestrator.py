"""Deployment orchestrator on Ray: the facade over the driver API and the command line.

orch = DeploymentOrchestrator()            # RAY_ADDRESS's cluster, or an embedded local Ray
result = orch.deploy(artifact, "canary", "staging", "local")
print(result.success, result.deployment_id, result.status.phase)

python orchestrator.py quickstart
python orchestrator.py deploy --service web --version 2.0.0 --command "python app.py" --strategy canary
python orchestrator.py status|history|rollback|promote|pause|resume|abort ...
"""

from __future__ import annotations

import sys

from client.cli import main, progress_printer
from client.driver import DeploymentOrchestrator, read_journal
from engine.config import ConfigError, EnterpriseConfig, load_config
from engine.models import (
    Artifact,
    BlueGreenConfig,
    CanaryConfig,
    DeploymentRequest,
    DeploymentResult,
    DeploymentStatus,
    Environment,
    Phase,
    PlatformConfig,
    RollingConfig,
    Strategy,
    StrategyType,
)
from engine.requests import build_request

__all__ = [
    "Artifact",
    "BlueGreenConfig",
    "CanaryConfig",
    "ConfigError",
    "DeploymentOrchestrator",
    "DeploymentRequest",
    "DeploymentResult",
    "DeploymentStatus",
    "EnterpriseConfig",
    "Environment",
    "Phase",
    "PlatformConfig",
    "RollingConfig",
    "Strategy",
    "StrategyType",
    "build_request",
    "load_config",
    "main",
    "progress_printer",
    "read_journal",
]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
