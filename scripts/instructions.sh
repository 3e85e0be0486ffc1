#!/usr/bin/env bash
# Instructions per request of a `tally` binary, counted by valgrind's callgrind:
# unlike requests a second, the count does not move with the machine's noise, so two builds can
# be compared on a busy machine. The server runs under callgrind; after a warm-up its counters
# are zeroed (callgrind_control -z), N requests are made, and the counters are dumped: what the
# server did for those requests alone, start-up and warm-up left out. docs/BENCHMARKS.md.
#
#   scripts/instructions.sh TALLY_BINARY [REQUESTS]     (default 3200: 32 keep-alive clients)
#   KEEP=DIR scripts/instructions.sh ...                 (keeps the profiles for callgrind_annotate)
#
# Prints one line per scenario: hot increment, spread increment (10 000 counters), GET /healthz.
set -euo pipefail
tally=${1:?usage: scripts/instructions.sh TALLY_BINARY [REQUESTS]}
requests=${2:-3200}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }
dir=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT

port=$((20000 + RANDOM % 20000))
valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
  "$tally" serve --database "$dir/tally.db" --listen "127.0.0.1:$port" --idle-timeout 3600s \
  >"$dir/server.log" 2>&1 &
server=$!
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done

# N requests from 32 keep-alive connections; the scenario's request by number.
load() {
  python3 - "$port" "$1" "$2" <<'EOF'
import http.client, json, sys, threading
port, scenario, total = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
clients = 32
def run(client):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(client, total, clients):
        if scenario == "healthz":
            conn.request("GET", "/healthz")
        else:
            name = "hot" if scenario == "hot" else f"spread-{(i * 7919) % 10000}"
            body = json.dumps({"name": name})
            conn.request("POST", "/rpc/counter.increment", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
EOF
}

measure() {
  local scenario=$1
  load "$scenario" 640          # warm-up: connections, actors, caches
  [ "$scenario" = spread ] && load spread 10000   # every spread counter loaded once
  callgrind_control -z "$server" >/dev/null
  load "$scenario" "$requests"
  rm -f "$dir"/callgrind.out.*
  callgrind_control -d "$scenario" "$server" >/dev/null
  sleep 1
  local total
  total=$(cat "$dir"/callgrind.out.* | awk '/^summary:/ {print $2}' | head -1)
  # KEEP=DIR keeps each scenario's profile, for callgrind_annotate.
  [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$dir"/callgrind.out.* "$KEEP/$scenario.callgrind"
  awk -v t="$total" -v n="$requests" -v s="$scenario" \
    'BEGIN { printf "%-8s %8.1fk instructions per request (%d requests)\n", s, t / n / 1000, n }'
}

measure hot
measure spread
measure healthz
