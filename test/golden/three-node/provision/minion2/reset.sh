#!/usr/bin/env bash
# k8slab lab three-node, node minion2, phase reset.
# Rendered from the lab file; safe to run again: a second run changes nothing.
set -Eeuo pipefail
export LC_ALL=C

K8SLAB_PHASE=reset
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

# Undo what the phases installed on minion2 (seed 002's reset.yml), so the machine can be
# used again: units, files, data, iptables rules and interfaces. Only what k8slab made goes; a unit
# or program of the machine's own (a packaged etcd or Docker) is put back as it was.
# Safe to run again, and on a node where only some phases ran. Not undone: swap that base turned
# off (swapon -a turns it on), sysctl values set at runtime (a reboot resets them), loaded modules.
changed=no
gone() { log "removed $1"; changed=yes; }

# rm_path PATH...: remove files or directories that k8slab made, saying so.
rm_path() {
  local path
  for path in "$@"; do
    if [ -e "$path" ] || [ -L "$path" ]; then
      rm -rf -- "$path"
      gone "$path"
    fi
  done
}

# rmdir_empty DIR...: remove directories k8slab made once nothing else is left in them.
rmdir_empty() {
  local dir
  for dir in "$@"; do
    if [ -d "$dir" ] && rmdir -- "$dir" 2>/dev/null; then gone "$dir"; fi
  done
}

# umount_under DIR: unmount everything mounted below DIR (the kubelet's volumes), deepest first.
umount_under() {
  local target
  [ -d "$1" ] || return 0
  awk -v dir="$1/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r target; do
      umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true
    done
}

# A k8slab unit is one whose Description says so; a packaged unit of the same name is left.
ours() { [ -f "/etc/systemd/system/$1" ] && grep -q '^Description=.*(k8slab)$' "/etc/systemd/system/$1"; }
packaged() { [ -f "/lib/systemd/system/$1" ] || [ -f "/usr/lib/systemd/system/$1" ]; }

# 1. Units, in the reverse order of the phases: nothing restarts what is being taken away.
for unit in kubelet.service kube-proxy.service; do
  if ours "$unit"; then
    systemctl stop "$unit" 2>/dev/null || true
  fi
done

# The pods' containers (the kubelet names them k8s_...), while Docker still runs.
docker_bin=$(command -v /opt/k8slab/bin/docker docker 2>/dev/null | head -n1 || true)
if [ -n "$docker_bin" ] && timeout 10 "$docker_bin" info >/dev/null 2>&1; then
  ids=$(timeout 60 "$docker_bin" ps -aq --filter name=k8s_ 2>/dev/null || true)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086 # one word per container ID
    timeout 120 "$docker_bin" rm -f $ids >/dev/null 2>&1 || true
    log "removed the pods' containers"
  fi
  if [ ! -x /opt/k8slab/bin/dockerd ]; then
    # The machine's own Docker keeps its data: only the images k8slab built or loaded go.
    for image in $(timeout 60 "$docker_bin" images -q --filter label=k8slab.inputs 2>/dev/null | sort -u) \
      gcr.io/google_containers/pause-amd64:3.1 gcr.io/google_containers/hyperkube:v1.9.3 gcr.io/google_containers/k8s-dns-kube-dns-amd64:1.14.7 gcr.io/google_containers/k8s-dns-dnsmasq-nanny-amd64:1.14.7 gcr.io/google_containers/k8s-dns-sidecar-amd64:1.14.7 k8s.gcr.io/kubernetes-dashboard-amd64:v1.8.0; do
      timeout 60 "$docker_bin" rmi -f "$image" >/dev/null 2>&1 || true
    done
  fi
fi

for unit in kubelet.service kube-proxy.service docker.service flanneld.service etcd.service; do
  ours "$unit" || continue
  systemctl stop "$unit" 2>/dev/null || true
  # Only the links to k8slab's unit file: a packaged unit's own stay as they are.
  find /etc/systemd/system -lname "/etc/systemd/system/$unit" -delete 2>/dev/null || true
  rm -f "/etc/systemd/system/$unit"
  gone "/etc/systemd/system/$unit"
done

# 2. Data and mounts.
umount_under /var/lib/kubelet
rm_path /var/lib/kubelet /var/log/pods /var/log/containers
if [ -x /opt/k8slab/bin/dockerd ]; then
  # Docker came from the lab's artifacts: its data, state and key are k8slab's too.
  umount_under /var/lib/docker
  umount_under /run/docker
  rm_path /var/lib/docker /etc/docker /run/docker /run/docker.sock /run/docker.pid
fi
# etcd's member data under the data directory (a packaged etcd keeps its own elsewhere in it).
rm_path /var/lib/etcd/member
packaged etcd.service || rmdir_empty /var/lib/etcd
rm_path /run/flannel/subnet.env
rmdir_empty /run/flannel

# 3. Files the phases wrote.
rm_path /etc/kubernetes/pki /etc/kubernetes/manifests /etc/kubernetes/addons /tmp/k8slab-pki
rmdir_empty /etc/kubernetes
rm_path /etc/systemd/network/10-k8slab-flannel.link
udevadm control --reload 2>/dev/null || true
rm_path /etc/modules-load.d/k8slab.conf /etc/sysctl.d/90-k8slab.conf
rm_path /opt/k8slab/bin /opt/k8slab/compat /opt/k8slab/files
rmdir_empty /opt/k8slab
rm_path /var/cache/k8slab

# /etc/hosts: the k8slab block goes; the line base took out (the hostname on 127.0.1.1) comes
# back from base's copy when the file is otherwise as base left it, else it is added again.
hosts_before=/var/lib/k8slab/hosts.before
if grep -q '^# BEGIN k8slab$' /etc/hosts; then
  without=$(sed '/^# BEGIN k8slab$/,/^# END k8slab$/d' /etc/hosts)
  if [ -f "$hosts_before" ] &&
    [ "$without" = "$(grep -Ev "^127\.[0-9.]+[[:space:]]+([^#]*[[:space:]])?${K8SLAB_NODE}([[:space:]]|$)" "$hosts_before" || true)" ]; then
    put_file /etc/hosts 0644 <"$hosts_before"
  else
    printf '%s\n' "$without" | put_file /etc/hosts 0644
  fi
  log "removed the k8slab block from /etc/hosts"
  changed=yes
fi
# /etc/fstab: swap lines base commented out (#k8slab#) are active again.
if grep -q '^#k8slab# ' /etc/fstab 2>/dev/null; then
  sed -i 's/^#k8slab# //' /etc/fstab
  log "swap lines in /etc/fstab active again (swapon -a turns swap on)"
  changed=yes
fi

# 4. iptables: what the docker phase added, kube-proxy's and the kubelet's KUBE-* chains with the
# rules that jump to them, and flannel's FORWARD rules for the pod network.
# BEGIN iptables
iptables_reset() {
  local table rule chain
  command -v iptables-save >/dev/null 2>&1 || return 0
  iptables -t nat -D POSTROUTING -s 10.1.0.0/16 ! -d 10.1.0.0/16 -m addrtype ! --dst-type LOCAL -j MASQUERADE 2>/dev/null || true
  for rule in "-s 10.1.0.0/16 -j ACCEPT" "-d 10.1.0.0/16 -j ACCEPT"; do
    # shellcheck disable=SC2086 # the rule's words
    while iptables -t filter -D FORWARD $rule 2>/dev/null; do :; done
  done
  for table in filter nat mangle; do
    # Rules in other chains that jump to a KUBE-* chain, then the chains themselves.
    iptables-save -t "$table" 2>/dev/null | grep -E '^-A [^ ]+ .*-j KUBE-' | grep -Ev '^-A KUBE-' |
      while read -r rule; do
        # shellcheck disable=SC2086 # iptables-save writes one rule per line, in words
        eval "iptables -t $table -D ${rule#-A }" 2>/dev/null || true
      done
    for chain in $(iptables-save -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p'); do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables-save -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p'); do
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}
# END iptables
iptables_reset

# 5. Interfaces: flannel's VTEP and Docker's bridge (flannel's subnet; a Docker of the machine
# makes its own again when it starts).
for link in flannel.1 docker0; do
  if ip link show "$link" >/dev/null 2>&1; then
    ip link delete "$link" 2>/dev/null || true
    gone "interface $link"
  fi
done

# 6. The machine's own units k8slab stood in for (a packaged etcd or Docker), as they were before:
# enabled or not, running or not (the phases recorded it). Last: their Docker makes its docker0.
systemctl daemon-reload
for unit in kubelet.service kube-proxy.service docker.service flanneld.service etcd.service; do
  systemctl reset-failed "$unit" 2>/dev/null || true
  record=/var/lib/k8slab/units/$unit
  if [ ! -s "$record" ] || ! packaged "$unit"; then continue; fi
  { read -r enabled || true; read -r active || true; } <"$record"
  case "$enabled" in
    enabled) systemctl enable "$unit" >/dev/null 2>&1 || true ;;
    disabled) systemctl disable "$unit" >/dev/null 2>&1 || true ;;
    masked) systemctl mask "$unit" >/dev/null 2>&1 || true ;;
  esac
  if [ "$active" = active ]; then systemctl start --no-block "$unit" 2>/dev/null || true; fi
  log "$unit of the machine is ${enabled:-as it was}${active:+ and $active} again"
done
rm_path /var/lib/k8slab
# Where an SSH lab's scripts are uploaded to (this one included: bash holds it open while it runs).
rm_path /tmp/k8slab-provision

if [ "$changed" = yes ]; then
  log "done: minion2 holds nothing of lab three-node any more"
else
  log "done: nothing of lab three-node was left on minion2"
fi
