#!/usr/bin/env bash
# Build (once) a real Debian 12 image for the preserve tests and benchmarks:
#   debootstrap --variant=minbase bookworm, from Debian's archive, packed as a tarball.
# Usage: tests/image/build-image.sh [ARCH [OUTDIR]]   (defaults: amd64, <repo>/target/images)
# Prints the tarball's path. An existing tarball is reused; delete it to rebuild.
# Needs root and debootstrap (scripts/test-deps.sh installs it).
set -euo pipefail

arch=${1:-amd64}
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${2:-$repo/target/images}
mirror=${EDGEPATCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
tarball=$out/debian-12-minbase-$arch.tar

if [ -s "$tarball" ]; then
    echo "$tarball"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "build-image: debootstrap not installed (scripts/test-deps.sh)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "build-image: debootstrap needs root" >&2; exit 1; }

mkdir -p "$out"
work=$(mktemp -d "$out/.build-$arch-XXXXXX")
trap 'umount "$work/root/proc" 2>/dev/null || true; rm -rf "$work"' EXIT
echo "build-image: debootstrap --variant=minbase --arch=$arch bookworm from $mirror" >&2
debootstrap --variant=minbase --arch="$arch" bookworm "$work/root" "$mirror" >"$work/log" 2>&1 || {
    tail -n 20 "$work/log" >&2
    exit 1
}
# Drop the downloaded .debs: the image is what a node has installed, not a package cache.
rm -f "$work/root/var/cache/apt/archives/"*.deb
tar --numeric-owner --xattrs -C "$work/root" -cf "$work/image.tar" .
mv "$work/image.tar" "$tarball"
echo "$tarball"
