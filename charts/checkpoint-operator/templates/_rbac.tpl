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
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: ["jobset.x-k8s.io"]
  resources: ["jobsets"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create"]
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

{{/* The catalog's rules (rbac.py CATALOG_RULES): ClusterCheckpoints are cluster-scoped, so a ClusterRole grants
them in both modes. */}}
{{- define "checkpoint-operator.rules.catalog" -}}
- apiGroups: ["ckpt.dev"]
  resources: ["clustercheckpoints"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["ckpt.dev"]
  resources: ["clustercheckpoints/status"]
  verbs: ["patch"]
- apiGroups: ["ckpt.dev"]
  resources: ["clustercheckpoints/finalizers"]
  verbs: ["update"]
{{- end }}

{{/* cache.enabled: the node cache's local PersistentVolumes (rbac.py NODE_CACHE_RULES), cluster-scoped: a ClusterRole
grants them in both modes. */}}
{{- define "checkpoint-operator.rules.nodeCache" -}}
- apiGroups: [""]
  resources: ["persistentvolumes"]
  verbs: ["get", "create"]
{{- end }}

{{/* Namespaced mode: what the catalog namespace (the release's) needs when it is not watched (rbac.py
CATALOG_NAMESPACE_RULES): the import pods and claims of catalog entries, their Events. */}}
{{- define "checkpoint-operator.rules.catalogNamespace" -}}
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "create", "delete"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "create"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
{{- end }}

{{/* Both modes: the operator's signing key in its own namespace (rbac.py SIGNING_KEY_RULES): get on that one
Secret by name; create when missing (RBAC cannot limit create by name: the admission policy does). */}}
{{- define "checkpoint-operator.rules.signingKey" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
  resourceNames: ["checkpoint-operator-signing-key"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
{{- end }}
