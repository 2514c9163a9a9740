{{/*
Shared snippets. Object names are fixed (simmesh-controller, simmesh-proxy, simmesh-settings):
the proxies reach the controller by its Service name and the controller's shadow Services
select the proxies by app.kubernetes.io/name=simmesh-proxy, so one mesh per cluster.
*/}}

{{- define "simmesh.chart" -}}
{{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{/* Labels of every object; the component's name comes in as .name. */}}
{{- define "simmesh.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: simmesh
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "simmesh.chart" .root }}
{{- end -}}

{{/* Immutable selector labels (a Deployment's or DaemonSet's selector cannot change). */}}
{{- define "simmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "simmesh.image" -}}
{{ .image.repository }}:{{ .image.tag | default .root.Chart.AppVersion }}
{{- end -}}

{{- define "simmesh.controllerURL" -}}
http://simmesh-controller.{{ .Release.Namespace }}.svc.{{ trimAll "." .Values.clusterDomain }}:9000
{{- end -}}

{{/* Refuse port ranges that collide: HTTP and TCP listeners share the TCP port space, and
the proxy's admin port is 9901, and with mTLS its tunnel port (TCP) is neither. TCP and UDP
ranges may overlap (different protocols). The capture listeners (TCP) overlap neither HTTP nor
TCP listeners. */}}
{{- define "simmesh.checkPorts" -}}
{{- $http := .Values.ports.http -}}
{{- $tcp := .Values.ports.tcp -}}
{{- $udp := .Values.ports.udp -}}
{{- $capture := .Values.ports.capture | default (dict "start" 12000 "size" 1000) -}}
{{- $captureEnd := add $capture.start $capture.size | int -}}
{{- if gt $captureEnd 65536 -}}
{{- fail (printf "ports.capture: %v + %v ports go past 65535" $capture.start $capture.size) -}}
{{- end -}}
{{- range $name, $r := dict "http" $http "tcp" $tcp -}}
{{- if and (lt (int $capture.start) (add $r.start $r.size | int)) (lt (int $r.start) $captureEnd) -}}
{{- fail (printf "ports.capture [%v, %v) overlaps ports.%s [%v, %v)" $capture.start $captureEnd $name $r.start (add $r.start $r.size)) -}}
{{- end -}}
{{- end -}}
{{- $httpEnd := add $http.start $http.size | int -}}
{{- $tcpEnd := add $tcp.start $tcp.size | int -}}
{{- $udpEnd := add $udp.start $udp.size | int -}}
{{- range $name, $r := dict "http" $http "tcp" $tcp "udp" $udp -}}
{{- if gt (add $r.start $r.size | int) 65536 -}}
{{- fail (printf "ports.%s: %v + %v ports go past 65535" $name $r.start $r.size) -}}
{{- end -}}
{{- end -}}
{{- if and (lt (int $http.start) $tcpEnd) (lt (int $tcp.start) $httpEnd) -}}
{{- fail (printf "ports.http [%v, %v) overlaps ports.tcp [%v, %v)" $http.start $httpEnd $tcp.start $tcpEnd) -}}
{{- end -}}
{{- range $name, $r := dict "http" $http "tcp" $tcp "capture" $capture -}}
{{- if and (le (int $r.start) 9901) (gt (add $r.start $r.size | int) 9901) -}}
{{- fail (printf "ports.%s contains 9901, the proxy's admin port" $name) -}}
{{- end -}}
{{- end -}}
{{- if ne (include "simmesh.mtls" .) "off" -}}
{{- $tunnel := .Values.proxy.tunnelPort | default 15008 | int -}}
{{- if eq $tunnel 9901 -}}
{{- fail "proxy.tunnelPort 9901 is the proxy's admin port" -}}
{{- end -}}
{{- range $name, $r := dict "http" $http "tcp" $tcp "capture" $capture -}}
{{- if and (le (int $r.start) $tunnel) (gt (add $r.start $r.size | int) $tunnel) -}}
{{- fail (printf "proxy.tunnelPort %d is in ports.%s [%v, %v)" $tunnel $name $r.start (add $r.start $r.size)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The mTLS mode as a string: off, permissive or strict (a bare YAML off is false). */}}
{{- define "simmesh.mtls" -}}
{{- $mode := .Values.mtls | toString -}}
{{- if or (eq $mode "false") (eq $mode "") -}}off{{- else -}}{{ $mode }}{{- end -}}
{{- end -}}

{{/* mesh.yaml: the keys mesh.core.parse.parse_settings accepts, nothing else. */}}
{{- define "simmesh.settings" -}}
zone: {{ trimAll "." .Values.zone | quote }}
clusterDomain: {{ trimAll "." .Values.clusterDomain | quote }}
meshNamespace: {{ .Release.Namespace | quote }}
defaultTrafficType: {{ .Values.defaultTrafficType | quote }}
acl: {{ .Values.acl }}
watchNamespaces: {{ .Values.watchNamespaces | default list | toJson }}
ignoreNamespaces: {{ .Values.ignoreNamespaces | default list | toJson }}
accessAdminNamespaces: {{ .Values.accessAdminNamespaces | default list | toJson }}
httpPorts:
  start: {{ .Values.ports.http.start | int }}
  size: {{ .Values.ports.http.size | int }}
tcpPorts:
  start: {{ .Values.ports.tcp.start | int }}
  size: {{ .Values.ports.tcp.size | int }}
udpPorts:
  start: {{ .Values.ports.udp.start | int }}
  size: {{ .Values.ports.udp.size | int }}
capture: {{ .Values.gatewayAPI.capture.enabled | default false }}
capturePorts:
  start: {{ (.Values.ports.capture | default dict).start | default 12000 | int }}
  size: {{ (.Values.ports.capture | default dict).size | default 1000 | int }}
mtls: {{ include "simmesh.mtls" . | quote }}
trustDomain: {{ .Values.trustDomain | default "cluster.local" | quote }}
{{- end -}}

{{- define "simmesh.prometheusAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end -}}

{{- define "simmesh.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "simmesh.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* A DNS name as a regular expression, escaped as Python's re.escape does (mesh/dns). */}}
{{- define "simmesh.regexEscape" -}}
{{ . | replace "-" "\\-" | replace "." "\\." }}
{{- end -}}
