#!/usr/bin/env bash
# Installs the Debian 12 packages otlp-gateway needs that are missing (apt-get update + install).
# Usage: scripts/deps.sh [--tests] [--fuzz]
#   --tests adds prometheus (server and promtool) for the tests that scrape and check /metrics,
#   dnsmasq-base (a DNS server the DNS-discovery tests start on a loopback port), python3-yaml (the deploy/
#   manifests test), systemd (systemd-analyze), file + dpkg-dev (cpack -G DEB, dpkg-shlibdeps), and podman with
#   runc, debootstrap and the CNI plugins (the container test builds the image on a locally made Debian base);
#   --fuzz adds clang and its runtimes for libFuzzer builds.
#   --tests also adds Debian's nodejs + npm for the interop test (tests/interop: the OpenTelemetry JS SDK,
#   which needs node >= 18.19; Debian 12 has 18.20), only when no `node` is on PATH (a node installed some
#   other way, e.g. from nodesource or nvm, is kept).
set -euo pipefail
pkgs=(build-essential cmake pkg-config python3 libuv1-dev libprotobuf-c-dev protobuf-c-compiler
      libxxhash-dev libyaml-dev libdeflate-dev libc-ares-dev libjson-c-dev libnghttp2-dev libssl-dev node-llhttp)
for arg in "$@"; do
  case "$arg" in
    --tests) pkgs+=(prometheus dnsmasq-base openssl ca-certificates python3-yaml systemd file dpkg-dev binutils
                    podman runc crun debootstrap uidmap slirp4netns fuse-overlayfs containernetworking-plugins
                    catatonit iptables) ;;
    --fuzz) pkgs+=(clang libclang-rt-14-dev) ;;
    *) echo "usage: scripts/deps.sh [--tests] [--fuzz]" >&2; exit 2 ;;
  esac
done
if [[ " $* " == *" --tests "* ]] && ! command -v node >/dev/null; then pkgs+=(nodejs npm); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
