#!/usr/bin/env bash
# Start a Docker-API container engine (podman) on this machine, for DockerJupyterServer's tests.
#
# No Docker engine runs on the project's machines, and no container registry can be reached.
# This script, idempotent and safe to run again:
#   1. installs podman, runc and debootstrap with apt-get when podman is missing;
#   2. writes containers.conf and storage.conf (the settings that work in this sandbox, see
#      the comments in them) into the engine folder;
#   3. starts `podman system service` on a unix socket in that folder, unless one answers;
#   4. makes the local base image (Debian bookworm + python3, venv, pip) when it is missing,
#      from debootstrap once per machine: the root file system is cached as a tarball;
#   5. writes `export DOCKER_HOST=...` to <folder>/docker-host.env and prints it last.
#
# Usage: eval "$(scripts/podman-engine.sh | tail -n 1)"
# Environment: PODMAN_ENGINE_DIR (default /var/tmp/jupyter-exec-podman), the engine's folder;
#              JUPYTER_EXEC_BASE_IMAGE (default localhost/jupyter-exec-base:bookworm).
# Messages go to stderr; stdout carries only the export line.
set -euo pipefail

engine_dir=${PODMAN_ENGINE_DIR:-/var/tmp/jupyter-exec-podman}
base_image=${JUPYTER_EXEC_BASE_IMAGE:-localhost/jupyter-exec-base:bookworm}
socket=$engine_dir/podman.sock
base_tarball=$engine_dir/cache/rootfs-bookworm-python3.tar

say() { echo "podman-engine: $*" >&2; }

mkdir -p "$engine_dir/cache"

# -- 1. packages ------------------------------------------------------------------------------
if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 \
        || ! command -v debootstrap >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        say "podman, runc and debootstrap are needed; run this as root to install them" 
        exit 1
    fi
    say "installing podman, runc and debootstrap"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >&2
fi

# -- 2. configuration -------------------------------------------------------------------------
cat > "$engine_dir/containers.conf" <<CONF
# Written by scripts/podman-engine.sh.
[containers]
# Above the sandbox's hard limits, setrlimit fails in the runtime ("Operation not permitted").
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
# No bridge network can be made here; containers share the host's network.
netns = "host"

[engine]
# crun refuses this machine's hybrid cgroup set-up; runc works.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
cat > "$engine_dir/storage.conf" <<CONF
# Written by scripts/podman-engine.sh.
[storage]
# overlay starts a container in ~0.2 s; vfs copies the whole root file system each time.
driver = "overlay"
runroot = "$engine_dir/run"
graphroot = "$engine_dir/storage"
CONF
export CONTAINERS_CONF=$engine_dir/containers.conf
export CONTAINERS_STORAGE_CONF=$engine_dir/storage.conf

# -- 3. the Docker-API service ----------------------------------------------------------------
answers() { curl -fsS --max-time 5 --unix-socket "$socket" http://d/_ping >/dev/null 2>&1; }
# A service whose working folder was deleted still answers, but its containers cannot start
# (conmon: "Failed to get working directory"; the API: "write child: broken pipe").
stale() {
    local pid
    pid=$(cat "$engine_dir/service.pid" 2>/dev/null) || return 1
    [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == *" (deleted)" ]]
}
if answers && stale; then
    say "the service runs in a deleted folder, so its containers cannot start: restarting it"
    kill "$(cat "$engine_dir/service.pid")"
    for _ in $(seq 1 100); do
        answers || break
        sleep 0.1
    done
fi
if answers; then
    say "the service already answers on $socket"
else
    rm -f "$socket"
    say "starting podman system service on $socket (log: $engine_dir/service.log)"
    # setsid + nohup: the service outlives this script and the shell (or CI step) running it.
    # The configuration variables above are inherited by it. It runs in the engine folder,
    # not the caller's (a checkout that may be deleted while the service lives on).
    cd "$engine_dir"
    setsid nohup podman system service --time=0 "unix://$socket" \
        >"$engine_dir/service.log" 2>&1 </dev/null &
    echo $! > "$engine_dir/service.pid"
    cd "$OLDPWD"
    for _ in $(seq 1 100); do
        answers && break
        sleep 0.1
    done
    if ! answers; then
        say "the service did not answer within 10 s; its log:"
        tail -n 20 "$engine_dir/service.log" >&2
        exit 1
    fi
fi

# -- 4. the base image ------------------------------------------------------------------------
if podman image exists "$base_image"; then
    say "base image $base_image is there"
else
    if [ ! -s "$base_tarball" ]; then
        say "building the base root file system with debootstrap (about a minute)"
        rootfs=$(mktemp -d "$engine_dir/rootfs.XXXXXX")
        trap 'rm -rf "$rootfs"' EXIT
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$rootfs" >"$engine_dir/debootstrap.log" 2>&1 || {
                say "debootstrap failed; the end of $engine_dir/debootstrap.log:"
                tail -n 20 "$engine_dir/debootstrap.log" >&2
                exit 1
            }
        # Package lists and caches only make the image bigger.
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
            "$rootfs"/var/cache/apt/archives/*.deb
        tar -C "$rootfs" -cf "$base_tarball.partial" .
        mv "$base_tarball.partial" "$base_tarball"
        rm -rf "$rootfs"
        trap - EXIT
    fi
    say "importing $base_tarball as $base_image"
    podman import --change 'CMD ["/bin/bash"]' "$base_tarball" "$base_image" >&2
fi

echo "export DOCKER_HOST=unix://$socket" > "$engine_dir/docker-host.env"
say "ready: base image $base_image; DOCKER_HOST written to $engine_dir/docker-host.env"
echo "export DOCKER_HOST=unix://$socket"
