#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian/Ubuntu machine, then the npm packages.
# Packages come from the machine's own apt sources and npm registry settings.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use for real:
packages=(
  # vagrant validate, shellcheck, certificates, etcd 3.4 in network namespaces
  vagrant shellcheck openssl etcd-server etcd-client iproute2 curl ca-certificates
  # systemd-nspawn nodes built with debootstrap
  debootstrap debian-archive-keyring systemd-container wget
  # the end-to-end test: real VMs with vagrant-libvirt under QEMU, and its test box
  vagrant-libvirt libvirt-daemon-system qemu-system-x86 qemu-utils dnsmasq-base iptables
  util-linux extlinux syslinux-common fdisk e2fsprogs
  # the SSH provider's tests: OpenSSH's client on the host (the nodes get sshd in their rootfs)
  openssh-client
  # container images: a registry server in a network namespace, and skopeo to push and inspect
  docker-registry skopeo
  # programs for the e2e's test images (a pause stand-in and a workload), pushed to that registry
  tini busybox-static
  # the Pi side: cloud-init's own schema validator and network renderer for the user-data and
  # network-config flash-config writes, ansible-inventory for its inventory
  cloud-init ansible-core
)
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
  # Installing must not start services (libvirtd, etcd): the tests start their own, in their own
  # namespaces. policy-rc.d answering 101 tells the packages' scripts not to start anything.
  policy=/usr/sbin/policy-rc.d
  added_policy=no
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    added_policy=yes
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" ||
    status=$?
  [ "$added_policy" = no ] || $sudo rm -f "$policy"
  [ "${status:-0}" -eq 0 ] || exit "$status"
  # The tests only run cloud-init's validator; it must not run at this machine's next boot.
  case " ${missing[*]} " in
  *" cloud-init "*) $sudo touch /etc/cloud/cloud-init.disabled ;;
  esac
fi

# `npm ci`: exactly the committed lock file, which holds every platform's optional packages
# (rollup's and esbuild's native builds), so it works on Linux, macOS and Windows alike and a
# later `npm install` leaves it unchanged.
npm ci --no-audit --no-fund
