#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian/Ubuntu machine, then the npm packages.
# Packages come from the machine's own apt sources and npm registry settings.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use for real: vagrant validate, shellcheck, openssl, etcd 3.4 in network
# namespaces, systemd-nspawn nodes built with debootstrap.
packages=(vagrant shellcheck openssl etcd-server etcd-client iproute2 debootstrap debian-archive-keyring systemd-container wget curl ca-certificates)
command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}" >&2
  $sudo apt-get update -q
  # Debian's etcd-server starts its own etcd on install; tests start theirs, so keep it off.
  if [ -d /run/systemd/system ]; then $sudo systemctl mask etcd.service >/dev/null 2>&1 || true; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

npm ci --no-audit --no-fund
