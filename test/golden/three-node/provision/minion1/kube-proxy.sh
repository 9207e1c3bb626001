#!/usr/bin/env bash
# k8slab lab three-node, node minion1, phase kube-proxy.
# Rendered from the lab file; safe to run again: a second run changes nothing.
set -Eeuo pipefail
export LC_ALL=C

K8SLAB_PHASE=kube-proxy
K8SLAB_NODE=minion1
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

# kube-proxy makes service addresses (10.32.0.0/24) work on this node with iptables.
proxy_bin=$(need_bin kube-proxy)

# kube-proxy 1.9 asks iptables-restore to wait for the xtables lock with "-w5", a form iptables
# 1.8 and later refuse ("invalid option -- '5'"): then no Service rule is ever written. It finds
# this wrapper first on its PATH, which passes "-w" (wait) and everything else as it is.
restore_bin=$(command -v iptables-restore) || die "iptables-restore is not installed (package iptables)"
install -d -m 0755 /opt/k8slab/compat
put_file /opt/k8slab/compat/iptables-restore 0755 <<WRAPPER
#!/bin/sh
for a in "\$@"; do
  shift
  case "\$a" in
    -w[0-9]* | --wait=*) set -- "\$@" -w ;;
    *) set -- "\$@" "\$a" ;;
  esac
done
exec ${restore_bin} "\$@"
WRAPPER
put_file /etc/systemd/system/kube-proxy.service 0644 <<UNIT
[Unit]
Description=Kubernetes kube-proxy (k8slab)
After=network-online.target flanneld.service
Wants=network-online.target

[Service]
Environment=PATH=/opt/k8slab/compat:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ExecStart=${proxy_bin} \\
  --kubeconfig=/etc/kubernetes/pki/kube-proxy.kubeconfig \\
  --bind-address=192.168.56.166 \\
  --hostname-override=minion1 \\
  --cluster-cidr=10.1.0.0/16 \\
  --proxy-mode=iptables \\
  --v=2
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
UNIT
ensure_service kube-proxy.service "$CHANGED"
log "done"
