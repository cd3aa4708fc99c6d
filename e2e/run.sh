#!/usr/bin/env bash
# End-to-end suite: a kind cluster, the operator image built from this tree, the Helm chart,
# MinIO for the s3 store, and the pytest scenarios in e2e/.
#
# Needs docker, kind, helm, kubectl and python3 (see e2e/README.md). It cannot run on machines
# without a container engine.
#
# Environment:
#   KIND_CLUSTER_NAME  cluster to use or create (default ckpt-e2e); an existing one is reused
#   KEEP_CLUSTER=1     keep a cluster this script created (default: delete it at the end)
#   E2E_ARTIFACTS      where logs go on failure (default e2e/artifacts)
#   PYTEST_ARGS        extra pytest arguments, e.g. "-k volume"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${KIND_CLUSTER_NAME:-ckpt-e2e}"
IMAGE_REPOSITORY="ghcr.io/ckpt-dev/checkpoint-operator"
IMAGE_TAG="e2e"
TEST_IMAGES=(busybox:1.36 docker.io/minio/minio:RELEASE.2025-09-07T16-13-09Z)
export E2E_RELEASE="${E2E_RELEASE:-checkpoint-operator}"
export E2E_RELEASE_NAMESPACE="${E2E_RELEASE_NAMESPACE:-ckpt-system}"
export E2E_CHART="$ROOT/charts/checkpoint-operator"
export E2E_ARTIFACTS="${E2E_ARTIFACTS:-$ROOT/e2e/artifacts}"
export E2E_KUBE_CONTEXT="kind-$CLUSTER"
created_cluster=0

log() { printf '\n=== %s\n' "$*" >&2; }

for tool in docker kind helm kubectl python3; do
  command -v "$tool" >/dev/null || { echo "e2e/run.sh needs $tool on PATH (see e2e/README.md)" >&2; exit 2; }
done

collect_logs() {
  mkdir -p "$E2E_ARTIFACTS"
  log "collecting logs into $E2E_ARTIFACTS"
  kubectl --context "$E2E_KUBE_CONTEXT" -n "$E2E_RELEASE_NAMESPACE" logs deployment/"$E2E_RELEASE" --all-containers --tail=-1 \
    > "$E2E_ARTIFACTS/operator.log" 2>&1 || true
  kubectl --context "$E2E_KUBE_CONTEXT" -n "$E2E_RELEASE_NAMESPACE" logs deployment/"$E2E_RELEASE" --previous --tail=-1 \
    > "$E2E_ARTIFACTS/operator-previous.log" 2>&1 || true
  kubectl --context "$E2E_KUBE_CONTEXT" describe all,pvc,trainingjobs,checkpoints --all-namespaces \
    > "$E2E_ARTIFACTS/describe.txt" 2>&1 || true
  kubectl --context "$E2E_KUBE_CONTEXT" get events --all-namespaces --sort-by=.lastTimestamp \
    > "$E2E_ARTIFACTS/events.txt" 2>&1 || true
  helm --kube-context "$E2E_KUBE_CONTEXT" -n "$E2E_RELEASE_NAMESPACE" status "$E2E_RELEASE" \
    > "$E2E_ARTIFACTS/helm-status.txt" 2>&1 || true
  tail -n 100 "$E2E_ARTIFACTS/operator.log" >&2 || true
}

finish() {
  status=$?
  if [ "$status" -ne 0 ]; then collect_logs; fi
  if [ "$created_cluster" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    log "deleting kind cluster $CLUSTER"
    kind delete cluster --name "$CLUSTER" || true
  fi
  exit "$status"
}
trap finish EXIT

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "reusing kind cluster $CLUSTER"
else
  log "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --config "$ROOT/e2e/kind-config.yaml" --wait 180s
  created_cluster=1
fi
kubectl config use-context "$E2E_KUBE_CONTEXT" >/dev/null

log "building $IMAGE_REPOSITORY:$IMAGE_TAG"
docker build --tag "$IMAGE_REPOSITORY:$IMAGE_TAG" "$ROOT"
kind load docker-image "$IMAGE_REPOSITORY:$IMAGE_TAG" --name "$CLUSTER"
for image in "${TEST_IMAGES[@]}"; do
  docker image inspect "$image" >/dev/null 2>&1 || docker pull "$image"
  kind load docker-image "$image" --name "$CLUSTER"
done

log "installing MinIO"
kubectl apply -f "$ROOT/e2e/minio.yaml"
kubectl -n minio rollout status deployment/minio --timeout=180s
kubectl -n minio wait --for=condition=complete job/create-bucket --timeout=180s

log "installing the chart ($E2E_RELEASE in $E2E_RELEASE_NAMESPACE)"
helm lint "$E2E_CHART" --strict
helm upgrade --install "$E2E_RELEASE" "$E2E_CHART" \
  --namespace "$E2E_RELEASE_NAMESPACE" --create-namespace \
  --set image.repository="$IMAGE_REPOSITORY" --set image.tag="$IMAGE_TAG" --set image.pullPolicy=Never \
  --set logFormat=text \
  --wait --timeout 5m
kubectl -n "$E2E_RELEASE_NAMESPACE" rollout status deployment/"$E2E_RELEASE" --timeout=180s
# the image runs as 65532 with a read-only root filesystem: it must stay up
kubectl -n "$E2E_RELEASE_NAMESPACE" get pods -o wide

log "running the scenarios"
venv="${E2E_VENV:-${TMPDIR:-/tmp}/ckpt-e2e-venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "pytest>=8" "pytest-timeout>=2.3" "PyYAML>=6"
mkdir -p "$E2E_ARTIFACTS"
cd "$ROOT"
# shellcheck disable=SC2086
"$venv/bin/python" -m pytest e2e -v -p no:cacheprovider --rootdir="$ROOT/e2e" -c /dev/null \
  --timeout=900 --junitxml="$E2E_ARTIFACTS/junit.xml" ${PYTEST_ARGS:-}
