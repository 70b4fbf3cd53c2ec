#!/usr/bin/env bash
# Installs the Debian packages Mixdown needs to build, run and test.
# Idempotent: only calls apt-get when something is missing.
set -euo pipefail

PKGS=(
  build-essential pkg-config cmake libssl-dev
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstreamer-plugins-bad1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-nice
  gstreamer1.0-x
  libvpx-dev libopus-dev
)
case "${1:-}" in
  # Browser peers (Chromium, Firefox ESR); an RTMP server for the RTMP test; network
  # namespaces and a UDP block for the ICE-TCP test; Redis for the cluster tests.
  --test) PKGS+=(chromium firefox-esr nginx libnginx-mod-rtmp iproute2 iptables redis-server) ;;
  --bench) PKGS+=(gnuplot-nox janus strace redis-server) ;;   # plots; Janus AudioBridge as the audio reference; syscall counts; Redis for the cluster joins
esac

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
