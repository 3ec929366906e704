#!/usr/bin/env bash
# What the tests need on this machine, checked: Debian's docker-registry (the registry the tests
# pull from), containernetworking-plugins, iproute2 and iptables (pod networking), systemd's
# systemd-analyze (the unit's check), kubectl, and Rust's wasm targets (the example guests).
# What is missing is installed when this user can (root with apt-get; rustup for the targets);
# otherwise the script says what is missing and the command that installs it, and fails.
# Sourced by scripts/test.sh and .ci/run.
set -euo pipefail

# Whether command $1 is on PATH or in the system directories (/usr/sbin is not on every PATH).
have() {
  command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

check_test_prerequisites() {
  local packages=() missing=()
  have docker-registry || packages+=(docker-registry)
  [ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ] || packages+=(containernetworking-plugins)
  have ip || packages+=(iproute2)
  have iptables || packages+=(iptables)
  have systemd-analyze || packages+=(systemd)
  if [ ${#packages[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing what the tests need: ${packages[*]}" >&2
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
    else
      missing+=("Debian packages ${packages[*]} (sudo apt-get install ${packages[*]})")
    fi
  fi
  command -v kubectl >/dev/null ||
    missing+=("kubectl (https://kubernetes.io/docs/tasks/tools/; Debian: apt-get install kubernetes-client)")
  local targets=()
  local installed
  installed="$(rustup target list --installed 2>/dev/null || true)"
  for target in wasm32-wasip1 wasm32-wasip2 wasm32-unknown-unknown; do
    grep -qx "$target" <<<"$installed" || targets+=("$target")
  done
  if [ ${#targets[@]} -gt 0 ]; then
    if command -v rustup >/dev/null; then
      rustup target add "${targets[@]}"
    else
      missing+=("Rust targets ${targets[*]} (rustup target add ${targets[*]})")
    fi
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "note: not root: the tests that give pods network namespaces of their own (CNI) need root" >&2
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "the tests need what this machine does not have:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    return 1
  fi
}
