#!/usr/bin/env bash
# counter.list over 100 001 counters in SQLite: every page of the whole name space, a key that
# may read 10 000 of them paging from the start, one page's latency (200 requests each), and the
# rate meter's cost on a page of idle counters and on one of counters written in the last minute.
# Usage: flock /tmp/bench.lock scripts/list-at-scale.sh [TALLY_BINARY]
#
# Measured 2026-12-03 on the 2-core dev machine, release build:
#   all 100 001 counters with --all --limit 1000: 189 ms (tally list, 101 pages)
#   a key with c:05*=read, --all from the start: 10 000 counters in 23 ms (only its range is read)
#   limit 100, prefix c:07: p50 0.49 ms, p99 0.78 ms; limit 1000: p50 1.57 ms, p99 1.99 ms
#   limit 1000 for the c:05*=read key, no prefix: p50 1.48 ms, p99 1.70 ms; server RSS 17.0 MB
# With the rate meter (opsLastMinute), 2026-12-04, release build, on the same machine under a load
# average of 9 (three other builds), so every figure is slower than the quiet run above:
#   limit 1000, after c:050000 (idle counters, no history read): p50 2.19 ms (3.57 in a second run)
#   limit 1000 of counters written in the last minute, 10 ops each (10 000 history rows read in one
#   read for the page): p50 14.83 ms, p99 130 ms; so about 11 µs a counter written in the minute
set -euo pipefail
cd "$(dirname "$0")/.."
binary="$(realpath "${1:-target/release/tally}")"
dir="$(mktemp -d)"
server=""
cleanup() {
  [ -n "$server" ] && { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }
  rm -rf "$dir"
}
trap cleanup EXIT
start() {
  "$binary" serve --listen 127.0.0.1:0 --database "$dir/t.db" 2>"$dir/log" &
  server=$!
  address=""
  for _ in $(seq 100); do
    address="$(grep -oE 'listening on http://[0-9.]+:[0-9]+' "$dir/log" | head -1 | sed 's|listening on http://||' || true)"
    [ -n "$address" ] && return
    sleep 0.1
  done
  echo "tally serve did not start:"; cat "$dir/log"; exit 1
}
stop() { kill "$server"; wait "$server" 2>/dev/null || true; server=""; : >"$dir/log"; }

# A database with the schema, then 100 000 counters written beside it (as a restore would).
start
curl -sf "http://$address/rpc/counter.increment" -H 'Content-Type: application/json' -d '{"name":"seed"}' >/dev/null
stop
python3 - "$dir/t.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = ((f"c:{i:06d}", i, 1, 1764770000000, 1764770000000) for i in range(100000))
db.executemany("INSERT INTO counters (name, value, version, created_at_ms, updated_at_ms) VALUES (?,?,?,?,?)", rows)
db.commit()
PY
start
key() {
  curl -sf "http://$address/rpc/key.create" -H 'Content-Type: application/json' ${2:+-H "Authorization: Bearer $2"} \
    -d "{\"name\":\"$1\",\"grants\":[\"$3\"]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}
admin="$(key root "" '*=admin')"
reader="$(key reader "$admin" 'c:05*=read')"
export TALLY_URL="http://$address"
for who in admin reader; do
  token="${!who}"
  start_ns=$(date +%s%N)
  count=$(TALLY_TOKEN="$token" "$binary" --json list --all --limit 1000 | wc -l)
  echo "$who, --all --limit 1000: $count counters in $(( ($(date +%s%N) - start_ns) / 1000000 )) ms"
done
python3 - "$address" "$admin" "$reader" <<'PY'
import json, statistics, sys, time, urllib.request
address, admin, reader = sys.argv[1:]
def page(token, body):
    request = urllib.request.Request(f"http://{address}/rpc/counter.list", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json", "authorization": f"Bearer {token}"})
    start = time.perf_counter()
    answer = json.load(urllib.request.urlopen(request))
    return (time.perf_counter() - start) * 1000, answer
for label, token, body in [("admin, limit 100, prefix c:07", admin, {"prefix": "c:07", "limit": 100}),
                           ("admin, limit 1000, after c:050000", admin, {"after": "c:050000", "limit": 1000}),
                           ("reader (c:05*=read), limit 1000", reader, {"limit": 1000})]:
    times = sorted(page(token, body)[0] for _ in range(200))
    counters = len(page(token, body)[1]["counters"])
    print(f"{label}: {counters} counters, p50 {statistics.median(times):.2f} ms, p99 {times[197]:.2f} ms")
PY
# The rate meter (opsLastMinute): the counters above were last written long ago, so a page of
# them reads no history; 1 000 counters written 10 times each in the last minute are read, in
# one read for the page.
python3 - "$address" "$admin" <<'PY'
import json, statistics, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
address, admin = sys.argv[1:]
def call(procedure, body):
    request = urllib.request.Request(f"http://{address}/rpc/counter.{procedure}", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json", "authorization": f"Bearer {admin}"})
    start = time.perf_counter()
    answer = json.load(urllib.request.urlopen(request))
    return (time.perf_counter() - start) * 1000, answer
with ThreadPoolExecutor(8) as pool:
    list(pool.map(lambda i: call("increment", {"name": f"r:{i % 1000:04d}"}), range(10000)))
for label, body in [("idle, limit 1000, after c:050000", {"after": "c:050000", "limit": 1000}),
                    ("written in the last minute, 10 ops each, limit 1000", {"prefix": "r:", "limit": 1000})]:
    times = sorted(call("list", body)[0] for _ in range(200))
    counters = call("list", body)[1]["counters"]
    ops = sum(counter["opsLastMinute"] for counter in counters)
    print(f"{label}: {len(counters)} counters, {ops} ops, p50 {statistics.median(times):.2f} ms, p99 {times[197]:.2f} ms")
PY
echo "server $(grep VmRSS "/proc/$server/status")"
