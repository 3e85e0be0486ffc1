#!/bin/bash
# Backup under load (docs/RELIABILITY.md, Backups): a release server, 5 s of the spread scenario to give it
# 10 000 counters, then 20 s of the hot scenario (32 clients) with `tally backup` run three times during it.
# Run from anywhere after `cargo build --release -p tally-cli -p tally-bench`; works in /tmp/bk.
set -u
T="$(cd "$(dirname "$0")/.." && pwd)/target/release"
mkdir -p /tmp/bk && cd /tmp/bk && rm -f tally.db* backup*.db
$T/tally serve --listen 127.0.0.1:18555 --database /tmp/bk/tally.db 2> /tmp/bk/server.log &
SRV=$!
sleep 1
# Give it counters and history first.
$T/tally-bench --url http://127.0.0.1:18555 --only spread --seconds 5 --clients 32 > /tmp/bk/warm.txt 2>&1
$T/tally-bench --url http://127.0.0.1:18555 --only hot --seconds 20 --clients 32 > /tmp/bk/bench.txt 2>&1 &
B=$!
sleep 6
for i in 1 2 3; do
  s=$(date +%s.%N); $T/tally backup /tmp/bk/backup$i.db --database /tmp/bk/tally.db; e=$(date +%s.%N)
  echo "backup $i took $(echo "$e - $s" | bc) s"; sleep 2
done
wait $B
ls -la /tmp/bk/*.db
kill $SRV; wait $SRV
