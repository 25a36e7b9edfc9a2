{{- define "apikey-rotator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "apikey-rotator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "apikey-rotator.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "apikey-rotator.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "apikey-rotator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "apikey-rotator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Kubernetes recommended labels. */}}
{{- define "apikey-rotator.labels" -}}
{{ include "apikey-rotator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: sirius
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "apikey-rotator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "apikey-rotator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
What the operator does in each namespace it watches, and nothing more:
- ApiKeyRotations: read and watch; patch adds and removes its finalizer; status by server-side apply.
- Secrets: read and watch (the watch is filtered by label, but RBAC cannot express that), create
  the vault and the consumers' Secret, update the vault, patch the consumers' Secret.
- Deployments, StatefulSets and DaemonSets (the target kinds): read and watch, patch the pod
  template to roll them; Argo Rollouts too with operator.argoRollouts.
- Pods: list, before revoking a key (the pod gate: every pod that reads the Secret runs the new key).
- Events (events.k8s.io): create, and patch to count repeats.
*/}}
{{- define "apikey-rotator.rules" -}}
- apiGroups: ["keys.siriusscan.io"]
  resources: ["apikeyrotations"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["keys.siriusscan.io"]
  resources: ["apikeyrotations/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "list", "watch", "patch"]
{{- if .Values.operator.argoRollouts }}
- apiGroups: ["argoproj.io"]
  resources: ["rollouts"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
