#!/usr/bin/env bash
# Start a Docker engine on this machine and build the local images the docker platform's tests use.
#
#   bash cluster/start_docker.sh
#
# Idempotent: installs docker.io and busybox-static with apt if missing (apt-get update only when needed),
# starts dockerd in the background (logs in /tmp/dockerd.log) unless `docker info` already works, waits up
# to 60 s for it, then builds what is missing (below). Before it starts an engine, a dockerd that runs
# without answering gets 30 s and is then stopped, and pid files left by killed daemons are removed.
# Images:
#   local/busybox:1          a base image made from /bin/busybox (no registry is reachable here)
#   local/sample-service:1   a small HTTP service (cluster/docker/sample-service), rebuilt when its files change
# The engine runs without iptables and without a bridge: containers use the host network.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sample_dir="$here/docker/sample-service"
base_image="local/busybox:1"
sample_image="local/sample-service:1"
hash_label="org.deploy-orchestrator.source-hash"
dockerd_log="/tmp/dockerd.log"
# The legacy builder works offline with the vfs storage driver; BuildKit may not be installed.
export DOCKER_BUILDKIT=0

die() { echo "start_docker: $*" >&2; exit 1; }

apt_updated=0
apt_install() {
    [[ "$(id -u)" == 0 ]] || die "$1 is not installed and installing it needs root"
    if ((apt_updated == 0)); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null 2>&1 && return 0
        apt-get update -q >/dev/null 2>&1 || die "apt-get update failed"
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null 2>&1 || die "could not install $1"
}

install_packages() {
    command -v dockerd >/dev/null 2>&1 || apt_install docker.io
    command -v docker >/dev/null 2>&1 || die "docker client missing after installing docker.io"
    # A static busybox runs in an image that has nothing else in it.
    if ! { [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1; }; then
        apt_install busybox-static
    fi
    [[ -x /bin/busybox ]] || die "/bin/busybox missing after installing busybox-static"
}

# A stopped or stuck engine accepts connections and never answers: every question is bounded.
engine_answers() {
    timeout 10 docker info >/dev/null 2>&1
}

# Whether pid $1 is a live (not a zombie) process named $2.
alive_named() {
    [[ "$(cat "/proc/$1/comm" 2>/dev/null)" == "$2" ]] || return 1
    ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# The pids of live processes named $1.
pids_named() {
    local entry
    for entry in /proc/[0-9]*; do
        alive_named "${entry#/proc/}" "$1" && echo "${entry#/proc/}"
    done
    return 0
}

# Wait up to $1 seconds for every dockerd to be gone; false if one is left.
dockerd_gone_within() {
    local deadline=$((SECONDS + $1))
    while [[ -n "$(pids_named dockerd)" ]]; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# Remove pid file $1 unless it names a live process called $2. A daemon killed without its own clean-up
# leaves its pid file behind; once that number is another process's, the daemon refuses to start
# ("pid file found, ensure docker is not running").
drop_stale_pid_file() {
    local pid
    [[ -f "$1" ]] || return 0
    pid="$(tr -dc '0-9' <"$1")"
    [[ -n "$pid" ]] && alive_named "$pid" "$2" && return 0
    echo "removing the stale pid file $1 (pid ${pid:-none} is not a running $2)"
    rm -f "$1"
}

# A dockerd that runs but does not answer (still starting, or stuck) gets 30 s, then is stopped.
stop_silent_engine() {
    local deadline=$((SECONDS + 30))
    until engine_answers; do
        [[ -n "$(pids_named dockerd)" ]] || return 0
        if ((SECONDS >= deadline)); then
            echo "dockerd (pid $(pids_named dockerd | tr '\n' ' ')) did not answer within 30 s: stopping it"
            pids_named dockerd | xargs -r kill -TERM 2>/dev/null || true
            dockerd_gone_within 20 && return 0
            pids_named dockerd | xargs -r kill -KILL 2>/dev/null || true
            dockerd_gone_within 10 || die "dockerd $(pids_named dockerd | tr '\n' ' ')survived SIGKILL"
            return 0
        fi
        sleep 0.5
    done
}

start_engine() {
    if engine_answers; then
        echo "docker engine already running"
        return 0
    fi
    [[ "$(id -u)" == 0 ]] || die "the docker engine is not running and starting it needs root"
    stop_silent_engine
    if engine_answers; then
        echo "docker engine ready"
        return 0
    fi
    drop_stale_pid_file /var/run/docker.pid dockerd
    drop_stale_pid_file /var/run/docker/containerd/containerd.pid containerd
    echo "starting dockerd (log: $dockerd_log)"
    # 9>&-: the engine must not inherit (and hold forever) the lock of this script.
    setsid -f dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs \
        </dev/null >>"$dockerd_log" 2>&1 9>&-
    local deadline=$((SECONDS + 60))
    until engine_answers; do
        ((SECONDS < deadline)) || die "dockerd did not answer within 60 s; last log lines:
$(tail -n 20 "$dockerd_log" 2>/dev/null)"
        [[ -n "$(pids_named dockerd)" ]] || die "dockerd exited; last log lines:
$(tail -n 20 "$dockerd_log" 2>/dev/null)"
        sleep 0.5
    done
    echo "docker engine ready"
}

image_exists() {
    docker image inspect "$1" >/dev/null 2>&1
}

build_base_image() {
    image_exists "$base_image" && return 0
    local root
    root="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$root'" RETURN
    chmod 755 "$root"
    mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/proc" "$root/sys" "$root/dev"
    chmod 1777 "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    local applet
    for applet in $(/bin/busybox --list); do
        [[ "$applet" == busybox ]] || ln -s busybox "$root/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
        >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    tar -C "$root" -c . | docker import --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' - "$base_image" \
        >/dev/null || die "could not import $base_image"
    echo "built $base_image"
}

sample_source_hash() {
    (cd "$sample_dir" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
}

build_sample_image() {
    [[ -f "$sample_dir/Dockerfile" ]] || die "missing $sample_dir/Dockerfile"
    local wanted current
    wanted="$(sample_source_hash)"
    current="$(docker image inspect -f "{{ index .Config.Labels \"$hash_label\" }}" "$sample_image" 2>/dev/null || true)"
    [[ "$current" == "$wanted" ]] && return 0
    local output
    # Quiet on success (the legacy builder prints a deprecation notice); the whole output on failure.
    output="$(docker build -q --label "$hash_label=$wanted" -t "$sample_image" "$sample_dir" 2>&1)" \
        || die "could not build $sample_image from $sample_dir:
$output"
    echo "built $sample_image"
}

# Two test runs starting at once must not both start an engine or build the same image.
exec 9>/tmp/start_docker.lock
flock -w 300 9 || die "another start_docker.sh held the lock for 5 minutes"
install_packages
start_engine
build_base_image
build_sample_image
echo "images ready: $base_image $sample_image"
