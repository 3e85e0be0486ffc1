#!/bin/bash
# Export and import timing (docs/EXPORT.md, "How long it takes"): a generated export of 10 000 counters
# with 100 history entries each (1 000 000 entries), imported into a new SQLite file, exported from it,
# imported into a fresh PostgreSQL database (the machine's, as scripts/ensure-postgres.sh starts it),
# exported from that, and the two exports' counter lines compared (they must be the same).
# Run from anywhere after `cargo build --release -p tally-cli`; works in /tmp/ex; run it under
# `flock /tmp/bench.lock`.
set -eu
T="$(cd "$(dirname "$0")/.." && pwd)/target/release/tally"
PG=postgres://postgres@127.0.0.1:5432
DB=tally_export_timing
COUNTERS=${COUNTERS:-10000}
ENTRIES=${ENTRIES:-100}
mkdir -p /tmp/ex && cd /tmp/ex && rm -f gen.jsonl back*.jsonl from-pg.jsonl t.db*
python3 - "$COUNTERS" "$ENTRIES" > gen.jsonl <<'PY'
import json, sys
counters, entries = int(sys.argv[1]), int(sys.argv[2])
print(json.dumps({"format": "tally-export", "version": 1, "sourceEpoch": "0123456789abcdef",
                  "exportedAt": "2026-12-03T12:00:00.000Z", "counters": counters}, separators=(",", ":")))
for c in range(counters):
    value, history = 0, []
    for v in range(1, entries + 1):
        at = "2026-12-03T12:%02d:%02d.%03dZ" % (v // 60 % 60, v % 60, c % 1000)
        history.append({"version": v, "type": "increment", "amount": 1 + v % 5, "previousValue": value,
                        "value": value + 1 + v % 5, "at": at, "by": "anonymous"})
        value += 1 + v % 5
    print(json.dumps({"name": "bench:%d" % c, "value": value, "version": entries,
                      "createdAt": history[0]["at"], "updatedAt": history[-1]["at"], "history": history},
                     separators=(",", ":")))
PY
ls -la gen.jsonl
timed() { local s e; s=$(date +%s.%N); "$@"; e=$(date +%s.%N); echo "  took $(echo "$e - $s" | bc) s" >&2; }
echo "import into SQLite:" >&2; timed "$T" import gen.jsonl --database t.db
echo "export from SQLite:" >&2; timed "$T" export back.jsonl --database t.db
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
echo "import into PostgreSQL:" >&2; timed "$T" import back.jsonl --database "$PG/$DB"
echo "export from PostgreSQL:" >&2; timed "$T" export from-pg.jsonl --database "$PG/$DB"
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE $DB WITH (FORCE)"
cmp <(tail -n +2 back.jsonl) <(tail -n +2 from-pg.jsonl) && echo "the two exports' counter lines are the same"
ls -la t.db back.jsonl from-pg.jsonl
