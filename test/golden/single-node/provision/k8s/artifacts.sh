#!/usr/bin/env bash
# k8slab lab single-node, node k8s, phase artifacts.
# Rendered from the lab file; safe to run again: a second run changes nothing.
set -Eeuo pipefail
export LC_ALL=C

K8SLAB_PHASE=artifacts
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
  tmp=$(mktemp "${path}.k8slab.XXXXXX")
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
    die "$1 is not installed: neither the box has it nor did an artifact of the lab install it (artifacts: in the lab file; then k8slab provision <lab> --phase artifacts)"
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

# Every download comes from the host, which fetched it once and verified it (k8slab cache pull).
# This VM never goes to the internet: it fetches from K8SLAB_ARTIFACTS_URL and checks sha256 again.
base_url=${K8SLAB_ARTIFACTS_URL:-}
cache=/var/cache/k8slab
bin=/opt/k8slab/bin
files=/opt/k8slab/files
install -d -m 0755 "$cache" "$bin" "$files"

# fetch NAME SHA256: leave a verified copy in $cache/NAME; SHA256 may be empty for a pinned one.
fetch() {
  local name=$1 sha=$2 dest="$cache/$1"
  if [ -z "$sha" ] && [ -f "$dest.sha256" ]; then sha=$(cat "$dest.sha256"); fi
  if [ -n "$sha" ] && [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --status; then
    return 0
  fi
  [ -n "$base_url" ] || die "artifact $name is not on this VM and no host serves it; run: k8slab provision single-node --phase artifacts (it serves the host's cache)"
  if [ -z "$sha" ]; then
    sha=$(curl -fsS --max-time 30 "$base_url/$name.sha256") || die "cannot get the checksum of $name from $base_url"
  fi
  log "fetching $name from the host"
  curl -fsS --retry 3 --connect-timeout 10 --max-time 1800 -o "$dest.part" "$base_url/$name" ||
    die "cannot fetch $name from $base_url; is k8slab still serving? (k8slab cache pull single-node)"
  echo "$sha  $dest.part" | sha256sum -c --status || {
    rm -f "$dest.part"
    die "artifact $name arrived corrupt (sha256 mismatch); run the phase again"
  }
  mv -f "$dest.part" "$dest"
  echo "$sha" >"$dest.sha256"
}

# kubernetes-server (archive)
fetch kubernetes-server 09ab78a1b091ce8affb39d5218ba780eb36bc8026d557ed6d5efcd5a51b7927a
tar -xzOf /var/cache/k8slab/kubernetes-server kubernetes/server/bin/hyperkube | put_file /opt/k8slab/bin/hyperkube 0755
tar -xzOf /var/cache/k8slab/kubernetes-server kubernetes/server/bin/kubelet | put_file /opt/k8slab/bin/kubelet 0755
tar -xzOf /var/cache/k8slab/kubernetes-server kubernetes/server/bin/kube-proxy | put_file /opt/k8slab/bin/kube-proxy 0755
tar -xzOf /var/cache/k8slab/kubernetes-server kubernetes/server/bin/kubectl | put_file /opt/k8slab/bin/kubectl 0755

# etcd (archive)
fetch etcd ''
tar -xzOf /var/cache/k8slab/etcd etcd-v3.1.10-linux-amd64/etcd | put_file /opt/k8slab/bin/etcd 0755
tar -xzOf /var/cache/k8slab/etcd etcd-v3.1.10-linux-amd64/etcdctl | put_file /opt/k8slab/bin/etcdctl 0755

# flannel (archive)
fetch flannel ''
tar -xzOf /var/cache/k8slab/flannel flanneld | put_file /opt/k8slab/bin/flanneld 0755
log "done"
