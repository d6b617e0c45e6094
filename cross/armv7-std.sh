#!/usr/bin/env bash
# Provide the Rust standard library for armv7-unknown-linux-musleabihf when rustup cannot.
#
# Why: `rustup target add armv7-unknown-linux-musleabihf` fails on this workplace (the dist mirror
# answers 404 for rust-std-<version>-armv7-unknown-linux-musleabihf.tar.xz), while aarch64 and
# x86_64 musl work. Without a std, `cargo build --target armv7-unknown-linux-musleabihf` fails with
# "error[E0463]: can't find crate for `core`".
#
# What: build std once from the toolchain's own rust-src with cargo's -Zbuild-std (same rustc, so
# the rlibs are what rust-std would have shipped), and install them plus musl's crt objects and
# libc.a (Debian musl-dev:armhf) and gcc's crtbegin/crtend + libgcc_eh.a (as libunwind.a; Debian
# gcc-arm-linux-gnueabihf) into `$(rustc --print sysroot)/lib/rustlib/armv7-unknown-linux-musleabihf/`,
# exactly where rustup would have put them. After that plain
#   cargo build --release -p edgepatch --target armv7-unknown-linux-musleabihf
# works, linking with rust-lld (see .cargo/config.toml). Idempotent; ~2 minutes on 2 cores once.
#
# Needs: root for apt (musl-dev:armhf through Debian multiarch, gcc-arm-linux-gnueabihf), the
# rust-src component. Exits 0 with a message if the std is already there.
set -euo pipefail

TRIPLE=armv7-unknown-linux-musleabihf
log() { printf 'armv7-std: %s\n' "$*"; }
die() { printf 'armv7-std: ERROR: %s\n' "$*" >&2; exit 1; }

SYSROOT=$(rustc --print sysroot)
DEST="$SYSROOT/lib/rustlib/$TRIPLE/lib"
if compgen -G "$DEST/libstd-*.rlib" >/dev/null && compgen -G "$DEST/libtest-*.rlib" >/dev/null &&
    [ -f "$DEST/self-contained/libc.a" ]; then
    log "std for $TRIPLE already in $DEST"
    exit 0
fi

if rustup target add "$TRIPLE" >/dev/null 2>&1; then
    log "rustup target add $TRIPLE worked; nothing to build"
    exit 0
fi
log "rustup has no rust-std for $TRIPLE here; building it from rust-src"

export DEBIAN_FRONTEND=noninteractive
GCC_LIB=/usr/lib/gcc-cross/arm-linux-gnueabihf/12
MUSL_LIB=/usr/lib/arm-linux-musleabihf
if [ ! -f "$MUSL_LIB/libc.a" ] || [ ! -d "$GCC_LIB" ]; then
    [ "$(id -u)" -eq 0 ] || die "need root to install musl-dev:armhf and gcc-arm-linux-gnueabihf"
    if ! dpkg --print-foreign-architectures | grep -qx armhf; then
        log "dpkg --add-architecture armhf"
        dpkg --add-architecture armhf
    fi
    log "apt-get update (armhf indexes)"
    # A security index that is mid-sync must not stop us: main has musl-dev.
    apt-get update -qq || log "apt-get update reported errors; trying the install anyway"
    apt-get install -y -qq --no-install-recommends musl-dev:armhf gcc-arm-linux-gnueabihf >/dev/null
fi
[ -f "$MUSL_LIB/libc.a" ] || die "$MUSL_LIB/libc.a missing after installing musl-dev:armhf"
GCC_LIB=$(dirname "$(arm-linux-gnueabihf-gcc -print-libgcc-file-name)")
[ -f "$GCC_LIB/crtbegin.o" ] || die "$GCC_LIB/crtbegin.o missing (gcc-arm-linux-gnueabihf)"

if ! compgen -G "$SYSROOT/lib/rustlib/src/rust/library/std/Cargo.toml" >/dev/null; then
    log "rustup component add rust-src"
    rustup component add rust-src >/dev/null
fi

WORK=$(mktemp -d /tmp/edgepatch-armv7-std.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
SC="$WORK/self-contained"
mkdir -p "$SC"
cp "$MUSL_LIB"/{crt1.o,crti.o,crtn.o,Scrt1.o,rcrt1.o,libc.a} "$SC/"
cp "$GCC_LIB"/{crtbegin.o,crtend.o,crtbeginS.o,crtendS.o} "$SC/"
# std's unwind crate links -lunwind for static musl; libgcc_eh provides the same _Unwind_* ABI.
cp "$GCC_LIB/libgcc_eh.a" "$SC/libunwind.a"

mkdir -p "$WORK/dummy/src"
cat >"$WORK/dummy/Cargo.toml" <<'TOML'
[package]
name = "dummy"
version = "0.0.0"
edition = "2021"
[workspace]
[profile.release]
opt-level = 3
TOML
echo 'fn main() { println!("ok"); }' >"$WORK/dummy/src/main.rs"
# Like rustc's bootstrap: the panic_abort crate itself is built with -C panic=abort while
# everything else is panic=unwind (so one std serves `cargo test` and the panic=abort release),
# and every rlib carries LLVM bitcode (the release profile uses LTO; cargo would say
# -C embed-bitcode=no here because this dummy build does not).
cat >"$WORK/rustc-wrapper" <<'SH'
#!/usr/bin/env bash
rustc=$1
shift
args=()
prev=
abort=0
for a in "$@"; do
    [ "$prev" = "--crate-name" ] && [ "$a" = "panic_abort" ] && abort=1
    if [ "$a" = "embed-bitcode=no" ] && [ "$prev" = "-C" ]; then
        a=embed-bitcode=yes
    fi
    args+=("$a")
    prev=$a
done
[ "$abort" -eq 1 ] && args+=(-C panic=abort)
exec "$rustc" "${args[@]}"
SH
chmod +x "$WORK/rustc-wrapper"

log "cargo -Zbuild-std=std,panic_unwind,panic_abort,test --target $TRIPLE (release, panic=unwind like rustup's)"
(
    cd "$WORK/dummy"
    RUSTC_BOOTSTRAP=1 RUSTC_WRAPPER="$WORK/rustc-wrapper" \
        CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_LINKER=rust-lld \
        RUSTFLAGS="-C target-feature=+crt-static -L native=$SC" \
        cargo build -q --release --target "$TRIPLE" \
        -Zbuild-std=std,panic_unwind,panic_abort,test
)
DEPS="$WORK/dummy/target/$TRIPLE/release/deps"
rm -rf "$DEST"
mkdir -p "$DEST/self-contained"
for f in "$DEPS"/*.rlib; do
    case "$(basename "$f")" in libdummy-*) continue ;; esac
    cp "$f" "$DEST/"
done
cp "$SC"/* "$DEST/self-contained/"
log "installed $(ls "$DEST"/*.rlib | wc -l) rlibs and musl/gcc objects into $DEST"
# Anything compiled against an earlier std is stale now (cargo does not track the sysroot).
REPO_TARGET="${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}/$TRIPLE"
if [ -d "$REPO_TARGET" ]; then
    log "removing stale $REPO_TARGET"
    rm -rf "$REPO_TARGET"
fi
