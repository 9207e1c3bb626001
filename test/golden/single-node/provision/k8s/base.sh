#!/usr/bin/env bash
# k8slab lab single-node, node k8s, phase base.
# Rendered from the lab file; safe to run again: a second run changes nothing.
set -Eeuo pipefail
export LC_ALL=C

K8SLAB_PHASE=base
K8SLAB_NODE=k8s
on_error() {
  local rc=$?
  echo "k8slab: phase ${K8SLAB_PHASE} failed on ${K8SLAB_NODE} at line $1 (exit ${rc})" >&2
}
trap 'on_error ${LINENO}' ERR

log() { echo "[${K8SLAB_NODE} ${K8SLAB_PHASE}] $*"; }
die() {
  echo "k8slab: phase ${K8SLAB_PHASE} on ${K8SLAB_NODE}: $*" >&2
  exit 1
}

# put_file PATH MODE < content: write only when the content differs, then set CHANGED=yes.
CHANGED=no
put_file() {
  local path=$1 mode=$2 tmp
  mkdir -p "$(dirname "$path")"
  # A hidden name: the kubelet reads every other file in its manifests folder as a pod.
  tmp=$(mktemp "$(dirname "$path")/.$(basename "$path").k8slab.XXXXXX")
  cat >"$tmp"
  chmod "$mode" "$tmp"
  if [ -f "$path" ] && cmp -s "$tmp" "$path" && [ "$(stat -c %a "$path")" = "${mode#0}" ]; then
    rm -f "$tmp"
    return 0
  fi
  # mv is atomic; a bind-mounted target (/etc/hosts in a container) needs a copy instead.
  mv -f "$tmp" "$path" 2>/dev/null || { cat "$tmp" >"$path" && chmod "$mode" "$path" && rm -f "$tmp"; }
  # shellcheck disable=SC2034 # read by the phase after put_file
  CHANGED=yes
  log "wrote $path"
}

# need_bin NAME: the path of a program, from the lab's artifacts (/opt/k8slab/bin) or the box.
need_bin() {
  local path
  path=$(command -v "/opt/k8slab/bin/$1" "$1" 2>/dev/null | head -n1 || true)
  [ -n "$path" ] ||
    die "$1 is not installed: neither the box has it nor did an artifact of the lab install it (artifacts: in the lab file; then k8slab provision single-node --phase artifacts)"
  echo "$path"
}

# ensure_service NAME CHANGED: enable the unit, restart it when its config changed, start it if down.
# Jobs are queued (--no-block): a unit that waits for its peers (etcd) must not stall the phase.
ensure_service() {
  local unit=$1 changed=$2 state
  systemctl daemon-reload
  systemctl enable "$unit" >/dev/null 2>&1
  state=$(systemctl is-active "$unit" 2>/dev/null || true)
  if [ "$changed" = yes ]; then
    systemctl reset-failed "$unit" 2>/dev/null || true
    systemctl restart --no-block "$unit"
    log "$unit restarted"
  elif [ "$state" != active ] && [ "$state" != activating ] && [ "$state" != reloading ]; then
    # "activating" is a start still waiting (a member for its quorum) or a pending auto-restart:
    # either goes on by itself. A unit that hit its start limit needs reset-failed first.
    systemctl reset-failed "$unit" 2>/dev/null || true
    systemctl start --no-block "$unit"
    log "$unit started (was $state)"
  fi
}

# kubelet v1.9 refuses to start while swap is on.
if [ -n "$(swapon --show --noheadings 2>/dev/null)" ]; then
  if systemd-detect-virt --container --quiet 2>/dev/null; then
    # A container's /proc/swaps lists its host's swap: not this node's to turn off (and
    # swapoff -a would try, failing or, in a privileged container, succeeding on the host).
    log "note: the swap in use is this container's host's; left alone"
  else
    swapoff -a
    log "swap turned off"
  fi
fi
if grep -Eq '^[^#].*[[:space:]]swap[[:space:]]' /etc/fstab; then
  # Marked, so that k8slab's reset.sh makes them active again.
  sed -ri 's/^([^#].*[[:space:]]swap[[:space:]].*)$/#k8slab# \1/' /etc/fstab
  log "swap disabled in /etc/fstab"
fi

# Routing between pods and bridged traffic through iptables (kube-proxy, flannel).
# br_netfilter provides the bridge sysctls; modules-load.d loads it again after a reboot.
if modprobe br_netfilter 2>/dev/null; then
  echo br_netfilter | put_file /etc/modules-load.d/k8slab.conf 0644
elif [ ! -d /proc/sys/net/bridge ]; then
  log "br_netfilter module not available; bridge sysctls skipped"
fi
{
  echo "net.ipv4.ip_forward = 1"
  if [ -d /proc/sys/net/bridge ]; then
    echo "net.bridge.bridge-nf-call-iptables = 1"
    echo "net.bridge.bridge-nf-call-ip6tables = 1"
  fi
} | put_file /etc/sysctl.d/90-k8slab.conf 0644
# Set each value that differs now (the file applies at boot): by value, so a re-run does nothing.
while read -r key _ value; do
  [ "$(sysctl -n "$key" 2>/dev/null || true)" != "$value" ] || continue
  if sysctl -q -w "$key=$value" >/dev/null 2>&1; then
    log "set $key = $value"
  elif systemd-detect-virt --container --quiet 2>/dev/null; then
    # A container (systemd-nspawn, LXC) gets /proc/sys read-only: its host owns these values.
    log "warning: $key cannot be set in this container (read-only /proc/sys); its host decides"
  else
    die "could not set $key = $value (sysctl -w $key=$value)"
  fi
done </etc/sysctl.d/90-k8slab.conf

# The file as it was before k8slab first changed it, for reset.sh.
if [ ! -e /var/lib/k8slab/hosts.before ]; then
  install -d -m 0755 /var/lib/k8slab
  cp -p /etc/hosts /var/lib/k8slab/hosts.before
fi
# Every node by name, on its private address. Vagrant maps the hostname to 127.0.1.1, which
# would make etcd and the kubelet advertise a loopback address: drop that line.
{
  sed '/^# BEGIN k8slab$/,/^# END k8slab$/d' /etc/hosts |
    grep -Ev "^127\.[0-9.]+[[:space:]]+([^#]*[[:space:]])?${K8SLAB_NODE}([[:space:]]|$)" || true
  echo "# BEGIN k8slab"
  echo '192.168.56.160 k8s'
  echo "# END k8slab"
} | put_file /etc/hosts 0644

# Certificates need agreeing clocks; a VM resumed from a halt may be hours behind.
# `timedatectl show` is systemd 239+; Ubuntu 16.04 (229) only has the status text.
ntp_enabled() {
  local value
  if value=$(timedatectl show -p NTP --value 2>/dev/null); then
    [ "$value" = yes ]
  else
    timedatectl status 2>/dev/null | grep -E '^ *(Network time on|NTP enabled): yes' >/dev/null
  fi
}
if command -v timedatectl >/dev/null 2>&1 && ! ntp_enabled; then
  if timedatectl set-ntp true >/dev/null 2>&1; then
    log "time sync enabled"
  else
    # No NTP service (none installed, or a container, whose clock is its host's).
    log "note: no time sync service to enable; keep this clock in step by other means"
  fi
fi

# The private NIC must carry the lab address; everything binds to it, never to Vagrant's eth0.
# Boxes name it differently (eth1 on Debian and generic boxes, enp0s8 on ubuntu/xenial64): it is
# found by its address.
private_nic=$(ip -o -4 addr show 2>/dev/null | awk -v ip=192.168.56.160 '{ split($4, a, "/"); if (a[1] == ip) { print $2; exit } }')
[ -n "$private_nic" ] ||
  die '192.168.56.160 is on no interface of this VM; check the private_network in the Vagrantfile'
log "private network: ${private_nic} holds 192.168.56.160"
log "done"
