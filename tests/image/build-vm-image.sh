#!/usr/bin/env bash
# Build (once) a Debian 12 root tree for the package and VM tests, cached under target/images/.
#
#   bash tests/image/build-vm-image.sh            # prints the path of the root tree
#   bash tests/image/build-vm-image.sh --disk     # also an ext4 disk image, prints its path
#
# debootstrap --variant=minbase bookworm with systemd, systemd-sysv, linux-image-amd64, udev,
# kmod and btrfs-progs (the agent's btrfs snapshots; its initramfs hook and MODULES=most put
# btrfs into the initrd, so the same kernel boots a btrfs root), from the mirror in
# /etc/apt/sources.list.d/debian.sources (deb.debian.org). Root only.
# The tree (target/images/bookworm-root/) is the chroot of tests/package.sh; the disk image
# (target/images/bookworm.ext4, plus vmlinuz and initrd.img next to it) is what
# scripts/vm-test.sh boots. Delete target/images/ to rebuild. Other branches may have
# tests/image/build-image.sh; this one is separate on purpose.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${EDGEPATCH_IMAGES:-$PWD/target/images}
ROOT=$OUT/bookworm-root
MIRROR=${EDGEPATCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
INCLUDE=systemd,systemd-sysv,linux-image-amd64,udev,kmod,dbus,e2fsprogs,dosfstools,btrfs-progs
mkdir -p "$OUT"

# .complete holds the package list it was built with: a tree from an older list is rebuilt.
if [ "$(cat "$ROOT/.complete" 2>/dev/null)" != "$INCLUDE" ]; then
    rm -rf "$ROOT" "$ROOT.tmp"
    echo "build-vm-image: debootstrap bookworm into $ROOT (a few minutes, cached)" >&2
    debootstrap --variant=minbase --include="$INCLUDE" bookworm "$ROOT.tmp" "$MIRROR" \
        >"$OUT/debootstrap.log" 2>&1 || {
        tail -n 20 "$OUT/debootstrap.log" >&2
        exit 1
    }
    R=$ROOT.tmp
    echo edgepatch-vm >"$R/etc/hostname"
    # One image for the whole fleet: an empty machine-id makes systemd generate one at first boot.
    : >"$R/etc/machine-id"
    printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$R/etc/fstab"
    # Root autologin on the serial console, no password prompt: the VM test types there.
    mkdir -p "$R/etc/systemd/system/serial-getty@ttyS0.service.d"
    cat >"$R/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'UNIT'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200 %I vt220
UNIT
    chroot "$R" passwd -d root >/dev/null
    rm -f "$R"/var/cache/apt/archives/*.deb
    mv "$R" "$ROOT"
    echo "$INCLUDE" >"$ROOT/.complete"
fi

if [ "${1:-}" = --disk ]; then
    DISK=$OUT/bookworm.ext4
    if [ ! -f "$DISK" ] || [ "$ROOT/.complete" -nt "$DISK" ]; then
        cp "$ROOT"/boot/vmlinuz-* "$OUT/vmlinuz"
        cp "$ROOT"/boot/initrd.img-* "$OUT/initrd.img"
        rm -f "$DISK.tmp"
        truncate -s 2G "$DISK.tmp"
        mkfs.ext4 -q -F -L edgepatch-root -d "$ROOT" "$DISK.tmp"
        mv "$DISK.tmp" "$DISK"
    fi
    echo "$DISK"
else
    echo "$ROOT"
fi
