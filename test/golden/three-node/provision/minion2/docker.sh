#!/usr/bin/env bash
# k8slab lab three-node, node minion2, phase docker.
# Rendered from the lab file; safe to run again: a second run changes nothing.
set -Eeuo pipefail
export LC_ALL=C

K8SLAB_PHASE=docker
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

# Docker takes its bridge address and MTU from flannel (seed 001: "flannel vs docker bridge").
subnet_env=/run/flannel/subnet.env
for _ in $(seq 1 30); do
  [ -s "$subnet_env" ] && break
  sleep 2
done
[ -s "$subnet_env" ] || die "flannel has not written $subnet_env yet; is flanneld running? (journalctl -u flanneld)"
# shellcheck disable=SC1090
. "$subnet_env"

dockerd_bin=$(need_bin dockerd)
dockerd_dir=$(dirname "$dockerd_bin")
# A whole unit, not a drop-in: static Docker binaries (an artifact) come without one, and a
# packaged docker.service is overridden by this file. Where the distribution runs containerd as a
# service, dockerd uses it (one that starts its own gives up after seconds on a slow VM).
# How the machine's own docker.service was (enabled? running?) before k8slab's unit stood in for
# it, once, so that k8slab's reset.sh puts it back as it was.
if [ ! -e /var/lib/k8slab/units/docker.service ] && ! grep -qs '(k8slab)$' /etc/systemd/system/docker.service; then
  install -d -m 0755 /var/lib/k8slab/units
  printf '%s\n' "$(systemctl is-enabled docker.service 2>/dev/null || true)" \
    "$(systemctl is-active docker.service 2>/dev/null || true)" >/var/lib/k8slab/units/docker.service
fi
put_file /etc/systemd/system/docker.service 0644 <<UNIT
[Unit]
Description=Docker, on flannel's subnet (k8slab)
After=network-online.target flanneld.service containerd.service
Wants=network-online.target containerd.service
Requires=flanneld.service

[Service]
Type=notify
# dockerd finds docker-containerd, docker-runc and docker-init on its PATH: a static Docker from an
# artifact keeps them beside it.
Environment=PATH=${dockerd_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ExecStart=${dockerd_bin} -H unix:///var/run/docker.sock \\
  --bip=${FLANNEL_SUBNET} --mtu=${FLANNEL_MTU} --ip-masq=false --iptables=false
ExecReload=/bin/kill -s HUP \$MAINPID
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
Delegate=yes
KillMode=process
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
changed=$CHANGED

# Docker no longer masquerades: do it for traffic leaving the pod network, once.
masq=(-s 10.1.0.0/16 ! -d 10.1.0.0/16 -m addrtype ! --dst-type LOCAL -j MASQUERADE)
iptables -t nat -C POSTROUTING "${masq[@]}" 2>/dev/null || iptables -t nat -A POSTROUTING "${masq[@]}"

# A docker0 from an earlier start keeps its old address; docker recreates it from --bip.
if [ "$changed" = yes ] && ip link show docker0 >/dev/null 2>&1; then
  systemctl stop docker.service || true
  ip link delete docker0 || true
fi
ensure_service docker.service "$changed"

docker_bin=$(need_bin docker)
# Up to 5 minutes: a first start (containerd, storage) is slow on a busy or emulated VM.
for _ in $(seq 1 100); do
  timeout 10 "$docker_bin" info >/dev/null 2>&1 && break
  sleep 2
done
timeout 10 "$docker_bin" info >/dev/null 2>&1 || die "docker does not answer; see: journalctl -u docker"

# Images come from the host: each archive the host pulled from its registry once (k8slab cache
# pull) is loaded once per checksum; this node never pulls. The images in images.build are made
# here from local programs instead.
marks=/var/lib/k8slab
install -d -m 0755 "$marks"
# load_image NAME [IMAGE]: docker load the artifact NAME unless this very archive (by sha256) was
# loaded; then IMAGE must be in Docker by that name.
load_image() {
  local name=$1 image=${2:-} archive="/var/cache/k8slab/$1" mark="$marks/image-$1.loaded" sha
  sha=$(cat "$archive.sha256")
  if [ "$(cat "$mark" 2>/dev/null || true)" != "$sha" ]; then
    "$docker_bin" load -i "$archive" >/dev/null || die "docker load of $name failed; see: journalctl -u docker"
    echo "$sha" >"$mark"
    log "image $name loaded"
  fi
  [ -z "$image" ] || "$docker_bin" image inspect "$image" >/dev/null 2>&1 ||
    die "image $image is not in Docker after loading $name; run: k8slab cache pull three-node, then this phase again"
}
load_image image-pause gcr.io/google_containers/pause-amd64:3.1
load_image image-kube-dns gcr.io/google_containers/k8s-dns-kube-dns-amd64:1.14.7
load_image image-dnsmasq gcr.io/google_containers/k8s-dns-dnsmasq-nanny-amd64:1.14.7
load_image image-dns-sidecar gcr.io/google_containers/k8s-dns-sidecar-amd64:1.14.7
load_image image-dashboard k8s.gcr.io/kubernetes-dashboard-amd64:v1.8.0
# build_image IMAGE ENTRYPOINT-JSON DEST=SOURCE...: an image holding just these programs (each
# SOURCE at DEST) and the libraries they link. What went into it (names, sizes and times of the
# files: put_file rewrites a program only when it changed) is a label, so a changed program or
# layout builds the image again under the same name, and an unchanged one is kept. Files are hard
# linked into the image's tree, not copied: hyperkube is 100 MB and a slow VM feels every copy.
build_image() {
  local image=$1 entrypoint=$2 inputs current old root pair dest src lib
  shift 2
  inputs=$({
    echo "$entrypoint"
    for pair in "$@"; do
      echo "${pair%%=*} $(stat -Lc '%s %Y' "${pair#*=}")"
    done
  } | sha256sum | cut -c1-64)
  current=$("$docker_bin" image inspect -f '{{ index .Config.Labels "k8slab.inputs" }}' "$image" 2>/dev/null || true)
  [ "$current" != "$inputs" ] || return 0
  old=$("$docker_bin" image inspect -f '{{ .Id }}' "$image" 2>/dev/null || true)
  root=$(mktemp -d "$marks/image.XXXXXX")
  link() { mkdir -p "$root$(dirname "$2")" && { ln -f "$(readlink -f "$1")" "$root$2" 2>/dev/null || cp "$1" "$root$2"; }; }
  for pair in "$@"; do
    dest=${pair%%=*} src=${pair#*=}
    link "$src" "$dest"
    for lib in $(ldd "$src" 2>/dev/null | grep -o '/[^ ]*' || true); do
      [ -e "$root$lib" ] || link "$lib" "$lib"
    done
  done
  tar -C "$root" -c . |
    "$docker_bin" import --change "ENTRYPOINT $entrypoint" --change "LABEL k8slab.inputs=$inputs" - "$image" >/dev/null
  rm -rf "$root"
  # The image it replaces goes, unless a container still uses it.
  [ -z "$old" ] || "$docker_bin" rmi "$old" >/dev/null 2>&1 || true
  log "image $image built from $*"
}
# What an interrupted build left.
rm -rf "$marks"/image.*

log "done"
