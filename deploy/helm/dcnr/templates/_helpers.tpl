{{/*
Helpers shared by every template of the chart (and by the monitoring and operator
templates): names, the standard app.kubernetes.io/* labels, the image, the service account
and the admin token Secret.
*/}}

{{- define "dcnr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name; 63 characters at most (a DNS label). */}}
{{- define "dcnr.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dcnr.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. Add app.kubernetes.io/component in the template. */}}
{{- define "dcnr.labels" -}}
helm.sh/chart: {{ include "dcnr.chart" . }}
{{ include "dcnr.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dcnr
{{- end }}

{{/* Selector labels: stable across upgrades. Add app.kubernetes.io/component in the template. */}}
{{- define "dcnr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dcnr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The image every container of the chart runs (repository:tag, tag defaulting to appVersion). */}}
{{- define "dcnr.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The orchestrator's service account. */}}
{{- define "dcnr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dcnr.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The init-store hook Job's service account. */}}
{{- define "dcnr.initStoreServiceAccountName" -}}
{{- if .Values.initStore.serviceAccount.create }}
{{- default (printf "%s-init-store" (include "dcnr.fullname" .) | trunc 63 | trimSuffix "-") .Values.initStore.serviceAccount.name }}
{{- else }}
{{- default (include "dcnr.serviceAccountName" .) .Values.initStore.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the admin token (key: dcnr.adminTokenSecretKey). */}}
{{- define "dcnr.adminTokenSecretName" -}}
{{- if .Values.adminToken.existingSecret }}
{{- .Values.adminToken.existingSecret }}
{{- else }}
{{- printf "%s-admin-token" (include "dcnr.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "dcnr.adminTokenSecretKey" -}}
{{- if .Values.adminToken.existingSecret }}
{{- .Values.adminToken.existingSecretKey }}
{{- else -}}
token
{{- end }}
{{- end }}

{{/* The Secret holding the read-only token (key: dcnr.readOnlyTokenSecretKey). */}}
{{- define "dcnr.readOnlyTokenSecretName" -}}
{{- if .Values.readOnlyToken.existingSecret }}
{{- .Values.readOnlyToken.existingSecret }}
{{- else }}
{{- printf "%s-read-only-token" (include "dcnr.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "dcnr.readOnlyTokenSecretKey" -}}
{{- if .Values.readOnlyToken.existingSecret }}
{{- .Values.readOnlyToken.existingSecretKey }}
{{- else -}}
token
{{- end }}
{{- end }}

{{/* The orchestrator's in-cluster gRPC address, HOST:PORT. */}}
{{- define "dcnr.grpcAddress" -}}
{{- printf "%s.%s.svc:%d" (include "dcnr.fullname" .) .Release.Namespace (int .Values.service.grpcPort) }}
{{- end }}

{{/* The --store URL. Never carries credentials. */}}
{{- define "dcnr.storeURL" -}}
{{- if eq .Values.store.mode "sqlite" -}}
sqlite:////var/lib/dcnr/state.db
{{- else -}}
{{- $q := list -}}
{{- with .Values.store.dynamodb.region }}{{ $q = append $q (printf "region=%s" (urlquery .)) }}{{ end -}}
{{- with .Values.store.dynamodb.endpoint }}{{ $q = append $q (printf "endpoint=%s" (urlquery .)) }}{{ end -}}
dynamodb://{{ .Values.store.dynamodb.prefix }}{{ if $q }}?{{ join "&" $q }}{{ end }}
{{- end -}}
{{- end }}

{{/* The restricted pod security context (Pod Security Standards "restricted"). */}}
{{- define "dcnr.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "dcnr.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}
