#!/usr/bin/env bash
# k8slab lab three-node, node master, phase flannel-config.
# Rendered from the lab file; safe to run again: a second run changes nothing.
set -Eeuo pipefail
export LC_ALL=C

K8SLAB_PHASE=flannel-config
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

# flannel v0.10 reads its network from etcd's v2 keyspace (invisible to the v3 API).
etcd_endpoints=https://192.168.56.165:2379,https://192.168.56.166:2379,https://192.168.56.167:2379
prefix=/coreos.com/network
etcd_v2() {
  ETCDCTL_API=2 "$etcdctl_bin" --endpoints "$etcd_endpoints" \
    --ca-file /etc/kubernetes/pki/etcd-ca.pem \
    --cert-file /etc/kubernetes/pki/etcd-client-flannel.pem \
    --key-file /etc/kubernetes/pki/etcd-client-flannel-key.pem "$@"
}
network_config='{"Network":"10.1.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}'

etcdctl_bin=$(need_bin etcdctl)
err=$(mktemp)
trap 'rm -f "$err"' EXIT
etcd_error() { sed -n '1s/^Error: *//p' "$err"; }
# A quorum read: a member without a leader still answers plain reads from its own store, and
# cluster-health fails on a cluster that has lost one member but still has its quorum.
if current=$(etcd_v2 get --quorum "$prefix/config" 2>"$err"); then
  if [ "$current" != "$network_config" ]; then
    log "warning: etcd holds another flannel network ($current); leaving it (pods already use it)"
  fi
elif grep -q 'Key not found' "$err"; then
  # Written once: "mk" refuses to overwrite a config another run wrote first.
  etcd_v2 mk "$prefix/config" "$network_config" >/dev/null 2>"$err" ||
    die "writing flannel's network to etcd failed: $(etcd_error)"
  log "flannel network written to etcd: $network_config"
else
  die "etcd has no quorum yet, so flannel's network cannot be written ($(etcd_error)); run this phase again once a majority of etcd members run"
fi
log "done"
