#!/usr/bin/env bash
# k8slab lab three-node, node master, phase pki.
# Rendered from the lab file; safe to run again: a second run changes nothing.
set -Eeuo pipefail
export LC_ALL=C

K8SLAB_PHASE=pki
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

# Vagrant's "pki-upload" provisioner copied this node's own bundle (never the CA key) here.
src=/tmp/k8slab-pki
dst=/etc/kubernetes/pki

if [ ! -d "$src" ]; then
  [ -f "$dst/ca.pem" ] || die "no certificates were uploaded; run: vagrant provision ${K8SLAB_NODE} --provision-with pki-upload,pki"
  log "no new upload; keeping the certificates in $dst"
  exit 0
fi

# Vagrant's file provisioner, like scp -r, puts the directory *inside* an existing destination
# (a leftover of an interrupted run): take the bundle from there then.
bundle=$src
[ ! -d "$src/${K8SLAB_NODE}" ] || bundle=$src/${K8SLAB_NODE}
[ -f "$bundle/ca.pem" ] || die "the upload in $src holds no ca.pem; run: vagrant provision ${K8SLAB_NODE} --provision-with pki-upload,pki"

install -d -m 0755 "$dst"
for file in "$bundle"/*; do
  [ -f "$file" ] || continue
  name=$(basename "$file")
  case "$name" in
    *-key.pem | *.kubeconfig) mode=0600 ;;
    *) mode=0644 ;;
  esac
  put_file "$dst/$name" "$mode" <"$file"
done
rm -rf "$src"
log "done"
