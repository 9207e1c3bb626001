#!/usr/bin/env bash
# k8slab lab three-node, node minion2, phase etcd.
# Rendered from the lab file; safe to run again: a second run changes nothing.
set -Eeuo pipefail
export LC_ALL=C

K8SLAB_PHASE=etcd
K8SLAB_NODE=minion2
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

# etcd member minion2 of 3: TLS for clients and peers, on the private address only.
# Heartbeat and election timeouts are 5x etcd's defaults: a laptop's VMs stall for seconds under
# load (far more under software emulation), and a lab gains nothing from fast fail-over.
etcd_bin=$(need_bin etcd)

# etcd 3.4 turned the v2 API off; flannel v0.10 keeps its config in the v2 keyspace.
etcd_version=$("$etcd_bin" --version | sed -n 's/^etcd Version: //p')
enable_v2=""
case "$etcd_version" in
  3.[0-2].*) ;;
  *) enable_v2="--enable-v2=true" ;;
esac

# How the machine's own etcd.service was (enabled? running?) before k8slab's unit stood in for
# it, once, so that k8slab's reset.sh puts it back as it was.
if [ ! -e /var/lib/k8slab/units/etcd.service ] && ! grep -qs '(k8slab)$' /etc/systemd/system/etcd.service; then
  install -d -m 0755 /var/lib/k8slab/units
  printf '%s\n' "$(systemctl is-enabled etcd.service 2>/dev/null || true)" \
    "$(systemctl is-active etcd.service 2>/dev/null || true)" >/var/lib/k8slab/units/etcd.service
fi
put_file /etc/systemd/system/etcd.service 0644 <<UNIT
[Unit]
Description=etcd member minion2 (k8slab)
Documentation=https://etcd.io/docs/
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
ExecStart=${etcd_bin} \\
  --name=minion2 \\
  --data-dir=/var/lib/etcd \\
  --listen-client-urls=https://192.168.56.167:2379,https://127.0.0.1:2379 \\
  --advertise-client-urls=https://192.168.56.167:2379 \\
  --listen-peer-urls=https://192.168.56.167:2380 \\
  --initial-advertise-peer-urls=https://192.168.56.167:2380 \\
  --initial-cluster=master=https://192.168.56.165:2380,minion1=https://192.168.56.166:2380,minion2=https://192.168.56.167:2380 \\
  --initial-cluster-state=new \\
  --initial-cluster-token=three-node \\
  --cert-file=/etc/kubernetes/pki/etcd-server-minion2.pem \\
  --key-file=/etc/kubernetes/pki/etcd-server-minion2-key.pem \\
  --trusted-ca-file=/etc/kubernetes/pki/etcd-ca.pem \\
  --client-cert-auth \\
  --peer-cert-file=/etc/kubernetes/pki/etcd-peer-minion2.pem \\
  --peer-key-file=/etc/kubernetes/pki/etcd-peer-minion2-key.pem \\
  --peer-trusted-ca-file=/etc/kubernetes/pki/etcd-ca.pem \\
  --peer-client-cert-auth \\
  --heartbeat-interval=500 \\
  --election-timeout=5000 ${enable_v2}
Restart=on-failure
RestartSec=5
LimitNOFILE=65536
# A member waits for its peers before it reports ready; do not let systemd give up first.
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT
unit_changed=$CHANGED

install -d -m 0700 /var/lib/etcd
# Started without waiting (--no-block): with several members, each start waits for a quorum of
# its peers, which this node alone cannot give. k8slab polls the cluster's health from the host.
ensure_service etcd.service "$unit_changed"
log "done; etcd is healthy once a majority of its 3 members run"
