#!/usr/bin/env bash
# Fleet distribution benchmark: N agents (processes, each with its own state dir) fetch one bundle
# from one mirror (the tests' fault-injecting server, loopback only) that cuts a share of bundle
# connections at random offsets. Two phases on the same mirror tree:
#
#   burst   every agent starts at once, no bwlimit (what a naive cron at 02:00 does)
#   spread  each agent sleeps a random 0..SPLAY s first (what `edgepatch run` does with `splay`)
#           and downloads under `bwlimit = BWLIMIT`
#
# Prints per phase: completion (% of agents with the verified bundle in incoming/ within the
# time bound), bytes served / (N x bundle size) (goal <= 1.05 despite the cuts), peak aggregate
# throughput (max bytes served in one second), and the spread/burst peak ratio.
#
#   bash scripts/bench-fleet.sh                          # N=200 SIZE=1M CUT=20 SPLAY=60 BWLIMIT=64K
#   N=500 SIZE=4194304 CUT=30 bash scripts/bench-fleet.sh
#
# Agent binary: $AGENT, else the release musl build if present, else target/debug/edgepatch.
# Time-bounded: each phase ends after $BOUND seconds whatever happens (agents are killed).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-200}
SIZE=${SIZE:-1048576}
CUT=${CUT:-20}
SPLAY=${SPLAY:-60}
BWLIMIT=${BWLIMIT:-64K}
BOUND=${BOUND:-240}
PASSES=${PASSES:-3}

if [ -z "${AGENT:-}" ]; then
    AGENT=target/x86_64-unknown-linux-musl/release/edgepatch
    [ -x "$AGENT" ] || AGENT=target/debug/edgepatch
fi
cargo build -q -p edgepatch-builder --bin edgepatch-builder
cargo build -q -p edgepatch-e2e --bin faulty-mirror
[ -x "$AGENT" ] || cargo build -q -p edgepatch
BUILDER=target/debug/edgepatch-builder
MIRROR_BIN=target/debug/faulty-mirror
AGENT=$(realpath "$AGENT")

WORK=$(mktemp -d /tmp/edgepatch-bench-fleet.XXXXXX)
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

VARIANT=debian-12-amd64
"$BUILDER" keygen --out "$WORK/keys" >/dev/null
mkdir -p "$WORK/pkg/DEBIAN" "$WORK/pkg/usr/share/bench" "$WORK/debs"
printf 'Package: ep-bench\nVersion: 1.0\nArchitecture: all\nMaintainer: b <b@example.invalid>\nDescription: bench\n' >"$WORK/pkg/DEBIAN/control"
head -c "$SIZE" /dev/urandom >"$WORK/pkg/usr/share/bench/payload"
dpkg-deb --root-owner-group -Znone --build "$WORK/pkg" "$WORK/debs/ep-bench_1.0_all.deb" >/dev/null
"$BUILDER" build --key "$WORK/keys/edgepatch.key" --variant $VARIANT --cycle bench --sequence 1 \
    --out "$WORK/bench.epb" "$WORK/debs" >/dev/null
"$BUILDER" publish --key "$WORK/keys/edgepatch.key" --out "$WORK/mirror" "$WORK/bench.epb" >/dev/null
BUNDLE=$(stat -c %s "$WORK/bench.epb")
INDEX=$(stat -c %s "$WORK/mirror/$VARIANT/index")

echo "agent $AGENT ($(stat -c %s "$AGENT") bytes)"
echo "N=$N bundle=$BUNDLE bytes, $CUT% of bundle connections cut at a random offset, bound ${BOUND}s/phase"

# phase NAME SPLAY BWLIMIT
phase() {
    local name=$1 splay=$2 bw=$3
    local dir="$WORK/$name"
    mkdir -p "$dir"
    rm -f "$dir/port" "$dir/stop"
    "$MIRROR_BIN" --root "$WORK/mirror" --port-file "$dir/port" --stop-file "$dir/stop" \
        --stats "$dir/stats" --cut-percent "$CUT" &
    SERVER_PID=$!
    for _ in $(seq 100); do [ -s "$dir/port" ] && break; sleep 0.05; done
    local url="http://127.0.0.1:$(cat "$dir/port")"
    for i in $(seq "$N"); do
        mkdir -p "$dir/n$i"
        {
            echo "node_id = \"bench-$i\""
            echo "variant = \"$VARIANT\""
            echo "trusted_keys = \"$WORK/keys/edgepatch.pub\""
            echo "state_dir = \"$dir/n$i/state\""
            echo "mirror = \"$url\""
            [ "$bw" != "-" ] && echo "bwlimit = \"$bw\""
        } >"$dir/n$i/agent.conf"
    done
    local start=$(date +%s.%N)
    local pids=()
    for i in $(seq "$N"); do
        (
            # The same delay `edgepatch run` takes from `splay` (run would also apply; the
            # benchmark is about distribution, so it calls fetch, the timer's first step).
            if [ "$splay" -gt 0 ]; then sleep "$(awk -v s="$splay" -v r=$RANDOM 'BEGIN{printf "%.2f", s*r/32768}')"; fi
            for _ in $(seq "$PASSES"); do
                EDGEPATCH_LOG=error "$AGENT" --config "$dir/n$i/agent.conf" fetch >/dev/null 2>>"$dir/n$i/log" && break
                sleep 1
            done
        ) &
        pids+=($!)
    done
    # Bound the phase in time.
    ( sleep "$BOUND"; for p in "${pids[@]}"; do pkill -KILL -P "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done ) &
    local watchdog=$!
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    kill "$watchdog" 2>/dev/null || true
    local end=$(date +%s.%N)
    touch "$dir/stop"
    wait "$SERVER_PID" || true
    SERVER_PID=
    local done_count=0
    for i in $(seq "$N"); do
        if cmp -s "$WORK/bench.epb" "$dir/n$i/state/incoming/1-bench.epb"; then done_count=$((done_count + 1)); fi
    done
    local bytes peak reqs r206 cuts
    bytes=$(awk '$1=="bytes"{print $2}' "$dir/stats")
    peak=$(awk '$1=="peak_bytes_per_second"{print $2}' "$dir/stats")
    reqs=$(awk '$1=="bundle_requests"{print $2}' "$dir/stats")
    r206=$(awk '$1=="status_206"{print $2}' "$dir/stats")
    awk -v name="$name" -v n="$N" -v ok="$done_count" -v bytes="$bytes" -v idx="$INDEX" \
        -v size="$BUNDLE" -v peak="$peak" -v reqs="$reqs" -v r206="$r206" -v t0="$start" -v t1="$end" 'BEGIN {
        bundle_bytes = bytes - n * idx
        printf "%-6s completion %d/%d = %.1f%%  wall %.1fs  bundle requests %d (%d resumed with Range)\n", name, ok, n, 100*ok/n, t1-t0, reqs, r206
        printf "%-6s bytes served %d = %.4f x (N x bundle); bundle bytes only %.4f x\n", name, bytes, bytes/(n*size), bundle_bytes/(n*size)
        printf "%-6s peak aggregate throughput %.1f MiB/s\n", name, peak/1048576
    }'
    echo "$peak" >"$dir/peak"
}

phase burst 0 -
phase spread "$SPLAY" "$BWLIMIT"
awk -v a="$(cat "$WORK/burst/peak")" -v b="$(cat "$WORK/spread/peak")" -v s="$SPLAY" -v bw="$BWLIMIT" 'BEGIN {
    printf "peak with splay %ss + bwlimit %s is %.1f%% of the burst peak (%.1f%% lower)\n", s, bw, 100*b/a, 100-100*b/a
}'
