#!/usr/bin/env bash
# Build a minimal Debian vagrant-libvirt box for the end-to-end tests (test/helpers/libvirt-env.ts)
# from debootstrap, and print its path on stdout. Usable by hand too:
#
#   sudo scripts/build-test-box.sh [--mirror URL] [--keyring FILE] [--print-path] [OUT_DIR]
#
# OUT_DIR defaults to $K8SLAB_TEST_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/k8slab-test (the
# cache test/helpers/nspawn-cluster.ts uses). The box is OUT_DIR/box-<suite>-<hash>.box, where the
# hash covers this script (which holds the package list and every setting) and the suite, so an
# edited script builds a new box and an unchanged one is reused. --print-path only prints that
# path (whether or not it exists) and builds nothing.
#
# The mirror is never hard-coded: without --mirror (or K8SLAB_TEST_MIRROR) it is the first `deb`
# source of the suite's main component that this machine's apt is configured with (asked from
# apt itself, so sources.list, *.list and deb822 *.sources all count). An http proxy is taken from
# http_proxy or apt's Acquire::http::Proxy, as in build-test-rootfs.sh.
#
# What is in the box (one ext4 partition on an MBR disk, booted by extlinux):
# - Debian minbase + linux-image-amd64, systemd, udev, openssh-server, sudo, curl, iproute2,
#   ca-certificates, rsync, etcd-server and etcd-client (etcd installed but disabled, not masked:
#   lab provisioners write their own /etc/systemd/system/etcd.service);
# - user `vagrant` with passwordless sudo and Vagrant's insecure public key (taken from the
#   vagrant package on this machine);
# - NIC names eth0, eth1, ... (net.ifnames=0); systemd-networkd does DHCP on eth0 and Vagrant's
#   debian guest plugin writes /etc/systemd/network/50-vagrant-eth1.network for private networks;
# - empty machine-id and no SSH host keys: both are made on each VM's first boot.
#
# How, given that this machine has no udev: the disk is a sparse raw file with one partition at
# 1 MiB, made with mkfs -E offset and mounted with `mount -o loop,offset=` (losetup -P would make
# no partition devices here); debootstrap installs straight into it, extlinux is installed from
# the host, fstrim drops deleted blocks and qemu-img converts the raw file to a compressed qcow2.
# The script re-executes itself in a private mount namespace (unshare), so its mounts are seen
# by no one else and die with it; the loop device of `mount -o loop` clears itself on unmount.
# The build happens in OUT_DIR/box-build.* under an flock on the box's .lock file; an EXIT trap
# stops the running command, unmounts, detaches and removes the build directory, whatever
# happens (INT, TERM). A successful build deletes boxes of earlier versions of this script.
# Cold build here: about 2-3 min (debootstrap 100-160 s), 193 MB.
set -euo pipefail
export LC_ALL=C
PATH="$PATH:/usr/sbin:/sbin"

suite=bookworm
disk_gb=20
packages=(
  linux-image-amd64 initramfs-tools systemd systemd-sysv udev dbus kmod
  openssh-server sudo iproute2 curl ca-certificates rsync procps netbase
  etcd-server etcd-client
  # What a Kubernetes v1.9 node needs from its OS: a Docker engine (apparmor is only recommended
  # by docker.io, so debootstrap leaves it out, and without it no container starts on a kernel with
  # AppArmor on), and the tools kubelet and kube-proxy call.
  docker.io apparmor iptables conntrack socat ebtables ethtool
  # For the e2e test's pods: an image built in the VM from local programs.
  busybox-static
)
# kubelet v1.9 knows only cgroup v1: boot Debian 12's systemd on the legacy hierarchy.
kernel_args="ro net.ifnames=0 biosdevname=0 console=tty0 console=ttyS0,115200n8"
kernel_args+=" systemd.unified_cgroup_hierarchy=0 systemd.legacy_systemd_cgroup_controller=1"

orig_args=("$@")
mirror="${K8SLAB_TEST_MIRROR:-}"
keyring=""
print_path=0
out_dir=""

usage() {
  echo "usage: $0 [--mirror URL] [--keyring FILE] [--print-path] [OUT_DIR]" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --mirror) mirror="${2:-}"; [ -n "$mirror" ] || usage; shift 2 ;;
    --keyring) keyring="${2:-}"; [ -n "$keyring" ] || usage; shift 2 ;;
    --print-path) print_path=1; shift ;;
    -h|--help) usage ;;
    -*) usage ;;
    *) [ -z "$out_dir" ] || usage; out_dir="$1"; shift ;;
  esac
done
if [ -z "$out_dir" ]; then
  out_dir="${K8SLAB_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8slab-test}"
fi

script_hash=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-64)
key=$(printf 'suite=%s\nscript=%s\n' "$suite" "$script_hash" | sha256sum | cut -c1-16)
box="$out_dir/box-$suite-$key.box"

if [ "$print_path" -eq 1 ]; then
  echo "$box"
  exit 0
fi

log() { echo "build-test-box: $*" >&2; }
started=$SECONDS
step_started=$SECONDS
step() {
  log "$1 (previous step $((SECONDS - step_started)) s, total $((SECONDS - started)) s)"
  step_started=$SECONDS
}

if [ -f "$box" ]; then
  log "cached: $box"
  echo "$box"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (debootstrap, loop devices, mount)"
  exit 1
fi
# Mount nothing where others can see it: in the host's mount namespace a mount of the image is
# copied into every namespace created meanwhile (a concurrent `ip netns exec`, nspawn, unshare)
# and pins the loop device there after we unmount ours. In a private namespace the mounts die
# with this process, even on SIGKILL, and `mount -o loop` makes an auto-clearing loop device.
if [ -z "${K8SLAB_TEST_BOX_IN_NS:-}" ]; then
  export K8SLAB_TEST_BOX_IN_NS=1
  exec unshare --mount --propagation private -- bash "${BASH_SOURCE[0]}" "${orig_args[@]}"
fi
missing=()
for tool in unshare setsid debootstrap losetup sfdisk mkfs.ext4 fstrim extlinux qemu-img mount umount flock tar gzip; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
mbr_bin=""
for f in /usr/lib/syslinux/mbr/mbr.bin /usr/lib/EXTLINUX/mbr.bin /usr/share/syslinux/mbr.bin; do
  if [ -f "$f" ]; then mbr_bin="$f"; break; fi
done
[ -n "$mbr_bin" ] || missing+=("mbr.bin")
vagrant_pub=""
for f in /usr/share/vagrant/keys/vagrant.pub /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
  /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub; do
  if [ -f "$f" ]; then vagrant_pub="$f"; break; fi
done
[ -n "$vagrant_pub" ] || missing+=("vagrant.pub")
if [ "${#missing[@]}" -gt 0 ]; then
  log "missing ${missing[*]} (Debian packages: debootstrap util-linux fdisk e2fsprogs extlinux syslinux-common qemu-utils vagrant)"
  exit 1
fi

if [ -z "$mirror" ]; then
  # apt knows every configured source, whatever the file format. $(REPO_URI) is apt's syntax.
  # shellcheck disable=SC2016
  mirror=$(apt-get indextargets --format '$(REPO_URI)' "Release: $suite" "Component: main" \
    "Identifier: Packages" "Target-Of: deb" 2>/dev/null | grep -E '^(https?|file):' | head -n1 || true)
  if [ -z "$mirror" ]; then
    log "no apt source for Debian $suite main on this machine; pass --mirror URL or set K8SLAB_TEST_MIRROR"
    exit 1
  fi
fi
if [ -z "$keyring" ] && [ -f /usr/share/keyrings/debian-archive-keyring.gpg ]; then
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
fi

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

mkdir -p "$out_dir"
exec 9>"$box.lock"
if ! flock -w 1800 9; then
  log "timed out waiting for $box.lock"
  exit 1
fi
if [ -f "$box" ]; then
  log "cached (built by another process): $box"
  echo "$box"
  exit 0
fi
# Build directories of a builder that was killed: we hold the lock, so no one uses them. Its
# mounts died with its mount namespace; a loop device may still be attached.
for stale in "$out_dir"/box-build.*; do
  [ -d "$stale" ] || continue
  log "removing stale $stale"
  if mountpoint -q "$stale/root" 2>/dev/null; then umount -R "$stale/root" || umount -R -l "$stale/root" || true; fi
  while read -r dev; do
    if [ -n "$dev" ]; then losetup -d "$dev" || true; fi
  done < <(losetup -n -O NAME -j "$stale/disk.raw" 2>/dev/null || true)
  rm -rf --one-file-system "$stale"
done

work=$(mktemp -d "$out_dir/box-build.XXXXXX")
root="$work/root"
raw="$work/disk.raw"

# Long commands run in the background and are waited for, so that a TERM (a test timeout) is
# handled at once instead of after they finish; cleanup stops the one that is running.
child=""
run_child() {
  # Its own process group (setsid execs, as a background job is no group leader), so that
  # cleanup reaches the command's children too (debootstrap's wget and dpkg).
  setsid "$@" &
  child=$!
  local rc=0
  wait "$child" || rc=$?
  child=""
  return "$rc"
}

cleanup() {
  local rc=$?
  set +e
  if [ -n "$child" ]; then
    kill -TERM -- "-$child" 2>/dev/null
    wait "$child" 2>/dev/null
  fi
  if mountpoint -q "$root" 2>/dev/null; then
    # debootstrap may leave proc/sys mounted in the target when it fails.
    umount -R "$root" 2>/dev/null || umount -R -l "$root"
  fi
  # The loop device of `mount -o loop` detaches itself on unmount; make sure of it.
  while read -r dev; do
    if [ -n "$dev" ]; then losetup -d "$dev"; fi
  done < <(losetup -n -O NAME -j "$raw" 2>/dev/null)
  rm -rf --one-file-system "$work"
  if [ "$rc" -ne 0 ]; then log "failed (exit $rc) after $((SECONDS - started)) s; nothing left behind"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

step "disk: ${disk_gb} GiB sparse raw image, MBR with one bootable Linux partition at 1 MiB"
truncate -s "${disk_gb}G" "$raw"
echo 'label: dos
start=2048, type=83, bootable' | sfdisk --quiet "$raw"
dd if="$mbr_bin" of="$raw" bs=440 count=1 conv=notrunc status=none
part_offset=$((2048 * 512))
part_size=$(($(stat -c %s "$raw") - part_offset))
uuid=$(cat /proc/sys/kernel/random/uuid)
# 64bit is not needed below 16 TiB, and extlinux is happiest without it.
mkfs.ext4 -q -F -L root -U "$uuid" -O ^64bit \
  -E "offset=$part_offset,lazy_itable_init=0,lazy_journal_init=0" "$raw" "$((part_size / 1024))k"
mkdir "$root"
mount -o "loop,offset=$part_offset,sizelimit=$part_size" "$raw" "$root"

step "debootstrap $suite from $mirror"
debootstrap_args=(--variant=minbase "--include=$(IFS=,; echo "${packages[*]}")")
if [ -n "$keyring" ]; then debootstrap_args+=("--keyring=$keyring"); fi
run_child debootstrap "${debootstrap_args[@]}" "$suite" "$root" "$mirror" >&2

step "configure the guest"
cat >"$root/etc/fstab" <<EOF
UUID=$uuid / ext4 errors=remount-ro 0 1
EOF
echo "debian-$suite" >"$root/etc/hostname"
cat >"$root/etc/hosts" <<EOF
127.0.0.1 localhost
127.0.1.1 debian-$suite
::1 localhost ip6-localhost ip6-loopback
EOF
# Nothing outside the test's own namespaces is reachable; no resolver is configured.
: >"$root/etc/resolv.conf"

cat >"$root/etc/systemd/network/10-eth0.network" <<'EOF'
[Match]
Name=eth0

[Network]
DHCP=ipv4
EOF
systemctl --root="$root" enable systemd-networkd.service >&2

# etcd-server's postinst enables etcd.service; lab provisioners start their own. Disable rather
# than mask (a mask is a /dev/null symlink at the path provisioners write their unit to), and
# make a first-boot `preset-all` leave it disabled too.
systemctl --root="$root" disable etcd.service >&2 || true
rm -f "$root"/etc/rc?.d/S??etcd
# Docker likewise: installed, not started. The lab's docker phase writes its own docker.service
# (on flannel's subnet) and starts it. containerd runs from boot, as Debian sets it up: a dockerd
# that has to start its own containerd gives up after a few seconds, too soon on a slow VM.
systemctl --root="$root" disable docker.service docker.socket >&2 || true
rm -f "$root"/etc/rc?.d/S??docker
mkdir -p "$root/etc/systemd/system-preset"
printf 'disable %s\n' etcd.service docker.service docker.socket \
  >"$root/etc/systemd/system-preset/10-k8slab-test-box.preset"

# Every VM gets its own SSH host keys and machine id on first boot. No RSA host key: generating
# one takes long under software emulation, and ed25519/ecdsa are fine for every client here.
rm -f "$root"/etc/ssh/ssh_host_*
cat >"$root/etc/systemd/system/k8slab-ssh-host-keys.service" <<'EOF'
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
ExecStart=/usr/bin/ssh-keygen -q -t ecdsa -N "" -f /etc/ssh/ssh_host_ecdsa_key

[Install]
RequiredBy=ssh.service
EOF
systemctl --root="$root" enable k8slab-ssh-host-keys.service >&2
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

# The vagrant user: passwordless sudo and the insecure key Vagrant replaces on first `up`.
chroot "$root" useradd --create-home --shell /bin/bash --user-group vagrant
chroot "$root" passwd --lock vagrant >/dev/null
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"
install -d -m 0700 "$root/home/vagrant/.ssh"
install -m 0600 "$vagrant_pub" "$root/home/vagrant/.ssh/authorized_keys"
chroot "$root" chown -R vagrant:vagrant /home/vagrant/.ssh
echo 'UseDNS no' >"$root/etc/ssh/sshd_config.d/10-vagrant.conf"

# Kernel modules a VM never needs here (graphics, sound, media, wireless, bluetooth,
# infiniband, staging): a third of the image. Network, netfilter, bridge, vxlan, overlay and
# virtio stay, so Docker and Kubernetes networking work.
for kdir in "$root"/lib/modules/*/; do
  kver=$(basename "$kdir")
  for d in kernel/drivers/gpu kernel/sound kernel/drivers/media kernel/drivers/net/wireless \
    kernel/net/wireless kernel/net/mac80211 kernel/drivers/bluetooth kernel/net/bluetooth \
    kernel/drivers/infiniband kernel/drivers/staging kernel/drivers/iio kernel/drivers/isdn; do
    rm -rf "${kdir:?}$d"
  done
  chroot "$root" depmod -a "$kver"
done
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*

chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
printf 'suite=%s\nkey=%s\n' "$suite" "$key" >"$root/etc/k8slab-test-box"

step "bootloader: extlinux"
# /vmlinuz and /initrd.img are the symlinks Debian's kernel packages keep pointing at the
# current kernel, so a kernel upgrade inside a VM keeps booting.
if [ ! -e "$root/vmlinuz" ] || [ ! -e "$root/initrd.img" ]; then
  log "no /vmlinuz or /initrd.img in the image"
  exit 1
fi
mkdir -p "$root/boot/extlinux"
cat >"$root/boot/extlinux/extlinux.conf" <<EOF
DEFAULT linux
TIMEOUT 0
PROMPT 0
SERIAL 0 115200
LABEL linux
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND root=UUID=$uuid $kernel_args
EOF
extlinux --install "$root/boot/extlinux" >&2

step "qcow2"
# Blocks of deleted files (debootstrap's .debs, apt lists) still hold data in the raw file;
# discarding them punches holes, so qemu-img neither copies nor compresses them.
fstrim "$root"
sync -f "$root"
umount "$root"
run_child qemu-img convert -c -f raw -O qcow2 "$raw" "$work/box.img"
rm -f "$raw"
cat >"$work/metadata.json" <<EOF
{"provider":"libvirt","format":"qcow2","virtual_size":$disk_gb}
EOF
cat >"$work/Vagrantfile" <<'EOF'
# Defaults of the k8slab test box (scripts/build-test-box.sh); a lab's Vagrantfile overrides them.
Vagrant.configure("2") do |config|
  # No NFS server on test machines; the box has rsync.
  config.vm.synced_folder ".", "/vagrant", type: "rsync"
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
    libvirt.nic_model_type = "virtio"
  end
end
EOF

step "pack"
# box.img is compressed already: gzip -1 only wraps it in the format Vagrant expects.
tar -C "$work" -cf - metadata.json Vagrantfile box.img | gzip -1 >"$work/box.tmp"
mv -f "$work/box.tmp" "$box"
# Boxes of earlier versions of this script are never used again; drop those no one is building.
for old in "$out_dir"/box-*.box; do
  if [ "$old" = "$box" ] || [ ! -f "$old" ]; then continue; fi
  if flock -n "$old.lock" true; then
    log "removing outdated $old"
    rm -f "$old" "$old.lock"
  fi
done
step "done: $box ($(du -h "$box" | cut -f1))"
echo "$box"
