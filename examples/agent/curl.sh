#!/usr/bin/env bash
# The cachecast agent's HTTP API with curl: publish keys, a prefix, a
# clear-all, a custom event and a batch; watch the events (SSE); status
# and metrics.
#
#   cachecast agent &                # listens on 127.0.0.1:7468 by default
#   examples/agent/curl.sh           # or: AGENT=http://127.0.0.1:7468 ...
#
# With a token (required when the agent listens beyond loopback), set
# CACHECAST_HTTP_TOKEN: every request then carries it.
set -euo pipefail

AGENT=${AGENT:-http://127.0.0.1:7468}
auth=()
if [ -n "${CACHECAST_HTTP_TOKEN:-}" ]; then
  auth=(-H "Authorization: Bearer $CACHECAST_HTTP_TOKEN")
fi

# POST one JSON body to /v1/invalidate; prints the status and the answer:
# 202 {"stream","first_seq","last_seq","events"}, or {"error": "..."}.
publish() {
  echo "POST $1"
  curl -sS "${auth[@]}" -X POST "$AGENT/v1/invalidate" \
    -H 'Content-Type: application/json' -d "$1" \
    -w '  -> HTTP %{http_code}\n'
}

# Watch the event stream for a few seconds in the background. Each event:
#   event: invalidate            (prefix, clear, custom, reset, shutdown)
#   id: <agent epoch>:<n>        (send it back as Last-Event-ID to resume)
#   data: {"id":...,"type":"invalidate","keys":[...],"stream":...,"seq":...,"node":...}
# A `reset` means: something may have been missed, clear the whole cache.
echo "== GET /v1/events (SSE) for 3 s"
curl -sS -N "${auth[@]}" --max-time 3 "$AGENT/v1/events" &
watcher=$!
# The watcher starts at the events published after it connected.
for _ in $(seq 1 50); do
  clients=$(curl -sS "${auth[@]}" "$AGENT/v1/status" | grep -o '"sse_clients":[0-9]*' | cut -d: -f2)
  [ "${clients:-0}" -gt 0 ] && break
  sleep 0.1
done

echo "== publish"
publish '{"keys": ["user:42", "user:43"]}'
publish '{"prefix": "page:/shop/"}'
publish '{"all": true}'
publish "{\"topic\": \"deploy\", \"payload\": \"$(printf 'v2' | base64)\"}"
publish '{"events": [{"keys": ["cart:7"]}, {"prefix": "price:"}]}'
# A bad request: 400 and an error naming the problem.
publish '{"keys": []}' || true

wait "$watcher" || true # curl ends with 28 (time-out) by design

echo
echo "== resume: the events after the first of the agent's current run"
epoch=$(curl -sS "${auth[@]}" "$AGENT/v1/status" | grep -o '"epoch":"[0-9a-f]*"' | cut -d'"' -f4)
curl -sS -N "${auth[@]}" --max-time 1 -H "Last-Event-ID: $epoch:1" "$AGENT/v1/events" || true
echo "== only events touching keys under user: or cart: (?prefix=)"
curl -sS -N "${auth[@]}" --max-time 1 "$AGENT/v1/events?prefix=user:,cart:&last_event_id=$epoch:0" || true

echo
echo "== GET /v1/status"
curl -sS "${auth[@]}" "$AGENT/v1/status"
echo
echo "== GET /metrics (the cachecast_http_* and cachecast_sse_* lines)"
curl -sS "${auth[@]}" "$AGENT/metrics" | grep -E '^cachecast_(http|sse)' || true
echo "== GET /livez, /readyz"
curl -sS "${auth[@]}" "$AGENT/livez"
curl -sS "${auth[@]}" "$AGENT/readyz"
