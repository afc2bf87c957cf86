#!/bin/sh
# One HTTP request per connection: /health -> 200 (503 when HEALTH_FAIL=1); anything else -> 200 with the
# version, or 500 for ERROR_PERCENT percent of the requests. Logs one line per request to stderr.
CR=$(printf '\r')

respond() {
    body="$2"
    printf 'HTTP/1.0 %s\r\nContent-Type: text/plain\r\nContent-Length: %s\r\nX-Version: %s\r\nConnection: close\r\n\r\n%s' \
        "$1" "${#body}" "$VERSION" "$body"
    echo "sample-service ${VERSION}: ${method:-?} ${path:-?} -> ${1%% *}" >&2
}

# A client that sends nothing must not keep a process forever.
read -r -t 5 method target protocol || exit 0
while read -r -t 5 header; do
    case "$header" in '' | "$CR") break ;; esac
done
path="${target%%\?*}"

if [ "$path" = "/health" ]; then
    if [ "${HEALTH_FAIL:-0}" = "1" ]; then
        respond "503 Service Unavailable" "unhealthy ${VERSION}
"
    else
        respond "200 OK" "healthy ${VERSION}
"
    fi
elif [ "$((RANDOM % 100))" -lt "${ERROR_PERCENT:-0}" ]; then
    respond "500 Internal Server Error" "error ${VERSION}
"
else
    respond "200 OK" "version ${VERSION}
"
fi
