# shellcheck shell=bash
# Sourced by cross/build.sh and cross/footprint.sh: what the TLS agent (`--features tls`) needs.
#
# ureq's `rustls` feature pulls rustls with the `ring` provider (plus rustls-webpki,
# webpki-roots, untrusted, getrandom, subtle, zeroize, once_cell). ring compiles C and assembly
# with the cc crate, so the TLS agent needs a C compiler for each target; the default (no-TLS)
# agent needs none. cc-rs looks for `x86_64-linux-musl-gcc` / `aarch64-linux-musl-gcc` /
# `arm-linux-musleabihf-gcc`, which Debian does not ship, so we point it at Debian's compilers
# (only in the environment of this one cargo call, never in the committed .cargo/config.toml):
#   x86_64-unknown-linux-musl       gcc                       (Debian gcc)
#   aarch64-unknown-linux-musl      aarch64-linux-gnu-gcc     (gcc-aarch64-linux-gnu +
#                                                              libc6-dev-arm64-cross headers)
#   armv7-unknown-linux-musleabihf  arm-linux-gnueabihf-gcc   (gcc-arm-linux-gnueabihf +
#                                                              libc6-dev-armhf-cross headers)
# ring's C only needs <stdint.h>, <string.h> and friends for types and memcpy/memset, so glibc
# toolchain headers are fine; the objects are linked against musl's libc.a by rust-lld as usual.
# Without the libc6-dev-*-cross headers the cross build fails with
#   /usr/include/stdint.h:26:10: fatal error: bits/libc-header-start.h: No such file or directory
#
# TLS agents go to $TLS_TARGET_DIR (default target/tls) so they never overwrite the no-TLS ones.

TLS_TARGET_DIR=${TLS_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/tls}

# tls_cc TRIPLE -> "CC AR" for the target, or nothing for an unknown target.
tls_cc() {
    case "$1" in
        x86_64-unknown-linux-musl) echo "gcc ar" ;;
        aarch64-unknown-linux-musl) echo "aarch64-linux-gnu-gcc aarch64-linux-gnu-ar" ;;
        armv7-unknown-linux-musleabihf) echo "arm-linux-gnueabihf-gcc arm-linux-gnueabihf-ar" ;;
    esac
}

# tls_missing TRIPLE -> why the TLS agent cannot be built here (empty when it can).
tls_missing() {
    local cc ar
    read -r cc ar <<<"$(tls_cc "$1")"
    if [ -z "$cc" ]; then
        echo "no known C compiler for $1"
    elif ! command -v "$cc" >/dev/null 2>&1; then
        echo "C compiler $cc not found (scripts/test-deps.sh installs it)"
    elif ! echo '#include <string.h>' | "$cc" -x c -fsyntax-only - >/dev/null 2>&1; then
        echo "$cc has no C library headers (apt-get install libc6-dev-*-cross)"
    fi
}

# tls_build TRIPLE [cargo args...]: cargo build --release -p edgepatch --features tls for TRIPLE
# into $TLS_TARGET_DIR with CC/AR set for it. Output: $TLS_TARGET_DIR/TRIPLE/release/edgepatch
tls_build() {
    local t=$1 cc ar u
    shift
    read -r cc ar <<<"$(tls_cc "$t")"
    u=${t//-/_}
    env "CC_$u=$cc" "AR_$u=$ar" CARGO_TARGET_DIR="$TLS_TARGET_DIR" \
        cargo build --release -p edgepatch --features tls --target "$t" "$@"
}

# tls_error LOGFILE -> the line that says why a TLS build failed.
tls_error() {
    grep -m1 -E 'fatal error|failed to find tool|error: linking|^error(\[|:)' "$1" |
        sed -e 's/^ *cargo:warning=//' -e 's/^warning: ring@[^:]*: //' | cut -c1-160
}
