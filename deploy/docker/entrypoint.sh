#!/bin/sh
# The image's entrypoint: runs otlp-gateway as PID 1 (exec: it gets SIGTERM and SIGHUP itself).
#   no arguments, or only options (--check-config, --config FILE, ...): otlp-gateway with them, plus
#     --config /etc/otlp-gateway/gateway.yaml when that file exists and neither --config/-c nor
#     $OTLP_GATEWAY_CONFIG names another one; without a file, the gateway's embedded defaults with backends
#     from $OTLP_GATEWAY_BACKENDS (comma-separated URLs).
#   anything else (e.g. bash): run as is.
set -eu
CONFIG=/etc/otlp-gateway/gateway.yaml

case "${1:-}" in
  "" | -*) ;;
  *) exec "$@" ;;
esac

named=
for a in "$@"; do
  case "$a" in
    -c | --config | --config=* | -c?*) named=1 ;;
  esac
done
if [ -z "$named" ] && [ -z "${OTLP_GATEWAY_CONFIG:-}" ] && [ -f "$CONFIG" ]; then
  set -- --config "$CONFIG" "$@"
fi
exec /usr/bin/otlp-gateway "$@"
