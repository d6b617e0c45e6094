#!/bin/sh
# Run every target for SECS seconds (default 600), two at a time, niced; logs in fuzz/logs/.
# From fuzz/: sh run-all.sh [SECS]
set -u
SECS=${1:-600}
run() {
  nice -n 10 cargo +nightly fuzz run -O "$1" "corpus/$1" -- -max_total_time="$SECS" -max_len=8192 \
    -print_final_stats=1 > "logs/$1.log" 2>&1
  echo "$1 exit $?" >> logs/summary
}
: > logs/summary
for pair in "manifest container" "config policy" "index keylist" "delta" "order reissued_policy"; do
  set -- $pair
  run "$1" &
  if [ $# -gt 1 ]; then run "$2" & fi
  wait
done
