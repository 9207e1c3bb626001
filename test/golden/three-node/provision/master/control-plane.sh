#!/usr/bin/env bash
# k8slab lab three-node, node master, phase control-plane.
# Rendered from the lab file; safe to run again: a second run changes nothing.
set -Eeuo pipefail
export LC_ALL=C

K8SLAB_PHASE=control-plane
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

# The control plane runs as static pods: the kubelet starts whatever lies in the manifests folder.
# One control-plane node: no leader election (on a busy VM a missed lease renewal would make the
# controller manager and the scheduler exit, to be restarted by the kubelet).
# Flags the seed calls undocumented: --service-account-key-file (apiserver) must match
# --service-account-private-key-file (controller manager), and --storage-backend must match etcd.
manifests=/etc/kubernetes/manifests
install -d -m 0755 "$manifests"
docker_bin=$(need_bin docker)
image_id=$("$docker_bin" image inspect -f '{{ .Id }}' gcr.io/google_containers/hyperkube:v1.9.3 2>/dev/null) ||
  die "image gcr.io/google_containers/hyperkube:v1.9.3 is not in Docker; the docker phase puts it there (k8slab provision three-node --phase docker)"
# static_pod NAME < manifest: written with the image's ID in place of @IMAGE_ID@.
static_pod() { sed "s|@IMAGE_ID@|${image_id}|" | put_file "$manifests/$1.yaml" 0644; }

static_pod kube-apiserver <<'YAML'
apiVersion: v1
kind: Pod
metadata:
  name: kube-apiserver
  namespace: kube-system
  labels:
    component: kube-apiserver
    tier: control-plane
  annotations:
    # The image's ID when the manifest was written: a rebuilt image changes the manifest, and the
    # kubelet then restarts the pod with it.
    k8slab/image-id: "@IMAGE_ID@"
spec:
  hostNetwork: true
  containers:
    - name: kube-apiserver
      image: gcr.io/google_containers/hyperkube:v1.9.3
      command:
        - /hyperkube
        - apiserver
        - "--advertise-address=192.168.56.165"
        - "--bind-address=0.0.0.0"
        - "--secure-port=6443"
        - "--insecure-bind-address=127.0.0.1"
        - "--insecure-port=8080"
        - "--etcd-servers=https://192.168.56.165:2379,https://192.168.56.166:2379,https://192.168.56.167:2379"
        - "--etcd-cafile=/etc/kubernetes/pki/etcd-ca.pem"
        - "--etcd-certfile=/etc/kubernetes/pki/etcd-client-apiserver.pem"
        - "--etcd-keyfile=/etc/kubernetes/pki/etcd-client-apiserver-key.pem"
        - "--storage-backend=etcd3"
        - "--service-cluster-ip-range=10.32.0.0/24"
        - "--service-account-key-file=/etc/kubernetes/pki/service-account.pem"
        - "--client-ca-file=/etc/kubernetes/pki/ca.pem"
        - "--tls-cert-file=/etc/kubernetes/pki/apiserver.pem"
        - "--tls-private-key-file=/etc/kubernetes/pki/apiserver-key.pem"
        - "--kubelet-client-certificate=/etc/kubernetes/pki/apiserver-kubelet-client.pem"
        - "--kubelet-client-key=/etc/kubernetes/pki/apiserver-kubelet-client-key.pem"
        - "--kubelet-certificate-authority=/etc/kubernetes/pki/ca.pem"
        - "--kubelet-preferred-address-types=InternalIP,Hostname"
        - "--admission-control=NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,DefaultTolerationSeconds,NodeRestriction,ResourceQuota"
        - "--authorization-mode=Node,RBAC"
        - "--allow-privileged=true"
        - "--apiserver-count=1"
        - "--v=2"
      volumeMounts:
        - name: pki
          mountPath: /etc/kubernetes/pki
          readOnly: true
  volumes:
    - name: pki
      hostPath:
        path: /etc/kubernetes/pki

YAML
static_pod kube-controller-manager <<'YAML'
apiVersion: v1
kind: Pod
metadata:
  name: kube-controller-manager
  namespace: kube-system
  labels:
    component: kube-controller-manager
    tier: control-plane
  annotations:
    # The image's ID when the manifest was written: a rebuilt image changes the manifest, and the
    # kubelet then restarts the pod with it.
    k8slab/image-id: "@IMAGE_ID@"
spec:
  hostNetwork: true
  containers:
    - name: kube-controller-manager
      image: gcr.io/google_containers/hyperkube:v1.9.3
      command:
        - /hyperkube
        - controller-manager
        - "--kubeconfig=/etc/kubernetes/pki/kube-controller-manager.kubeconfig"
        - "--service-account-private-key-file=/etc/kubernetes/pki/service-account-key.pem"
        - "--root-ca-file=/etc/kubernetes/pki/ca.pem"
        - "--cluster-name=three-node"
        - "--service-cluster-ip-range=10.32.0.0/24"
        - "--allocate-node-cidrs=false"
        - "--use-service-account-credentials=true"
        - "--leader-elect=false"
        - "--v=2"
      volumeMounts:
        - name: pki
          mountPath: /etc/kubernetes/pki
          readOnly: true
  volumes:
    - name: pki
      hostPath:
        path: /etc/kubernetes/pki

YAML
static_pod kube-scheduler <<'YAML'
apiVersion: v1
kind: Pod
metadata:
  name: kube-scheduler
  namespace: kube-system
  labels:
    component: kube-scheduler
    tier: control-plane
  annotations:
    # The image's ID when the manifest was written: a rebuilt image changes the manifest, and the
    # kubelet then restarts the pod with it.
    k8slab/image-id: "@IMAGE_ID@"
spec:
  hostNetwork: true
  containers:
    - name: kube-scheduler
      image: gcr.io/google_containers/hyperkube:v1.9.3
      command:
        - /hyperkube
        - scheduler
        - "--kubeconfig=/etc/kubernetes/pki/kube-scheduler.kubeconfig"
        - "--leader-elect=false"
        - "--v=2"
      volumeMounts:
        - name: pki
          mountPath: /etc/kubernetes/pki
          readOnly: true
  volumes:
    - name: pki
      hostPath:
        path: /etc/kubernetes/pki

YAML
log "done; the kubelet starts the control plane once the hyperkube image is pulled"
