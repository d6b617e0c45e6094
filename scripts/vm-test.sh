#!/usr/bin/env bash
# Booted VM test: the agent .deb in a real Debian 12 with systemd, on a serial console.
#
#   sudo bash scripts/vm-test.sh          # root: debootstrap, mkfs, qemu
#
# 1. tests/image/build-vm-image.sh: bookworm minbase + systemd, kernel, udev (cached in
#    target/images/); scripts/package.sh: the agent .deb
# 2. a per-run disk (ext4, mkfs -d from an overlay of the cached tree) with the .deb installed,
#    release key, agent.conf (node_id empty: machine-id), the timer held back to 1 h after boot
#    so it does not race the cases; and a per-run btrfs disk from the same tree (/ on @rootfs,
#    state_dir on @edgepatch, snapshot = auto, the app's self-test as health check) for case d
# 3. sample packages and bundles (edgepatch-builder keygen/build/publish); a mirror served by
#    python3 on 127.0.0.1, reached by the guest as http://10.0.2.100/ (restrict=on + guestfwd);
#    a vfat USB stick image holding a bundle
# 4. tests/vm/drive.py boots qemu-system-x86_64 (-accel tcg, -kernel/-initrd, root on virtio)
#    and drives the serial console (root autologin on ttyS0). One line per case:
#    "vm: <case> ok (<N> s)" or "vm: <case> FAILED: <why>"; exit 0 only when all pass.
set -euo pipefail
cd "$(dirname "$0")/.."
TOP=$PWD
W=${VM_WORK:-$TOP/target/vm-test}
rm -rf "$W"
mkdir -p "$W"
log() { echo "vm-test: $*" >&2; }

cargo build -q --release -p edgepatch-builder
B=$TOP/target/release/edgepatch-builder
DEB=$(bash scripts/package.sh "$W/pkg" | grep '\.deb$')
ROOT=$(bash tests/image/build-vm-image.sh)
cp "$ROOT"/boot/vmlinuz-* "$W/vmlinuz"
cp "$ROOT"/boot/initrd.img-* "$W/initrd.img"

# --- bundles -----------------------------------------------------------------------------------
cd "$W"
"$B" keygen --out keys >/dev/null
mkpkg() { # name version outdir [postinst]; HEALTH=...: body of the app's self-test
    local d=src/$1-$2
    mkdir -p "$d/DEBIAN" "$d/usr/share/kiosk" "$d/usr/bin"
    printf 'Package: %s\nVersion: %s\nArchitecture: all\nMaintainer: vm test <vm@example.invalid>\nDescription: edgepatch vm test package\n' \
        "$1" "$2" >"$d/DEBIAN/control"
    echo "$1 $2" >"$d/usr/share/kiosk/$1.txt"
    # The app's own self-test (case d's health_command): passes unless HEALTH says otherwise.
    printf '#!/bin/sh\n%s\n' "${HEALTH:-exit 0}" >"$d/usr/bin/$1-health"
    chmod 755 "$d/usr/bin/$1-health"
    if [ -n "${4:-}" ]; then
        printf '%s\n' "$4" >"$d/DEBIAN/postinst"
        chmod 755 "$d/DEBIAN/postinst"
    fi
    mkdir -p "$3"
    dpkg-deb --root-owner-group -Zgzip --build "$d" "$3/$1_$2_all.deb" >/dev/null
}
# c3's postinst stops in the middle (once) so the test can cut the power there.
PAUSE='#!/bin/sh
if [ "$1" = configure ] && [ -e /var/lib/vmtest-pause ]; then
    rm -f /var/lib/vmtest-pause; sync
    echo "VMTEST-IN-POSTINST" >/dev/ttyS0
    sleep 600
fi
exit 0'
mkpkg kiosk-app 1.0 cycle-1
mkpkg kiosk-app 1.1 cycle-2
mkpkg kiosk-app 1.2 cycle-3 "$PAUSE"
# c5 (case d, the btrfs node): a kiosk-app whose self-test fails once it is installed.
HEALTH='echo "kiosk-app 1.3: self-test failed" >&2; exit 1' mkpkg kiosk-app 1.3 cycle-5
V=debian-12-amd64
"$B" build --key keys/edgepatch.key --variant $V --cycle c1 --sequence 1 --install kiosk-app \
    --out c1.epb cycle-1 >/dev/null
for n in 2 3 5; do
    "$B" build --key keys/edgepatch.key --variant $V --cycle c$n --sequence $n \
        --out c$n.epb cycle-$n >/dev/null
done
# c4: the agent updates itself: its own .deb with a higher version, through a bundle.
dpkg-deb -R "$DEB" self
sed -i 's/^Version: .*/&+vmtest1/' self/DEBIAN/control
mkdir -p cycle-4
dpkg-deb --root-owner-group -Zxz --build self cycle-4/edgepatch-self.deb >/dev/null
rm -rf self
"$B" build --key keys/edgepatch.key --variant $V --cycle c4 --sequence 4 --out c4.epb cycle-4 \
    >/dev/null
mkdir -p mirror

# USB stick: vfat, label EDGEPATCH, holding c2.
truncate -s 16M usb.img
mkfs.vfat -n EDGEPATCH usb.img >/dev/null
mcopy -i usb.img c2.epb ::c2.epb

# --- disk --------------------------------------------------------------------------------------
mkdir -p ov/upper ov/work ov/root
mount -t overlay overlay -o "lowerdir=$ROOT,upperdir=$W/ov/upper,workdir=$W/ov/work" ov/root
trap 'umount "$W/ov/root" 2>/dev/null || true' EXIT
R=$W/ov/root
cp "$DEB" "$R/tmp/edgepatch.deb"
chroot "$R" dpkg -i /tmp/edgepatch.deb >/dev/null
rm "$R/tmp/edgepatch.deb"
cp keys/edgepatch.pub "$R/etc/edgepatch/keys/"
cat >"$R/etc/edgepatch/agent.conf" <<CONF
node_id = ""
variant = "$V"
trusted_keys = "/etc/edgepatch/keys"
state_dir = "/var/lib/edgepatch"
mirror = "http://10.0.2.100"
snapshot = "packages"
package_manager = "apt"
splay = 0
CONF
# Network: static address on slirp's subnet (no DHCP client in minbase), systemd-networkd.
printf '[Match]\nName=e*\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\n' \
    >"$R/etc/systemd/network/10-vm.network"
chroot "$R" systemctl enable systemd-networkd >/dev/null 2>&1
mkdir -p "$R/etc/systemd/system/edgepatch.timer.d"
printf '[Timer]\nOnBootSec=1h\n' >"$R/etc/systemd/system/edgepatch.timer.d/vm-test.conf"
: >"$R/etc/machine-id"
truncate -s 3G disk.img
mkfs.ext4 -q -F -L root -d "$R" disk.img

# The btrfs node (case d), laid out as Debian's installer does: / on the subvolume @rootfs,
# named by rootflags=subvol=@rootfs (drive.py) and by fstab; state_dir on its own top-level
# subvolume @edgepatch, mounted by fstab, so a restore of / does not rewind it. Snapshot backend
# auto (picks btrfs), the app's self-test as the health check.
cat >"$R/etc/fstab" <<'FSTAB'
/dev/vda / btrfs rw,subvol=@rootfs 0 0
/dev/vda /var/lib/edgepatch btrfs rw,subvol=@edgepatch 0 0
FSTAB
sed -i 's/^snapshot = .*/snapshot = "auto"/' "$R/etc/edgepatch/agent.conf"
printf 'health_command = "/usr/bin/kiosk-app-health"\nhealth_timeout = 5\n' \
    >>"$R/etc/edgepatch/agent.conf"
truncate -s 3G btrfs.img
mkfs.btrfs -q -L root btrfs.img >/dev/null
mkdir -p bt
mount -o loop btrfs.img bt
trap 'umount "$W/bt" "$W/ov/root" 2>/dev/null || true' EXIT
btrfs -q subvolume create bt/@rootfs
btrfs -q subvolume create bt/@edgepatch
cp -a "$R/." bt/@rootfs/
mkdir -p bt/@rootfs/var/lib/edgepatch
cp -a bt/@rootfs/var/lib/edgepatch/. bt/@edgepatch/
find bt/@rootfs/var/lib/edgepatch -mindepth 1 -delete
chmod 0700 bt/@edgepatch
umount bt
umount "$R"
trap - EXIT
rm -rf ov bt

log "disks ready (ext4 $(du -sh disk.img | cut -f1), btrfs $(du -sh btrfs.img | cut -f1)); booting"
exec python3 "$TOP/tests/vm/drive.py" "$W" "$B"
