#!/usr/bin/env bash
# Foundation benchmark (issue 3). Not part of scripts/test.sh; prints figures, asserts nothing.
#
#   bash scripts/bench-foundation.sh            # ~512 MB of .deb packages (8 x 64 MB)
#   BENCH_PKGS=4 BENCH_PKG_MB=16 bash scripts/bench-foundation.sh   # quick run
#
# In one run, on the same packages and the same bundle, side by side:
#  (a) `edgepatch verify` (release, static x86_64 musl agent) vs `sha256sum` over the bundle file:
#      page cache warmed first for both (caches cannot be dropped here), best of BENCH_RUNS (3);
#      the agent's peak RSS from /usr/bin/time -v.          Goals: >= 3x faster, <= 16 MB RSS.
#  (b) `edgepatch-builder build` (release) vs the seed pipeline
#      `tar czf bundle.tar.gz pkgs/ && sha256sum bundle.tar.gz > SHA256SUMS && gpg --detach-sign`
#      (throwaway key in a temp GNUPGHOME): wall time, best of BENCH_BUILD_RUNS (2) each, and
#      output sizes.                                          Goals: >= 5x faster, no bigger.
# Packages are real .debs (`dpkg-deb -Znone --build` around random data: incompressible, like the
# xz/zstd payload of real packages).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PKGS=${BENCH_PKGS:-8}
PKG_MB=${BENCH_PKG_MB:-64}
RUNS=${BENCH_RUNS:-3}
BUILD_RUNS=${BENCH_BUILD_RUNS:-2}
TARGET=x86_64-unknown-linux-musl
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

for tool in dpkg-deb dpkg-scanpackages sha256sum gpg tar /usr/bin/time; do
    command -v "$tool" >/dev/null || {
        echo "bench: missing $tool (run scripts/test-deps.sh)" >&2
        exit 1
    }
done

echo "bench: building release agent ($TARGET) and release builder"
cargo build -q --release -p edgepatch --target "$TARGET"
cargo build -q --release -p edgepatch-builder
AGENT="$TARGET_DIR/$TARGET/release/edgepatch"
BUILDER="$TARGET_DIR/release/edgepatch-builder"

W=$(mktemp -d "${BENCH_DIR:-/tmp}/edgepatch-bench.XXXXXX")
export GNUPGHOME="$W/gnupg"
mkdir -m 700 "$GNUPGHOME"
cleanup() {
    gpgconf --kill gpg-agent >/dev/null 2>&1 || true
    rm -rf "$W"
}
trap cleanup EXIT

now_ns() { date +%s%N; }
secs() { awk -v ns="$1" 'BEGIN { printf "%.3f", ns / 1e9 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "inf" }'; }

# --- packages -----------------------------------------------------------------------------
echo "bench: creating $PKGS packages of $PKG_MB MB in $W/pkgs"
mkdir -p "$W/pkgs"
for i in $(seq 1 "$PKGS"); do
    d="$W/src/bench-pkg-$i"
    mkdir -p "$d/DEBIAN" "$d/usr/share/bench-pkg-$i"
    printf 'Package: bench-pkg-%s\nVersion: 1.0\nArchitecture: all\nMaintainer: edgepatch bench <b@example.invalid>\nDescription: benchmark payload\n' \
        "$i" >"$d/DEBIAN/control"
    head -c "$((PKG_MB * 1024 * 1024))" /dev/urandom >"$d/usr/share/bench-pkg-$i/data"
    dpkg-deb -Znone --build "$d" "$W/pkgs/bench-pkg-${i}_1.0_all.deb" >/dev/null
    rm -rf "$d"
done
PKG_BYTES=$(du -cb "$W"/pkgs/*.deb | tail -n1 | cut -f1)

"$BUILDER" keygen --out "$W/keys" >/dev/null
mkdir -p "$W/state"
cat >"$W/agent.conf" <<EOF
node_id = "bench"
variant = "debian-12-amd64"
trusted_keys = "$W/keys/edgepatch.pub"
state_dir = "$W/state"
EOF
gpg --batch --quiet --passphrase '' --quick-gen-key 'edgepatch bench <bench@example.invalid>' \
    ed25519 sign never 2>"$W/gpg.log" || { cat "$W/gpg.log" >&2; exit 1; }

warm() { cat "$@" >/dev/null; }

# --- (b) build vs seed pipeline -------------------------------------------------------------
echo "bench: build, best of $BUILD_RUNS each"
best_build=""
for r in $(seq 1 "$BUILD_RUNS"); do
    rm -f "$W/bundle.epb"
    warm "$W"/pkgs/*.deb
    s=$(now_ns)
    "$BUILDER" build --key "$W/keys/edgepatch.key" --variant debian-12-amd64 --cycle bench-1 \
        --sequence 1 --out "$W/bundle.epb" "$W/pkgs" >/dev/null
    d=$(($(now_ns) - s))
    if [ -z "$best_build" ] || [ "$d" -lt "$best_build" ]; then best_build=$d; fi
done
best_seed=""
for r in $(seq 1 "$BUILD_RUNS"); do
    rm -f "$W/seed/bundle.tar.gz" "$W/seed/SHA256SUMS" "$W/seed/bundle.tar.gz.sig" "$W/pkgs/Packages"
    mkdir -p "$W/seed"
    warm "$W"/pkgs/*.deb
    s=$(now_ns)
    (
        cd "$W"
        # The seed's build script writes repo metadata (createrepo_c) before it tars the dir; the
        # Debian equivalent is dpkg-scanpackages. Our builder writes its Packages file too.
        (cd pkgs && dpkg-scanpackages --multiversion . /dev/null >Packages 2>/dev/null) &&
        tar czf seed/bundle.tar.gz pkgs/ &&
            (cd seed && sha256sum bundle.tar.gz >SHA256SUMS) &&
            gpg --batch --yes --quiet --detach-sign seed/bundle.tar.gz
    )
    d=$(($(now_ns) - s))
    if [ -z "$best_seed" ] || [ "$d" -lt "$best_seed" ]; then best_seed=$d; fi
done
OURS_BYTES=$(stat -c %s "$W/bundle.epb")
SEED_BYTES=$(du -cb "$W/seed/bundle.tar.gz" "$W/seed/SHA256SUMS" "$W/seed/bundle.tar.gz.sig" | tail -n1 | cut -f1)

# --- (a) verify vs sha256sum ----------------------------------------------------------------
echo "bench: verify, best of $RUNS each (page cache warm)"
warm "$W/bundle.epb"
best_verify=""
rss_kb=0
for r in $(seq 1 "$RUNS"); do
    s=$(now_ns)
    /usr/bin/time -v -o "$W/time.txt" "$AGENT" --config "$W/agent.conf" -q verify "$W/bundle.epb" >/dev/null
    d=$(($(now_ns) - s))
    if [ -z "$best_verify" ] || [ "$d" -lt "$best_verify" ]; then best_verify=$d; fi
    k=$(awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$W/time.txt")
    [ "$k" -gt "$rss_kb" ] && rss_kb=$k
done
best_sha=""
for r in $(seq 1 "$RUNS"); do
    s=$(now_ns)
    sha256sum "$W/bundle.epb" >/dev/null
    d=$(($(now_ns) - s))
    if [ -z "$best_sha" ] || [ "$d" -lt "$best_sha" ]; then best_sha=$d; fi
done

MB=$(awk -v b="$OURS_BYTES" 'BEGIN { printf "%.0f", b / 1048576 }')
echo
echo "edgepatch foundation benchmark: $PKGS .deb packages, $PKG_BYTES bytes; bundle $OURS_BYTES bytes (${MB} MiB)"
echo "$(nproc) cores; $(uname -m); page cache warm; best of $RUNS (verify) / $BUILD_RUNS (build)"
echo
printf '%-44s %12s %12s %9s  %s\n' "(a) verify the bundle" "edgepatch" "sha256sum" "ratio" "goal"
printf '%-44s %11ss %11ss %8sx  %s\n' "wall time" "$(secs "$best_verify")" "$(secs "$best_sha")" \
    "$(ratio "$best_sha" "$best_verify")" ">= 3x faster"
printf '%-44s %10s kB %12s %9s  %s\n' "edgepatch verify peak RSS" "$rss_kb" "" "" "<= 16384 kB"
echo
printf '%-44s %12s %12s %9s  %s\n' "(b) seal the packages" "builder" "tar+sha+gpg" "ratio" "goal"
printf '%-44s %11ss %11ss %8sx  %s\n' "wall time" "$(secs "$best_build")" "$(secs "$best_seed")" \
    "$(ratio "$best_seed" "$best_build")" ">= 5x faster"
printf '%-44s %12s %12s %9s  %s\n' "output bytes" "$OURS_BYTES" "$SEED_BYTES" \
    "$(awk -v a="$OURS_BYTES" -v b="$SEED_BYTES" 'BEGIN { printf "%.4f", a / b }')" "<= 1 (ours no bigger)"
printf '%-44s %12s\n' "output bytes, ours minus seed" "$((OURS_BYTES - SEED_BYTES))"

# --- (c) sizes on real Debian packages (already xz-compressed inside), if a corpus is given ------
# CORPUS=DIR (e.g. the cycle-2 dir written by ../shared/corpus/debian-cycles.sh): the same seed
# pipeline (Packages + tar czf + SHA256SUMS + detached signature) against our bundle.
if [ -n "${CORPUS:-}" ] && [ -d "$CORPUS" ]; then
    rm -rf "$W/real" && mkdir -p "$W/real/pkgs" && cp "$CORPUS"/*.deb "$W/real/pkgs/"
    "$BUILDER" build --key "$W/keys/edgepatch.key" --variant bench-amd64 --cycle real \
        --sequence 1 --out "$W/real/bundle.epb" "$W/real/pkgs" >/dev/null
    (
        cd "$W/real" &&
            (cd pkgs && dpkg-scanpackages --multiversion . /dev/null >Packages 2>/dev/null) &&
            tar czf bundle.tar.gz pkgs/ && sha256sum bundle.tar.gz >SHA256SUMS &&
            gpg --batch --yes --quiet --detach-sign bundle.tar.gz
    )
    R_OURS=$(stat -c %s "$W/real/bundle.epb")
    R_SEED=$(du -cb "$W/real/bundle.tar.gz" "$W/real/SHA256SUMS" "$W/real/bundle.tar.gz.sig" | tail -n1 | cut -f1)
    echo
    printf '%-44s %12s %12s %9s  %s\n' "(c) real packages: $(ls "$CORPUS"/*.deb | wc -l) .debs" "builder" "tar+sha+gpg" "ratio" "goal"
    printf '%-44s %12s %12s %9s  %s\n' "output bytes" "$R_OURS" "$R_SEED" \
        "$(awk -v a="$R_OURS" -v b="$R_SEED" 'BEGIN { printf "%.4f", a / b }')" "<= 1 (ours no bigger)"
fi
