{{/*
Names, labels, images and the shared pod template. Every resource shape the chart writes goes
through these helpers, so stable, canary, Rollout and worker pods cannot drift apart.
*/}}

{{- define "ferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ferry.fullname" -}}
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

{{/* Selector labels: stable for the life of a release (selectors are immutable). */}}
{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "ferry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferry
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The label keys the chart sets itself: commonLabels and podLabels must not repeat them (validate.yaml). */}}
{{- define "ferry.ownLabelKeys" -}}
{{- list "helm.sh/chart" "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/version" "app.kubernetes.io/managed-by" "app.kubernetes.io/part-of" "app.kubernetes.io/component" "track" "ferry-serving.io/job" "grafana_dashboard" | toJson -}}
{{- end }}

{{/*
The `annotations:` block of an object's metadata: the object's own annotations (.extra) over
commonAnnotations; nothing when both are empty. Call with (dict "root" $ "extra" MAP).
*/}}
{{- define "ferry.annotations" -}}
{{- $all := merge (deepCopy (.extra | default dict)) (.root.Values.commonAnnotations | default dict) -}}
{{- with $all }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The generated SLO facts (files/slo.yaml, from deploy/slo.yaml by `make generate`). */}}
{{- define "ferry.slo" -}}
{{- .Files.Get "files/slo.yaml" }}
{{- end }}

{{/*
Prometheus' `job` of the release's API pods (the worker's is "<job>-worker"): the full name, unique
in a namespace, so two releases never share a job. The ServiceMonitor takes it from the Services'
ferry-serving.io/job label; the rules, dashboards, canary analysis and KEDA query select it together
with the release namespace.
*/}}
{{- define "ferry.job" -}}
{{- include "ferry.fullname" . }}
{{- end }}

{{/*
A generated file of files/ (rules, dashboards) scoped to this release: its placeholders replaced by
the release's job and namespace, and a release id (for Grafana uids). Call with (dict "root" $ "path" P).
The full name is a Service name (DNS label), so it needs no quoting inside a PromQL regex.
*/}}
{{- define "ferry.scopedFile" -}}
{{- $job := include "ferry.job" .root -}}
{{- $ns := .root.Release.Namespace -}}
{{- .root.Files.Get .path | replace "__FERRY_JOB__" $job | replace "__FERRY_NAMESPACE__" $ns | replace "__FERRY_RELEASE_ID__" (printf "%s/%s" $ns $job | sha256sum | trunc 10) -}}
{{- end }}

{{- define "ferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ferry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image name with its registry. A name whose first part is a host (it has a "." or a ":", or is
localhost) keeps that host, so `repository: registry.example/ferry` works without `registry`;
otherwise .registry is put in front. global.imageRegistry replaces the host of EVERY image, so a
mirror is never bypassed. Call with (dict "name" NAME "registry" REGISTRY "root" $).
*/}}
{{- define "ferry.withRegistry" -}}
{{- $parts := splitList "/" .name -}}
{{- $first := first $parts -}}
{{- $hasHost := and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) -}}
{{- $global := (.root.Values.global | default dict).imageRegistry -}}
{{- if $global -}}
{{- printf "%s/%s" $global (ternary (join "/" (rest $parts)) .name $hasHost) -}}
{{- else if or $hasHost (not .registry) -}}
{{- .name -}}
{{- else -}}
{{- printf "%s/%s" .registry .name -}}
{{- end -}}
{{- end }}

{{/*
Image reference from {registry, repository, tag, digest}: an empty repository or registry is
image.*'s, an empty tag the chart's appVersion; a digest wins over the tag.
Call with (dict "image" X "root" $).
*/}}
{{- define "ferry.imageRef" -}}
{{- $v := .root.Values -}}
{{- $repo := .image.repository | default $v.image.repository -}}
{{- $name := include "ferry.withRegistry" (dict "name" $repo "registry" (.image.registry | default $v.image.registry) "root" .root) -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $name .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $name (.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end }}

{{- define "ferry.image" -}}
{{- include "ferry.imageRef" (dict "image" .Values.image "root" .) -}}
{{- end }}

{{/*
What every pod the chart makes shares (ferry, worker, gate, test): pull secrets (global, then the
chart's; names or {name} objects), nodeSelector, tolerations, affinity. Call with the root.
*/}}
{{- define "ferry.podPlatform" -}}
{{- $names := list -}}
{{- range concat ((.Values.global | default dict).imagePullSecrets | default list) (.Values.imagePullSecrets | default list) -}}
{{- if kindIs "string" . }}{{ $names = append $names . }}{{ else }}{{ $names = append $names .name }}{{ end -}}
{{- end -}}
{{- with uniq $names }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* initContainers / sidecars as given, their images behind global.imageRegistry too. Call with (dict "containers" LIST "root" $). */}}
{{- define "ferry.userContainers" -}}
{{- $out := list -}}
{{- range .containers -}}
{{- $c := deepCopy . -}}
{{- if $c.image }}{{ $_ := set $c "image" (include "ferry.withRegistry" (dict "name" $c.image "registry" "" "root" $.root)) }}{{ end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- toYaml $out -}}
{{- end }}

{{/* Secret-backed environment: Redis URL and callback signing secret. */}}
{{- define "ferry.secretEnv" -}}
{{- $f := .Values.ferry -}}
{{- if eq $f.jobs.store "redis" }}
- name: FERRY_JOBS__REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $f.jobs.redis.existingSecret }}
      key: {{ $f.jobs.redis.key }}
{{- end }}
{{- if $f.callbacks.enabled }}
- name: FERRY_CALLBACKS__SIGNING_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $f.callbacks.existingSecret }}
      key: {{ $f.callbacks.key }}
{{- end }}
{{- end }}

{{/*
The one pod template: stable and canary Deployments, the Rollout and the worker use it.
Call with (dict "root" $ "component" "api"|"worker" "track" "stable"|"canary"|"" "image" REF).
track "" (the Rollout) leaves the track label to the Rollout's stable/canaryMetadata.
*/}}
{{- define "ferry.podTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $worker := eq .component "worker" -}}
{{- $model := include "ferry.model" (dict "root" $root "track" (ternary "canary" "stable" (eq .track "canary"))) | fromYaml -}}
metadata:
  labels:
    {{- include "ferry.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    {{- with .track }}
    track: {{ . }}
    {{- end }}
    {{- with merge (deepCopy ($v.podLabels | default dict)) ($v.commonLabels | default dict) }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- /* The settings only: a chart-version bump changes the ConfigMap's labels, not what pods read. */}}
    checksum/config: {{ (include (print $root.Template.BasePath "/configmap.yaml") $root | fromYaml).data | toJson | sha256sum }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "ferry.serviceAccountName" $root }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ $v.lifecycle.terminationGracePeriodSeconds }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $v.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- range . }}
    - {{ toYaml . | nindent 6 | trim }}
      labelSelector:
        matchLabels:
          {{- include "ferry.selectorLabels" $root | nindent 10 }}
          app.kubernetes.io/component: {{ $.component }}
    {{- end }}
  {{- end }}
  {{- with include "ferry.podPlatform" $root }}{{ . | trim | nindent 2 }}{{ end }}
  {{- if or (eq $model.source "url") $v.initContainers }}
  initContainers:
    {{- if eq $model.source "url" }}
    {{- include "ferry.modelFetchContainer" (dict "root" $root "model" $model "image" .image) | nindent 4 }}
    {{- end }}
    {{- with $v.initContainers }}
    {{- include "ferry.userContainers" (dict "containers" . "root" $root) | nindent 4 }}
    {{- end }}
  {{- end }}
  containers:
    - name: {{ ternary "worker" "ferry" $worker }}
      image: {{ .image }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      command: ["python", "-m", "ferry", {{ ternary "worker" "serve" $worker | quote }}]
      ports:
        - name: http
          containerPort: {{ $v.containerPort }}
          protocol: TCP
        - name: metrics
          containerPort: {{ $v.ferry.metrics.port }}
          protocol: TCP
      envFrom:
        - configMapRef:
            name: {{ include "ferry.fullname" $root }}
        {{- with $v.extraEnvFrom }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      env:
        {{- include "ferry.modelEnv" $model | nindent 8 }}
        {{- if $worker }}
        - name: FERRY_JOBS__RUNNERS
          value: {{ $v.worker.runners | quote }}
        {{- end }}
        {{- with include "ferry.secretEnv" $root }}{{ . | trim | nindent 8 }}{{ end }}
        {{- with $v.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      startupProbe:
        httpGet:
          path: /livez
          port: http
        periodSeconds: {{ $v.probes.startup.periodSeconds }}
        failureThreshold: {{ $v.probes.startup.failureThreshold }}
        timeoutSeconds: {{ $v.probes.timeoutSeconds }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        periodSeconds: {{ $v.probes.readiness.periodSeconds }}
        failureThreshold: {{ $v.probes.readiness.failureThreshold }}
        timeoutSeconds: {{ $v.probes.timeoutSeconds }}
      livenessProbe:
        httpGet:
          path: /livez
          port: http
        periodSeconds: {{ $v.probes.liveness.periodSeconds }}
        failureThreshold: {{ $v.probes.liveness.failureThreshold }}
        timeoutSeconds: {{ $v.probes.timeoutSeconds }}
      lifecycle:
        preStop:
          {{- if eq $v.lifecycle.preStopMode "exec" }}
          exec:
            command: ["sleep", {{ $v.lifecycle.preStopSleepSeconds | quote }}]
          {{- else }}
          sleep:
            seconds: {{ $v.lifecycle.preStopSleepSeconds }}
          {{- end }}
      resources:
        {{- toYaml (ternary $v.worker.resources $v.resources $worker) | nindent 8 }}
      securityContext:
        {{- include "ferry.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        - name: metrics
          mountPath: {{ $v.volumes.metricsDir }}
        {{- with include "ferry.modelMount" $model }}{{ . | trim | nindent 8 }}{{ end }}
        {{- /* The worker too: it reads the same settings, and they name the file. */}}
        {{- if eq $v.ferry.auth.mode "api_key" }}
        - name: api-keys
          mountPath: {{ include "ferry.apiKeysDir" $root }}
          readOnly: true
        {{- end }}
        {{- with $v.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    {{- with $v.sidecars }}
    {{- include "ferry.userContainers" (dict "containers" . "root" $root) | nindent 4 }}
    {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ $v.volumes.tmpSizeLimit }}
    - name: metrics
      emptyDir:
        medium: Memory
        sizeLimit: {{ $v.volumes.metricsSizeLimit }}
    {{- with include "ferry.modelVolume" (dict "model" $model "root" $root) }}{{ . | trim | nindent 4 }}{{ end }}
    {{- if eq $v.ferry.auth.mode "api_key" }}
    - name: api-keys
      secret:
        secretName: {{ $v.ferry.auth.apiKeys.existingSecret }}
        items:
          - key: {{ $v.ferry.auth.apiKeys.key }}
            path: {{ $v.ferry.auth.apiKeys.key }}
        defaultMode: 0440
    {{- end }}
    {{- with $v.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The securityContext of every container the chart makes (containerSecurityContext; hardened by default). Call with the root. */}}
{{- define "ferry.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext -}}
{{- end }}

{{/*
Deployment of the API for one track. Call with (dict "root" $ "track" "stable"|"canary").
*/}}
{{- define "ferry.deployment" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $canary := eq .track "canary" -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "ferry.fullname" $root }}{{ if $canary }}-canary{{ end }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "ferry.labels" $root | nindent 4 }}
    app.kubernetes.io/component: api
    track: {{ .track }}
  {{- with include "ferry.annotations" (dict "root" $root) }}{{ . | trim | nindent 2 }}{{ end }}
spec:
  {{- if $canary }}
  replicas: {{ $v.canary.replicaCount }}
  {{- else if not $v.autoscaling.enabled }}
  replicas: {{ $v.replicaCount }}
  {{- end }}
  revisionHistoryLimit: {{ $v.revisionHistoryLimit }}
  selector:
    matchLabels:
      {{- include "ferry.selectorLabels" $root | nindent 6 }}
      app.kubernetes.io/component: api
      track: {{ .track }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: {{ $v.rollingUpdate.maxSurge }}
      maxUnavailable: 0
  template:
    {{- $image := include "ferry.image" $root }}
    {{- if $canary }}{{ $image = include "ferry.imageRef" (dict "image" $v.canary.image "root" $root) }}{{ end }}
    {{- include "ferry.podTemplate" (dict "root" $root "component" "api" "track" .track "image" $image) | nindent 4 }}
{{- end }}

{{/* The FERRY_* settings the chart derives from its values (the ConfigMap's data). */}}
{{- define "ferry.settings" -}}
{{- $f := .Values.ferry -}}
FERRY_HOST: "0.0.0.0"
FERRY_PORT: {{ .Values.containerPort | quote }}
FERRY_WORKERS: {{ $f.workers | quote }}
FERRY_CPU_PINNING: {{ $f.cpuPinning | quote }}
FERRY_LOGGING__LEVEL: {{ $f.logLevel | quote }}
FERRY_METRICS__DIR: {{ .Values.volumes.metricsDir | quote }}
FERRY_API__MAX_BODY_BYTES: {{ $f.api.maxBodyBytes | int64 | quote }}
FERRY_STREAM__MAX_BODY_BYTES: {{ $f.stream.maxBodyBytes | int64 | quote }}
FERRY_DEADLINE__DEFAULT_S: {{ $f.deadline.defaultS | quote }}
FERRY_DEADLINE__MAX_S: {{ $f.deadline.maxS | quote }}
FERRY_SERVER__TIMEOUT_S: {{ $f.server.timeoutS | quote }}
FERRY_SERVER__GRACEFUL_TIMEOUT_S: {{ $f.server.gracefulTimeoutS | quote }}
FERRY_SERVER__KEEPALIVE_S: {{ $f.server.keepaliveS | quote }}
FERRY_SERVER__DRAIN_GRACE_S: {{ $f.server.drainGraceS | quote }}
FERRY_SERVER__FORWARDED_ALLOW_IPS: {{ $f.server.forwardedAllowIps | quote }}
FERRY_JOBS__STORE: {{ $f.jobs.store | quote }}
{{- if eq $f.jobs.store "sqlite" }}
FERRY_JOBS__SQLITE_PATH: "/tmp/ferry/jobs.sqlite3"
{{- end }}
FERRY_JOBS__RUNNERS: {{ $f.jobs.apiRunners | quote }}
FERRY_JOBS__MAX_QUEUED: {{ $f.jobs.maxQueued | int64 | quote }}
FERRY_JOBS__MAX_QUEUED_PER_PRINCIPAL: {{ $f.jobs.maxQueuedPerPrincipal | int64 | quote }}
FERRY_JOBS__MAX_STORE_BYTES: {{ $f.jobs.maxStoreBytes | int64 | quote }}
FERRY_JOBS__MAX_STORE_BYTES_PER_PRINCIPAL: {{ $f.jobs.maxStoreBytesPerPrincipal | int64 | quote }}
FERRY_JOBS__QUOTA_RETRY_AFTER_S: {{ $f.jobs.quotaRetryAfterS | int64 | quote }}
FERRY_API__DOCS_ENABLED: {{ $f.api.docsEnabled | quote }}
FERRY_INFERENCE__HANG_S: {{ $f.inference.hangS | quote }}
FERRY_INFERENCE__HANG_EXIT_S: {{ $f.inference.hangExitS | quote }}
FERRY_CONNECTIONS__MAX_HEADER_BYTES: {{ $f.connections.maxHeaderBytes | int64 | quote }}
FERRY_CONNECTIONS__HEADER_TIMEOUT_S: {{ $f.connections.headerTimeoutS | quote }}
FERRY_CONNECTIONS__BODY_TIMEOUT_S: {{ $f.connections.bodyTimeoutS | quote }}
FERRY_CONNECTIONS__MAX_CONNECTIONS: {{ $f.connections.maxConnections | int64 | quote }}
FERRY_CONNECTIONS__MAX_EVENT_STREAMS: {{ $f.connections.maxEventStreams | int64 | quote }}
FERRY_METRICS__PORT: {{ $f.metrics.port | quote }}
{{- if $f.tracing.enabled }}
FERRY_TRACING__ENABLED: "true"
FERRY_TRACING__ENDPOINT: {{ $f.tracing.endpoint | quote }}
FERRY_TRACING__SAMPLE_RATIO: {{ $f.tracing.sampleRatio | quote }}
{{- end }}
FERRY_CALLBACKS__ALLOW_HOSTS: {{ $f.callbacks.allowHosts | default list | toJson | quote }}
FERRY_CALLBACKS__MAX_IN_FLIGHT: {{ $f.callbacks.maxInFlight | quote }}
FERRY_CALLBACKS__MAX_PER_HOST: {{ $f.callbacks.maxPerHost | quote }}
FERRY_AUTH__MODE: {{ $f.auth.mode | quote }}
{{- if eq $f.auth.mode "api_key" }}
FERRY_AUTH__API_KEYS_FILE: {{ include "ferry.apiKeysFile" . | quote }}
{{- else if eq $f.auth.mode "jwt" }}
{{- $jwt := $f.auth.jwt }}
FERRY_AUTH__JWT_ISSUER: {{ $jwt.issuer | quote }}
FERRY_AUTH__JWT_AUDIENCE: {{ $jwt.audience | quote }}
FERRY_AUTH__JWT_JWKS_URL: {{ $jwt.jwksUrl | quote }}
FERRY_AUTH__JWT_ALGORITHMS: {{ join "," $jwt.algorithms | quote }}
FERRY_AUTH__JWT_PRINCIPAL_CLAIM: {{ $jwt.principalClaim | quote }}
FERRY_AUTH__JWT_SCOPES_CLAIM: {{ $jwt.scopesClaim | quote }}
FERRY_AUTH__JWT_DEFAULT_SCOPES: {{ join "," ($jwt.defaultScopes | default list) | quote }}
FERRY_AUTH__JWT_LEEWAY_S: {{ $jwt.leewayS | quote }}
FERRY_AUTH__JWKS_MIN_REFRESH_S: {{ $jwt.minRefreshS | quote }}
{{- end }}
{{- end }}

{{/* Where the API keys file (ferry.auth.apiKeys, a Secret) is mounted, read-only, in every ferry pod. */}}
{{- define "ferry.apiKeysDir" -}}
/etc/ferry/auth
{{- end }}

{{- define "ferry.apiKeysFile" -}}
{{ include "ferry.apiKeysDir" . }}/{{ .Values.ferry.auth.apiKeys.key }}
{{- end }}

{{/*
FERRY_TOKEN of the clients the chart runs against ferry (the helm test pod, the SLO gate) when
authentication is on: from ferry.auth.clientToken (required then: validate.yaml). Call with the root.
*/}}
{{- define "ferry.clientTokenEnv" -}}
{{- $auth := .Values.ferry.auth -}}
{{- if ne $auth.mode "none" }}
- name: FERRY_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $auth.clientToken.existingSecret }}
      key: {{ $auth.clientToken.key }}
{{- end }}
{{- end }}

{{/*
The load-test gate container (rollout.analysis.gate: image, command, args, resources), shared by the
AnalysisTemplate Job metric and the loadtest Job. Args: .args (the full list); target: .host.
*/}}
{{- define "ferry.gateContainer" -}}
{{- $gate := .root.Values.rollout.analysis.gate -}}
name: gate
image: {{ include "ferry.imageRef" (dict "image" $gate.image "root" .root) }}
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
command:
  {{- toYaml $gate.command | nindent 2 }}
{{- with .args }}
args:
  {{- toYaml . | nindent 2 }}
{{- end }}
env:
  - name: LOCUST_HOST
    value: {{ .host }}
  - name: HOME
    value: /tmp
  {{- with include "ferry.clientTokenEnv" .root }}{{ . | trim | nindent 2 }}{{ end }}
{{- with .ports }}
ports:
  {{- toYaml . | nindent 2 }}
{{- end }}
resources:
  {{- toYaml (.resources | default $gate.resources) | nindent 2 }}
securityContext:
  {{- include "ferry.containerSecurityContext" .root | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- end }}

{{/* Pod-level settings of every gate pod (no API token, podSecurityContext, pull secrets and scheduling, /tmp). */}}
{{- define "ferry.gatePodSpec" -}}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- include "ferry.podPlatform" . }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: 64Mi
{{- end }}

{{/*
The sources admitted to the http port: networkPolicy.ingressFrom, then one peer for the ingress
controller's or Gateway's namespaces (narrowed to pods with ingressPodLabels when set). A YAML list;
empty only when both values are (refused by validate.yaml). Prometheus reaches the metrics port only
(ferry.metricsPeers).
*/}}
{{- define "ferry.networkPolicyPeers" -}}
{{- $np := .Values.networkPolicy -}}
{{- $peers := list -}}
{{- range $np.ingressFrom }}{{ $peers = append $peers . }}{{ end -}}
{{- with include "ferry.namespacePeer" (dict "namespaces" $np.ingressNamespaces "podLabels" $np.ingressPodLabels) | fromYaml }}
{{- $peers = append $peers . }}
{{- end -}}
{{- toYaml $peers }}
{{- end }}

{{/* The sources admitted to the metrics port: Prometheus' namespaces (monitoringNamespaces, monitoringPodLabels). A YAML list, empty when none. */}}
{{- define "ferry.metricsPeers" -}}
{{- $np := .Values.networkPolicy -}}
{{- $peers := list -}}
{{- with include "ferry.namespacePeer" (dict "namespaces" $np.monitoringNamespaces "podLabels" $np.monitoringPodLabels) | fromYaml }}
{{- $peers = append $peers . }}
{{- end -}}
{{- toYaml $peers }}
{{- end }}

{{/* One NetworkPolicyPeer for the pods (with .podLabels, when set) of .namespaces; nothing when .namespaces is empty. */}}
{{- define "ferry.namespacePeer" -}}
{{- if .namespaces }}
{{- $peer := dict "namespaceSelector" (dict "matchExpressions" (list (dict "key" "kubernetes.io/metadata.name" "operator" "In" "values" .namespaces))) }}
{{- with .podLabels }}{{ $_ := set $peer "podSelector" (dict "matchLabels" .) }}{{ end }}
{{- toYaml $peer }}
{{- end }}
{{- end }}

{{/*
The ports the entries of ferry.callbacks.allowHosts name, deduplicated and sorted: `host:port`,
`[v6]:port`, a URL prefix `scheme://host[:port]/...` (its scheme's port when it names none), or a
plain `host` (443: callbacks are https unless http is allowed). A JSON list of integers.
*/}}
{{- define "ferry.callbackAllowPorts" -}}
{{- $ports := list -}}
{{- range .Values.ferry.callbacks.allowHosts -}}
{{- $entry := . -}}
{{- $default := 443 -}}
{{- if regexMatch "^[A-Za-z][A-Za-z0-9+.-]*://" $entry -}}
{{- if hasPrefix "http://" (lower $entry) }}{{ $default = 80 }}{{ end -}}
{{- $entry = index (splitList "/" (regexReplaceAll "^[A-Za-z][A-Za-z0-9+.-]*://" $entry "")) 0 -}}
{{- end -}}
{{- $port := regexFind ":[0-9]+$" $entry | trimPrefix ":" -}}
{{- $ports = append $ports (ternary (int $port) $default (ne $port "")) -}}
{{- end -}}
{{- $ports | uniq | sortAlpha | toJson -}}
{{- end }}

{{/* Bytes of a Kubernetes quantity such as `256Mi`, `1.5Gi` or `300M` (the suffixes the sizeLimit values allow). */}}
{{- define "ferry.quantityBytes" -}}
{{- $q := toString . -}}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $q -}}
{{- $suffix := trimPrefix $number $q -}}
{{- $factor := get (dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776) $suffix -}}
{{- mulf (float64 $number) (float64 $factor) -}}
{{- end }}
