#!/usr/bin/env bash
# Package test (scripts/test.sh step "package"; root, Debian 12):
#   1. scripts/package.sh builds the x86_64 .deb and .rpm into target/packages/
#   2. lintian on the .deb: no E: lines; rpm -qlp lists the expected files
#   3. the .deb is installed into a debootstrapped bookworm tree (tests/image/build-vm-image.sh,
#      cached under target/images/, used through an overlay so the cache stays clean), the agent
#      runs there, then `dpkg --purge` and nothing the package made is left behind
# One line per check: "package: <check> ok" or "package: <check> FAILED: <why>".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$PWD/target/packages
fails=0
ok() { echo "package: $1 ok"; }
bad() {
    echo "package: $1 FAILED: $2"
    fails=$((fails + 1))
}

debs=$(bash scripts/package.sh "$OUT") || {
    bad build "scripts/package.sh exited non-zero"
    exit 1
}
DEB=$(grep '\.deb$' <<<"$debs")
RPM=$(grep '\.rpm$' <<<"$debs")
size=$(stat -c %s target/x86_64-unknown-linux-musl/release/edgepatch)
ok "build ($(basename "$DEB") $(stat -c %s "$DEB") B, $(basename "$RPM") $(stat -c %s "$RPM") B, agent $size B)"

if command -v lintian >/dev/null; then
    lint=$(lintian --tag-display-limit 0 "$DEB" 2>/dev/null)
    if grep -q '^E:' <<<"$lint"; then
        bad lintian "$(grep '^E:' <<<"$lint" | head -n 3 | tr '\n' ' ')"
    else
        ok "lintian (0 errors, $(grep -c '^W:' <<<"$lint") warnings)"
    fi
else
    bad lintian "lintian not installed (scripts/test-deps.sh)"
fi

want="/usr/sbin/edgepatch /etc/edgepatch/agent.conf /var/lib/edgepatch
/usr/lib/systemd/system/edgepatch.service /usr/lib/systemd/system/edgepatch.timer
/usr/lib/systemd/system/edgepatch-recover.service /usr/lib/udev/rules.d/90-edgepatch-usb.rules
/usr/lib/systemd/system-preset/80-edgepatch.preset
/usr/share/doc/edgepatch/examples/edgepatch.cron /usr/share/man/man8/edgepatch.8.gz"
list=$(rpm -qlp "$RPM" 2>/dev/null)
missing=$(for f in $want; do grep -qx "$f" <<<"$list" || echo "$f"; done)
conf=$(rpm -qcp "$RPM" 2>/dev/null)
if [ -n "$missing" ]; then
    bad rpm-contents "missing $missing"
elif [ "$conf" != /etc/edgepatch/agent.conf ]; then
    bad rpm-contents "config files: $conf"
else
    ok "rpm-contents ($(wc -l <<<"$list") paths)"
fi

# Install and purge in a chroot over the cached image.
ROOT=$(bash tests/image/build-vm-image.sh) || {
    bad image "tests/image/build-vm-image.sh failed"
    exit 1
}
W=$(mktemp -d /tmp/edgepatch-pkgtest.XXXXXX)
mkdir -p "$W/upper" "$W/work" "$W/root"
cleanup() {
    for m in proc dev; do umount "$W/root/$m" 2>/dev/null; done
    umount "$W/root" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
mount -t overlay overlay -o "lowerdir=$ROOT,upperdir=$W/upper,workdir=$W/work" "$W/root"
mount -t proc proc "$W/root/proc"
mount --bind /dev "$W/root/dev"
snap() {
    chroot "$W/root" find / -xdev \( -path /proc -o -path /dev -o -path /var/lib/dpkg \
        -o -path /var/log -o -path /var/cache -o -path /tmp \) -prune -o -print | LC_ALL=C sort
}
before=$(snap)
cp "$DEB" "$W/root/tmp/"
if ! out=$(chroot "$W/root" dpkg -i "/tmp/$(basename "$DEB")" 2>&1); then
    bad install "$(tail -n 3 <<<"$out" | tr '\n' ' ')"
elif ! v=$(chroot "$W/root" /usr/sbin/edgepatch --version); then
    bad install "edgepatch --version failed in the chroot"
elif [ "$(stat -c %a "$W/root/var/lib/edgepatch")" != 700 ]; then
    bad install "/var/lib/edgepatch is $(stat -c %a "$W/root/var/lib/edgepatch"), not 700"
elif [ ! -L "$W/root/etc/systemd/system/timers.target.wants/edgepatch.timer" ]; then
    bad install "edgepatch.timer not enabled"
else
    ok "install ($v; timer and recovery unit enabled)"
fi
# `dpkg -r` masks the units; installing again must unmask and enable them.
if ! out=$(chroot "$W/root" sh -c "dpkg -r edgepatch && dpkg -i /tmp/$(basename "$DEB")" 2>&1); then
    bad reinstall "$(tail -n 3 <<<"$out" | tr '\n' ' ')"
elif [ -L "$W/root/etc/systemd/system/edgepatch.timer" ] ||
    [ ! -L "$W/root/etc/systemd/system/timers.target.wants/edgepatch.timer" ]; then
    bad reinstall "after dpkg -r and dpkg -i the timer is masked or not enabled"
else
    ok "remove, then install again (units unmasked and enabled)"
fi
echo 'node_id = "edited"' >>"$W/root/etc/edgepatch/agent.conf"
touch "$W/root/var/lib/edgepatch/status.json"
rm -f "$W/root/tmp/$(basename "$DEB")"
if ! out=$(chroot "$W/root" dpkg --purge edgepatch 2>&1); then
    bad purge "$(tail -n 3 <<<"$out" | tr '\n' ' ')"
else
    left=$(diff <(echo "$before") <(snap) | grep '^[<>]')
    if [ -n "$left" ]; then
        bad purge "left behind: $(head -n 5 <<<"$left" | tr '\n' ' ')"
    else
        ok "purge (edited conffile and state removed, nothing left behind)"
    fi
fi
[ "$fails" -eq 0 ]
