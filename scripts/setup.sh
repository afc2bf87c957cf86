#!/usr/bin/env bash
# Idempotent set-up on a fresh machine (Debian 12, Python 3.11, root or sudo).
#   bash scripts/setup.sh          # what the quickstart needs: the Python packages, pinned
#   bash scripts/setup.sh --test   # plus every program the tests start (apt), checked by name at the end
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

if [ "${1:-}" = "--test" ]; then
  need=()
  command -v dockerd >/dev/null || [ -x /usr/sbin/dockerd ] || need+=(docker.io)
  [ -x /bin/busybox ] || need+=(busybox-static)
  command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v ip >/dev/null || [ -x /usr/sbin/ip ] || need+=(iproute2)
  command -v prometheus >/dev/null || [ -x /usr/bin/prometheus ] || need+=(prometheus)
  [ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql)
  command -v chromium >/dev/null || need+=(chromium)
  command -v redis-server >/dev/null || need+=(redis-server)
  if [ ${#need[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    # The Debian packages would start their own services (prometheus on :9090); the tests start their own.
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
    $SUDO rm -f /usr/sbin/policy-rc.d
  fi
fi

# pip 23.2 fails on old metadata while resolving boto3; uv resolves and installs the lock file in seconds.
"$PYTHON" -m pip install -q -U pip uv
# Bytecode compiled now, once: otherwise the first processes to import a package (several runners at once)
# each compile it from source.
"$PYTHON" -m uv pip install --system -q --compile-bytecode -r requirements.lock
"$PYTHON" -m uv pip install --system -q --no-deps -e .
# pyenv puts new console scripts (ray, deploy-orchestrator) on PATH only after a rehash.
if command -v pyenv >/dev/null; then pyenv rehash; fi
echo "set-up done: $("$PYTHON" -c 'import ray; print("ray", ray.__version__)')"
if [ "${1:-}" = "--test" ]; then
  "$PYTHON" scripts/programs.py
fi
