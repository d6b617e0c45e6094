#!/usr/bin/env bash
# Issue 15 numbers, one run, side by side, on a real Debian 12 minbase image and its real pending
# updates (bookworm-updates + bookworm-security from deb.debian.org, gathered with `collect`):
#
#   - plain `apt-get install` of those packages from a local repository (the baseline),
#   - `edgepatch apply` with the preserve step (default) and without it (rollback_keep = 0),
#   - the preserve step's time and bytes, `edgepatch rollback` wall time,
#   - the agent's own peak RSS (VmHWM, from its -v log line) during apply (preserve) and rollback.
# Each is run BENCH_RUNS times (default 3), interleaved; medians are printed (a shared machine's
# noise moves single runs by more than the preserve step costs).
#
#   sudo bash scripts/bench-restore.sh          # root: chroot, unshare; network: Debian's archive
#
# Each contender gets a fresh copy of the same image; the agent runs inside it (chroot +
# unshare --net, root "/"), as on a kiosk. Needs scripts/test-deps.sh.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
MIRROR=${EDGEPATCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${EDGEPATCH_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
V=debian-12-amd64

tarball=$(bash tests/image/build-image.sh amd64)
cargo build -q --release -p edgepatch --target x86_64-unknown-linux-musl
cargo build -q --release -p edgepatch-builder
AGENT=$repo/target/x86_64-unknown-linux-musl/release/edgepatch
B=$repo/target/release/edgepatch-builder
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-restore.XXXXXX")
[ -n "${BENCH_KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
say() { echo "bench-restore: $*" >&2; }

unpack() { # DIR: a fresh image with the agent baked in
    mkdir -p "$1"
    tar --numeric-owner -xf "$tarball" -C "$1"
    install -m 0755 "$AGENT" "$1/usr/local/bin/edgepatch"
    mkdir -p "$1/etc/edgepatch"
    cp "$work/keys/edgepatch.pub" "$1/etc/edgepatch/release.pub"
    printf 'node_id = "bench"\nvariant = "%s"\ntrusted_keys = "/etc/edgepatch/release.pub"\nstate_dir = "/var/lib/edgepatch"\nroot = "/"\nsnapshot = "packages"\n%s' \
        "$V" "${2:-}" >"$1/etc/edgepatch/agent.conf"
}
inside() { # ROOT SCRIPT: run inside the image, own mount namespace with /proc, no network
    unshare --mount --net --fork chroot "$1" /bin/sh -c "mount -t proc proc /proc && $2"
}
secs() { # start end (from date +%s.%N)
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'
}
timed() { # ROOT LOG SCRIPT -> prints seconds
    local t0 t1
    sync
    t0=$(date +%s.%N)
    inside "$1" "$3" >"$2" 2>&1 || { tail -5 "$2" >&2; exit 1; }
    t1=$(date +%s.%N)
    secs "$t0" "$t1"
}

# --- the image's pending updates -----------------------------------------------------------------
"$B" keygen --out "$work/keys" >/dev/null
unpack "$work/base"
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
    "$MIRROR" "$MIRROR" "$SECURITY" >"$work/sources.list"
pkgs=$(dpkg-query --admindir="$work/base/var/lib/dpkg" -W -f '${db:Status-Abbrev} ${Package}\n' | awk '$1=="ii" {print $2}')
say "collect: the image's pending updates"
# shellcheck disable=SC2086
"$B" collect --variant $V --baseline "$work/base/var/lib/dpkg/status" --sources "$work/sources.list" \
    --out "$work/debs" $pkgs >"$work/collect.log"
n=$(find "$work/debs" -name '*.deb' | wc -l)
[ "$n" -gt 0 ] || { say "the image has no pending updates; nothing to measure"; exit 1; }
names=$(for f in "$work"/debs/*.deb; do dpkg-deb -f "$f" Package; done | sort -u | tr '\n' ' ')
"$B" build --key "$work/keys/edgepatch.key" --variant $V --cycle bench --sequence 1 \
    --out "$work/bench.epb" "$work/debs" >/dev/null
bytes_in=$(du -cb "$work"/debs/*.deb | tail -1 | cut -f1)
say "$n package(s), $bytes_in bytes: $names"

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
RUNS=${BENCH_RUNS:-3}
APTOPTS='-o Dir::Etc::SourceList=/srv/local.list -o Dir::Etc::SourceParts=/nonexistent -o Debug::NoLocking=1'
plain=() nopre=() pre=() rb=() msp=() rssa=() rssr=()
for i in $(seq "$RUNS"); do
    say "run $i of $RUNS"
    # plain apt-get install from a local repository (the baseline)
    rm -rf "$work/plain"
    unpack "$work/plain"
    mkdir -p "$work/plain/srv/repo"
    cp "$work"/debs/*.deb "$work/plain/srv/repo/"
    (cd "$work/plain/srv/repo" && dpkg-scanpackages -m . /dev/null 2>/dev/null >Packages)
    echo 'deb [trusted=yes] file:/srv/repo ./' >"$work/plain/srv/local.list"
    inside "$work/plain" "apt-get -q $APTOPTS update" >"$work/plain.update.log" 2>&1
    plain+=("$(timed "$work/plain" "$work/plain.log" \
        "DEBIAN_FRONTEND=noninteractive apt-get -y -q $APTOPTS -o Dpkg::Options::=--force-confold install $names")")
    # edgepatch apply without the preserve step
    rm -rf "$work/nopreserve"
    unpack "$work/nopreserve" 'rollback_keep = 0
'
    cp "$work/bench.epb" "$work/nopreserve/tmp/"
    nopre+=("$(timed "$work/nopreserve" "$work/nopreserve.log" "edgepatch -v apply /tmp/bench.epb")")
    # edgepatch apply with it, then rollback
    rm -rf "$work/preserve"
    unpack "$work/preserve"
    cp "$work/bench.epb" "$work/preserve/tmp/"
    pre+=("$(timed "$work/preserve" "$work/preserve.log" "edgepatch -v apply /tmp/bench.epb")")
    msp+=("$(sed -n 's/.*preserve \([0-9]*\) ms.*/\1/p' "$work/preserve.log" | tail -1)")
    rssa+=("$(sed -n 's/.*agent peak RSS \([0-9]*\) kB.*/\1/p' "$work/preserve.log" | tail -1)")
    pool=$work/preserve/var/lib/edgepatch/rollback/pool
    n_pool=$(find "$pool" -name '*.deb' | wc -l)
    bytes_pool=$(du -cb "$pool"/*.deb | tail -1 | cut -f1)
    rb+=("$(timed "$work/preserve" "$work/rollback.log" "edgepatch -v rollback")")
    rssr+=("$(sed -n 's/.*agent peak RSS \([0-9]*\) kB.*/\1/p' "$work/rollback.log" | tail -1)")
    back=$(dpkg-query --admindir="$work/preserve/var/lib/dpkg" -W -f '${Package} ${Version}\n' | sort | md5sum)
    orig=$(dpkg-query --admindir="$work/base/var/lib/dpkg" -W -f '${Package} ${Version}\n' | sort | md5sum)
    [ "$back" = "$orig" ] || { say "rollback did not bring back the image's versions"; exit 1; }
done
t_plain=$(median "${plain[@]}") t_nopre=$(median "${nopre[@]}") t_pre=$(median "${pre[@]}")
t_rb=$(median "${rb[@]}") ms_preserve=$(median "${msp[@]}")
rss_apply=$(printf '%s\n' "${rssa[@]}" | sort -n | tail -1) rss_rb=$(printf '%s\n' "${rssr[@]}" | sort -n | tail -1)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "issue 15 numbers: real Debian 12 minbase image, its $n pending updates ($bytes_in bytes); medians of $RUNS runs, peak RSS the largest"
printf '  %-44s %8s s\n' "plain apt-get install (local repo)" "$t_plain"
printf '  %-44s %8s s  %sx plain apt-get\n' "edgepatch apply, no preserve (keep = 0)" "$t_nopre" "$(ratio "$t_nopre" "$t_plain")"
printf '  %-44s %8s s  %sx plain apt-get, %sx no preserve\n' "edgepatch apply, with preserve" "$t_pre" \
    "$(ratio "$t_pre" "$t_plain")" "$(ratio "$t_pre" "$t_nopre")"
printf '  %-44s %8s ms %s package(s), %s bytes\n' "  of which preserve" "${ms_preserve:-?}" "$n_pool" "$bytes_pool"
printf '  %-44s %8s s  (image versions back: yes)\n' "edgepatch rollback" "$t_rb"
printf '  %-44s %8s kB apply (with preserve), %s kB rollback\n' "agent peak RSS (VmHWM)" "${rss_apply:-?}" "${rss_rb:-?}"
