#!/usr/bin/env bash
# k8slab lab three-node, node master, phase flannel.
# Rendered from the lab file; safe to run again: a second run changes nothing.
set -Eeuo pipefail
export LC_ALL=C

K8SLAB_PHASE=flannel
K8SLAB_NODE=master
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
    die "$1 is not installed: neither the box has it nor did an artifact of the lab install it (artifacts: in the lab file; then k8slab provision three-node --phase artifacts)"
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

flanneld_bin=$(need_bin flanneld)

# systemd 242 and later (udev's MACAddressPolicy=persistent) give a new virtual device a MAC of
# its own a moment after it is created: flannel has by then published the first one as its VTEP
# address, and every other node sends this node's pod traffic to a MAC it no longer has (requests
# arrive, nothing answers). Leave flannel's devices alone; a device made before this rule goes.
put_file /etc/systemd/network/10-k8slab-flannel.link 0644 <<LINK
[Match]
OriginalName=flannel*

[Link]
MACAddressPolicy=none
LINK
if [ "$CHANGED" = yes ]; then
  udevadm control --reload 2>/dev/null || true
  if ip link show flannel.1 >/dev/null 2>&1; then
    systemctl stop flanneld.service 2>/dev/null || true
    ip link delete flannel.1
    log "removed flannel.1 (made before the rule): flanneld makes it again"
  fi
fi
# --iface: the private NIC, named by its address (boxes name it eth1 or enp0s8). Vagrant's eth0
# is NAT with the same 10.0.2.15 on every VM.
put_file /etc/systemd/system/flanneld.service 0644 <<UNIT
[Unit]
Description=flannel overlay network (k8slab)
After=network-online.target etcd.service
Wants=network-online.target
Before=docker.service

[Service]
Type=notify
ExecStart=${flanneld_bin} \\
  --etcd-endpoints=https://192.168.56.165:2379,https://192.168.56.166:2379,https://192.168.56.167:2379 \\
  --etcd-prefix=/coreos.com/network \\
  --etcd-cafile=/etc/kubernetes/pki/etcd-ca.pem \\
  --etcd-certfile=/etc/kubernetes/pki/etcd-client-flannel.pem \\
  --etcd-keyfile=/etc/kubernetes/pki/etcd-client-flannel-key.pem \\
  --iface=192.168.56.165 \\
  --public-ip=192.168.56.165 \\
  --subnet-file=/run/flannel/subnet.env
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
UNIT
ensure_service flanneld.service "$CHANGED"
log "done"
