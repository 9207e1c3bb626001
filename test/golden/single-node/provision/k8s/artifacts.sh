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

# Every download comes from the host, which fetched it once and verified it (k8slab cache pull).
# This VM never goes to the internet: it fetches from K8SLAB_ARTIFACTS_URL and checks sha256 again.
base_url=${K8SLAB_ARTIFACTS_URL:-}
cache=/var/cache/k8slab
bin=/opt/k8slab/bin
files=/opt/k8slab/files
install -d -m 0755 "$cache" "$bin" "$files"

# fetch NAME SHA256 [SERVED]: leave a verified copy in $cache/NAME. SHA256 is empty for a pinned
# artifact and for an image: the host says which file it serves now (an image re-pulled at a new
# digest is fetched again), and without a host the copy here is checked against its own record.
# SERVED is the host's name for the file (NAME-ARCH: this node's architecture's file).
fetch() {
  local name=$1 sha=$2 dest="$cache/$1" served=${3:-$1}
  if [ -z "$sha" ] && [ -n "$base_url" ]; then
    sha=$(curl -fsS --max-time 30 "$base_url/$served.sha256") || die "cannot get the checksum of $name from $base_url"
  elif [ -z "$sha" ] && [ -f "$dest.sha256" ]; then
    sha=$(cat "$dest.sha256")
  fi
  if [ -n "$sha" ] && [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --status; then
    return 0
  fi
  [ -n "$base_url" ] || die "artifact $name is not on this VM and no host serves it; run: k8slab provision single-node --phase artifacts (it serves the host's cache)"
  log "fetching $served from the host"
  curl -fsS --retry 3 --connect-timeout 10 --max-time 1800 -o "$dest.part" "$base_url/$served" ||
    die "cannot fetch $name from $base_url; is k8slab still serving? (k8slab cache pull single-node)"
  echo "$sha  $dest.part" | sha256sum -c --status || {
    rm -f "$dest.part"
    die "artifact $name arrived corrupt (sha256 mismatch); run the phase again"
  }
  mv -f "$dest.part" "$dest"
  echo "$sha" >"$dest.sha256"
}

# unpack NAME MEMBER PROGRAM [MEMBER PROGRAM ...]: install archive members as programs, in one
# pass over the archive (a 400 MB Kubernetes archive takes minutes to decompress in a slow VM),
# and only when the archive or the member list changed since the last install.
unpack() {
  local name=$1 archive="$cache/$1" stamp="$cache/$1.installed" want tmp i missing=no
  shift
  want="$(cat "$archive.sha256") $*"
  for ((i = 2; i <= $#; i += 2)); do [ -x "$bin/${!i}" ] || missing=yes; done
  if [ "$missing" = no ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  tmp=$(mktemp -d "$cache/unpack.XXXXXX")
  local members=()
  for ((i = 1; i <= $#; i += 2)); do members+=("${!i}"); done
  tar -xf "$archive" -C "$tmp" "${members[@]}" || die "cannot unpack ${members[*]} from $name"
  while [ $# -gt 0 ]; do
    put_file "$bin/$2" 0755 <"$tmp/$1"
    shift 2
  done
  rm -rf "$tmp"
  echo "$want" >"$stamp"
}
# What an interrupted run left.
rm -rf "$cache"/unpack.*

# kubernetes-server (archive)
fetch kubernetes-server 09ab78a1b091ce8affb39d5218ba780eb36bc8026d557ed6d5efcd5a51b7927a
unpack kubernetes-server \
  kubernetes/server/bin/hyperkube hyperkube \
  kubernetes/server/bin/kubelet kubelet \
  kubernetes/server/bin/kube-proxy kube-proxy \
  kubernetes/server/bin/kubectl kubectl

# etcd (archive)
fetch etcd ''
unpack etcd \
  etcd-v3.1.10-linux-amd64/etcd etcd \
  etcd-v3.1.10-linux-amd64/etcdctl etcdctl

# flannel (archive)
fetch flannel ''
unpack flannel \
  flanneld flanneld

# docker (archive)
fetch docker ''
unpack docker \
  docker/docker docker \
  docker/dockerd dockerd \
  docker/docker-containerd docker-containerd \
  docker/docker-containerd-shim docker-containerd-shim \
  docker/docker-containerd-ctr docker-containerd-ctr \
  docker/docker-runc docker-runc \
  docker/docker-init docker-init \
  docker/docker-proxy docker-proxy

# image-pause (image)
fetch image-pause ''

# image-kube-dns (image)
fetch image-kube-dns ''

# image-dnsmasq (image)
fetch image-dnsmasq ''

# image-dns-sidecar (image)
fetch image-dns-sidecar ''
log "done"
