{{/* The chart's name, or nameOverride. */}}
{{- define "tollway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's objects: fullnameOverride, else the release name (with the chart's name
unless the release name holds it already). */}}
{{- define "tollway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "tollway.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "tollway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* What selects the operator's pods. */}}
{{- define "tollway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Every object's labels. Call with (dict "context" $ "component" "operator"). */}}
{{- define "tollway.labels" -}}
helm.sh/chart: {{ include "tollway.chart" .context }}
{{ include "tollway.selectorLabels" .context }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels as the operator's flags take them: KEY=VALUE,KEY=VALUE (sorted). Call with a map. */}}
{{- define "tollway.labelList" -}}
{{- $pairs := list }}
{{- range $key, $value := . }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{- define "tollway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tollway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tollway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* "true" when the replicas run with kopf peering (more than one), else empty. */}}
{{- define "tollway.peering" -}}
{{- if gt (int .Values.replicas) 1 }}true{{ end }}
{{- end }}

{{- define "tollway.peeringName" -}}
{{- default (include "tollway.fullname" .) .Values.peering.name }}
{{- end }}

{{/*
The rules the operator needs in each namespace it watches (all of them when cluster-wide). Each is used:
- tollway.dev resources: read and watched (kopf watch, reconcile, resync); status written by server-side
  apply on the status subresource (patch). kopf writes nothing else on them: event handlers only, no
  finalizers, no handler state.
- the children it renders (Triton and gateway Deployments, Services, ConfigMaps, ServiceAccounts, PDBs,
  NetworkPolicies, the Secrets of Envoy's config, Redis's password and Triton's admin key): read before
  each apply (get),
  watched by kopf so an edited or deleted child is restored (list, watch), server-side applied (patch; create too, since an apply that creates an object is
  also authorised as a create) and pruned when no longer rendered (delete, after a list by label).
- Secrets: also the API keys that tiers select (list, watch), by labels their owners choose; the labels
  and annotations of a key it suspends (patch, only where a tier sets suspendOnCompromise).
- Pods: listed for the Degraded reasons (image pulls, scheduling) and watched so they show at once, and
  for the ready Triton pods whose queue the burst floor reads.
- Deployments' scale: read and raised by the burst floor when a burst outruns the autoscaler's sync (never
  lowered: every other change of the count is the autoscaler's).
- HPAs, KEDA ScaledObjects, ServiceMonitors, PrometheusRules and AlertmanagerConfigs (the consumers'
  notice routes): applied and pruned, never watched (a
  resync restores an edited one). NetworkPolicies are watched: a deleted one would open the network.
  Pruning lists every such kind the cluster serves, so they are granted whichever engine the models use.
- Events: Tollway's condition changes (events.k8s.io). Not core events: kopf posts none for event handlers.
*/}}
{{- define "tollway.namespacedRules" -}}
- apiGroups: [tollway.dev]
  resources: [modeldeployments, apitiers]
  verbs: [get, list, watch]
- apiGroups: [tollway.dev]
  resources: [modeldeployments/status, apitiers/status]
  verbs: [patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments/scale]
  verbs: [get, update]
- apiGroups: [""]
  resources: [services, configmaps, serviceaccounts, secrets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, list, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors, prometheusrules, alertmanagerconfigs]
  verbs: [get, list, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* kopf's keep-alives in its peering object: it lists and watches the kind (for its peers) and patches
only its own object. Call with the context and the kind's plural. */}}
{{- define "tollway.peeringRules" -}}
- apiGroups: [kopf.dev]
  resources: [{{ .plural }}]
  verbs: [list, watch]
- apiGroups: [kopf.dev]
  resources: [{{ .plural }}]
  resourceNames: [{{ include "tollway.peeringName" .context }}]
  verbs: [patch]
{{- end }}

{{/* Cluster-scoped rules, in either scope: kopf watches CRDs to notice the resources it serves (and new
ones) coming and going. */}}
{{- define "tollway.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}

{{/* A ClusterRoleBinding or RoleBinding of the operator's ServiceAccount to the role of the same name.
Call with (dict "context" $ "kind" "ClusterRole"|"Role" "namespace" NAMESPACE-for-a-Role). */}}
{{- define "tollway.binding" -}}
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ .kind }}Binding
metadata:
  name: {{ include "tollway.fullname" .context }}
  {{- with .namespace }}
  namespace: {{ . }}
  {{- end }}
  labels:
    {{- include "tollway.labels" (dict "context" .context "component" "operator") | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: {{ .kind }}
  name: {{ include "tollway.fullname" .context }}
subjects:
  - kind: ServiceAccount
    name: {{ include "tollway.serviceAccountName" .context }}
    namespace: {{ .context.Release.Namespace }}
{{- end }}
