#!/bin/bash
# otlp-gateway-probe [PATH]: GET PATH (default /healthz; /readyz for readiness) from the gateway's telemetry
# listener and exit 0 on a 200, 1 on anything else (refused, a 503, no answer within 2 s). The image has no
# curl: this is bash's /dev/tcp. The listener: $OTLP_GATEWAY_PROBE_ADDR (HOST:PORT), default 127.0.0.1:8888
# (telemetry.listen's default port).
set -u
path=${1:-/healthz}
addr=${OTLP_GATEWAY_PROBE_ADDR:-127.0.0.1:8888}
host=${addr%:*}
port=${addr##*:}
exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$addr" >&3 || exit 1
IFS= read -r -t 2 status <&3 || exit 1
case "$status" in
  "HTTP/1.1 200 "* | "HTTP/1.0 200 "*) exit 0 ;;
esac
echo "otlp-gateway-probe: $path: ${status%$'\r'}" >&2
exit 1
