{{/*
Names. Objects are called <fullname>-agent, <fullname>-collector...; cluster-scoped ones
(the ClusterRole and its binding) carry the release through <fullname>, so two releases
never share them.
*/}}
{{- define "observer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "observer.fullname" -}}
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

{{- define "observer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels of every object; add app.kubernetes.io/component beside them. */}}
{{- define "observer.labels" -}}
helm.sh/chart: {{ include "observer.chart" . }}
{{ include "observer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* What selectors match (with app.kubernetes.io/component); never changes after install. */}}
{{- define "observer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "observer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "observer.agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-agent" (include "observer.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image: repository:tag, the tag defaulting to the chart's appVersion. Argument: the image values. */}}
{{- define "observer.image" -}}
{{- printf "%s:%s" .image.repository (default .context.Chart.AppVersion .image.tag) }}
{{- end }}

{{/*
Where the Secrets of .Values.elasticsearch are mounted, and the configuration that reads
them through ${file:...} (trailing newline stripped): the secret never enters the
ConfigMap, and a rotated Secret is read again at the next start.
*/}}
{{- define "observer.secretsDir" -}}/var/run/secrets/observer{{- end }}

{{- define "observer.elasticsearch.config" -}}
{{- $es := .Values.elasticsearch }}
{{- $dir := include "observer.secretsDir" . }}
{{- $config := dict "hosts" $es.hosts }}
{{- if $es.existingSecret }}
{{- if eq $es.auth "api_key" }}
{{- $_ := set $config "api_key" (printf "${file:%s/elasticsearch/api_key}" $dir) }}
{{- else }}
{{- $_ := set $config "username" (printf "${file:%s/elasticsearch/username}" $dir) }}
{{- $_ := set $config "password" (printf "${file:%s/elasticsearch/password}" $dir) }}
{{- end }}
{{- end }}
{{- if $es.caSecret }}
{{- $_ := set $config "tls" (dict "ca_file" (printf "%s/elasticsearch-ca/ca.crt" $dir)) }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* The volumes and mounts for those Secrets (nothing when none is named). */}}
{{- define "observer.elasticsearch.volumes" -}}
{{- if .Values.elasticsearch.existingSecret }}
- name: elasticsearch-credentials
  secret:
    secretName: {{ .Values.elasticsearch.existingSecret }}
{{- end }}
{{- if .Values.elasticsearch.caSecret }}
- name: elasticsearch-ca
  secret:
    secretName: {{ .Values.elasticsearch.caSecret }}
{{- end }}
{{- end }}

{{- define "observer.elasticsearch.volumeMounts" -}}
{{- if .Values.elasticsearch.existingSecret }}
- name: elasticsearch-credentials
  mountPath: {{ include "observer.secretsDir" . }}/elasticsearch
  readOnly: true
{{- end }}
{{- if .Values.elasticsearch.caSecret }}
- name: elasticsearch-ca
  mountPath: {{ include "observer.secretsDir" . }}/elasticsearch-ca
  readOnly: true
{{- end }}
{{- end }}

{{/*
agent.yaml: .Values.agent.config merged over what the chart decides (mustMergeOverwrite:
the user's keys win, at any depth); what neither sets takes observer's own defaults
(agent/agent.yaml).
*/}}
{{- define "observer.agent.config" -}}
{{- $fullname := include "observer.fullname" . }}
{{- $user := deepCopy (default (dict) .Values.agent.config) }}
{{- $userCollector := dig "sinks" "collector" (dict) $user }}
{{- $collectors := or .Values.collector.enabled (get $userCollector "endpoint") (get $userCollector "endpoints") }}
{{- $sinks := dict }}
{{- if .Values.elasticsearch.enabled }}
{{- $_ := set $sinks "elasticsearch" (include "observer.elasticsearch.config" . | fromYaml) }}
{{- else }}
{{- $_ := set $sinks "elasticsearch" nil }}
{{- end }}
{{- if .Values.collector.enabled }}
{{- $collector := dict "endpoint" (printf "%s-collector-headless.%s.svc:4317" $fullname .Release.Namespace) }}
{{- if .Values.collector.tls.secretName }}
{{- $_ := set $collector "tls" (dict "enabled" true "ca_file" (printf "%s/collector-ca/ca.crt" (include "observer.secretsDir" .))) }}
{{- end }}
{{- $_ := set $sinks "collector" $collector }}
{{- end }}
{{- $spans := false }}
{{- if and .Values.agent.spans.enabled $collectors }}
{{- $spans = true }}
{{- end }}
{{- $leaderElection := dict "namespace" .Release.Namespace "lease_name" (printf "%s-kube-events" $fullname) }}
{{- $sources := dict
  "kube_events" (dict "scope" "cluster" "leader_election" $leaderElection)
  "spans" (dict "enabled" $spans)
}}
{{- $defaults := dict "node_name" "${NODE_NAME}" "sources" $sources "sinks" $sinks }}
{{- toYaml (mustMergeOverwrite $defaults $user) }}
{{- end }}

{{/* collector.yaml, merged the same way over what the chart decides. */}}
{{- define "observer.collector.config" -}}
{{- $defaults := dict }}
{{- if .Values.collector.elasticsearch.enabled }}
{{- $_ := set $defaults "storage" (dict "elasticsearch" (include "observer.elasticsearch.config" . | fromYaml)) }}
{{- end }}
{{- if .Values.collector.tls.secretName }}
{{- $dir := printf "%s/collector-tls" (include "observer.secretsDir" .) }}
{{- $tls := dict "cert_file" (printf "%s/tls.crt" $dir) "key_file" (printf "%s/tls.key" $dir) }}
{{- $_ := set $defaults "receivers" (dict "otlp_grpc" (dict "tls" $tls) "otlp_http" (dict "tls" (deepCopy $tls))) }}
{{- end }}
{{- toYaml (mustMergeOverwrite $defaults (deepCopy (default (dict) .Values.collector.config))) }}
{{- end }}
