{{- define "gateway.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gateway.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
app.kubernetes.io/name: {{ include "gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gateway.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Settings every gateway container gets: the config file, secrets as env, the key file. */}}
{{- define "gateway.env" -}}
- name: GATEWAY_CONFIG
  value: /etc/gateway/gateway.toml
# Standbys on a shared claim send new shapes to the streaming pod at its own address.
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: GATEWAY_ADVERTISE_URL
  value: "http://$(POD_IP):{{ .Values.service.port }}"
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret: name a Secret holding the PostgreSQL URL" .Values.database.existingSecret }}
      key: {{ .Values.database.urlKey }}
{{- if and .Values.jwt.existingSecret .Values.jwt.secretKey }}
- name: GATEWAY_JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.jwt.existingSecret }}
      key: {{ .Values.jwt.secretKey }}
{{- end }}
{{- if and .Values.jwt.existingSecret .Values.jwt.publicKeyKey }}
- name: GATEWAY_JWT_PUBLIC_KEY
  value: /etc/gateway-jwt/public-key.pem
{{- end }}
{{- end -}}

{{- define "gateway.configVolumes" -}}
- name: config
  configMap:
    name: {{ include "gateway.fullname" . }}
{{- if and .Values.jwt.existingSecret .Values.jwt.publicKeyKey }}
- name: jwt
  secret:
    secretName: {{ .Values.jwt.existingSecret }}
    items:
      - key: {{ .Values.jwt.publicKeyKey }}
        path: public-key.pem
{{- end }}
{{- end -}}

{{- define "gateway.configMounts" -}}
- name: config
  mountPath: /etc/gateway
  readOnly: true
{{- if and .Values.jwt.existingSecret .Values.jwt.publicKeyKey }}
- name: jwt
  mountPath: /etc/gateway-jwt
  readOnly: true
{{- end }}
{{- end -}}
