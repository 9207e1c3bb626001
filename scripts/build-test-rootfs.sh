#!/usr/bin/env bash
# Build the Debian root filesystem that test/helpers/nspawn-cluster.ts boots with
# systemd-nspawn. Called by ensureRootfs(); usable by hand too:
#
#   sudo scripts/build-test-rootfs.sh --mirror URL --suite bookworm \
#        --packages systemd,dbus,... --out DIR [--keyring FILE]
#
# The mirror is never hard-coded: the caller reads it from the machine's apt
# sources. An http proxy is taken from http_proxy/https_proxy in the environment
# or, failing that, from apt's Acquire::http::Proxy setting (debootstrap
# downloads with wget, which honours http_proxy).
#
# If DIR exists it is taken as a finished build and nothing is done. Otherwise
# the tree is built in DIR.partial.<pid> and renamed to DIR when complete, under
# an flock on DIR.lock so parallel callers build it once. A failed build leaves
# nothing behind. The caller keys DIR by a hash of the suite, the package list
# and this file's content, so an edited script builds a new tree.
set -euo pipefail

mirror=""
suite=""
packages=""
out=""
keyring=""

usage() {
  echo "usage: $0 --mirror URL --suite SUITE --packages a,b,c --out DIR [--keyring FILE]" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --mirror) mirror="${2:-}"; shift 2 ;;
    --suite) suite="${2:-}"; shift 2 ;;
    --packages) packages="${2:-}"; shift 2 ;;
    --out) out="${2:-}"; shift 2 ;;
    --keyring) keyring="${2:-}"; shift 2 ;;
    *) usage ;;
  esac
done
[ -n "$mirror" ] && [ -n "$suite" ] && [ -n "$packages" ] && [ -n "$out" ] || usage

if [ "$(id -u)" -ne 0 ]; then
  echo "build-test-rootfs: must run as root (debootstrap)" >&2
  exit 1
fi
if [ -d "$out" ]; then
  echo "build-test-rootfs: cached: $out" >&2
  exit 0
fi
mkdir -p "$(dirname "$out")"
exec 9>"$out.lock"
if ! flock -w 1800 9; then
  echo "build-test-rootfs: timed out waiting for $out.lock" >&2
  exit 1
fi
if [ -d "$out" ]; then
  echo "build-test-rootfs: cached (built by another process): $out" >&2
  exit 0
fi
# Partial trees left by a builder that was killed: we hold the lock, so no one
# is writing them.
for stale in "$out".partial.*; do
  if [ -d "$stale" ]; then
    echo "build-test-rootfs: removing stale $stale" >&2
    rm -rf --one-file-system "$stale"
  fi
done
final="$out"
out="$out.partial.$$"

cleanup_on_error() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "build-test-rootfs: failed (exit $rc); removing $out" >&2
    # debootstrap may leave /proc or /sys mounted inside the target on failure.
    for m in proc sys dev/pts dev; do
      if mountpoint -q "$out/$m" 2>/dev/null; then umount -l "$out/$m" || true; fi
    done
    rm -rf --one-file-system "$out"
  fi
}
trap cleanup_on_error EXIT

if command -v apt-config >/dev/null 2>&1; then
  APT_HTTP_PROXY=""
  APT_HTTPS_PROXY=""
  eval "$(apt-config shell APT_HTTP_PROXY Acquire::http::Proxy APT_HTTPS_PROXY Acquire::https::Proxy)"
  if [ -z "${http_proxy:-}" ] && [ -n "$APT_HTTP_PROXY" ] && [ "$APT_HTTP_PROXY" != "DIRECT" ]; then
    export http_proxy="$APT_HTTP_PROXY"
  fi
  if [ -z "${https_proxy:-}" ] && [ -n "$APT_HTTPS_PROXY" ] && [ "$APT_HTTPS_PROXY" != "DIRECT" ]; then
    export https_proxy="$APT_HTTPS_PROXY"
  fi
fi

debootstrap_args=(--variant=minbase "--include=$packages")
if [ -n "$keyring" ]; then
  debootstrap_args+=("--keyring=$keyring")
fi

echo "build-test-rootfs: debootstrap $suite from $mirror" >&2
debootstrap "${debootstrap_args[@]}" "$suite" "$out" "$mirror" >&2

# etcd-server's postinst enables etcd.service (deb-systemd-helper enable, a
# multi-user.target.wants symlink) and registers /etc/init.d/etcd with
# update-rc.d. Disable rather than mask: a mask is a symlink to /dev/null at
# /etc/systemd/system/etcd.service, and a provisioner that writes its own unit
# there with `cat >` would then write into /dev/null.
if [ -e "$out/lib/systemd/system/etcd.service" ]; then
  systemctl --root="$out" disable etcd.service >&2 || true
  rm -f "$out"/etc/rc?.d/S??etcd
fi

# Nothing in the container owns a console; a getty there only logs failures.
systemctl --root="$out" mask console-getty.service getty@.service \
  systemd-networkd-wait-online.service >&2 || true

# Each boot gets its own machine id (an empty file makes systemd use the one
# systemd-nspawn passes in, or a random one) instead of sharing the image's.
: >"$out/etc/machine-id"
rm -f "$out/var/lib/dbus/machine-id"
# The hostname comes from systemd-nspawn --hostname, not from the build host.
rm -f "$out/etc/hostname"

# A sane default resolv.conf never points at a real network: tests only talk to
# addresses inside their own namespaces.
printf '' >"$out/etc/resolv.conf"

chroot "$out" apt-get clean
rm -rf "$out"/var/lib/apt/lists/*

printf 'suite=%s\npackages=%s\n' "$suite" "$packages" >"$out/etc/k8slab-test-rootfs"
mv -T "$out" "$final"
echo "build-test-rootfs: done: $final" >&2
