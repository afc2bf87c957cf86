#!/usr/bin/env bash
# Start a Ray head on this machine for `ray job submit` (see the README). Ray 2.60 needs the same
# RAY_AUTH_MODE on the cluster and on every client.
#   RAY_AUTH_MODE=token bash cluster/start_head.sh [dashboard port, default 8265]
set -euo pipefail
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
# A fresh machine has no token yet: make one (~/.ray/auth_token), or `ray start` refuses to start.
if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ] && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ]; then
  ray get-auth-token --generate >/dev/null
fi
port=${1:-8265}
# Fewer timer wake-ups in Ray's own processes (client/ray_settings.py, the embedded cluster's settings);
# metrics collection stays on.
system_config=$(cd "$(dirname "$0")/.." && python3 -c 'from client.ray_settings import system_config_json as j; print(j())')
ray start --head --node-ip-address 127.0.0.1 --dashboard-host 127.0.0.1 --dashboard-port "$port" \
  --disable-usage-stats --system-config "$system_config"
echo "submit with: RAY_AUTH_MODE=$RAY_AUTH_MODE ray job submit --address http://127.0.0.1:$port --working-dir . -- python orchestrator.py ..."
