#!/usr/bin/env bash
# Footprint budget for the node agent, enforced (called from scripts/test.sh).
#
#   bash cross/footprint.sh
#
# Fails (exit 1) when
#   - the no-TLS x86_64 musl agent is bigger than FOOTPRINT_MAX_BYTES (default 1,500,000),
#   - `cargo tree -p edgepatch -e normal --target x86_64-unknown-linux-musl` shows a crate that is
#     not in cross/allowed-crates.txt,
#   - peak RSS of `edgepatch verify` (x86_64) passes FOOTPRINT_MAX_RSS_KB (default 16384),
#   - the agent's unit tests fail under qemu (aarch64, armv7),
#   - the qemu smoke run does not give exit 0 on a good bundle and exit 2 with one payload byte
#     flipped (aarch64, armv7).
# The qemu part is skipped, loudly, only when qemu-user-static is missing. A target whose Rust
# standard library is missing (armv7 before cross/armv7-std.sh ran) fails with that reason.
#
# Knobs: FOOTPRINT_BUNDLE_MB (size of the x86_64 RSS bundle, default 64),
#        FOOTPRINT_TARGETS (default "x86_64-unknown-linux-musl aarch64-unknown-linux-musl
#        armv7-unknown-linux-musleabihf").
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
MAX_BYTES=${FOOTPRINT_MAX_BYTES:-1500000}
MAX_RSS_KB=${FOOTPRINT_MAX_RSS_KB:-16384}
BUNDLE_MB=${FOOTPRINT_BUNDLE_MB:-64}
TARGETS=${FOOTPRINT_TARGETS:-"x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf"}
HOST_TARGET=x86_64-unknown-linux-musl
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

failures=()
fail() {
    printf 'footprint: FAIL: %s\n' "$*" >&2
    failures+=("$*")
}
say() { printf 'footprint: %s\n' "$*"; }

declare -A SIZE RESULT_TEST RESULT_SMOKE

qemu_for() {
    case "$1" in
        aarch64-*) echo qemu-aarch64-static ;;
        armv7-* | arm-*) echo qemu-arm-static ;;
        *) echo "" ;;
    esac
}

# --- 1. dependency allow-list ----------------------------------------------------------------
check_crates() {
    local allowed tree bad=()
    allowed=$(sed -e 's/#.*//' -e 's/[[:space:]].*//' cross/allowed-crates.txt | grep -v '^$' | sort -u)
    if ! tree=$(cargo tree -p edgepatch -e normal --target "$HOST_TARGET" --prefix none 2>&1); then
        fail "cargo tree failed: $tree"
        return
    fi
    local crates
    crates=$(awk '{print $1}' <<<"$tree" | sort -u | grep -vx edgepatch)
    for c in $crates; do
        grep -qx "$c" <<<"$allowed" || bad+=("$c")
    done
    if [ "${#bad[@]}" -gt 0 ]; then
        fail "agent depends on crates not in cross/allowed-crates.txt: ${bad[*]}" \
            "(add a line 'crate  # why it earns its bytes', or drop the dependency)"
    else
        say "dependencies: $(wc -w <<<"$crates") crates, all in cross/allowed-crates.txt"
    fi
}

# --- 2. builds -------------------------------------------------------------------------------
build_target() {
    local t=$1 log
    if [ "$t" = armv7-unknown-linux-musleabihf ] &&
        ! compgen -G "$(rustc --print sysroot)/lib/rustlib/$t/lib/libstd-*.rlib" >/dev/null; then
        SIZE[$t]="skipped"
        say "SKIPPED $t: no Rust std for it (rustup's mirror has none here and" \
            "cross/armv7-std.sh did not run or failed; run it as root)"
        return 1
    fi
    log=$(mktemp)
    if cargo build --release -q -p edgepatch --target "$t" >"$log" 2>&1; then
        local bin="$TARGET_DIR/$t/release/edgepatch"
        SIZE[$t]=$(stat -c %s "$bin")
        rm -f "$log"
        return 0
    fi
    SIZE[$t]="build failed"
    if grep -q "can't find crate for .core\|can't find crate for .std" "$log"; then
        fail "$t: no Rust standard library for this target (rustup target add $t failed here;" \
            "run cross/armv7-std.sh as root, or scripts/test-deps.sh)"
    else
        fail "$t: cargo build --release -p edgepatch --target $t failed:"
        tail -n 15 "$log" >&2
    fi
    rm -f "$log"
    return 1
}

# --- 3. fixture: keys, config, two bundles ---------------------------------------------------
WORK=$(mktemp -d /tmp/edgepatch-footprint.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

BUILDER="$TARGET_DIR/debug/edgepatch-builder"
make_fixture() {
    if [ ! -x "$BUILDER" ] || [ -n "$(find builder/src agent/src -newer "$BUILDER" -print -quit)" ]; then
        cargo build -q -p edgepatch-builder || {
            fail "cargo build -p edgepatch-builder failed"
            return 1
        }
    fi
    "$BUILDER" keygen --out "$WORK/keys" >/dev/null || {
        fail "edgepatch-builder keygen failed"
        return 1
    }
    # Real .deb packages, stored uncompressed around random data (incompressible like real debs).
    mkdeb() { # name size_kb dir
        local d="$WORK/pkgsrc/$1"
        mkdir -p "$d/DEBIAN" "$d/usr/share/$1" "$3"
        printf 'Package: %s\nVersion: 1.0\nArchitecture: all\nMaintainer: edgepatch tests <t@example.invalid>\nDescription: footprint fixture\n' \
            "$1" >"$d/DEBIAN/control"
        head -c "$(($2 * 1024))" /dev/urandom >"$d/usr/share/$1/data"
        dpkg-deb -Znone --build "$d" "$3/$1_1.0_all.deb" >/dev/null
    }
    mkdeb fp-small-a 512 "$WORK/small"
    mkdeb fp-small-b 256 "$WORK/small"
    local per=$((BUNDLE_MB * 1024 / 4))
    for i in 1 2 3 4; do mkdeb "fp-big-$i" "$per" "$WORK/big"; done
    for b in small big; do
        "$BUILDER" build --key "$WORK/keys/edgepatch.key" --variant debian-12-amd64 \
            --cycle footprint --sequence 1 --out "$WORK/$b.epb" "$WORK/$b" >/dev/null || {
            fail "edgepatch-builder build ($b) failed"
            return 1
        }
    done
    cp "$WORK/small.epb" "$WORK/small-flipped.epb"
    # The payload comes last (see agent/src/format.rs): the last byte belongs to a .deb.
    local n
    n=$(stat -c %s "$WORK/small-flipped.epb")
    local byte
    byte=$(od -An -tu1 -j $((n - 1)) -N1 "$WORK/small-flipped.epb" | tr -d ' ')
    printf "$(printf '\\%03o' $(((byte ^ 1) & 255)))" |
        dd of="$WORK/small-flipped.epb" bs=1 seek=$((n - 1)) conv=notrunc status=none
    mkdir -p "$WORK/state"
    cat >"$WORK/agent.conf" <<EOF
node_id = "footprint"
variant = "debian-12-amd64"
trusted_keys = "$WORK/keys/edgepatch.pub"
state_dir = "$WORK/state"
root = "$WORK/root"
EOF
    mkdir -p "$WORK/root"
}

# Run the agent's verify on a bundle and check the exit code. $1 = runner (or empty), $2 bin.
smoke() {
    local runner=$1 bin=$2 rc ok=1
    # shellcheck disable=SC2086
    $runner "$bin" --config "$WORK/agent.conf" -q verify "$WORK/small.epb" >/dev/null 2>"$WORK/err"
    rc=$?
    if [ "$rc" -ne 0 ]; then
        fail "$bin verify good bundle: exit $rc, want 0: $(head -c 300 "$WORK/err")"
        ok=0
    fi
    # shellcheck disable=SC2086
    $runner "$bin" --config "$WORK/agent.conf" -q verify "$WORK/small-flipped.epb" >/dev/null 2>"$WORK/err"
    rc=$?
    if [ "$rc" -ne 2 ]; then
        fail "$bin verify bundle with a flipped payload byte: exit $rc, want 2: $(head -c 300 "$WORK/err")"
        ok=0
    fi
    [ "$ok" -eq 1 ]
}

# Best-of-N wall time of a command in milliseconds (page cache warm; caches cannot be dropped here).
best_ms() {
    local best="" i s e d
    for i in 1 2 3 4 5 6 7 8 9 10; do
        s=$(date +%s%N)
        "$@" >/dev/null 2>&1
        e=$(date +%s%N)
        d=$(((e - s) / 1000))
        if [ -z "$best" ] || [ "$d" -lt "$best" ]; then best=$d; fi
    done
    printf '%d.%03d' $((best / 1000)) $((best % 1000))
}

# ============================================================================================
check_crates

for t in $TARGETS; do
    say "building agent for $t"
    build_target "$t"
done

HAVE_FIXTURE=0
make_fixture && HAVE_FIXTURE=1

RSS_KB="n/a"
VERIFY_S="n/a"
START_VERSION="n/a"
START_STATUS="n/a"
HOST_BIN="$TARGET_DIR/$HOST_TARGET/release/edgepatch"
if [ -x "$HOST_BIN" ] && [ "${SIZE[$HOST_TARGET]}" != "build failed" ]; then
    if [ "${SIZE[$HOST_TARGET]}" -gt "$MAX_BYTES" ]; then
        fail "x86_64 agent is ${SIZE[$HOST_TARGET]} bytes, budget $MAX_BYTES"
    fi
    if [ "$HAVE_FIXTURE" -eq 1 ]; then
        if smoke "" "$HOST_BIN"; then RESULT_SMOKE[$HOST_TARGET]=ok; else RESULT_SMOKE[$HOST_TARGET]=FAIL; fi
        if [ -x /usr/bin/time ]; then
            cat "$WORK/big.epb" >/dev/null # warm the page cache
            s=$(date +%s%N)
            /usr/bin/time -v -o "$WORK/time" "$HOST_BIN" --config "$WORK/agent.conf" -q \
                verify "$WORK/big.epb" >/dev/null 2>"$WORK/err"
            rc=$?
            e=$(date +%s%N)
            VERIFY_S=$(awk -v d=$((e - s)) 'BEGIN { printf "%.2f", d / 1e9 }')
            RSS_KB=$(awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$WORK/time")
            if [ "$rc" -ne 0 ]; then
                fail "x86_64 verify of the ${BUNDLE_MB} MB bundle: exit $rc: $(head -c 300 "$WORK/err")"
            elif [ "$RSS_KB" -gt "$MAX_RSS_KB" ]; then
                fail "peak RSS of verify is ${RSS_KB} kB, budget ${MAX_RSS_KB} kB"
            fi
        else
            fail "/usr/bin/time missing (apt-get install time): cannot measure peak RSS"
        fi
        START_VERSION=$(best_ms "$HOST_BIN" --version)
        if "$HOST_BIN" --config "$WORK/agent.conf" status >/dev/null 2>&1; then
            START_STATUS=$(best_ms "$HOST_BIN" --config "$WORK/agent.conf" status)
        fi
    fi
fi

QEMU_NOTE=""
for t in $TARGETS; do
    [ "$t" = "$HOST_TARGET" ] && continue
    q=$(qemu_for "$t")
    if ! command -v "$q" >/dev/null 2>&1; then
        QEMU_NOTE="SKIPPED qemu runs: $q not found (apt-get install qemu-user-static)"
        say "$QEMU_NOTE"
        RESULT_TEST[$t]=skipped
        RESULT_SMOKE[$t]=skipped
        continue
    fi
    if [ "${SIZE[$t]}" = "build failed" ] || [ "${SIZE[$t]}" = skipped ]; then
        RESULT_TEST[$t]="not run"
        RESULT_SMOKE[$t]="not run"
        continue
    fi
    say "unit tests under $q: cargo test -p edgepatch --lib --target $t"
    if cargo test -q -p edgepatch --lib --target "$t" >"$WORK/test-$t.log" 2>&1; then
        RESULT_TEST[$t]=$(grep -E '^test result:' "$WORK/test-$t.log" | tail -n1 |
            sed -E 's/^test result: ok\. ([0-9]+) passed.*/ok, \1 passed/')
    else
        RESULT_TEST[$t]=FAIL
        fail "$t: unit tests under $q failed:"
        grep -E '^(test .* FAILED|failures:|error|---- )' "$WORK/test-$t.log" | head -n 20 >&2
        tail -n 5 "$WORK/test-$t.log" >&2
    fi
    if [ "$HAVE_FIXTURE" -eq 1 ]; then
        if smoke "$q" "$TARGET_DIR/$t/release/edgepatch"; then
            RESULT_SMOKE[$t]="ok (0 / 2)"
        else
            RESULT_SMOKE[$t]=FAIL
        fi
    fi
done
[ "${RESULT_SMOKE[$HOST_TARGET]:-}" = ok ] && RESULT_SMOKE[$HOST_TARGET]="ok (0 / 2)"

# --- table -----------------------------------------------------------------------------------
echo
echo "edgepatch agent footprint (release, static musl, no TLS)"
printf '%-32s %12s  %-22s %s\n' target "size (bytes)" "unit tests" "verify smoke good/flipped"
for t in $TARGETS; do
    printf '%-32s %12s  %-22s %s\n' "$t" "${SIZE[$t]:-n/a}" \
        "${RESULT_TEST[$t]:-host (cargo test)}" "${RESULT_SMOKE[$t]:-n/a}"
done
echo
printf '%-46s %s\n' "budget x86_64 size" "$MAX_BYTES bytes"
printf '%-46s %s\n' "x86_64 verify ${BUNDLE_MB} MB bundle: peak RSS" "$RSS_KB kB (budget $MAX_RSS_KB kB)"
printf '%-46s %s\n' "x86_64 verify ${BUNDLE_MB} MB bundle: wall" "$VERIFY_S s"
printf '%-46s %s\n' "x86_64 start: edgepatch --version (best of 10)" "$START_VERSION ms"
printf '%-46s %s\n' "x86_64 start: edgepatch status (best of 10)" "$START_STATUS ms"
[ -n "$QEMU_NOTE" ] && echo "$QEMU_NOTE"
echo

if [ "${#failures[@]}" -gt 0 ]; then
    echo "footprint: ${#failures[@]} check(s) failed:"
    printf '  - %s\n' "${failures[@]}"
    exit 1
fi
echo "footprint: all checks passed"
