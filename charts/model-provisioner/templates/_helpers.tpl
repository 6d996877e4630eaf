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

{{/*
Labels of pod templates: the common labels without helm.sh/chart and app.kubernetes.io/version, so a chart or
appVersion bump alone does not restart the pods (the objects keep the full set).
*/}}
{{- define "model-provisioner.podLabels" -}}
{{ include "model-provisioner.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: model-provisioner
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A Kubernetes quantity (5Gi, 512Mi, 10G, 1048576) in bytes. */}}
{{- define "model-provisioner.bytes" -}}
{{- $q := toString . }}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $q }}
{{- $units := dict "" 1 "k" 1000 "K" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 }}
{{- $suffix := trimPrefix $num $q }}
{{- if or (not $num) (not (hasKey $units $suffix)) }}
{{- fail (printf "cannot read %q as a size (use a quantity such as 5Gi, 512Mi or 10G)" $q) }}
{{- end }}
{{- mulf (float64 $num) (get $units $suffix) | ceil | int64 }}
{{- end }}

{{/* Bytes as a quantity: whole Gi when exact, else Mi rounded up. */}}
{{- define "model-provisioner.quantity" -}}
{{- $b := int64 . }}
{{- if not (mod $b 1073741824) }}{{ div $b 1073741824 }}Gi{{ else }}{{ div (add $b 1048575) 1048576 }}Mi{{ end }}
{{- end }}

{{/* A Prometheus duration (500ms, 15s, 2m, 1h) in milliseconds. */}}
{{- define "model-provisioner.ms" -}}
{{- $d := toString . }}
{{- $num := regexFind "^[0-9]+" $d }}
{{- $units := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 }}
{{- mul (int64 $num) (get $units (trimPrefix $num $d)) }}
{{- end }}

{{/* Milliseconds as a Prometheus duration. */}}
{{- define "model-provisioner.duration" -}}
{{- $ms := int64 . }}
{{- if mod $ms 1000 }}{{ $ms }}ms{{ else }}{{ div $ms 1000 }}s{{ end }}
{{- end }}

{{/* scrapeTimeout of a PodMonitor/ServiceMonitor endpoint (context: its values): set, or the interval capped at 10s. */}}
{{- define "model-provisioner.scrapeTimeout" -}}
{{- $interval := include "model-provisioner.ms" .interval | int64 }}
{{- if .scrapeTimeout }}
{{- if gt (include "model-provisioner.ms" .scrapeTimeout | int64) $interval }}
{{- fail (printf "scrapeTimeout %s is longer than the scrape interval %s: Prometheus rejects it; leave scrapeTimeout null to derive it" .scrapeTimeout .interval) }}
{{- end }}
{{- .scrapeTimeout }}
{{- else }}
{{- include "model-provisioner.duration" (min $interval 10000) }}
{{- end }}
{{- end }}

{{/* "true" when monitoring.coreos.com/v1 objects are rendered (the cluster has the API, or forced). */}}
{{- define "model-provisioner.monitoringApi" -}}
{{- if or .Values.metrics.forceMonitoringApi (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") }}true{{- end }}
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
{{- $tag := $img.tag | toString }}
{{- if not $img.tag }}
{{- $tag = printf "%s%s" .Chart.AppVersion (ternary "-slim" "" (eq (default "slim" $img.variant) "slim")) }}
{{- end }}
{{- printf "%s:%s" $img.repository $tag }}
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
  layout        model.layout          `auto` resolved: versioned on volumes that outlive a pod, flat on emptyDir
  modelDir      what the app reads and the probes check: target, or target/revisions/<revision link name>
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
{{- $layout := toString (default "auto" $v.model.layout) }}
{{- if eq $layout "auto" }}
{{- $layout = ternary "flat" "versioned" (and (eq $v.storage.type "emptyDir") (not $v.nodeCache.enabled)) }}
{{- end }}
{{- $modelDir := $target }}
{{- if eq $layout "versioned" }}
{{- /* the same name as provisioner/layout.py link_name(): "/" -> "--", anything else unsafe -> "-" */}}
{{- $link := regexReplaceAll "[^A-Za-z0-9._-]" (replace "/" "--" (toString $v.model.revision)) "-" }}
{{- if eq (trimAll "." $link) "" }}{{ $link = printf "rev-%s" $link }}{{ end }}
{{- $modelDir = printf "%s/revisions/%s" (trimSuffix "/" $target) $link }}
{{- end }}
{{- toJson (dict "target" $target "listen" $listen "port" $port "events" $events "coordination" $coordination
      "condition" $condition "layout" $layout "modelDir" $modelDir "deprecations" $notes) }}
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

{{/* What the app reads and the probes check: the target (flat layout) or the revision's link (versioned). */}}
{{- define "model-provisioner.modelDir" -}}
{{- (include "model-provisioner.settings" . | fromJson).modelDir }}
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
{{- if and (eq .Values.model.verify "full") (ne (default "slim" .Values.provisioner.image.variant) "full") }}
{{- fail "model.verify=full runs the embedding smoke test inside the provisioner, which needs torch: set provisioner.image.variant=full (the full image), or model.verify=app to run the test in the app's own image (slim provisioner), or model.verify=checksums" }}
{{- end }}
{{- if and (eq .Values.model.verify "app") (or (ne .Values.mode "init") .Values.nodeCache.enabled (not .Values.app.enabled)) }}
{{- fail "model.verify=app runs the embedding check in an init container with the app image after the provisioner: it needs mode=init, app.enabled=true and no nodeCache (in the other modes /readyz would wait for a check that can only run after it); use model.verify=full with provisioner.image.variant=full there" }}
{{- end }}
{{- if and .Values.nodeCache.enabled (ne .Values.storage.type "hostPath") }}
{{- fail "nodeCache.enabled needs storage.type=hostPath (the DaemonSet fills storage.hostPath.path on each node)" }}
{{- end }}
{{- $s := include "model-provisioner.settings" . | fromJson }}
{{- if and (eq $s.coordination "lease") (eq .Values.storage.type "emptyDir") }}
{{- fail "kube.coordination=lease coordinates replicas that share one volume; storage.type=emptyDir is private to each pod: use pvc, existingClaim or hostPath, or set kube.coordination to auto, file or none" }}
{{- end }}
{{- if and $s.port (or (lt (int $s.port) 1) (gt (int $s.port) 65535)) }}
{{- fail (printf "provisioner.listen=%s: the port must be 1-65535 (it is the container port and the probes' port)" $s.listen) }}
{{- end }}
{{- if and (eq $s.listen "off") (or (ne .Values.mode "init") .Values.nodeCache.enabled .Values.metrics.podMonitor.enabled .Values.metrics.serviceMonitor.enabled .Values.metrics.service.enabled) }}
{{- fail "provisioner.listen=off: only mode=init without nodeCache, metrics.service, podMonitor or serviceMonitor can run without the provisioner's HTTP server (the other modes probe /readyz on it)" }}
{{- end }}
{{- if and (eq .Values.mode "nativeSidecar") (semverCompare "<1.29.0-0" .Capabilities.KubeVersion.Version) }}
{{- fail (printf "mode=nativeSidecar needs Kubernetes >= 1.29 (an init container with restartPolicy: Always), but the target cluster is %s: use mode=sidecar (a regular container; the app's readinessProbe waits for /readyz) or mode=init" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if and (include "model-provisioner.kubeEnabled" .) (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) }}
{{- fail "serviceAccount.create=false with a kube feature on (kube.events, kube.coordination=lease or kube.readinessCondition): set serviceAccount.name to an existing ServiceAccount for the Role to be bound to, or serviceAccount.create=true; the chart does not grant the namespace's default ServiceAccount any rights" }}
{{- end }}
{{- $rwo := eq (include "model-provisioner.pvcReadWriteOnce" .) "true" }}
{{- if and $rwo .Values.app.enabled (gt (int .Values.app.replicas) 1) }}
{{- fail (printf "storage.type=pvc with accessModes %v cannot be shared by app.replicas=%d pods (the claim attaches to one node only): use accessModes [ReadWriteMany], storage.type=existingClaim with an RWX claim, nodeCache, or emptyDir (one download per pod)" .Values.storage.pvc.accessModes (int .Values.app.replicas)) }}
{{- end }}
{{- $e := .Values.storage.emptyDir }}
{{- if and (eq .Values.storage.type "emptyDir") (eq $e.medium "Memory") }}
{{- if not $e.sizeLimit }}
{{- fail "storage.emptyDir.medium=Memory needs storage.emptyDir.sizeLimit: the model's files live in RAM (tmpfs) and count against the memory limit of the provisioner container; set it to the model size + headroom" }}
{{- end }}
{{- $memLimit := dig "limits" "memory" "" (include "model-provisioner.resources" . | fromYaml) }}
{{- if and $memLimit (lt (include "model-provisioner.bytes" $memLimit | int64) (include "model-provisioner.bytes" $e.sizeLimit | int64)) }}
{{- fail (printf "storage.emptyDir.medium=Memory: the files (up to sizeLimit %s) count against the provisioner's memory limit %s; raise provisioner.resources.limits.memory to at least the sizeLimit plus its working set (verify=full: + ~500Mi)" (toString $e.sizeLimit) (toString $memLimit)) }}
{{- end }}
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

{{/* "true" when storage is a chart-made claim that attaches to one node (ReadWriteOnce or ReadWriteOncePod, no RWX). */}}
{{- define "model-provisioner.pvcReadWriteOnce" -}}
{{- $modes := .Values.storage.pvc.accessModes }}
{{- if and (eq .Values.storage.type "pvc") (not (has "ReadWriteMany" $modes)) (or (has "ReadWriteOnce" $modes) (has "ReadWriteOncePod" $modes)) }}true{{- end }}
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
      (list "PROVISIONER_EXPECT_COMMIT" $m.expectCommit)
      (list "PROVISIONER_TARGET" $s.target)
      (list "PROVISIONER_LAYOUT" $s.layout)
      (list "PROVISIONER_KEEP_REVISIONS" $m.keepRevisions)
      (list "PROVISIONER_INCLUDE" $m.include)
      (list "PROVISIONER_ENDPOINT" $m.endpoint)
      (list "PROVISIONER_MIRRORS" (include "model-provisioner.mirrors" .))
      (list "PROVISIONER_ENGINE" $m.engine)
      (list "PROVISIONER_VERIFY" $m.verify)
      (list "PROVISIONER_REFERENCE_EMBEDDINGS" $m.referenceEmbeddings)
      (list "PROVISIONER_CONNECT_TIMEOUT" $m.connectTimeout)
      (list "PROVISIONER_HEADER_TIMEOUT" $m.headerTimeout)
      (list "PROVISIONER_STALL_TIMEOUT" $m.stallTimeout)
      (list "PROVISIONER_API_TIMEOUT" $m.apiTimeout)
      (list "PROVISIONER_RETRY_BUDGET" $m.retryBudget)
      (list "PROVISIONER_BACKOFF_MAX" $m.backoffMax)
      (list "PROVISIONER_MAX_WORKERS" $m.maxWorkers)
      (list "PROVISIONER_CONNECTIONS_PER_FILE" $m.connectionsPerFile)
      (list "PROVISIONER_SPLIT_THRESHOLD" $m.splitThreshold)
      (list "PROVISIONER_DISK_HEADROOM" $m.diskHeadroom)
      (list "PROVISIONER_MAX_BYTES_PER_SECOND" $m.maxBytesPerSecond)
      (list "PROVISIONER_LISTEN" $s.listen)
      (list "PROVISIONER_SERVE_LISTEN" (include "model-provisioner.serveListen" .))
      (list "PROVISIONER_MODE" (default $mode (get . "provisionerMode")))
      (list "PROVISIONER_LINGER" (include "model-provisioner.linger" (dict "root" . "mode" (default $mode (get . "provisionerMode")))))
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
{{- if kindIs "slice" $m.exclude }}
{{- /* [] is rendered as "" (skip nothing); null keeps the provisioner's default list. */}}
- name: PROVISIONER_EXCLUDE
  value: {{ join "," $m.exclude | quote }}
{{- end }}
{{- if $m.reverify }}
- name: PROVISIONER_REVERIFY
  value: "true"
{{- end }}
{{- if $m.offline }}
- name: PROVISIONER_OFFLINE
  value: "true"
{{- end }}
{{- if $m.requireDigests }}
- name: PROVISIONER_REQUIRE_DIGESTS
  value: "true"
{{- end }}
{{- with $m.caBundle }}
{{- if .configMap }}
- name: PROVISIONER_CA_BUNDLE
  value: {{ printf "%s/%s" (trimSuffix "/" .mountPath) .key | quote }}
- name: SSL_CERT_FILE
  value: {{ printf "%s/%s" (trimSuffix "/" .mountPath) .key | quote }}
{{- end }}
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
{{- if eq $s.events "on" }}
- name: POD_UID
  valueFrom:
    fieldRef:
      fieldPath: metadata.uid
{{- end }}
{{- with $v.provisioner.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
PROVISIONER_LINGER (context: dict "root" $ "mode" init|sidecar): provisioner.linger, or, when it is null, in init mode
with a rendered PodMonitor/ServiceMonitor and no pushgateway, two scrape intervals (whole seconds) so the final
phase (failed) is scraped at least once before the container is gone.
*/}}
{{- define "model-provisioner.linger" -}}
{{- $v := .root.Values }}
{{- if not (kindIs "invalid" $v.provisioner.linger) }}
{{- $v.provisioner.linger }}
{{- else if and (eq .mode "init") (not $v.provisioner.pushgateway) (include "model-provisioner.monitoringApi" .root) }}
{{- $ms := 0 }}
{{- range $mon := list $v.metrics.podMonitor $v.metrics.serviceMonitor }}
{{- if $mon.enabled }}
{{- $ms = max $ms (include "model-provisioner.ms" $mon.interval | int64) }}
{{- end }}
{{- end }}
{{- if $ms }}
{{- div (add (mul 2 $ms) 999) 1000 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Resources of the provisioner container: provisioner.resources, or defaults by model.verify; plus an
ephemeral-storage request/limit derived from storage.emptyDir.sizeLimit (disk medium) unless set.
*/}}
{{- define "model-provisioner.resources" -}}
{{- $v := .Values }}
{{- $res := deepCopy $v.provisioner.resources }}
{{- if not $res }}
{{- if eq $v.model.verify "full" }}
{{- $res = dict "requests" (dict "cpu" "100m" "memory" "768Mi") "limits" (dict "memory" "1536Mi") }}
{{- else }}
{{- $res = dict "requests" (dict "cpu" "100m" "memory" "128Mi") "limits" (dict "memory" "512Mi") }}
{{- end }}
{{- end }}
{{- $e := $v.storage.emptyDir }}
{{- if and (eq $v.storage.type "emptyDir") $e.sizeLimit (ne $e.medium "Memory") }}
{{- $requests := default (dict) $res.requests }}
{{- $limits := default (dict) $res.limits }}
{{- if not (or (hasKey $requests "ephemeral-storage") (hasKey $limits "ephemeral-storage")) }}
{{- $model := include "model-provisioner.bytes" $e.sizeLimit | int64 }}
{{- $all := add $model (include "model-provisioner.bytes" $v.provisioner.tmpSizeLimit | int64) }}
{{- if and $v.app.enabled $v.app.tmp.enabled }}
{{- $all = add $all (include "model-provisioner.bytes" $v.app.tmp.sizeLimit | int64) }}
{{- end }}
{{- $_ := set $requests "ephemeral-storage" (include "model-provisioner.quantity" $model) }}
{{- $_ = set $limits "ephemeral-storage" (include "model-provisioner.quantity" $all) }}
{{- $_ = set $res "requests" $requests }}
{{- $_ = set $res "limits" $limits }}
{{- end }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/* The provisioner's own API credentials (kube features on): mounted only in the provisioner container. */}}
{{- define "model-provisioner.kubeApiMount" -}}
- name: provisioner-kube-api
  mountPath: /var/run/secrets/kubernetes.io/serviceaccount
  readOnly: true
{{- end }}

{{/*
A projected volume with what the pod-wide automount would give (token, ca.crt, namespace), so that only the
provisioner container gets the ServiceAccount's API rights, not the app. 3607s: the kubelet refreshes the token;
the API server treats this lifetime like the default automounted one.
*/}}
{{- define "model-provisioner.kubeApiVolume" -}}
- name: provisioner-kube-api
  projected:
    defaultMode: 0444
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3607
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                apiVersion: v1
                fieldPath: metadata.namespace
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
{{- if .Values.model.caBundle.configMap }}
- name: provisioner-ca-bundle
  mountPath: {{ .Values.model.caBundle.mountPath }}
  readOnly: true
{{- end }}
{{- if include "model-provisioner.kubeEnabled" . }}
{{ include "model-provisioner.kubeApiMount" . }}
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
{{- with include "model-provisioner.serveListen" . | regexFind ":[0-9]+$" | trimPrefix ":" }}
- name: mirror
  containerPort: {{ . }}
  protocol: TCP
{{- end }}
{{- end }}

{{/* True in the nodeCache DaemonSet's context (see daemonset-node-cache.yaml). */}}
{{- define "model-provisioner.isNodeCache" -}}
{{- if get . "nodeCache" }}true{{ end }}
{{- end }}

{{/* --serve-listen: nodeCache.serve in the DaemonSet, else provisioner.serveListen in sidecar modes; "" = off. */}}
{{- define "model-provisioner.serveListen" -}}
{{- $v := .Values }}
{{- if include "model-provisioner.isNodeCache" . }}
{{- if $v.nodeCache.serve.enabled }}{{ printf "0.0.0.0:%d" (int $v.nodeCache.serve.port) }}{{ end }}
{{- else if ne $v.mode "init" }}
{{- $v.provisioner.serveListen }}
{{- end }}
{{- end }}

{{/* --mirrors, comma-joined: a cache pod's ready peers first (nodeCache.serve.peers), then model.mirrors. */}}
{{- define "model-provisioner.mirrors" -}}
{{- $v := .Values }}
{{- $list := list }}
{{- if and (include "model-provisioner.isNodeCache" .) $v.nodeCache.serve.enabled $v.nodeCache.serve.peers }}
{{- $list = append $list (printf "http://%s-node-cache-peers.%s.svc:%d" (include "model-provisioner.fullname" .) .Release.Namespace (int $v.nodeCache.serve.port)) }}
{{- end }}
{{- join "," (concat $list ($v.model.mirrors | default list)) }}
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
  {{- . | trim | nindent 2 }}
{{- end }}
volumeMounts:
  {{- include "model-provisioner.volumeMounts" . | nindent 2 }}
resources:
  {{- include "model-provisioner.resources" . | nindent 2 }}
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

{{/*
PUBLIC: model.verify=app: the init container (list item) that runs the embedding check with the APP image after
the provisioner (the ConfigMap `<fullname>-embedding-check` holds the script; volume "embedding-check", see
`model-provisioner.volumes`). It records its result in the ready marker, which /readyz and `check` require.
Same locked-down securityContext and /tmp as the provisioner (it writes the marker as the provisioner's UID).
*/}}
{{- define "model-provisioner.embeddingCheckContainer" -}}
{{- $app := .Values.app }}
{{- $image := printf "%s:%s" $app.image.repository (toString $app.image.tag) }}
{{- $target := include "model-provisioner.target" . }}
- name: embedding-check
  image: {{ $image | quote }}
  imagePullPolicy: {{ $app.image.pullPolicy }}
  command:
    - {{ $app.embeddingCheck.python | quote }}
    - /opt/model-provisioner/check/smoke_child.py
    - {{ $target | quote }}
    - --record
  env:
    - name: EMBEDDING_CHECK_IMAGE
      value: {{ $image | quote }}
    {{- range list "HF_HUB_OFFLINE" "TRANSFORMERS_OFFLINE" "HF_HUB_DISABLE_TELEMETRY" "PYTHONDONTWRITEBYTECODE" }}
    - name: {{ . }}
      value: "1"
    {{- end }}
    - name: TOKENIZERS_PARALLELISM
      value: "false"
    {{- range list "HOME" "HF_HOME" "TMPDIR" "XDG_CACHE_HOME" "TORCH_HOME" "MPLCONFIGDIR" }}
    - name: {{ . }}
      value: /tmp
    {{- end }}
  volumeMounts:
    - name: models
      mountPath: {{ $target }}
    - name: provisioner-tmp
      mountPath: /tmp
    - name: embedding-check
      mountPath: /opt/model-provisioner/check
      readOnly: true
  resources:
    {{- toYaml $app.embeddingCheck.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.provisioner.securityContext | nindent 4 }}
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
{{- $ctx = dict "Values" .Values "Release" .Release "Chart" .Chart "Capabilities" .Capabilities "provisionerMode" "sidecar" "nodeCache" (get . "nodeCache") }}
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
{{- if include "model-provisioner.kubeEnabled" . }}
{{ include "model-provisioner.kubeApiVolume" . }}
{{- end }}
- name: provisioner-tmp
  emptyDir:
    sizeLimit: {{ .Values.provisioner.tmpSizeLimit }}
{{- if eq .Values.model.verify "app" }}
- name: embedding-check
  configMap:
    name: {{ include "model-provisioner.fullname" . }}-embedding-check
{{- end }}
{{- if and .Values.model.token.existingSecret (eq .Values.model.token.as "file") }}
- name: provisioner-hf-token
  secret:
    secretName: {{ .Values.model.token.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.model.token.key }}
        path: {{ .Values.model.token.key }}
{{- end }}
{{- with .Values.model.caBundle }}
{{- if .configMap }}
- name: provisioner-ca-bundle
  configMap:
    name: {{ .configMap }}
    defaultMode: 0444
    items:
      - key: {{ .key }}
        path: {{ .key }}
{{- end }}
{{- end }}
{{- end }}

{{/* The readinessGates of a pod whose provisioner keeps serving. */}}
{{- define "model-provisioner.readinessGates" -}}
{{- with (include "model-provisioner.settings" . | fromJson).condition }}
readinessGates:
  - conditionType: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
An init container that chowns the hostPath (only the directory itself) to the provisioner's UID:GID: kubelet
creates it root 0755 and fsGroup does not apply to hostPath. Root with only CAP_CHOWN, read-only root filesystem,
no API token (the pod does not automount one).
*/}}
{{- define "model-provisioner.fixPermissionsContainer" -}}
{{- $uid := .Values.provisioner.securityContext.runAsUser | default .Values.podSecurityContext.runAsUser | default 10001 }}
{{- $gid := .Values.provisioner.securityContext.runAsGroup | default .Values.podSecurityContext.runAsGroup | default 10001 }}
- name: fix-permissions
  image: {{ include "model-provisioner.image" . | quote }}
  imagePullPolicy: {{ .Values.provisioner.image.pullPolicy }}
  command: ["chown", "{{ int64 $uid }}:{{ int64 $gid }}", {{ include "model-provisioner.target" . | quote }}]
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
