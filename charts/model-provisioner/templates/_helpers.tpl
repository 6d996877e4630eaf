{{/*
Named templates. The ones marked PUBLIC are meant for other charts too: add this chart as a
dependency and call them with the subchart's scope, e.g.
  initContainers:
    {{- include "model-provisioner.initContainer" (index .Subcharts "model-provisioner") | nindent 4 }}
(see docs/chart.md).
*/}}

{{/* Chart name. */}}
{{- define "model-provisioner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name (release-name prefix unless it already contains the chart name). */}}
{{- define "model-provisioner.fullname" -}}
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

{{/* Chart label value. */}}
{{- define "model-provisioner.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels (stable; never add mutable values here). */}}
{{- define "model-provisioner.selectorLabels" -}}
app.kubernetes.io/name: {{ include "model-provisioner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels. */}}
{{- define "model-provisioner.labels" -}}
helm.sh/chart: {{ include "model-provisioner.chart" . }}
{{ include "model-provisioner.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: model-provisioner
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "model-provisioner.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "model-provisioner.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Provisioner image reference. */}}
{{- define "model-provisioner.image" -}}
{{- $img := .Values.provisioner.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag | toString) }}
{{- end }}
{{- end }}

{{/*
The settings named after CLI flags whose chart value was renamed, resolved from the new name or its
deprecated form (a JSON dict; read it with `include "model-provisioner.settings" . | fromJson`):
  target        model.target          (deprecated: model.mountPath)
  listen, port  provisioner.listen    (deprecated: provisioner.listenPort); port is "" when listen is `off`
  events        kube.events on|off    (deprecated: true|false); `auto` resolved
  coordination  kube.coordination     (deprecated: kube.lease true|false); `auto` resolved
  condition     kube.readinessCondition, a condition type or "" (deprecated: true|false + kube.conditionType)
  deprecations  one note per deprecated name in use (NOTES.txt prints them)
A deprecated name that is set wins over the new one: it can only be there because the user put it there.
*/}}
{{- define "model-provisioner.settings" -}}
{{- $v := .Values }}
{{- $k := $v.kube }}
{{- $notes := list }}
{{- $target := $v.model.target }}
{{- if not (kindIs "invalid" $v.model.mountPath) }}
{{- $target = $v.model.mountPath }}
{{- $notes = append $notes (printf "model.mountPath is deprecated: use model.target (in effect: %s)" $target) }}
{{- end }}
{{- $listen := toString $v.provisioner.listen }}
{{- if not (kindIs "invalid" $v.provisioner.listenPort) }}
{{- $listen = printf "0.0.0.0:%d" (int $v.provisioner.listenPort) }}
{{- $notes = append $notes (printf "provisioner.listenPort is deprecated: use provisioner.listen (in effect: %s)" $listen) }}
{{- end }}
{{- $port := "" }}
{{- if ne $listen "off" }}
{{- $port = regexFind "[0-9]+$" $listen }}
{{- end }}
{{- $events := toString $k.events }}
{{- if kindIs "bool" $k.events }}
{{- $events = ternary "on" "off" $k.events }}
{{- $notes = append $notes (printf "kube.events: %t is deprecated: use kube.events: \"%s\" (or auto; quote on/off in YAML, which reads them as booleans)" $k.events $events) }}
{{- end }}
{{- $condition := "" }}
{{- if kindIs "bool" $k.readinessCondition }}
{{- if $k.readinessCondition }}
{{- $condition = default "model-provisioner/ready" $k.conditionType }}
{{- end }}
{{- $notes = append $notes (printf "kube.readinessCondition: %t is deprecated: set it to the condition type, e.g. kube.readinessCondition: %s (empty: off)" $k.readinessCondition (default "model-provisioner/ready" $k.conditionType)) }}
{{- else }}
{{- $condition = toString (default "" $k.readinessCondition) }}
{{- end }}
{{- if not (kindIs "invalid" $k.conditionType) }}
{{- $notes = append $notes (printf "kube.conditionType is deprecated: set kube.readinessCondition: %s instead (in effect: %q)" $k.conditionType $condition) }}
{{- end }}
{{- $coordination := toString $k.coordination }}
{{- if not (kindIs "invalid" $k.lease) }}
{{- $coordination = ternary "lease" "file" (eq (toString $k.lease) "true") }}
{{- $notes = append $notes (printf "kube.lease is deprecated: use kube.coordination: %s (lease, file, none or auto)" $coordination) }}
{{- end }}
{{- if eq $coordination "auto" }}
{{- $usesApi := or (eq $events "on") (ne $condition "") }}
{{- $coordination = ternary "lease" "file" (and $usesApi (ne $v.storage.type "emptyDir")) }}
{{- end }}
{{- if eq $events "auto" }}
{{- $events = ternary "on" "off" (or (eq $coordination "lease") (ne $condition "")) }}
{{- end }}
{{- toJson (dict "target" $target "listen" $listen "port" $port "events" $events "coordination" $coordination
      "condition" $condition "deprecations" $notes) }}
{{- end }}

{{/* "true" when any Kubernetes API feature is on. */}}
{{- define "model-provisioner.kubeEnabled" -}}
{{- $s := include "model-provisioner.settings" . | fromJson }}
{{- if or (eq $s.events "on") (eq $s.coordination "lease") $s.condition }}true{{- end }}
{{- end }}

{{/* The model directory (model.target, or the deprecated model.mountPath). */}}
{{- define "model-provisioner.target" -}}
{{- (include "model-provisioner.settings" . | fromJson).target }}
{{- end }}

{{/* The provisioner's port (from provisioner.listen, or the deprecated listenPort); empty when listen is off. */}}
{{- define "model-provisioner.port" -}}
{{- (include "model-provisioner.settings" . | fromJson).port }}
{{- end }}

{{/* "true" when the provisioner keeps serving (a readinessGate makes sense). */}}
{{- define "model-provisioner.servesReadyz" -}}
{{- if or .Values.nodeCache.enabled (ne .Values.mode "init") }}true{{- end }}
{{- end }}

{{/* Value of a setting as an env string: whole numbers without exponent, lists comma-joined. */}}
{{- define "model-provisioner.envValue" -}}
{{- $v := . }}
{{- if kindIs "slice" $v }}
{{- join "," $v }}
{{- else if and (kindIs "float64" $v) (eq $v (floor $v)) }}
{{- int64 $v }}
{{- else }}
{{- $v | toString }}
{{- end }}
{{- end }}

{{/*
Checks of value combinations the schema cannot express. Included once by every template entry point.
*/}}
{{- define "model-provisioner.validate" -}}
{{- if and .Values.nodeCache.enabled (ne .Values.storage.type "hostPath") }}
{{- fail "nodeCache.enabled needs storage.type=hostPath (the DaemonSet fills storage.hostPath.path on each node)" }}
{{- end }}
{{- $s := include "model-provisioner.settings" . | fromJson }}
{{- if and (eq $s.coordination "lease") (eq .Values.storage.type "emptyDir") }}
{{- fail "kube.coordination=lease coordinates replicas that share one volume; storage.type=emptyDir is private to each pod: use pvc, existingClaim or hostPath, or set kube.coordination to auto, file or none" }}
{{- end }}
{{- if and (eq $s.listen "off") (or (ne .Values.mode "init") .Values.nodeCache.enabled .Values.metrics.podMonitor.enabled .Values.metrics.serviceMonitor.enabled .Values.metrics.service.enabled) }}
{{- fail "provisioner.listen=off: only mode=init without nodeCache, metrics.service, podMonitor or serviceMonitor can run without the provisioner's HTTP server (the other modes probe /readyz on it)" }}
{{- end }}
{{- if and (eq .Values.storage.type "existingClaim") (not .Values.storage.existingClaim.name) }}
{{- fail "storage.type=existingClaim needs storage.existingClaim.name" }}
{{- end }}
{{- if and (eq .Values.model.token.as "env") (eq .Values.model.token.existingSecret "") (ne .Values.model.token.key "token") }}
{{- fail "model.token.key is set but model.token.existingSecret is empty" }}
{{- end }}
{{- range .Values.app.ports }}
{{- if eq (toString (int .containerPort)) $s.port }}
{{- fail (printf "app.ports uses containerPort %d, which is the port of provisioner.listen (%s): the app and the provisioner share the pod's network; change one of them" (int .containerPort) $s.listen) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
PUBLIC: env of the provisioner container (list items).
Optional "provisionerMode" in the context overrides the mode (used by the nodeCache DaemonSet).
*/}}
{{- define "model-provisioner.env" -}}
{{- include "model-provisioner._env" . | trim }}
{{- end }}

{{- define "model-provisioner._env" -}}
{{- $v := .Values }}
{{- $m := $v.model }}
{{- $mode := ternary "sidecar" "init" (ne $v.mode "init") }}
{{- $kubeOn := include "model-provisioner.kubeEnabled" . }}
{{- $s := include "model-provisioner.settings" . | fromJson }}
{{- $lease := eq $s.coordination "lease" }}
{{- $settings := list
      (list "PROVISIONER_REPO_ID" $m.repoId)
      (list "PROVISIONER_REVISION" $m.revision)
      (list "PROVISIONER_TARGET" $s.target)
      (list "PROVISIONER_INCLUDE" $m.include)
      (list "PROVISIONER_EXCLUDE" $m.exclude)
      (list "PROVISIONER_ENDPOINT" $m.endpoint)
      (list "PROVISIONER_ENGINE" $m.engine)
      (list "PROVISIONER_VERIFY" $m.verify)
      (list "PROVISIONER_REFERENCE_EMBEDDINGS" $m.referenceEmbeddings)
      (list "PROVISIONER_CONNECT_TIMEOUT" $m.connectTimeout)
      (list "PROVISIONER_STALL_TIMEOUT" $m.stallTimeout)
      (list "PROVISIONER_API_TIMEOUT" $m.apiTimeout)
      (list "PROVISIONER_RETRY_BUDGET" $m.retryBudget)
      (list "PROVISIONER_BACKOFF_MAX" $m.backoffMax)
      (list "PROVISIONER_MAX_WORKERS" $m.maxWorkers)
      (list "PROVISIONER_CONNECTIONS_PER_FILE" $m.connectionsPerFile)
      (list "PROVISIONER_SPLIT_THRESHOLD" $m.splitThreshold)
      (list "PROVISIONER_DISK_HEADROOM" $m.diskHeadroom)
      (list "PROVISIONER_LISTEN" $s.listen)
      (list "PROVISIONER_MODE" (default $mode (get . "provisionerMode")))
      (list "PROVISIONER_LINGER" $v.provisioner.linger)
      (list "PROVISIONER_PUSHGATEWAY" $v.provisioner.pushgateway)
      (list "PROVISIONER_LOG_FORMAT" $v.provisioner.logFormat)
      (list "PROVISIONER_LOG_LEVEL" $v.provisioner.logLevel)
      (list "PROVISIONER_PROGRESS_INTERVAL" $v.provisioner.progressInterval)
      (list "PROVISIONER_KUBE" (ternary "on" "off" (eq $kubeOn "true")))
      (list "PROVISIONER_EVENTS" $s.events)
      (list "PROVISIONER_COORDINATION" $s.coordination)
      (list "PROVISIONER_LEASE_DURATION" (ternary $v.kube.leaseDuration nil $lease))
      (list "PROVISIONER_READINESS_CONDITION" $s.condition)
}}
{{- range $settings }}
{{- $value := index . 1 }}
{{- if not (or (kindIs "invalid" $value) (and (kindIs "string" $value) (eq $value "")) (and (kindIs "slice" $value) (eq (len $value) 0))) }}
- name: {{ index . 0 }}
  value: {{ include "model-provisioner.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- if $m.reverify }}
- name: PROVISIONER_REVERIFY
  value: "true"
{{- end }}
{{- with $m.token.existingSecret }}
{{- if eq $m.token.as "env" }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $m.token.key }}
{{- else }}
- name: PROVISIONER_TOKEN_FILE
  value: {{ printf "%s/%s" (trimSuffix "/" $m.token.mountPath) $m.token.key | quote }}
{{- end }}
{{- end }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- with $v.provisioner.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* PUBLIC: volume mounts of the provisioner container (list items). */}}
{{- define "model-provisioner.volumeMounts" -}}
{{- include "model-provisioner._volumeMounts" . | trim }}
{{- end }}

{{- define "model-provisioner._volumeMounts" -}}
- name: models
  mountPath: {{ include "model-provisioner.target" . }}
- name: provisioner-tmp
  mountPath: /tmp
{{- if and .Values.model.token.existingSecret (eq .Values.model.token.as "file") }}
- name: provisioner-hf-token
  mountPath: {{ .Values.model.token.mountPath }}
  readOnly: true
{{- end }}
{{- with .Values.provisioner.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* PUBLIC: the model volume mount for the app container (list item). */}}
{{- define "model-provisioner.modelVolumeMount" -}}
- name: models
  mountPath: {{ include "model-provisioner.target" . }}
  readOnly: {{ .Values.app.modelReadOnly }}
{{- end }}

{{/* The provisioner container's port (list items). */}}
{{- define "model-provisioner.ports" -}}
{{- with include "model-provisioner.port" . }}
- name: http-metrics
  containerPort: {{ . }}
  protocol: TCP
{{- end }}
{{- end }}

{{/* An httpGet probe on the provisioner port: context is (dict "root" $ "path" "/readyz" "probe" <settings>). */}}
{{- define "model-provisioner.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: {{ include "model-provisioner.port" .root }}
{{- with .probe }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Body of the provisioner container, shared by every form (no leading "- "). */}}
{{- define "model-provisioner.containerBody" -}}
name: model-provisioner
image: {{ include "model-provisioner.image" . | quote }}
imagePullPolicy: {{ .Values.provisioner.image.pullPolicy }}
args:
  - run
  {{- with .Values.provisioner.extraArgs }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
env:
  {{- include "model-provisioner.env" . | nindent 2 }}
{{- with include "model-provisioner.ports" . }}
ports:
  {{- . | nindent 2 }}
{{- end }}
volumeMounts:
  {{- include "model-provisioner.volumeMounts" . | nindent 2 }}
{{- with .Values.provisioner.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.provisioner.securityContext | nindent 2 }}
{{- end }}

{{/*
PUBLIC: the provisioner as an init container (list item) for mode `init` or `nativeSidecar`
(with `restartPolicy: Always`, a startupProbe on /readyz and liveness on /healthz).
*/}}
{{- define "model-provisioner.initContainer" -}}
{{- include "model-provisioner._initContainer" . | trim }}
{{- end }}

{{- define "model-provisioner._initContainer" -}}
{{- include "model-provisioner.validate" . }}
- {{ include "model-provisioner.containerBody" . | trim | nindent 2 | trim }}
{{- if eq .Values.mode "nativeSidecar" }}
  restartPolicy: Always
  startupProbe:
    {{- include "model-provisioner.httpProbe" (dict "root" . "path" "/readyz" "probe" .Values.provisioner.startupProbe) | nindent 4 }}
  readinessProbe:
    {{- include "model-provisioner.httpProbe" (dict "root" . "path" "/readyz" "probe" .Values.provisioner.readinessProbe) | nindent 4 }}
  livenessProbe:
    {{- include "model-provisioner.httpProbe" (dict "root" . "path" "/healthz" "probe" .Values.provisioner.livenessProbe) | nindent 4 }}
{{- end }}
{{- end }}

{{/* PUBLIC: the provisioner as a regular sidecar container (list item), `--mode sidecar`. */}}
{{- define "model-provisioner.sidecarContainer" -}}
{{- include "model-provisioner._sidecarContainer" . | trim }}
{{- end }}

{{- define "model-provisioner._sidecarContainer" -}}
{{- include "model-provisioner.validate" . }}
{{- $ctx := . }}
{{- if eq .Values.mode "init" }}
{{- /* A regular container must keep serving: force sidecar mode whatever .Values.mode says. */}}
{{- $ctx = dict "Values" .Values "Release" .Release "Chart" .Chart "Capabilities" .Capabilities "provisionerMode" "sidecar" }}
{{- end }}
- {{ include "model-provisioner.containerBody" $ctx | trim | nindent 2 | trim }}
  readinessProbe:
    {{- include "model-provisioner.httpProbe" (dict "root" . "path" "/readyz" "probe" .Values.provisioner.readinessProbe) | nindent 4 }}
  livenessProbe:
    {{- include "model-provisioner.httpProbe" (dict "root" . "path" "/healthz" "probe" .Values.provisioner.livenessProbe) | nindent 4 }}
{{- end }}

{{/* The model volume source (a map, no name). */}}
{{- define "model-provisioner.modelVolumeSource" -}}
{{- $s := .Values.storage }}
{{- if eq $s.type "emptyDir" }}
emptyDir:
  {{- with $s.emptyDir.medium }}
  medium: {{ . }}
  {{- end }}
  {{- with $s.emptyDir.sizeLimit }}
  sizeLimit: {{ . }}
  {{- end }}
{{- else if eq $s.type "pvc" }}
persistentVolumeClaim:
  claimName: {{ include "model-provisioner.fullname" . }}-models
{{- else if eq $s.type "existingClaim" }}
persistentVolumeClaim:
  claimName: {{ $s.existingClaim.name }}
{{- else if eq $s.type "hostPath" }}
hostPath:
  path: {{ $s.hostPath.path }}
  type: {{ $s.hostPath.type }}
{{- end }}
{{- end }}

{{/* PUBLIC: pod volumes the provisioner needs: the model volume, /tmp and the token Secret (list items). */}}
{{- define "model-provisioner.volumes" -}}
{{- include "model-provisioner._volumes" . | trim }}
{{- end }}

{{- define "model-provisioner._volumes" -}}
- name: models
  {{- include "model-provisioner.modelVolumeSource" . | trim | nindent 2 }}
- name: provisioner-tmp
  emptyDir:
    sizeLimit: {{ .Values.provisioner.tmpSizeLimit }}
{{- if and .Values.model.token.existingSecret (eq .Values.model.token.as "file") }}
- name: provisioner-hf-token
  secret:
    secretName: {{ .Values.model.token.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.model.token.key }}
        path: {{ .Values.model.token.key }}
{{- end }}
{{- end }}

{{/* The readinessGates of a pod whose provisioner keeps serving. */}}
{{- define "model-provisioner.readinessGates" -}}
{{- with (include "model-provisioner.settings" . | fromJson).condition }}
readinessGates:
  - conditionType: {{ . | quote }}
{{- end }}
{{- end }}

{{/* An init container that chowns the hostPath to the provisioner's UID (opt-in, root with CAP_CHOWN only). */}}
{{- define "model-provisioner.fixPermissionsContainer" -}}
- name: fix-permissions
  image: {{ include "model-provisioner.image" . | quote }}
  imagePullPolicy: {{ .Values.provisioner.image.pullPolicy }}
  command: ["chown", "{{ .Values.provisioner.securityContext.runAsUser | default 10001 }}:{{ .Values.podSecurityContext.fsGroup | default 10001 }}", {{ include "model-provisioner.target" . | quote }}]
  volumeMounts:
    - name: models
      mountPath: {{ include "model-provisioner.target" . }}
  resources:
    requests:
      cpu: 10m
      memory: 16Mi
    limits:
      memory: 64Mi
  securityContext:
    runAsNonRoot: false
    runAsUser: 0
    runAsGroup: 0
    readOnlyRootFilesystem: true
    allowPrivilegeEscalation: false
    capabilities:
      drop: ["ALL"]
      add: ["CHOWN"]
    seccompProfile:
      type: RuntimeDefault
{{- end }}

{{/* "true" when the metrics Service is rendered. */}}
{{- define "model-provisioner.metricsServiceEnabled" -}}
{{- if or .Values.metrics.service.enabled .Values.metrics.serviceMonitor.enabled (and .Values.tests.enabled (eq (include "model-provisioner.servesReadyz" .) "true")) }}true{{- end }}
{{- end }}

{{/* What the `helm test` pod checks: /readyz through the metrics Service, else an app port; empty: no test. */}}
{{- define "model-provisioner.testTarget" -}}
{{- $fullname := include "model-provisioner.fullname" . }}
{{- if eq (include "model-provisioner.servesReadyz" .) "true" }}
{{- printf "http://%s-metrics.%s.svc:%s/readyz" $fullname .Release.Namespace (include "model-provisioner.port" .) }}
{{- else if and .Values.app.enabled .Values.app.service.enabled .Values.app.ports }}
{{- /* init mode: the provisioner has exited once the app runs; the app answering proves the model was ready. */}}
{{- printf "tcp://%s.%s.svc:%d" $fullname .Release.Namespace (int (first .Values.app.ports).containerPort) }}
{{- end }}
{{- end }}
