#!/usr/bin/env bash
# Build the static (musl) node agent for each target, without and with TLS, and print a size table.
#
#   bash cross/build.sh                     # x86_64, aarch64 and armv7; no-TLS and TLS agents
#   bash cross/build.sh aarch64-unknown-linux-musl
#   TLS=0 bash cross/build.sh               # no-TLS agents only (no C compiler needed)
#
# Each no-TLS target is one plain command from the repo root (linker and qemu runner live in
# .cargo/config.toml):
#   cargo build --release -p edgepatch --target x86_64-unknown-linux-musl
#   cargo build --release -p edgepatch --target aarch64-unknown-linux-musl      # rust-lld
#   cargo build --release -p edgepatch --target armv7-unknown-linux-musleabihf  # rust-lld, needs
#       the std from cross/armv7-std.sh once (rustup has no armv7 musl std here)
# Binaries: target/TRIPLE/release/edgepatch
#
# The TLS agent (`--features tls`: ureq + rustls + ring) needs a C compiler for ring; see
# cross/tls-env.sh for which one and why. One command each, e.g.
#   CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar \
#     CARGO_TARGET_DIR=target/tls cargo build --release -p edgepatch --features tls \
#     --target aarch64-unknown-linux-musl
# (x86_64: CC_x86_64_unknown_linux_musl=gcc; armv7: arm-linux-gnueabihf-gcc/-ar)
# Binaries: target/tls/TRIPLE/release/edgepatch
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=cross/tls-env.sh
. cross/tls-env.sh

TARGETS=("$@")
[ "${#TARGETS[@]}" -eq 0 ] && TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf)
TARGET_DIR=${CARGO_TARGET_DIR:-target}
WANT_TLS=${TLS:-1}

declare -A PLAIN SECURE
failed=0
why_failed() {
    if grep -q "can't find crate for .core\|can't find crate for .std" "$1"; then
        echo "FAILED: no Rust std for $2 (rustup target add failed); run cross/armv7-std.sh"
    else
        echo "FAILED: $(tls_error "$1")"
    fi
}
for t in "${TARGETS[@]}"; do
    log=$(mktemp)
    echo "== cargo build --release -p edgepatch --target $t"
    if cargo build --release -p edgepatch --target "$t" >"$log" 2>&1 &&
        [ -f "$TARGET_DIR/$t/release/edgepatch" ]; then
        PLAIN[$t]=$(stat -c %s "$TARGET_DIR/$t/release/edgepatch")
    else
        failed=1
        PLAIN[$t]=$(why_failed "$log" "$t")
        tail -n 20 "$log" >&2
    fi
    if [ "$WANT_TLS" = 1 ]; then
        missing=$(tls_missing "$t")
        if [ -n "$missing" ]; then
            SECURE[$t]="not built: $missing"
        else
            echo "== TLS: $(tls_cc "$t" | cut -d' ' -f1) for ring; cargo build --release -p edgepatch --features tls --target $t (into $TLS_TARGET_DIR)"
            if tls_build "$t" >"$log" 2>&1 && [ -f "$TLS_TARGET_DIR/$t/release/edgepatch" ]; then
                SECURE[$t]=$(stat -c %s "$TLS_TARGET_DIR/$t/release/edgepatch")
            else
                failed=1
                SECURE[$t]=$(why_failed "$log" "$t")
                tail -n 20 "$log" >&2
            fi
        fi
    else
        SECURE[$t]="skipped (TLS=0)"
    fi
    rm -f "$log"
done

echo
printf '%-32s %14s %14s\n' target "no TLS (bytes)" "TLS (bytes)"
for t in "${TARGETS[@]}"; do
    printf '%-32s %14s %14s\n' "$t" "${PLAIN[$t]:0:60}" "${SECURE[$t]:0:60}"
done
echo "binaries: $TARGET_DIR/TRIPLE/release/edgepatch (no TLS), $TLS_TARGET_DIR/TRIPLE/release/edgepatch (TLS)"
exit "$failed"
