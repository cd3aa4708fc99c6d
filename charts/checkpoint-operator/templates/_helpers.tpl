{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "checkpoint-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects: the release name, prefixed unless it already holds the chart name. */}}
{{- define "checkpoint-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "checkpoint-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods; they never change across upgrades. */}}
{{- define "checkpoint-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "checkpoint-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Standard labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/). */}}
{{- define "checkpoint-operator.labels" -}}
helm.sh/chart: {{ include "checkpoint-operator.chart" . }}
{{ include "checkpoint-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: checkpoint-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "checkpoint-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "checkpoint-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image; the agent pods run the same image. */}}
{{- define "checkpoint-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Peering (an active replica and standbys) is on when more than one replica runs. */}}
{{- define "checkpoint-operator.peering" -}}
{{- if gt (int .Values.replicas) 1 }}true{{ end }}
{{- end }}

{{/* The kopf peering object's name; the operator looks for exactly this name. */}}
{{- define "checkpoint-operator.peeringName" -}}
checkpoint-operator
{{- end }}

{{- define "checkpoint-operator.livenessPort" -}}
8081
{{- end }}
