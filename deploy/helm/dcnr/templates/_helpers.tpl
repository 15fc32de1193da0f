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

{{/* The Secret holding the CA bundle clients verify the orchestrator with (tls.ca). */}}
{{- define "dcnr.tlsCASecretName" -}}
{{- .Values.tls.ca.existingSecret | default .Values.tls.existingSecret }}
{{- end }}

{{/* The name clients expect in the orchestrator's certificate: tls.serverName, else the
Service's DNS name. */}}
{{- define "dcnr.tlsServerName" -}}
{{- .Values.tls.serverName | default (index (splitList ":" (include "dcnr.grpcAddress" .)) 0) }}
{{- end }}

{{/* Whether the orchestrator wants client certificates (mutual TLS). */}}
{{/*
The job driver's inbox on its own mutual-TLS listener (serve --driver-listen), unless the
data plane is plaintext.
*/}}
{{- define "dcnr.driverInbox" -}}
{{- if and .Values.dataPlane.driverInbox (not .Values.dataPlane.insecure) }}true{{ end }}
{{- end }}

{{- define "dcnr.mutualTLS" -}}
{{- if and .Values.tls.enabled .Values.tls.clientCA.existingSecret }}true{{ end }}
{{- end }}

{{/*
A client's flags to the orchestrator (agents, operator): the CA, the expected name, and with
mutual TLS the client certificate; the files are the volumes of dcnr.tlsClientVolumes.
*/}}
{{- define "dcnr.tlsClientArgs" -}}
{{- if .Values.tls.enabled }}
- --tls-ca
- /etc/dcnr/tls-ca/{{ .Values.tls.ca.key }}
{{- /* Always given: agents also dial each replica's job driver at its pod IP. */}}
- --tls-server-name
- {{ include "dcnr.tlsServerName" . | quote }}
{{- if include "dcnr.mutualTLS" . }}
{{- if not .Values.tls.clientCertificate.existingSecret }}
{{- fail "tls.clientCertificate.existingSecret: the chart's agents and operator need a client certificate when tls.clientCA is set" }}
{{- end }}
- --tls-cert
- /etc/dcnr/tls-client/tls.crt
- --tls-key
- /etc/dcnr/tls-client/tls.key
{{- end }}
{{- end }}
{{- end }}

{{- define "dcnr.tlsClientVolumeMounts" -}}
{{- if .Values.tls.enabled }}
- name: tls-ca
  mountPath: /etc/dcnr/tls-ca
  readOnly: true
{{- if include "dcnr.mutualTLS" . }}
- name: tls-client
  mountPath: /etc/dcnr/tls-client
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{- define "dcnr.tlsClientVolumes" -}}
{{- if .Values.tls.enabled }}
- name: tls-ca
  secret:
    secretName: {{ include "dcnr.tlsCASecretName" . }}
    items:
      - key: {{ .Values.tls.ca.key }}
        path: {{ .Values.tls.ca.key }}
{{- if include "dcnr.mutualTLS" . }}
- name: tls-client
  secret:
    secretName: {{ .Values.tls.clientCertificate.existingSecret }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end }}
{{- end }}
