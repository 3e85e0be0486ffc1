#!/usr/bin/env bash
# What PostgreSQL's NOTIFY costs at commit, shaped like Tally's group commit (docs/BENCHMARKS.md,
# "NOTIFY at commit", has the figures and what they mean). Every configuration runs REPS times,
# interleaved (a, b, c, … then a, b, c, … again), so that a noisy minute hits all of them alike;
# the summary gives medians and, for each configuration with a notification, its ratio to the
# same one without in the same round. Three ways to notify: none (commit.sql), in the write's
# transaction as Tally does (commit_notify.sql), and after it in a transaction of its own with
# synchronous_commit off (commit_then_notify.sql, the fallback).
#
#   flock /tmp/bench.lock crates/tally-bench/pgbench/run.sh
#
# Environment: PGHOST (127.0.0.1), PGPORT (5432), PGUSER (postgres), RUN_SECONDS (10 per run),
# REPS (3), CLIENTS (8, the concurrent committers of the main configurations), SWEEP ("1 2 16",
# other client counts for the spread counters, with and without notify; empty to skip),
# POLL (1 to measure a history poller beside the writers, 0 to skip: three pollers, as for
# three nodes, each every 10 or 50 ms, on a history preloaded with 200 000 rows and an index on
# at_ms; then one poll of a quiet database).
# It makes its own database (tally_notify_bench), and drops it and stops its listener on exit,
# whatever way it exits.
set -euo pipefail

export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
RUN_SECONDS="${RUN_SECONDS:-10}"
REPS="${REPS:-3}"
CLIENTS="${CLIENTS:-8}"
SWEEP="${SWEEP-1 2 16}"
POLL="${POLL:-1}"
DB=tally_notify_bench
HERE="$(cd "$(dirname "$0")" && pwd)"

for tool in pgbench psql createdb dropdb; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool not found (Debian: apt-get install postgresql-client)" >&2; exit 1; }
done
case "$RUN_SECONDS$REPS$CLIENTS" in
    *[!0-9]*) echo "run.sh: RUN_SECONDS, REPS and CLIENTS must be whole numbers" >&2; exit 1 ;;
esac

WORK="$(mktemp -d)"
RESULTS="$WORK/results.tsv"
listener_pid=""
feeder_pid=""
poll_pid=""
created=0

stop_listener() {
    if [ -n "$feeder_pid" ]; then
        kill "$feeder_pid" 2>/dev/null || true
        wait "$feeder_pid" 2>/dev/null || true
        feeder_pid=""
    fi
    if [ -n "$listener_pid" ]; then
        # Closing the fifo's write end is psql's end of input: it exits on its own.
        exec 3>&- || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$listener_pid" 2>/dev/null || break
            sleep 0.2
        done
        kill "$listener_pid" 2>/dev/null || true
        wait "$listener_pid" 2>/dev/null || true
        listener_pid=""
    fi
}

cleanup() {
    if [ -n "$poll_pid" ]; then
        kill "$poll_pid" 2>/dev/null || true
        wait "$poll_pid" 2>/dev/null || true
    fi
    stop_listener
    # Only a database this run made: one that was there before may be another run's.
    if [ "$created" = 1 ]; then
        dropdb --if-exists "$DB" || echo "run.sh: could not drop database $DB; drop it by hand" >&2
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A session that LISTENs, as every Tally node's broker does. psql reads its input from a fifo;
# a loop sends it an empty query every 50 ms, after each of which psql reads (and prints) the
# notifications the server pushed meanwhile, so the queue is consumed as a node consumes it.
start_listener() {
    mkfifo "$WORK/listen.fifo"
    psql -X -q -At -d "$DB" <"$WORK/listen.fifo" >"$WORK/listener.out" 2>&1 &
    listener_pid=$!
    exec 3>"$WORK/listen.fifo"
    rm "$WORK/listen.fifo"
    echo "LISTEN tally_changes;" >&3
    (while :; do echo "SELECT 1 WHERE false;"; sleep 0.05; done) >&3 &
    feeder_pid=$!
    # Wait until the LISTEN is in force (its session has run a query after it), so that the
    # first run already has a listener.
    for _ in $(seq 1 50); do
        if [ "$(psql -X -At -d "$DB" -c "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'SELECT 1 WHERE false%'")" != 0 ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "run.sh: the listener did not start" >&2
    exit 1
}

reset_tables() {
    # The same empty tables and a fresh checkpoint before every run, so no run inherits another's
    # bloat, hot-row chains or checkpoint.
    psql -X -q -d "$DB" -c "TRUNCATE history, counters RESTART IDENTITY" -c "CHECKPOINT"
    if [ "$PRELOAD" = 1 ]; then
        # For the poller: a history of 200 000 old rows, analyzed, as a live table would have,
        # so the planner reads the newest rows through the index instead of scanning them all.
        psql -X -q -d "$DB" \
            -c "INSERT INTO counters (name, value, version, created_at_ms, updated_at_ms) VALUES ('old', 200000, 200000, 0, 0)" \
            -c "INSERT INTO history SELECT 1, v, 'increment', 1, v - 1, v, v, NULL FROM generate_series(1, 200000) AS v" \
            -c "ANALYZE counters" -c "ANALYZE history" -c "CHECKPOINT"
    fi
}
PRELOAD=0

# run REP KEY NOTIFY SPREAD GROUP CLIENTS [POLL_MS]: one pgbench run, one line of results.
# NOTIFY: none, in (the write's transaction) or after (a transaction of its own).
run() {
    local rep=$1 key=$2 notify=$3 spread=$4 group=$5 clients=$6 poll_ms=${7:-}
    local script load out poll_out poll_lat="" poll_lag=""
    case "$notify" in
        none) script="$HERE/commit.sql" ;;
        in) script="$HERE/commit_notify.sql" ;;
        after) script="$HERE/commit_then_notify.sql" ;;
    esac
    reset_tables
    load="$(cut -d' ' -f1 /proc/loadavg)"
    out="$WORK/run.out"
    if [ -n "$poll_ms" ]; then
        # Three nodes' pollers, each looking every poll_ms (pgbench -R is the rate of all clients).
        poll_out="$WORK/poll.out"
        pgbench -n -M prepared -f "$HERE/poll.sql" -D interval_ms="$poll_ms" -c 3 -j 1 \
            -R $((3 * 1000 / poll_ms)) -T "$RUN_SECONDS" "$DB" >"$poll_out" 2>&1 &
        poll_pid=$!
    fi
    pgbench -n -M prepared -f "$script" -D spread="$spread" -D group="$group" \
        -c "$clients" -j "$((clients < 2 ? 1 : 2))" -T "$RUN_SECONDS" "$DB" >"$out" 2>&1 || { cat "$out" >&2; exit 1; }
    if [ -n "$poll_pid" ]; then
        wait "$poll_pid" || { cat "$poll_out" >&2; exit 1; }
        poll_pid=""
        # With -R, pgbench counts latency from each poll's scheduled start: less the lag behind
        # that schedule, it is the poll's own time.
        poll_lag="$(awk '/^rate limit schedule lag/ {print $6}' "$poll_out")"
        poll_lat="$(awk -v lag="$poll_lag" '/^latency average/ {printf "%.3f", $4 - lag}' "$poll_out")"
    fi
    local tps lat
    tps="$(awk '/^tps = / {print $3}' "$out")"
    lat="$(awk '/^latency average/ {print $4}' "$out")"
    if [ -z "$tps" ] || [ -z "$lat" ]; then
        echo "run.sh: pgbench printed no tps for $key:" >&2
        cat "$out" >&2
        exit 1
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$key" "$notify" "$tps" "$lat" "$load" "${poll_lat:--}" "${poll_lag:--}" >>"$RESULTS"
    printf '  round %s  %-34s notify %-5s  tps %9.1f  latency %7.3f ms  load %s%s\n' "$rep" "$key" "$notify" "$tps" "$lat" "$load" \
        "${poll_lat:+  poll $poll_lat ms (behind schedule $poll_lag ms)}" >&2
}

if [ -n "$(psql -X -At -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" ]; then
    echo "run.sh: database $DB exists: another run.sh is running (use flock /tmp/bench.lock), or an earlier one was killed (then: dropdb $DB)" >&2
    exit 1
fi
createdb "$DB"
created=1
psql -X -q -d "$DB" -v ON_ERROR_STOP=1 -f "$HERE/schema.sql"
echo "pgbench against $(psql -X -At -d "$DB" -c 'SHOW server_version') on $PGHOST:$PGPORT," \
    "synchronous_commit=$(psql -X -At -d "$DB" -c 'SHOW synchronous_commit')," \
    "$RUN_SECONDS s per run, $REPS rounds; $(nproc) cores; $(uptime)" >&2

received=0
for rep in $(seq 1 "$REPS"); do
    for listening in 0 1; do
        if [ "$listening" = 1 ]; then start_listener; fi
        for notify in none in after; do run "$rep" "spread c$CLIENTS L$listening" "$notify" 1 1 "$CLIENTS"; done
        for notify in none in after; do run "$rep" "hot c$CLIENTS L$listening" "$notify" 0 1 "$CLIENTS"; done
        for notify in none in after; do run "$rep" "spread x10/tx c$CLIENTS L$listening" "$notify" 1 10 "$CLIENTS"; done
        if [ "$listening" = 1 ]; then
            for clients in $SWEEP; do
                for notify in none in; do run "$rep" "spread c$clients L1" "$notify" 1 1 "$clients"; done
            done
            usage="$(psql -X -At -d "$DB" -c 'SELECT pg_notification_queue_usage()')"
            stop_listener
            got="$(grep -c '^Asynchronous notification "tally_changes"' "$WORK/listener.out" || true)"
            received=$((received + got))
            echo "  round $rep: the listener received $got notifications; queue usage at the end $usage" >&2
        fi
    done
done

if [ "$POLL" = 1 ]; then
    # A poller needs an index to find what is new; Tally's history has none on time, so the
    # poller's configurations have one, and so does their own baseline.
    psql -X -q -d "$DB" -c "CREATE INDEX history_at_ms ON history (at_ms)"
    PRELOAD=1
    for rep in $(seq 1 "$REPS"); do
        run "$rep" "spread c$CLIENTS +index" none 1 1 "$CLIENTS"
        run "$rep" "spread c$CLIENTS +index +3 pollers/10ms" none 1 1 "$CLIENTS" 10
        run "$rep" "spread c$CLIENTS +index +3 pollers/50ms" none 1 1 "$CLIENTS" 50
    done
    # One poll with nothing else running: what a poller costs a quiet cluster, per look.
    reset_tables
    idle_poll="$(pgbench -n -M prepared -f "$HERE/poll.sql" -D interval_ms=10 -c 1 -j 1 -T 5 "$DB" 2>&1 | awk '/^latency average/ {print $4}')"
fi

echo "the listener received $received notifications in all" >&2
echo
echo "medians of $REPS rounds, $RUN_SECONDS s each (L1: a session LISTENing; x10/tx: 10 counters per transaction)"
awk -F'\t' '
function median(list,    n, v, i, j, t) {
    n = split(list, v, " ")
    for (i = 2; i <= n; i++) { t = v[i] + 0; for (j = i - 1; j >= 1 && v[j] + 0 > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
{
    id = $2 SUBSEP $3
    if (!(id in tps)) { order[++count] = id }
    tps[id] = tps[id] " " $4; lat[id] = lat[id] " " $5; load[id] = load[id] " " $6
    if ($7 != "-") { poll[id] = poll[id] " " $7; lag[id] = lag[id] " " $8 }
    value[$1, $2, $3] = $4
    if (!(($2, $3, $1) in seen)) { seen[$2, $3, $1] = 1; rounds[id] = rounds[id] " " $1 }
}
END {
    printf "| %-34s | %-6s | %9s | %10s | %-26s | %8s | %s |\n", "configuration", "notify", "tps", "latency ms", "tps / without (each round)", "load avg", "poll ms (behind schedule)"
    printf "|%s|%s|%s|%s|%s|%s|%s|\n", "------------------------------------", "--------", "----------:", "-----------:", "----------------------------", "---------:", "---"
    for (k = 1; k <= count; k++) {
        split(order[k], parts, SUBSEP); key = parts[1]; notify = parts[2]
        ratio = "—"
        if (notify != "none") {
            ratios = ""; shown = ""
            n = split(rounds[order[k]], reps, " ")
            for (r = 1; r <= n; r++) {
                if (((reps[r], key, "none") in value) && value[reps[r], key, "none"] > 0) {
                    x = value[reps[r], key, notify] / value[reps[r], key, "none"]
                    ratios = ratios " " x; shown = shown (shown == "" ? "" : " / ") sprintf("%.2f", x)
                }
            }
            if (ratios != "") ratio = sprintf("%.2f (%s)", median(ratios), shown)
        }
        printf "| %-34s | %-6s | %9.0f | %10.2f | %-26s | %8.1f | %s |\n", key, notify, median(tps[order[k]]), median(lat[order[k]]), ratio, median(load[order[k]]), (order[k] in poll) ? sprintf("%.2f (%.2f)", median(poll[order[k]]), median(lag[order[k]])) : "—"
    }
}' "$RESULTS"
if [ -n "${idle_poll:-}" ]; then
    echo
    echo "one poll of a quiet database (200 000 history rows, the index on at_ms), back to back from one client: $idle_poll ms a poll, round trip included"
fi
