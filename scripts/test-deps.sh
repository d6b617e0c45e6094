#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian 12 machine (run as root).
# Idempotent: packages already present are not reinstalled; running it twice is cheap.
#
# Other engineers: append Debian package names to APT_PACKAGES, Rust targets to RUST_TARGETS.
set -euo pipefail

APT_PACKAGES=(
    dpkg-dev              # dpkg-deb, dpkg-scanpackages: build and serve .deb fixtures
    rpm                   # rpmbuild / rpm for the dnf path
    dnf
    createrepo-c          # local rpm repositories
    btrfs-progs           # snapshot backend tests on a loop file
    rsync                 # rsync drop source
    nginx-light           # plain HTTP mirror in tests
    debdelta              # delta baseline for benchmarks
    bsdiff
    time                  # /usr/bin/time -v for peak RSS
    gnupg                 # seed pipeline baseline (gpg --detach-sign)
    qemu-user-static      # run aarch64/armv7 agents and their tests; its /usr/lib/binfmt.d entries
                          # let the arm64 image run here (tests/image/build-image.sh registers them)
    gcc-aarch64-linux-gnu # C cross toolchain (only the TLS agent needs one)
    gcc-arm-linux-gnueabihf
    chromium              # center UI browser tests
    chromium-driver
    sqlite3
    gcc                   # TLS agent only: ring's C for x86_64 musl (cross/build.sh sets CC)
    libc6-dev-arm64-cross # TLS agent only: C headers for the aarch64/armv7 cross compilers
    libc6-dev-armhf-cross
    debootstrap           # tests/image/build-image.sh (preserve) and build-vm-image.sh (VM)
    dpkg-repack           # host-only baseline the native repack (agent preserve) is compared with
    lintian               # scripts/package.sh output checked by tests/package.sh
    rpmlint
    qemu-system-x86       # scripts/vm-test.sh boots that image (TCG)
    dosfstools            # vfat USB stick image for scripts/vm-test.sh
    mtools
    libcap2-bin           # getcap: file capabilities of files a rollback set keeps (attack2_rpm)
    python3               # attack2_rpm sets and lists extended attributes with os.setxattr
)

RUST_TARGETS=(
    x86_64-unknown-linux-musl
    aarch64-unknown-linux-musl
    armv7-unknown-linux-musleabihf
)

RUST_COMPONENTS=(rustfmt clippy rust-src)

log() { printf 'test-deps: %s\n' "$*"; }
warn() { printf 'test-deps: WARNING: %s\n' "$*" >&2; }

export DEBIAN_FRONTEND=noninteractive

pkg_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# --- apt --------------------------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
    pkg_installed "$p" || missing+=("$p")
done

if [ "${#missing[@]}" -eq 0 ]; then
    log "all ${#APT_PACKAGES[@]} apt packages already installed"
else
    if [ "$(id -u)" -ne 0 ]; then
        warn "not root: cannot install ${missing[*]} (run as root or with sudo)"
    else
        log "apt-get update"
        apt-get update -qq
        installable=()
        for p in "${missing[@]}"; do
            cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
            if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
                warn "package '$p' does not exist in the apt sources here; skipped"
            else
                installable+=("$p")
            fi
        done
        if [ "${#installable[@]}" -gt 0 ]; then
            log "apt-get install ${installable[*]}"
            apt-get install -y -qq --no-install-recommends "${installable[@]}" >/dev/null
        fi
    fi
fi

# --- rust -------------------------------------------------------------------------------------
if ! command -v rustup >/dev/null 2>&1; then
    warn "rustup not found: cannot add targets/components (${RUST_TARGETS[*]})"
    exit 0
fi

installed_targets=$(rustup target list --installed 2>/dev/null || true)
sysroot=$(rustc --print sysroot)
for t in "${RUST_TARGETS[@]}"; do
    if grep -qx "$t" <<<"$installed_targets" ||
        compgen -G "$sysroot/lib/rustlib/$t/lib/libstd-*.rlib" >/dev/null; then
        continue
    fi
    log "rustup target add $t"
    if ! rustup target add "$t" >/dev/null 2>&1; then
        if [ "$t" = armv7-unknown-linux-musleabihf ]; then
            log "no prebuilt std for $t here: building it with cross/armv7-std.sh"
        else
            warn "rustup target add $t failed; cargo builds for $t will fail"
        fi
    fi
done

installed_components=$(rustup component list --installed 2>/dev/null || true)
for c in "${RUST_COMPONENTS[@]}"; do
    if grep -q "^$c" <<<"$installed_components"; then
        continue
    fi
    log "rustup component add $c"
    rustup component add "$c" >/dev/null 2>&1 || warn "rustup component add $c failed"
done

# armv7 musl: rustup's dist mirror has no rust-std for it here, so build one from rust-src
# (no-op when the std is already in the sysroot). Failure is reported, not fatal:
# cross/footprint.sh then skips armv7 and says why.
bash "$(dirname "$0")/../cross/armv7-std.sh" || warn "cross/armv7-std.sh failed: no armv7 agent"

# Real packages for tests/delta.rs (jq and libjq1 change between bookworm and its security
# update; libonig5, hello and tree do not): a few hundred KB from Debian's registry, kept in
# target/ so later runs skip the download. scripts/test.sh points EDGEPATCH_CORPUS at it.
corpus=$(cd "$(dirname "$0")/.." && pwd)/target/corpus-small
if ! ls "$corpus"/cycle-2/jq_*.deb >/dev/null 2>&1; then
    log "fetching the small real-package corpus into $corpus"
    bash "$(dirname "$0")/debian-cycles.sh" "$corpus" jq libjq1 libonig5 hello tree >/dev/null 2>&1 ||
        warn "fetching the real-package corpus failed: tests/delta.rs real_packages_from_the_corpus fails"
fi

log "done"
