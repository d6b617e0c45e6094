#!/usr/bin/env bash
# Benchmark the center (issues 8, 17): simulated agents POST node-signed reports to a real
# `edgepatch-builder serve` on a loopback port with a fresh SQLite file; prints reports/s
# (goal >= 5,000/s on 2 cores) and the dashboard summary query time at 10,000 nodes (goal <= 50 ms).
#
# usage: scripts/bench-center.sh [--nodes N] [--history-cycles H] [--clients C]
#   BENCH_PROFILE=debug  use the debug build (default: the `center` profile, as shipped:
#                        release settings with panic=unwind)
# Not a test: no timing is asserted; the numbers are printed for the issue / README.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${BENCH_PROFILE:-center}
if [ "$profile" = center ]; then
    cargo build -q --profile center -p edgepatch-builder --bin edgepatch-builder --example bench_center
    dir=target/center
else
    cargo build -q -p edgepatch-builder --bin edgepatch-builder --example bench_center
    dir=target/debug
fi

work=$(mktemp -d /tmp/edgepatch-bench-center.XXXXXX)
server=
cleanup() {
    if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# The nodes are enrolled from an inventory (ids and keys), as a site roll-out would do.
nodes=10000
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[$i]}" = --nodes ] && nodes=${args[$((i + 1))]}
done
"$dir/examples/bench_center" --inventory "$work/inventory" --nodes "$nodes"
"$dir/edgepatch-builder" fleet --db "$work/center.db" preauthorize "$work/inventory"

"$dir/edgepatch-builder" serve --listen 127.0.0.1:0 --db "$work/center.db" 2>"$work/serve.log" &
server=$!
for _ in $(seq 100); do
    grep -q 'listening on' "$work/serve.log" 2>/dev/null && break
    sleep 0.1
done
url=$(grep -o 'http://[0-9.:]*' "$work/serve.log" | head -1)
[ -n "$url" ] || { echo "server did not start:"; cat "$work/serve.log"; exit 1; }

echo "center: $url ($profile build, db $work/center.db, $(nproc) cores)"
"$dir/examples/bench_center" "$url" "$@"

kill "$server"; wait "$server" 2>/dev/null || true; server=
start=$(date +%s%N)
"$dir/edgepatch-builder" fleet --db "$work/center.db" | tail -4
end=$(date +%s%N)
echo "fleet command (open db + summary + print): $(( (end - start) / 1000000 )) ms"
echo "database: $(du -h "$work/center.db" | cut -f1) + WAL $(du -h "$work/center.db-wal" 2>/dev/null | cut -f1 || echo 0)"
