#!/bin/sh
# Writes the artifact file a CI job deploys: examples/ci/describe_artifact.sh SERVICE VERSION COMMIT BUILDER
# The pipeline's deploy stages read it with `pipeline run ... --artifact artifact.yaml`; `artifacts sign` then
# adds its sha256 (of `path`) and an ed25519 signature, which production (nasa-pot10) requires.
set -eu
cat <<YAML
name: $1
version: "$2"
source: "file://examples/sample_service.py"
path: examples/sample_service.py
command: [python3, examples/sample_service.py]
build: {commit: "$3", builder: "$4", builtAt: "$(date -u +%Y-%m-%dT%H:%M:%SZ)"}
YAML
