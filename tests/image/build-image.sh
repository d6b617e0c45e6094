#!/usr/bin/env bash
# Build (once) a real Debian 12 image for the preserve tests and benchmarks:
#   debootstrap --variant=minbase --arch=ARCH bookworm, from Debian's archive, packed as a tarball.
# Usage: tests/image/build-image.sh [ARCH [OUTDIR]]   (defaults: amd64, <repo>/target/images)
# Prints the tarball's path. An existing tarball is reused; delete it to rebuild.
# Needs root and debootstrap (scripts/test-deps.sh installs it).
#
# A foreign ARCH (arm64, armhf on an amd64 builder) needs the kernel to hand that architecture's
# binaries to qemu-user: debootstrap's second stage chroots into the new tree and runs them, and
# the tests later run the image's apt/dpkg and the static agent there. This script registers
# qemu-user-static's binfmt_misc entry (/usr/lib/binfmt.d/qemu-NAME.conf) when it is missing,
# mounting /proc/sys/fs/binfmt_misc first if needed (systemd-binfmt does not run in a container),
# with the F flag: the kernel opens the interpreter once, so the chroot needs no copy of it. It
# does so on every call, the cached tarball too: entries vanish with a reboot.
set -euo pipefail

arch=${1:-amd64}
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${2:-$repo/target/images}
mirror=${EDGEPATCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
tarball=$out/debian-12-minbase-$arch.tar

die() {
    echo "build-image: $*" >&2
    exit 1
}

# qemu's name for a Debian architecture, empty when this host runs it natively.
qemu_name() {
    local host
    host=$(dpkg --print-architecture 2>/dev/null || uname -m)
    [ "$1" = "$host" ] && return 0
    case "$host/$1" in amd64/i386 | arm64/armhf | arm64/armel) return 0 ;; esac
    case "$1" in
        arm64) echo aarch64 ;;
        armhf | armel) echo arm ;;
        amd64) echo x86_64 ;;
        i386) echo i386 ;;
        ppc64el) echo ppc64le ;;
        mips64el) echo mips64el ;;
        riscv64 | s390x) echo "$1" ;;
        *) die "no qemu-user mapping for architecture $1" ;;
    esac
}

ensure_binfmt() {
    local q=$1 dir=/proc/sys/fs/binfmt_misc conf line flags entry
    conf=/usr/lib/binfmt.d/qemu-$q.conf
    [ "$(id -u)" -eq 0 ] || die "running $arch binaries needs binfmt_misc, registering it needs root"
    if [ ! -e "$dir/register" ]; then
        mount -t binfmt_misc binfmt_misc "$dir" 2>/dev/null ||
            die "cannot mount binfmt_misc on $dir (a container without CAP_SYS_ADMIN?): $arch binaries cannot run here"
    fi
    entry=$dir/qemu-$q
    if [ ! -e "$entry" ]; then
        [ -f "$conf" ] || die "no $conf: apt-get install qemu-user-static (scripts/test-deps.sh)"
        # One ':name:type:offset:magic:mask:interpreter:flags' line; comments start with # or ;.
        line=$(grep -v '^[#;]' "$conf" | grep -m1 .) || die "$conf holds no entry"
        flags=${line##*:}
        case "$flags" in *F*) ;; *) line=${line}F ;; esac
        echo "build-image: registering $conf with binfmt_misc (flags ${line##*:})" >&2
        # printf %s: the \x.. escapes of magic and mask are the kernel's to decode.
        printf '%s' "$line" >"$dir/register" 2>/dev/null || [ -e "$entry" ] ||
            die "writing $conf to $dir/register failed"
    fi
    grep -qx enabled "$entry" || die "$entry is disabled: echo 1 > $entry"
    flags=$(sed -n 's/^flags: *//p' "$entry")
    case "$flags" in
        *F*) ;;
        *) die "$entry was registered without the F flag (flags '$flags'): the chroot has no" \
            "interpreter; drop it with 'echo -1 > $entry' and rerun (this registers $conf with F)" ;;
    esac
}

q=$(qemu_name "$arch")
[ -n "$q" ] && ensure_binfmt "$q"

if [ -s "$tarball" ]; then
    echo "$tarball"
    exit 0
fi
command -v debootstrap >/dev/null || die "debootstrap not installed (scripts/test-deps.sh)"
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"

mkdir -p "$out"
# One build per architecture at a time: tests that start together wait for the first one.
exec 9>"$out/.lock-$arch"
flock 9
if [ -s "$tarball" ]; then
    echo "$tarball"
    exit 0
fi
work=$(mktemp -d "$out/.build-$arch-XXXXXX")
trap 'umount "$work/root/proc" 2>/dev/null || true; umount "$work/root/sys" 2>/dev/null || true; rm -rf "$work"' EXIT
echo "build-image: debootstrap --variant=minbase --arch=$arch bookworm from $mirror${q:+ (second stage under qemu-$q)}" >&2
start=$SECONDS
debootstrap --variant=minbase --arch="$arch" bookworm "$work/root" "$mirror" >"$work/log" 2>&1 || {
    tail -n 20 "$work/log" >&2
    exit 1
}
# The image must run here (a foreign one through binfmt_misc) before it is cached.
chroot "$work/root" /bin/true || die "the new $arch tree does not run here (chroot /bin/true failed)"
echo "build-image: debootstrap took $((SECONDS - start)) s" >&2
# Drop the downloaded .debs: the image is what a node has installed, not a package cache.
rm -f "$work/root/var/cache/apt/archives/"*.deb
tar --numeric-owner --xattrs -C "$work/root" -cf "$work/image.tar" .
mv "$work/image.tar" "$tarball"
echo "$tarball"
