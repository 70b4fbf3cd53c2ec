#!/usr/bin/env bash
# Podman for Mixdown's container images, on a machine with no Docker engine and no reachable
# image registry (see docker/README.md). Used by the container test (tests/it/container.rs) and
# by people. Rootful: run it as root.
#
#   scripts/container.sh setup            install podman, runc, mmdebstrap and podman-compose,
#                                         write the podman configuration, make the Debian 12 base
#                                         image once; prints the environment to use (idempotent)
#   scripts/container.sh env              prints that environment only
#   scripts/container.sh build BINARY     the mixdown image from a binary built on this machine,
#                                         and the coturn image (never pulls)
#   scripts/container.sh build-metrics    the Prometheus image (compose profile "metrics")
#   scripts/container.sh compose ARGS...  podman-compose on docker/compose.yaml with that env
#   scripts/container.sh clean            removes the images, the storage and the work folder
#
# Everything lives in MIXDOWN_PODMAN_DIR (default /var/tmp/mixdown-podman): its own
# containers.conf and storage.conf (podman's defaults do not work here: CONTAINERS.md), the
# image storage (so the base image is made once and survives between test runs) and a venv
# with podman-compose. Nothing of the machine's own podman configuration is changed.
#
# Exit status: 0 done; 3 this machine cannot do it (not root, no network to the Debian mirror
# or to PyPI, podman cannot run a container here); anything else is a bug.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${MIXDOWN_PODMAN_DIR:-/var/tmp/mixdown-podman}
VENV=$WORK/venv
# Debian's podman-compose 1.0.3 ignores `name:` and fails on `network_mode: host`.
COMPOSE_VERSION=1.6.0
# What docker/Dockerfile and docker/*/Dockerfile start FROM.
BASE=docker.io/library/debian:bookworm-slim
IMAGE=${MIXDOWN_IMAGE:-localhost/mixdown:latest}
COTURN_IMAGE=${MIXDOWN_COTURN_IMAGE:-localhost/mixdown-coturn:latest}
PROMETHEUS_IMAGE=${MIXDOWN_PROMETHEUS_IMAGE:-localhost/mixdown-prometheus:latest}
PACKAGES=(podman runc catatonit mmdebstrap python3-venv)

say() { echo "container.sh: $*" >&2; }
cannot() { say "cannot: $*"; exit 3; }

export CONTAINERS_CONF=$WORK/containers.conf
export CONTAINERS_STORAGE_CONF=$WORK/storage.conf
export PATH=$VENV/bin:$PATH

print_env() {
  echo "export CONTAINERS_CONF=$CONTAINERS_CONF"
  echo "export CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF"
  echo "export PATH=$VENV/bin:\$PATH"
}

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  say "installing ${missing[*]}"
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -o Dpkg::Use-Pty=0)
  # Try without a fresh package list first (fast when the lists are there), then with one.
  if ! "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    "${apt[@]}" update >/dev/null 2>&1 || cannot "apt-get update failed (no network to the Debian mirror?)"
    "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null \
      || cannot "apt-get install ${missing[*]} failed"
  fi
}

install_compose() {
  if [[ -x $VENV/bin/podman-compose ]] && "$VENV/bin/podman-compose" --version 2>/dev/null | grep -q "$COMPOSE_VERSION"; then
    return 0
  fi
  say "installing podman-compose $COMPOSE_VERSION into $VENV"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv "$VENV" || cannot "python3 -m venv failed (python3-venv missing?)"
  "$VENV/bin/pip" install -q --disable-pip-version-check "podman-compose==$COMPOSE_VERSION" >/dev/null \
    || { rm -rf "$VENV"; cannot "pip install podman-compose==$COMPOSE_VERSION failed (no network to PyPI?)"; }
}

write_config() {
  mkdir -p "$WORK/storage" "$WORK/run" "$WORK/tmp"
  # The hard limit is the most a container may have: podman's default (1048576) cannot be
  # set here ("setrlimit RLIMIT_NOFILE: Operation not permitted").
  local nofile
  nofile=$(ulimit -Hn)
  [[ $nofile == unlimited ]] && nofile=1048576
  cat >"$WORK/containers.conf.new" <<EOF
# Written by scripts/container.sh: podman for Mixdown's images (see shared CONTAINERS.md).
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]
# For \`init: true\` (turnserver as PID 1 ignores SIGTERM).
init_path = "/usr/bin/catatonit"

[engine]
# crun 1.8 refuses cgroup v1 hybrid mode; no systemd to manage cgroups.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$WORK/tmp"
EOF
  cat >"$WORK/storage.conf.new" <<EOF
# Written by scripts/container.sh.
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/run"

[storage.options.overlay]
# No private bind mount of the storage folder left behind on the host.
skip_mount_home = "true"
EOF
  mv "$WORK/containers.conf.new" "$WORK/containers.conf"
  mv "$WORK/storage.conf.new" "$WORK/storage.conf"
}

# "deb URI SUITE COMPONENTS" lines for bookworm from this machine's apt sources (one-line
# sources.list and deb822 *.sources), so the base image uses the mirror apt already reaches.
apt_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                       if ($(i+1) ~ /^bookworm/) { s = "deb " $i " " $(i+1); for (j = i+2; j <= NF; j++) s = s " " $j; print s } }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk 'function flush() { if (types ~ /(^| )deb( |$)/ && uris != "")
                              for (u = 1; u <= nu; u++) for (s = 1; s <= ns; s++) if (S[s] ~ /^bookworm/) print "deb " U[u] " " S[s] " " comps
                            types = uris = comps = ""; nu = ns = 0 }
         /^[ \t]*$/ { flush(); next }
         /^#/ { next }
         /^Types:/ { types = substr($0, 7) }
         /^URIs:/ { uris = substr($0, 6); nu = split(uris, U, " ") }
         /^Suites:/ { ns = split(substr($0, 8), S, " ") }
         /^Components:/ { comps = substr($0, 12); sub(/^[ \t]+/, "", comps) }
         END { flush() }' "$f"
  done
}

make_base() {
  if podman image exists "$BASE"; then
    return 0
  fi
  local sources=()
  mapfile -t sources < <(apt_sources | awk '!seen[$0]++')
  ((${#sources[@]})) || sources=("deb http://deb.debian.org/debian bookworm main")
  say "making the Debian 12 base image with mmdebstrap from ${sources[0]}… (about 40 s)"
  local tar=$WORK/base.tar
  mmdebstrap --quiet --variant=minbase --mode=root bookworm "$tar" "${sources[@]}" >/dev/null 2>"$WORK/mmdebstrap.log" \
    || { rm -f "$tar"; cannot "mmdebstrap failed (no network to the Debian mirror?): $(tail -n 3 "$WORK/mmdebstrap.log")"; }
  # What the official image sets: a PATH and bash.
  podman import --quiet \
    --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD=["bash"]' \
    "$tar" localhost/debian:bookworm >/dev/null
  rm -f "$tar"
  podman tag localhost/debian:bookworm "$BASE"
}

check_podman() {
  local out
  out=$(podman run --rm --pull=never --network=host "$BASE" true 2>&1) \
    || cannot "podman cannot run a container here: $out"
}

setup() {
  [[ $(id -u) -eq 0 ]] || cannot "needs root (rootful podman)"
  install_packages
  install_compose
  write_config
  make_base
  check_podman
  print_env
}

need_setup() {
  [[ -f $CONTAINERS_CONF && -x $VENV/bin/podman-compose ]] || { say "run '$0 setup' first"; exit 2; }
}

build() {
  local binary=${1:?usage: container.sh build BINARY}
  [[ -x $binary ]] || { say "no executable at $binary"; exit 2; }
  need_setup
  # The prebuilt target's build context: the binary and the default configuration only (the
  # repository as the context would send target/ along).
  local ctx
  ctx=$(mktemp -d "$WORK/context.XXXXXX")
  trap 'rm -rf "$ctx"' RETURN
  cp "$ROOT/mixdown.example.toml" "$ctx/"
  # Debug info is most of a debug build's size and is not needed to run it.
  objcopy --strip-debug "$binary" "$ctx/mixdown" 2>/dev/null || cp "$binary" "$ctx/mixdown"
  # Docker's image format: OCI's has no HEALTHCHECK.
  podman build --quiet --pull=never --network=host --format docker --target runtime-prebuilt \
    -f "$ROOT/docker/Dockerfile" -t "$IMAGE" "$ctx" >/dev/null
  podman build --quiet --pull=never --network=host --format docker -t "$COTURN_IMAGE" "$ROOT/docker/coturn" >/dev/null
  # Leftovers of earlier builds of the same tags.
  podman image prune -f >/dev/null
  say "built $IMAGE and $COTURN_IMAGE"
}

build_metrics() {
  need_setup
  podman build --quiet --pull=never --network=host --format docker -t "$PROMETHEUS_IMAGE" "$ROOT/docker/prometheus" >/dev/null
  say "built $PROMETHEUS_IMAGE"
}

clean() {
  # Everything in this storage only (not `podman system reset`, which also removes networks
  # of the machine's own podman configuration).
  if [[ -f $CONTAINERS_CONF ]] && command -v podman >/dev/null; then
    podman pod rm -af -t 5 >/dev/null 2>&1 || true
    podman rm -af -t 5 >/dev/null 2>&1 || true
    podman volume rm -af >/dev/null 2>&1 || true
    podman rmi -af >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  say "removed $WORK"
}

case "${1:-}" in
  setup) setup ;;
  env) print_env ;;
  build) shift; build "$@" ;;
  build-metrics) build_metrics ;;
  compose) shift; need_setup; exec podman-compose -f "$ROOT/docker/compose.yaml" "$@" ;;
  clean) clean ;;
  *) sed -n '2,22p' "$0" >&2; exit 2 ;;
esac
