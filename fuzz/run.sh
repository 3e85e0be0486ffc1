#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 10), starting from the committed seeds and
# whatever corpus earlier runs left in fuzz/corpus. A finding stops the run with a non-zero exit
# and leaves the input in fuzz/artifacts/<target>/. Needs cargo-fuzz (`cargo install cargo-fuzz`).
# No sanitizer (`-s none`): the code under test forbids `unsafe`, so there is no memory error
# for one to find, and stable Rust cannot build one.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-10}"
targets=(client_message socket_command rpc_body counter_name watch_query grant)
cargo fuzz build -s none 2>&1 | tail -1
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "== fuzz $target for ${seconds}s"
  log="$(mktemp)"
  status=0
  cargo fuzz run -s none "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^(Done|stat::number_of_executed_units)|panicked|ERROR|SUMMARY|Test unit written" "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$log"
    echo "fuzz target $target failed (exit $status); the input is in fuzz/artifacts/$target"
    exit 1
  fi
  rm -f "$log"
done
