#!/usr/bin/env bash
# A Docker engine for kind: use the running one, or install Debian's docker.io and start dockerd.
#
#   tools/kind/docker.sh up       idempotent: docker answers afterwards (installs docker.io and
#                                 starts dockerd only when no engine answers)
#   tools/kind/docker.sh down     stop the dockerd this script started (never another one)
#   tools/kind/docker.sh status
#
# A dockerd started here is configured from $SIMMESH_CACHE/kind/docker/daemon.json and logs
# to dockerd.log beside it. On hosts whose capability bounding set lacks a capability (here
# CAP_SYS_RESOURCE), `docker run --privileged` fails in runc, so dockerd gets
# tools/kind/runc-wrapper as its default runtime (it drops the capabilities the host cannot
# grant from each container's spec). Images live in Docker's own storage (/var/lib/docker), so
# they survive a restart of dockerd.
set -euo pipefail
LOG_TAG=docker
. "$(dirname "$0")/lib.sh"

DIR=$KIND_CACHE/docker
PIDFILE=$DIR/dockerd.pid
mkdir -p "$DIR"

answers() { timeout 10 docker info >/dev/null 2>&1; }

install_engine() {
    command -v dockerd >/dev/null && return 0
    log "installing Debian's docker.io (dockerd, containerd, runc) with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io iptables >/dev/null
}

write_config() {
    local runtime=""
    if ! capsh_has_sys_resource; then
        install -m 0755 "$ROOT/tools/kind/runc-wrapper" "$DIR/runc-wrapper"
        runtime=$(printf ',\n  "runtimes": {"simmesh-runc": {"path": "%s"}},\n  "default-runtime": "simmesh-runc"' "$DIR/runc-wrapper")
        log "no CAP_SYS_RESOURCE in the bounding set: default runtime is $DIR/runc-wrapper"
    fi
    cat >"$DIR/daemon.json" <<JSON
{
  "storage-driver": "overlay2",
  "log-driver": "json-file",
  "log-opts": {"max-size": "10m", "max-file": "2"}$runtime
}
JSON
}

up() {
    if answers; then log "a Docker engine answers: $(docker version -f '{{.Server.Version}}' 2>/dev/null)"; return 0; fi
    install_engine
    write_config
    log "starting dockerd (log: $DIR/dockerd.log)"
    setsid nohup dockerd --config-file "$DIR/daemon.json" --pidfile "$PIDFILE" \
        >>"$DIR/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 60); do
        if answers; then log "dockerd $(docker version -f '{{.Server.Version}}') is up"; return 0; fi
        sleep 1
    done
    tail -n 30 "$DIR/dockerd.log" >&2
    die "dockerd did not answer within 60s"
}

down() {
    if [ ! -s "$PIDFILE" ]; then log "no dockerd started by this script"; return 0; fi
    local pid; pid=$(cat "$PIDFILE")
    if ! kill -0 "$pid" 2>/dev/null; then rm -f "$PIDFILE"; return 0; fi
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || { log "dockerd stopped"; return 0; }; sleep 1; done
    die "dockerd (pid $pid) did not stop within 30s"
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    status) if answers; then docker version -f 'dockerd {{.Server.Version}}'; else echo "no Docker engine answers"; exit 1; fi ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
