{{/*
The model of each track: where it comes from (model.source), what the service reads (FERRY_MODEL__*
in the track's pod template) and what pins it. The stable track (and the worker, and the Rollout,
whose canary is a new revision of the same template) serves `model`; the canary serves `model`
overlaid with `canary.model`. Nothing here goes into the shared ConfigMap: a change of the canary's
model must not change what a restarting stable pod reads.
*/}}

{{/* Overlay .src onto .dst in place, maps key by key (false and "" override too, unlike mergeOverwrite). */}}
{{- define "ferry.overlay" -}}
{{- $dst := .dst -}}
{{- range $key, $value := .src -}}
{{- if and (kindIs "map" $value) (kindIs "map" (get $dst $key)) -}}
{{- include "ferry.overlay" (dict "dst" (get $dst $key) "src" $value) -}}
{{- else -}}
{{- $_ := set $dst $key $value -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
The model of a track as YAML (use with fromYaml), with the derived keys the templates need:
envPath (FERRY_MODEL__PATH; empty for an image's own path), pinned (a sha256 or a digest stands
behind it) and valuePrefix (what the user sets: `model` or `canary.model`).
Call with (dict "root" $ "track" "stable"|"canary").
*/}}
{{- define "ferry.model" -}}
{{- $v := .root.Values -}}
{{- $m := deepCopy $v.model -}}
{{- $digest := $v.image.digest -}}
{{- $prefix := "model" -}}
{{- if eq .track "canary" -}}
{{- include "ferry.overlay" (dict "dst" $m "src" (deepCopy $v.canary.model)) -}}
{{- $digest = $v.canary.image.digest -}}
{{- $prefix = "canary.model" -}}
{{- end -}}
{{- $envPath := $m.path -}}
{{- if ne $m.source "image" -}}
{{- $envPath = printf "%s/%s" $m.mountPath $m.file -}}
{{- end -}}
{{- $pinned := or $m.sha256 (and (eq $m.source "image") $digest) (and (eq $m.source "imageVolume") (contains "@sha256:" $m.imageVolume.reference)) -}}
{{- $_ := set $m "envPath" $envPath -}}
{{- $_ := set $m "pinned" (ternary "yes" "" (not (empty $pinned))) -}}
{{- $_ := set $m "valuePrefix" $prefix -}}
{{- toYaml $m -}}
{{- end }}

{{/* The FERRY_MODEL__* settings of a track (a list of EnvVar). Call with the model dict. */}}
{{- define "ferry.modelEnv" -}}
- name: FERRY_MODEL__NAME
  value: {{ .name | quote }}
- name: FERRY_MODEL__REQUIRE_CARD
  value: {{ .requireCard | toString | quote }}
{{- with .envPath }}
- name: FERRY_MODEL__PATH
  value: {{ . | quote }}
{{- end }}
{{- with .sha256 }}
- name: FERRY_MODEL__SHA256
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* The names ferry.modelEnv may set: ferry.extraSettings must not shadow them (env wins over envFrom). */}}
{{- define "ferry.modelSettingNames" -}}
{{- list "FERRY_MODEL__NAME" "FERRY_MODEL__REQUIRE_CARD" "FERRY_MODEL__PATH" "FERRY_MODEL__SHA256" | toJson -}}
{{- end }}

{{/* The `model` volume of a track (none for source image). Call with (dict "model" M "root" $). */}}
{{- define "ferry.modelVolume" -}}
{{- $root := .root -}}
{{- with .model -}}
{{- if eq .source "url" }}
- name: model
  emptyDir:
    sizeLimit: {{ .fetch.sizeLimit }}
{{- else if eq .source "pvc" }}
- name: model
  persistentVolumeClaim:
    claimName: {{ .pvc.claimName }}
    readOnly: true
{{- else if eq .source "imageVolume" }}
- name: model
  image:
    reference: {{ include "ferry.withRegistry" (dict "name" .imageVolume.reference "registry" "" "root" $root) }}
    pullPolicy: {{ .imageVolume.pullPolicy }}
{{- end }}
{{- end }}
{{- end }}

{{/* Where the serving container sees the model volume: read-only, whatever the source. */}}
{{- define "ferry.modelMount" -}}
{{- if ne .source "image" }}
- name: model
  mountPath: {{ .mountPath }}
  readOnly: true
  {{- $subPath := "" }}
  {{- if eq .source "pvc" }}{{ $subPath = .pvc.subPath }}{{ end }}
  {{- if eq .source "imageVolume" }}{{ $subPath = .imageVolume.subPath }}{{ end }}
  {{- with $subPath }}
  subPath: {{ . }}
  {{- end }}
{{- end }}
{{- end }}

{{/*
The init container of source url: the track's own image runs `ferry model fetch`, which writes the
model and its card into the emptyDir only once the model's sha256 equals the pin (docs/operations.md,
"Fetching a model at start"). Hardened like the serving container; its one failure line is the
last line of its log, which FallbackToLogsOnError makes the termination message `kubectl describe
pod` shows. Call with (dict "root" $ "model" M "image" REF).
*/}}
{{- define "ferry.modelFetchContainer" -}}
{{- $m := .model -}}
{{- $f := $m.fetch -}}
{{- $s3 := $f.s3 -}}
- name: model-fetch
  image: {{ .image }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: ["python", "-m", "ferry", "model", "fetch"]
  args:
    - --url
    - {{ $m.url | quote }}
    - --sha256
    - {{ $m.sha256 | quote }}
    - --out
    - {{ $m.mountPath | quote }}
    - --name
    - {{ $m.file | quote }}
    {{- with $f.cardUrl }}
    - --card-url
    - {{ . | quote }}
    {{- end }}
    {{- if not $f.card }}
    - --no-card
    {{- end }}
    {{- if $f.allowHttp }}
    - --allow-http
    {{- end }}
    {{- if $f.maxBytes }}
    - --max-bytes
    - {{ $f.maxBytes | int64 | quote }}
    {{- end }}
    - --timeout
    - {{ $f.timeoutSeconds | quote }}
    - --retries
    - {{ $f.retries | quote }}
  {{- if or $s3.region $s3.endpoint $s3.existingSecret }}
  env:
    {{- with $s3.region }}
    - name: AWS_REGION
      value: {{ . | quote }}
    {{- end }}
    {{- with $s3.endpoint }}
    - name: AWS_ENDPOINT_URL
      value: {{ . | quote }}
    {{- end }}
    {{- with $s3.existingSecret }}
    - name: AWS_ACCESS_KEY_ID
      valueFrom:
        secretKeyRef:
          name: {{ . }}
          key: {{ $s3.accessKeyIdKey }}
    - name: AWS_SECRET_ACCESS_KEY
      valueFrom:
        secretKeyRef:
          name: {{ . }}
          key: {{ $s3.secretAccessKeyKey }}
    {{- if $s3.sessionTokenKey }}
    - name: AWS_SESSION_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ . }}
          key: {{ $s3.sessionTokenKey }}
    {{- end }}
    {{- end }}
  {{- end }}
  resources:
    {{- toYaml $f.resources | nindent 4 }}
  securityContext:
    {{- include "ferry.containerSecurityContext" .root | nindent 4 }}
  terminationMessagePolicy: FallbackToLogsOnError
  volumeMounts:
    - name: model
      mountPath: {{ $m.mountPath }}
{{- end }}

{{/*
Render-time checks of a track's model (validate.yaml calls it for each track). Each failure names
the value to set. Call with (dict "root" $ "model" M).
*/}}
{{- define "ferry.validateModel" -}}
{{- $m := .model -}}
{{- $p := $m.valuePrefix -}}
{{- $v := .root.Values -}}
{{- if eq $m.source "url" }}
{{- if not $m.url }}
{{- fail (printf "%s.source=url needs %s.url: the model's https://, s3:// (or, with %s.fetch.allowHttp, http://) URL" $p $p $p) }}
{{- end }}
{{- if not $m.sha256 }}
{{- fail (printf "%s.source=url needs %s.sha256: the pinned sha256 of the model file (sha256sum model.joblib). A remote model is loaded only against a hash the deployment pins; the server's own card is not a trust boundary (docs/architecture.md)" $p $p) }}
{{- end }}
{{- if and (hasPrefix "http://" $m.url) (not $m.fetch.allowHttp) }}
{{- fail (printf "%s.url is plain http://: set %s.fetch.allowHttp=true to accept it (the pinned sha256 still protects what is loaded), or use https://" $p $p) }}
{{- end }}
{{- if and (hasPrefix "http://" $m.fetch.cardUrl) (not $m.fetch.allowHttp) }}
{{- fail (printf "%s.fetch.cardUrl is plain http://: set %s.fetch.allowHttp=true to accept it, or use https://" $p $p) }}
{{- end }}
{{- if and (hasPrefix "http://" $m.fetch.s3.endpoint) (not $m.fetch.allowHttp) }}
{{- fail (printf "%s.fetch.s3.endpoint is plain http://: set %s.fetch.allowHttp=true to accept it, or use https://" $p $p) }}
{{- end }}
{{- if contains "/" $m.file }}
{{- fail (printf "%s.file (%s) must be a plain file name for source url: ferry model fetch writes it into %s.mountPath" $p $m.file $p) }}
{{- end }}
{{- if and (not $m.fetch.card) $m.requireCard }}
{{- fail (printf "%s.fetch.card=false fetches no card, so the service would refuse the model: also set %s.requireCard=false (the pinned %s.sha256 is then the only check)" $p $p $p) }}
{{- end }}
{{- end }}
{{- if and (eq $m.source "pvc") (not $m.pvc.claimName) }}
{{- fail (printf "%s.source=pvc needs %s.pvc.claimName: an existing PersistentVolumeClaim holding the model" $p $p) }}
{{- end }}
{{- if eq $m.source "imageVolume" }}
{{- if not $m.imageVolume.reference }}
{{- fail (printf "%s.source=imageVolume needs %s.imageVolume.reference: the OCI image or artifact holding the model" $p $p) }}
{{- end }}
{{- if not (or $m.sha256 (contains "@sha256:" $m.imageVolume.reference)) }}
{{- fail (printf "%s.source=imageVolume with %s (a tag, which can be moved) needs %s.sha256, the pinned sha256 of the model file, or a reference pinned by digest (%s.imageVolume.reference=repo@sha256:...)" $p $m.imageVolume.reference $p $p) }}
{{- end }}
{{- end }}
{{- if ne $m.source "image" }}
{{- range list "/tmp" $v.volumes.metricsDir "/app" "/opt" }}
{{- if or (eq $m.mountPath .) (hasPrefix (printf "%s/" .) $m.mountPath) }}
{{- fail (printf "%s.mountPath (%s) must not be or sit inside %s: the mount would hide the service's own files or volumes" $p $m.mountPath .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
