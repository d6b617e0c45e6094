#!/usr/bin/env bash
# Preserve step numbers (issue 15): repack every installed package of a real Debian 12 minbase
# image natively (agent `preserve`, examples/repack) and with dpkg-repack, same image, same run.
# Prints time, bytes and peak RSS of both, the ratios, and how many packages have the same
# control fields and file list. Needs root (debootstrap, tar) and scripts/test-deps.sh.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

tarball=$(bash tests/image/build-image.sh amd64)
cargo build -q --release --example repack
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-preserve.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root" "$work/native" "$work/dpkg-repack"
tar --numeric-owner -xf "$tarball" -C "$work/root"
n=$(dpkg-query --admindir="$work/root/var/lib/dpkg" -W -f '${db:Status-Abbrev}\n' | grep -c '^ii')

measure() { # LABEL OUTDIR CMD...: run with /usr/bin/time -v, print "secs rss_kb bytes"
    local label=$1 out=$2
    shift 2
    /usr/bin/time -v -o "$work/$label.time" "$@" >"$work/$label.log" 2>&1 ||
        { tail -5 "$work/$label.log" >&2; exit 1; }
    local secs rss bytes
    secs=$(awk -F': ' '/Elapsed/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$work/$label.time")
    rss=$(awk -F': ' '/Maximum resident/ {print $2}' "$work/$label.time")
    bytes=$(du -cb "$out"/*.deb | tail -1 | cut -f1)
    echo "$secs $rss $bytes"
}

sync
read -r ns nr nb < <(measure native "$work/native" target/release/examples/repack "$work/root" "$work/native")
pkgs=$(dpkg-query --admindir="$work/root/var/lib/dpkg" -W -f '${db:Status-Abbrev} ${Package}\n' | awk '$1=="ii" {print $2}')
# shellcheck disable=SC2086
read -r ds dr db < <(cd "$work/dpkg-repack" && measure dpkg-repack "$work/dpkg-repack" dpkg-repack --root="$work/root" --tag=none $pkgs)

fields() { dpkg-deb -f "$1" | sort; }
files() { dpkg-deb --fsys-tarfile "$1" | tar -tv --numeric-owner | awk '{$4=""; $5=""; print}' | sort; }
same=0 differ=()
for f in "$work"/native/*.deb; do
    t="$work/dpkg-repack/$(basename "$f")"
    if [ -f "$t" ] && cmp -s <(fields "$f") <(fields "$t") && cmp -s <(files "$f") <(files "$t"); then
        same=$((same + 1))
    else
        differ+=("$(basename "$f")")
    fi
done
again=$(mktemp -d "$work/again.XXXXXX")
target/release/examples/repack "$work/root" "$again" >/dev/null 2>&1
identical=$(cd "$work/native" && for f in *.deb; do cmp -s "$f" "$again/$f" && echo; done | wc -l)

printf '\npreserve bench: %s installed packages of %s\n' "$n" "$(basename "$tarball")"
printf '%-12s %9s %14s %12s\n' "" "seconds" "bytes" "peak RSS KB"
printf '%-12s %9s %14s %12s\n' native "$ns" "$nb" "$nr" dpkg-repack "$ds" "$db" "$dr"
awk -v a="$ns" -v b="$ds" -v x="$nb" -v y="$db" -v r="$nr" -v q="$dr" 'BEGIN {
    printf "ratio native/dpkg-repack: time %.3f, bytes %.2f, peak RSS %.3f\n", a/b, x/y, r/q }'
echo "same control fields and file list as dpkg-repack: $same of $n${differ:+; differ: ${differ[*]}}"
echo "byte-identical on a second native run: $identical of $n"
