#!/usr/bin/env bash
# Start N SSH daemons on 127.0.0.1 that act as the "hosts" of the vm platform in tests and demos.
#
#   bash cluster/start_sshd.sh [DIR=/tmp/orchestrator-ssh] [COUNT=2] [BASE_PORT=2222]
#
# Idempotent: installs openssh-server if missing, makes (once) a host key, a client key pair
# (DIR/client_key, authorised in DIR/authorized_keys) and a known_hosts file (DIR/known_hosts) that trusts the
# daemons, then starts each daemon that is not already running (pid file DIR/sshd-PORT.pid) and waits up to
# 20 s for each port to accept connections. Stop them with: kill "$(cat DIR/sshd-PORT.pid)".
# Prints paths and ports only, never key material.
set -euo pipefail

dir="${1:-/tmp/orchestrator-ssh}"
count="${2:-2}"
base_port="${3:-2222}"
sshd_bin=/usr/sbin/sshd

die() { echo "start_sshd: $*" >&2; exit 1; }

[[ "$count" =~ ^[0-9]+$ && "$count" -ge 1 ]] || die "COUNT must be a positive number, got '$count'"
[[ "$base_port" =~ ^[0-9]+$ ]] || die "BASE_PORT must be a number, got '$base_port'"

install_openssh() {
    [[ -x "$sshd_bin" ]] && return 0
    [[ "$(id -u)" == 0 ]] || die "openssh-server is not installed and installing it needs root"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -q openssh-server >/dev/null 2>&1; } \
        || die "could not install openssh-server"
    # The package may start the system daemon on port 22; these tests never need it.
    [[ -x "$sshd_bin" ]] || die "sshd missing after installing openssh-server"
}

make_keys() {
    mkdir -p "$dir"
    chmod 700 "$dir"
    [[ -f "$dir/host_key" ]] || ssh-keygen -q -t ed25519 -N '' -C orchestrator-test-host -f "$dir/host_key"
    [[ -f "$dir/client_key" ]] || ssh-keygen -q -t ed25519 -N '' -C orchestrator-test-client -f "$dir/client_key"
    cp "$dir/client_key.pub" "$dir/authorized_keys"
    chmod 600 "$dir/host_key" "$dir/client_key" "$dir/authorized_keys"
}

write_config() {
    # Our own config, so that the system's sshd_config (PAM, Include files, port 22) plays no part.
    cat >"$dir/sshd_config" <<EOF
ListenAddress 127.0.0.1
HostKey $dir/host_key
AuthorizedKeysFile $dir/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
MaxSessions 50
MaxStartups 50:30:100
LogLevel ERROR
Subsystem sftp internal-sftp
# bash sources ~/.bashrc for every command run over SSH unless SHLVL is already set; here root's .bashrc
# (pyenv init) costs ~0.1 s a command, which only slows the tests down.
SetEnv SHLVL=1
EOF
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

daemon_running() {
    local pid_file="$dir/sshd-$1.pid" pid
    [[ -f "$pid_file" ]] || return 1
    pid="$(cat "$pid_file")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && port_open "$1"
}

start_daemon() {
    local port="$1"
    if daemon_running "$port"; then
        echo "sshd already running on 127.0.0.1:$port"
        return 0
    fi
    port_open "$port" && die "port $port is already taken by another process"
    rm -f "$dir/sshd-$port.pid"
    setsid -f "$sshd_bin" -D -f "$dir/sshd_config" -p "$port" -o "PidFile=$dir/sshd-$port.pid" \
        -E "$dir/sshd-$port.log" </dev/null >/dev/null 2>&1
    local deadline=$((SECONDS + 20))
    until port_open "$port"; do
        ((SECONDS < deadline)) || die "sshd on port $port did not accept connections within 20 s (see $dir/sshd-$port.log)"
        sleep 0.1
    done
    echo "sshd started on 127.0.0.1:$port"
}

write_known_hosts() {
    local key port
    key="$(cut -d' ' -f1,2 "$dir/host_key.pub")"
    : >"$dir/known_hosts"
    for ((i = 0; i < count; i++)); do
        port=$((base_port + i))
        echo "[127.0.0.1]:$port $key" >>"$dir/known_hosts"
    done
}

install_openssh
mkdir -p /run/sshd 2>/dev/null || true
make_keys
write_config
write_known_hosts
for ((i = 0; i < count; i++)); do
    start_daemon $((base_port + i))
done
echo "client key: $dir/client_key; known hosts: $dir/known_hosts"
