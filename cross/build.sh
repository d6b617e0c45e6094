#!/usr/bin/env bash
# Build the static (musl) node agent for each target and print a size table.
#
#   bash cross/build.sh                     # x86_64, aarch64 and armv7
#   bash cross/build.sh aarch64-unknown-linux-musl
#   FEATURES=tls bash cross/build.sh ...    # TLS agent (needs a C cross compiler for ring)
#
# Each target is one plain command from the repo root (linker and qemu runner live in
# .cargo/config.toml):
#   cargo build --release -p edgepatch --target x86_64-unknown-linux-musl
#   cargo build --release -p edgepatch --target aarch64-unknown-linux-musl      # rust-lld
#   cargo build --release -p edgepatch --target armv7-unknown-linux-musleabihf  # rust-lld, needs
#       the std from cross/armv7-std.sh once (rustup has no armv7 musl std here)
# Binaries: target/TRIPLE/release/edgepatch
set -uo pipefail
cd "$(dirname "$0")/.."

TARGETS=("$@")
[ "${#TARGETS[@]}" -eq 0 ] && TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf)
FEATURE_ARGS=()
[ -n "${FEATURES:-}" ] && FEATURE_ARGS=(--features "$FEATURES")
TARGET_DIR=${CARGO_TARGET_DIR:-target}

declare -A RESULT
failed=0
for t in "${TARGETS[@]}"; do
    echo "== cargo build --release -p edgepatch --target $t ${FEATURE_ARGS[*]}"
    log=$(mktemp)
    if cargo build --release -p edgepatch --target "$t" "${FEATURE_ARGS[@]}" >"$log" 2>&1 &&
        [ -f "$TARGET_DIR/$t/release/edgepatch" ]; then
        RESULT[$t]=$(stat -c %s "$TARGET_DIR/$t/release/edgepatch")
    else
        failed=1
        if grep -q "can't find crate for .core\|can't find crate for .std" "$log"; then
            RESULT[$t]="FAILED: no Rust std for $t (rustup target add failed); run cross/armv7-std.sh"
        else
            RESULT[$t]="FAILED: $(grep -m1 -E '^error' "$log")"
        fi
        tail -n 20 "$log" >&2
    fi
    rm -f "$log"
done

echo
printf '%-32s %12s  %s\n' target bytes binary
for t in "${TARGETS[@]}"; do
    if [[ "${RESULT[$t]}" =~ ^[0-9]+$ ]]; then
        printf '%-32s %12s  %s\n' "$t" "${RESULT[$t]}" "$TARGET_DIR/$t/release/edgepatch"
    else
        printf '%-32s %s\n' "$t" "${RESULT[$t]}"
    fi
done
exit "$failed"
