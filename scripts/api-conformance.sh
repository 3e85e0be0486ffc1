#!/usr/bin/env bash
# Runs schemathesis against a live `tally serve`, driven by the server's own /openapi.json:
# generated requests, valid and invalid, to every operation; it fails on any 5xx, any status or
# content type the description does not list, any answer that does not match its schema, and
# any invalid request that is accepted. Usage: scripts/api-conformance.sh [TALLY_BINARY] [EXAMPLES]
#
# The run is authenticated as an admin, so that every operation is reachable: the server starts
# open, one admin API key is created (which turns auth on for good), and schemathesis sends it
# as its bearer token. The key RPCs are in the description like every other procedure.
#
# One check is left out: positive_data_acceptance expects every schema-valid request to succeed,
# but an increment within the allowed amount can still take the value out of range (422), which
# depends on the counter's state, not on the request's shape.
set -euo pipefail
cd "$(dirname "$0")/.."
binary="${1:-target/debug/tally}"
examples="${2:-100}"
version="4.32.5"

if ! command -v schemathesis >/dev/null || ! schemathesis --version | grep -q "$version"; then
  python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$version"
fi

dir="$(mktemp -d)"
log="$dir/server.log"
"$binary" serve --listen 127.0.0.1:0 --database "$dir/tally.db" 2>"$log" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$dir"' EXIT
address=""
for _ in $(seq 100); do
  address="$(grep -oE 'listening on http://[0-9.]+:[0-9]+' "$log" | head -1 | sed 's|listening on http://||' || true)"
  [ -n "$address" ] && break
  sleep 0.1
done
[ -n "$address" ] || { echo "tally serve did not start:"; cat "$log"; exit 1; }

key="$(python3 - "$address" <<'PY'
import json, sys, urllib.request
request = urllib.request.Request(
    f"http://{sys.argv[1]}/rpc/key.create",
    data=json.dumps({"name": "conformance", "grants": ["*=admin"]}).encode(),
    headers={"content-type": "application/json"},
)
print(json.load(urllib.request.urlopen(request))["key"])
PY
)"

(cd "$dir" && schemathesis run "http://$address/openapi.json" \
  --header "Authorization: Bearer $key" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,negative_data_rejection \
  --max-examples "$examples" --no-color)
