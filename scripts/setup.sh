#!/usr/bin/env bash
# Idempotent set-up on a fresh machine (Debian 12, Python 3.11, root or sudo).
#   bash scripts/setup.sh          # what the quickstart needs: the Python packages, pinned
#   bash scripts/setup.sh --test   # plus what the tests need: Docker engine, sshd, busybox (apt)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ "${1:-}" = "--test" ]; then
  need=()
  command -v dockerd >/dev/null || need+=(docker.io)
  [ -x /bin/busybox ] || need+=(busybox-static)
  command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v ip >/dev/null || need+=(iproute2)
  if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

# pip 23.2 fails on old metadata while resolving boto3; uv resolves and installs the lock file in seconds.
"$PYTHON" -m pip install -q -U pip uv
"$PYTHON" -m uv pip install --system -q -r requirements.lock
"$PYTHON" -m uv pip install --system -q --no-deps -e .
echo "set-up done: $("$PYTHON" -c 'import ray; print("ray", ray.__version__)')"
