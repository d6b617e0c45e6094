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
#     flipped (aarch64, armv7),
#   - the apply smoke run (every target; aarch64/armv7 under qemu) does not verify, stage and
#     install the small bundle into a scratch Debian root (exit 0, packages at 1.0 in the root's
#     dpkg database), or `status` afterwards does not say "installed footprint seq 1",
#   - a TLS agent (`--features tls`) fails to build although its C compiler is here (a missing
#     compiler is reported, not failed: see cross/tls-env.sh),
#   - peak RSS of the agent process itself during `apply` of the big bundle (x86_64) passes
#     FOOTPRINT_MAX_APPLY_RSS_KB (default: the verify budget).
# Also printed, not enforced: peak RSS of the whole apply process tree (apt-get, dpkg), verify
# throughput against sha256sum on the same file, start time of `edgepatch status`.
#
# Why a scratch root and real dpkg under qemu: qemu-user runs only the agent as an ARM process;
# the agent's execve of apt-get/dpkg starts the host's x86_64 binaries natively (qemu-user passes
# execve through, and the .debs are Architecture: all), so the ARM agent really verifies, stages,
# writes its journal, runs apt-get against the staged repository and records status.
# The qemu part is skipped, loudly, only when qemu-user-static is missing. A target whose Rust
# standard library is missing (armv7 before cross/armv7-std.sh ran) fails with that reason.
#
# Knobs: FOOTPRINT_BUNDLE_MB (size of the x86_64 RSS bundle, default 64; scripts/bench-footprint.sh
#        runs this with 512), FOOTPRINT_TARGETS (default "x86_64-unknown-linux-musl
#        aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf"), FOOTPRINT_TLS (1: build the
#        TLS agents too, default; 0: skip), FOOTPRINT_QEMU_TESTS (1: unit tests under qemu,
#        default), FOOTPRINT_COLD=1 (drop the page cache before one cold `status` start; needs
#        root, slows everyone else's builds for a moment, so only the bench script sets it).
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
MAX_BYTES=${FOOTPRINT_MAX_BYTES:-1500000}
MAX_RSS_KB=${FOOTPRINT_MAX_RSS_KB:-16384}
MAX_APPLY_RSS_KB=${FOOTPRINT_MAX_APPLY_RSS_KB:-$MAX_RSS_KB}
BUNDLE_MB=${FOOTPRINT_BUNDLE_MB:-64}
WANT_TLS=${FOOTPRINT_TLS:-1}
QEMU_TESTS=${FOOTPRINT_QEMU_TESTS:-1}
COLD=${FOOTPRINT_COLD:-0}
TARGETS=${FOOTPRINT_TARGETS:-"x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf"}
HOST_TARGET=x86_64-unknown-linux-musl
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

failures=()
fail() {
    printf 'footprint: FAIL: %s\n' "$*" >&2
    failures+=("$*")
}
say() { printf 'footprint: %s\n' "$*"; }

declare -A SIZE TLS_SIZE RESULT_TEST RESULT_SMOKE RESULT_APPLY
# shellcheck source=cross/tls-env.sh
TLS_TARGET_DIR=$TARGET_DIR/tls
. cross/tls-env.sh

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

# TLS agent: built into $TLS_TARGET_DIR so the no-TLS binaries stay in place.
build_tls() {
    local t=$1 log missing
    if [ "${SIZE[$t]}" = skipped ]; then
        TLS_SIZE[$t]=skipped
        return
    fi
    missing=$(tls_missing "$t")
    if [ -n "$missing" ]; then
        TLS_SIZE[$t]="not built: $missing"
        say "TLS agent for $t not built: $missing"
        return
    fi
    log=$(mktemp)
    if tls_build "$t" -q >"$log" 2>&1; then
        TLS_SIZE[$t]=$(stat -c %s "$TLS_TARGET_DIR/$t/release/edgepatch")
    else
        TLS_SIZE[$t]="build failed"
        fail "$t: TLS agent (--features tls, CC $(tls_cc "$t" | cut -d' ' -f1)) failed: $(tls_error "$log")"
        tail -n 15 "$log" >&2
    fi
    rm -f "$log"
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
    for i in 1 2 3 4; do
        mkdeb "fp-big-$i" "$per" "$WORK/big"
        rm -rf "$WORK/pkgsrc/fp-big-$i"
    done
    # --install: apply installs these (without it, apply only upgrades what the root has).
    local -A install=([small]="--install fp-small-a --install fp-small-b"
        [big]="--install fp-big-1 --install fp-big-2 --install fp-big-3 --install fp-big-4")
    for b in small big; do
        # shellcheck disable=SC2086
        "$BUILDER" build --key "$WORK/keys/edgepatch.key" --variant debian-12-amd64 \
            --cycle footprint --sequence 1 ${install[$b]} --out "$WORK/$b.epb" "$WORK/$b" >/dev/null || {
            fail "edgepatch-builder build ($b) failed"
            return 1
        }
    done
    cp "$WORK/small.epb" "$WORK/small-flipped.epb"
    # The payload comes last (see agent/src/bundle/format.rs): the last byte belongs to a .deb.
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

# A scratch Debian node for apply: the host's dpkg status (base packages count as installed), the
# dirs dpkg needs, package_manager = apt, snapshot = packages. $1 = name; prints the config path.
make_node() {
    local d="$WORK/node-$1"
    rm -rf "$d"
    mkdir -p "$d/root/var/lib/dpkg/info" "$d/root/var/lib/dpkg/updates" \
        "$d/root/var/lib/dpkg/triggers" "$d/state"
    cp /var/lib/dpkg/status "$d/root/var/lib/dpkg/status"
    : >"$d/root/var/lib/dpkg/available"
    cat >"$d/agent.conf" <<CONF
node_id = "footprint-$1"
variant = "debian-12-amd64"
trusted_keys = "$WORK/keys/edgepatch.pub"
state_dir = "$d/state"
root = "$d/root"
package_manager = "apt"
snapshot = "packages"
CONF
    echo "$d/agent.conf"
}

# Apply the small bundle on a fresh node and check the root and `status`. $1 runner, $2 bin, $3 tag.
apply_smoke() {
    local runner=$1 bin=$2 conf rc v
    conf=$(make_node "$3")
    # shellcheck disable=SC2086
    $runner "$bin" --config "$conf" -q apply "$WORK/small.epb" >"$WORK/out" 2>"$WORK/err"
    rc=$?
    if [ "$rc" -ne 0 ]; then
        fail "$3: apply of the small bundle: exit $rc, want 0: $(tail -c 300 "$WORK/err")"
        return 1
    fi
    v=$(dpkg-query --admindir="$WORK/node-$3/root/var/lib/dpkg" -W -f '${Version} ${db:Status-Abbrev}' fp-small-a 2>&1)
    if [ "${v% }" != "1.0 ii" ]; then
        fail "$3: after apply, fp-small-a in the scratch root is '$v', want '1.0 ii'"
        return 1
    fi
    # shellcheck disable=SC2086
    if ! $runner "$bin" --config "$conf" status >"$WORK/out" 2>"$WORK/err" ||
        ! grep -q '^installed footprint seq 1 ' "$WORK/out"; then
        fail "$3: status after apply does not say 'installed footprint seq 1': $(head -c 300 "$WORK/out" "$WORK/err")"
        return 1
    fi
    return 0
}

# Run a command; print "AGENT_KB TREE_KB": the peak RSS of the process itself (VmHWM of
# /proc/PID/status, polled every 20 ms; VmHWM only grows, so the last sample is the peak up to
# 20 ms before exit) and /usr/bin/time's maximum over the process and every child it waited for
# (apt-get, dpkg). Exit code of the command in $WORK/rc.
peak_rss() {
    local pid hwm=0 h
    /usr/bin/time -f '%M' -o "$WORK/time" "$@" >"$WORK/out" 2>"$WORK/err" &
    local tpid=$!
    while kill -0 "$tpid" 2>/dev/null; do
        [ -z "${pid:-}" ] && pid=$(pgrep -P "$tpid" | head -n1)
        if [ -n "${pid:-}" ]; then
            h=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
            [ -n "$h" ] && [ "$h" -gt "$hwm" ] && hwm=$h
        fi
        sleep 0.02
    done
    wait "$tpid"
    echo $? >"$WORK/rc"
    echo "$hwm $(tail -n1 "$WORK/time")"
}

# ============================================================================================
check_crates

for t in $TARGETS; do
    say "building agent for $t"
    build_target "$t"
done
if [ "$WANT_TLS" = 1 ]; then
    for t in $TARGETS; do
        say "building TLS agent for $t (--features tls, into $TLS_TARGET_DIR)"
        build_tls "$t"
    done
fi

HAVE_FIXTURE=0
make_fixture && HAVE_FIXTURE=1

RSS_KB="n/a"
VERIFY_S="n/a"
SHA_S="n/a"
APPLY_RSS="n/a"
APPLY_TREE="n/a"
APPLY_S="n/a"
START_VERSION="n/a"
START_STATUS="n/a"
START_COLD="n/a"
HOST_BIN="$TARGET_DIR/$HOST_TARGET/release/edgepatch"
if [ -x "$HOST_BIN" ] && [[ "${SIZE[$HOST_TARGET]:-}" =~ ^[0-9]+$ ]]; then
    if [ "${SIZE[$HOST_TARGET]}" -gt "$MAX_BYTES" ]; then
        fail "x86_64 agent is ${SIZE[$HOST_TARGET]} bytes, budget $MAX_BYTES"
    fi
    if [ "$HAVE_FIXTURE" -eq 1 ]; then
        if smoke "" "$HOST_BIN"; then RESULT_SMOKE[$HOST_TARGET]="ok (0 / 2)"; else RESULT_SMOKE[$HOST_TARGET]=FAIL; fi
        if apply_smoke "" "$HOST_BIN" "$HOST_TARGET"; then RESULT_APPLY[$HOST_TARGET]=ok; else RESULT_APPLY[$HOST_TARGET]=FAIL; fi
        if [ -x /usr/bin/time ]; then
            cat "$WORK/big.epb" >/dev/null # warm the page cache
            s=$(date +%s%N)
            read -r _ RSS_KB <<<"$(peak_rss "$HOST_BIN" --config "$WORK/agent.conf" -q verify "$WORK/big.epb")"
            e=$(date +%s%N)
            rc=$(cat "$WORK/rc")
            VERIFY_S=$(awk -v d=$((e - s)) 'BEGIN { printf "%.2f", d / 1e9 }')
            s=$(date +%s%N)
            sha256sum "$WORK/big.epb" >/dev/null
            e=$(date +%s%N)
            SHA_S=$(awk -v d=$((e - s)) 'BEGIN { printf "%.2f", d / 1e9 }')
            if [ "$rc" -ne 0 ]; then
                fail "x86_64 verify of the ${BUNDLE_MB} MB bundle: exit $rc: $(head -c 300 "$WORK/err")"
            elif [ "$RSS_KB" -gt "$MAX_RSS_KB" ]; then
                fail "peak RSS of verify is ${RSS_KB} kB, budget ${MAX_RSS_KB} kB"
            fi
            conf=$(make_node big)
            s=$(date +%s%N)
            read -r APPLY_RSS APPLY_TREE <<<"$(peak_rss "$HOST_BIN" --config "$conf" -q apply "$WORK/big.epb")"
            e=$(date +%s%N)
            rc=$(cat "$WORK/rc")
            APPLY_S=$(awk -v d=$((e - s)) 'BEGIN { printf "%.2f", d / 1e9 }')
            if [ "$rc" -ne 0 ]; then
                fail "x86_64 apply of the ${BUNDLE_MB} MB bundle: exit $rc: $(tail -c 300 "$WORK/err")"
            elif [ "$APPLY_RSS" -eq 0 ]; then
                fail "could not sample the agent's VmHWM during apply (/proc not readable?)"
            elif [ "$APPLY_RSS" -gt "$MAX_APPLY_RSS_KB" ]; then
                fail "peak RSS of the agent during apply is ${APPLY_RSS} kB, budget ${MAX_APPLY_RSS_KB} kB"
            fi
            rm -rf "$WORK/node-big"
        else
            fail "/usr/bin/time missing (apt-get install time): cannot measure peak RSS"
        fi
        START_VERSION=$(best_ms "$HOST_BIN" --version)
        conf="$WORK/node-$HOST_TARGET/agent.conf"
        if "$HOST_BIN" --config "$conf" status >/dev/null 2>&1; then
            START_STATUS=$(best_ms "$HOST_BIN" --config "$conf" status)
            if [ "$COLD" = 1 ] && sync && echo 3 2>/dev/null >/proc/sys/vm/drop_caches; then
                s=$(date +%s%N)
                "$HOST_BIN" --config "$conf" status >/dev/null 2>&1
                e=$(date +%s%N)
                START_COLD=$(awk -v d=$((e - s)) 'BEGIN { printf "%.3f", d / 1e6 }')
            elif [ "$COLD" = 1 ]; then
                START_COLD="cannot drop caches (not root?)"
            fi
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
        RESULT_APPLY[$t]=skipped
        continue
    fi
    if ! [[ "${SIZE[$t]:-}" =~ ^[0-9]+$ ]]; then
        RESULT_TEST[$t]="not run"
        RESULT_SMOKE[$t]="not run"
        RESULT_APPLY[$t]="not run"
        continue
    fi
    if [ "$QEMU_TESTS" = 1 ]; then
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
    else
        RESULT_TEST[$t]="skipped (FOOTPRINT_QEMU_TESTS=0)"
    fi
    if [ "$HAVE_FIXTURE" -eq 1 ]; then
        if smoke "$q" "$TARGET_DIR/$t/release/edgepatch"; then
            RESULT_SMOKE[$t]="ok (0 / 2)"
        else
            RESULT_SMOKE[$t]=FAIL
        fi
        say "apply + status smoke under $q"
        if apply_smoke "$q" "$TARGET_DIR/$t/release/edgepatch" "$t"; then
            RESULT_APPLY[$t]=ok
        else
            RESULT_APPLY[$t]=FAIL
        fi
    fi
done

# --- table -----------------------------------------------------------------------------------
echo
echo "edgepatch agent footprint (release, static musl)"
printf '%-31s %9s %9s  %-16s %-11s %s\n' target "no TLS B" "TLS B" "unit tests" "verify 0/2" "apply+status"
for t in $TARGETS; do
    tls=${TLS_SIZE[$t]:-skipped}
    [[ "$tls" =~ ^[0-9]+$ ]] || tls="(see below)"
    [ "$WANT_TLS" = 1 ] || tls="skipped"
    printf '%-31s %9s %9s  %-16s %-11s %s\n' "$t" "${SIZE[$t]:-n/a}" "$tls" \
        "${RESULT_TEST[$t]:-host}" "${RESULT_SMOKE[$t]:-n/a}" "${RESULT_APPLY[$t]:-n/a}"
done
for t in $TARGETS; do
    if [ "$WANT_TLS" = 1 ] && ! [[ "${TLS_SIZE[$t]:-}" =~ ^[0-9]+$ ]]; then
        echo "  TLS $t: ${TLS_SIZE[$t]:-not built}"
    fi
done
echo
printf '%-50s %s\n' "budget x86_64 size (no TLS)" "$MAX_BYTES bytes"
printf '%-50s %s\n' "x86_64 verify ${BUNDLE_MB} MB bundle: peak RSS" "$RSS_KB kB (budget $MAX_RSS_KB kB)"
printf '%-50s %s\n' "x86_64 verify ${BUNDLE_MB} MB bundle: wall" "$VERIFY_S s (sha256sum same file: $SHA_S s)"
printf '%-50s %s\n' "x86_64 apply ${BUNDLE_MB} MB bundle: peak RSS, agent" "$APPLY_RSS kB (budget $MAX_APPLY_RSS_KB kB)"
printf '%-50s %s\n' "x86_64 apply ${BUNDLE_MB} MB bundle: peak RSS, +apt/dpkg" "$APPLY_TREE kB (largest process of the tree)"
printf '%-50s %s\n' "x86_64 apply ${BUNDLE_MB} MB bundle: wall" "$APPLY_S s (verify, stage, apt-get install)"
printf '%-50s %s\n' "x86_64 start: edgepatch --version (best of 10)" "$START_VERSION ms"
printf '%-50s %s\n' "x86_64 start: edgepatch status (best of 10, warm)" "$START_STATUS ms"
[ "$COLD" = 1 ] && printf '%-50s %s\n' "x86_64 start: edgepatch status (cold page cache)" "$START_COLD ms"
[ -n "$QEMU_NOTE" ] && echo "$QEMU_NOTE"
echo

if [ "${#failures[@]}" -gt 0 ]; then
    echo "footprint: ${#failures[@]} check(s) failed:"
    printf '  - %s\n' "${failures[@]}"
    exit 1
fi
echo "footprint: all checks passed"
