#!/bin/sh
# Serve HTTP on $PORT: `nc -ll -e` accepts each connection in a forked child and runs the CGI-style handler
# with the socket on stdin/stdout (busybox httpd cannot send a path such as /health to a CGI script).
set -eu
case "$PORT" in
    '' | *[!0-9]*) echo "sample-service: PORT must be a number, got '$PORT'" >&2; exit 2 ;;
esac
# The handler works in whole percents (shell arithmetic has no fractions).
ERROR_PERCENT=$(awk -v rate="${ERROR_RATE:-0}" 'BEGIN { p = int(rate * 100 + 0.5); if (p < 0) p = 0; if (p > 100) p = 100; print p }')
export ERROR_PERCENT
echo "sample-service version=${VERSION} port=${PORT} error_percent=${ERROR_PERCENT} health_fail=${HEALTH_FAIL:-0}" >&2
nc -ll -p "$PORT" -e /app/handler.cgi &
server=$!
# As PID 1 the shell only gets the signals it traps: stop at once on `docker stop` instead of after its timeout.
trap 'kill "$server" 2>/dev/null; exit 0' TERM INT
wait "$server"
