#!/bin/bash
# Runs one of issue 16's probes against a fresh `tally serve` (docs/RELIABILITY.md, "Bounded
# resources"), under the benchmark lock, and stops the server after.
#   scripts/probes/run.sh unknown-reads BINARY PORT            60 000 getValue of unknown names
#   scripts/probes/run.sh replays BINARY PORT COUNT ADDRESSES  COUNT since=0 resumes that never read
# Extra arguments after those go to `tally serve`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
probe=$1; bin=$2; port=$3; shift 3
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

if [ "$probe" = replays ]; then count=$1; addresses=$2; shift 2; fi
"$bin" serve --database "$dir/t.db" --listen "127.0.0.1:$port" "$@" >"$dir/log" 2>&1 &
pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
sleep 1
case $probe in
    unknown-reads) python3 "$here/unknown-reads.py" "$pid" "$port" 60000 || true ;;
    replays) python3 "$here/replays.py" "$port" "$count" "$addresses" || true ;;
esac
kill "$pid"; wait "$pid" 2>/dev/null || true
