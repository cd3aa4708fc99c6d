{{/*
The operator's permissions. The source of truth is operator/checkpoint_operator/rbac.py;
tests/test_chart.py fails when these rules and that table differ in either direction.
*/}}

{{/* Rules needed in every watched namespace (a Role each), or cluster-wide (the ClusterRole). */}}
{{- define "checkpoint-operator.rules.namespaced" -}}
- apiGroups: ["ckpt.dev"]
  resources: ["checkpoints"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["ckpt.dev"]
  resources: ["trainingjobs"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["ckpt.dev"]
  resources: ["checkpoints/status", "trainingjobs/status"]
  verbs: ["patch"]
- apiGroups: ["ckpt.dev"]
  resources: ["checkpoints/finalizers", "trainingjobs/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- if and (eq .Values.storage.type "volume") .Values.storage.volume.snapshotClassName }}
- apiGroups: ["snapshot.storage.k8s.io"]
  resources: ["volumesnapshots"]
  verbs: ["get", "list", "create", "patch", "delete"]
{{- end }}
{{- end }}

{{/* Rules only cluster-wide mode needs: kopf's namespace and CRD discovery and cluster peering. */}}
{{- define "checkpoint-operator.rules.clusterOnly" -}}
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}
