{{/* Names ------------------------------------------------------------------- */}}

{{- define "ouro.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ouro.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}
{{/* 40, not 63: KubeRay derives longer names (<name>-serve-svc, RayCluster <name>-<hash>). */}}

{{- define "ouro.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ouro.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ouro.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ouro.triggerServiceAccountName" -}}
{{- printf "%s-trigger" (include "ouro.fullname" .) }}
{{- end }}

{{- define "ouro.serveServiceName" -}}
{{- printf "%s-serve-svc" (include "ouro.fullname" .) }}
{{- end }}
{{/* KubeRay names the Serve Service of a RayService "<rayservice>-serve-svc". */}}

{{/* A shell filter: the key part of a "name:key" entry (a bare key passes unchanged), as Ouro reads it (ouro.apikeys.parse_key_entry). */}}
{{- define "ouro.keyOfEntry" -}}
sed -E 's/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}:(.)/\1/'
{{- end }}

{{- define "ouro.mlflowName" -}}
{{- printf "%s-mlflow" (include "ouro.fullname" .) }}
{{- end }}

{{- define "ouro.trainingName" -}}
{{- printf "%s-train" (include "ouro.fullname" .) }}
{{- end }}

{{- define "ouro.metricsName" -}}
{{- printf "%s-metrics" (include "ouro.fullname" .) }}
{{- end }}
{{/* The metrics Service; Prometheus names its job after it, which the alert rules select. */}}

{{/* Labels ------------------------------------------------------------------ */}}

{{- define "ouro.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ouro.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ouro.labels" -}}
helm.sh/chart: {{ include "ouro.chart" . }}
{{ include "ouro.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ouro
{{- end }}

{{/* The Ray head pod only (KubeRay's own ray.io/node-type is not in the chart's template). */}}
{{- define "ouro.rayHeadLabels" -}}
{{ include "ouro.selectorLabels" . }}
app.kubernetes.io/component: ray
ouro/ray-node: head
{{- end }}

{{/* Images ------------------------------------------------------------------ */}}

{{- define "ouro.serveImage" -}}
{{- printf "%s:%s" .Values.images.serve.repository (default .Chart.AppVersion .Values.images.serve.tag) }}
{{- end }}

{{- define "ouro.trainImage" -}}
{{- printf "%s:%s" .Values.images.train.repository (default .Chart.AppVersion .Values.images.train.tag) }}
{{- end }}


{{/* Configuration ----------------------------------------------------------- */}}

{{- define "ouro.mlflowTrackingUri" -}}
{{- if .Values.mlflow.enabled }}
{{- printf "http://%s:%d" (include "ouro.mlflowName" .) (int .Values.mlflow.port) }}
{{- else }}
{{- required "mlflow.externalTrackingUri is required when mlflow.enabled is false" .Values.mlflow.externalTrackingUri }}
{{- end }}
{{- end }}

{{/*
OuroSettings fields (snake_case) shared by serving and training (personal adapters too:
Serve resolves names per scope, training trains per scope; the canary's rules: Serve's
controller applies them, `python -m train_job canary status` shows them). Serve receives them as
serveConfigV2 application args; the training Job as OURO_<FIELD> environment variables.
*/}}
{{- define "ouro.modelSettings" -}}
base_model: {{ .Values.model.baseModel | quote }}
quantization: {{ .Values.model.quantization | quote }}
device: {{ .Values.model.device | quote }}
max_context_tokens: {{ int .Values.model.maxContextTokens }}
{{- with .Values.model.systemPrompt }}
system_prompt: {{ . | quote }}
{{- end }}
registered_model_name: {{ .Values.model.registeredModelName | quote }}
mlflow_tracking_uri: {{ include "ouro.mlflowTrackingUri" . | quote }}
personal_adapters: {{ .Values.personalAdapters.enabled }}
consensus_scopes: {{ int .Values.personalAdapters.consensusScopes }}
consensus_similarity: {{ .Values.personalAdapters.consensusSimilarity }}
{{- with .Values.canary }}
canary_steps: {{ join "," .steps | quote }}
canary_interval_s: {{ .intervalS }}
canary_min_requests: {{ int .minRequests }}
canary_health_min_requests: {{ int .healthMinRequests }}
canary_max_error_rate: {{ .maxErrorRate }}
canary_max_ttft_ratio: {{ .maxTtftRatio }}
canary_relative_risk: {{ .relativeRisk }}
canary_alpha: {{ .alpha }}
canary_beta: {{ .beta }}
canary_max_duration_s: {{ .maxDurationS }}
canary_default_decision: {{ .defaultDecision | quote }}
{{- end }}
{{- end }}

{{/* Ray Serve's settings in the Ray containers: the ingress (serve.ingress), and the app's
code on each replica's own event loop (serve.local_ray.SERVE_ENV, as a local Ray has it). */}}
{{- define "ouro.rayServeEnv" -}}
{{- if eq .Values.serve.ingress "haproxy" }}
- name: RAY_SERVE_ENABLE_HA_PROXY
  value: "1"
{{- end }}
- name: RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD
  value: "0"
{{- end }}

{{/* Environment of every Ouro container: storage paths, the HF token by reference, no telemetry. */}}
{{- define "ouro.commonEnv" -}}
- name: OURO_DATA_DIR
  value: {{ .Values.storage.cache.mountPath | quote }}
- name: OURO_FEEDBACK_DIR
  value: {{ .Values.storage.feedback.mountPath | quote }}
- name: HF_HOME
  value: {{ printf "%s/huggingface" .Values.storage.cache.mountPath | quote }}
- name: MLFLOW_DISABLE_TELEMETRY
  value: "true"
- name: DO_NOT_TRACK
  value: "true"
- name: HF_HUB_DISABLE_TELEMETRY
  value: "1"
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
{{- with .Values.secrets.huggingface.name }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.secrets.huggingface.key }}
{{- end }}
{{- if .Values.objectStore.enabled }}
{{- include "ouro.s3Env" .Values.objectStore }}
{{- end }}
{{- end }}

{{/* The API keys, for the Serve containers only (training needs none). */}}
{{- define "ouro.apiKeyEnv" -}}
{{- with .Values.secrets.apiKeys.name }}
- name: OURO_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.secrets.apiKeys.key }}
{{- if $.Values.secrets.apiKeys.adminKey }}
- name: OURO_ADMIN_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.secrets.apiKeys.adminKey }}
      optional: true
{{- end }}
{{- if $.Values.secrets.apiKeys.metricsKey }}
- name: OURO_METRICS_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.secrets.apiKeys.metricsKey }}
      optional: true
{{- end }}
{{- end }}
{{- end }}

{{/* S3 client environment from an objectStore-shaped map (objectStore, mlflow.artifacts.s3). */}}
{{- define "ouro.s3Env" -}}
{{- with .endpointUrl }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .credentialsSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.secretAccessKeyKey }}
{{- end }}
{{- end }}

{{/* Volumes ----------------------------------------------------------------- */}}

{{- define "ouro.feedbackClaimName" -}}
{{- default (printf "%s-feedback" (include "ouro.fullname" .)) .Values.storage.feedback.existingClaim }}
{{- end }}

{{- define "ouro.cacheClaimName" -}}
{{- default (printf "%s-cache" (include "ouro.fullname" .)) .Values.storage.cache.existingClaim }}
{{- end }}

{{/* The volumes of every Ouro pod; "shmSize" in the argument sizes /dev/shm. */}}
{{- define "ouro.volumes" -}}
- name: cache
  persistentVolumeClaim:
    claimName: {{ include "ouro.cacheClaimName" .root }}
- name: feedback
  persistentVolumeClaim:
    claimName: {{ include "ouro.feedbackClaimName" .root }}
- name: tmp
  emptyDir: {}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shmSize }}
{{- end }}

{{- define "ouro.volumeMounts" -}}
- name: cache
  mountPath: {{ .Values.storage.cache.mountPath }}
- name: feedback
  mountPath: {{ .Values.storage.feedback.mountPath }}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
{{- end }}

{{/* Security and resources -------------------------------------------------- */}}

{{/* Container security context; "readOnly" in the argument overrides readOnlyRootFilesystem. */}}
{{- define "ouro.containerSecurityContext" -}}
{{- $context := deepCopy .root.Values.containerSecurityContext }}
{{- if hasKey . "readOnly" }}
{{- $_ := set $context "readOnlyRootFilesystem" .readOnly }}
{{- end }}
{{- toYaml $context }}
{{- end }}

{{/* CPU/memory resources plus nvidia.com/gpu with limits equal to requests. */}}
{{- define "ouro.gpuResources" -}}
{{- $resources := deepCopy .resources }}
{{- if gt (int .gpus) 0 }}
{{- $requests := default dict $resources.requests }}
{{- $limits := default dict $resources.limits }}
{{- $_ := set $requests "nvidia.com/gpu" (int .gpus) }}
{{- $_ := set $limits "nvidia.com/gpu" (int .gpus) }}
{{- $_ := set $resources "requests" $requests }}
{{- $_ := set $resources "limits" $limits }}
{{- end }}
{{- toYaml $resources }}
{{- end }}
