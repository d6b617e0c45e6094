#!/usr/bin/env bash
# Build the static agent and package it as a .deb and an .rpm.
#
#   bash scripts/package.sh [--target TRIPLE] OUTDIR
#
# TRIPLE: x86_64-unknown-linux-musl (default), aarch64-unknown-linux-musl or
# armv7-unknown-linux-musleabihf. Writes into OUTDIR
#   edgepatch_<version>_<debarch>.deb              dpkg-deb from dist/deb/ (amd64, arm64, armhf)
#   edgepatch-<version>-<release>.<rpmarch>.rpm    rpmbuild from dist/rpm/edgepatch.spec
#                                                  (x86_64, aarch64, armv7hl)
# Both hold /usr/sbin/edgepatch, the systemd units (run service + timer, boot-time recovery,
# USB import, alert example), the udev rule for USB sticks, the cron alternative under
# /usr/share/doc/edgepatch/examples, /etc/edgepatch/agent.conf (conffile), /etc/edgepatch/keys,
# /var/lib/edgepatch (0700) and edgepatch(8), generated from `edgepatch --help`.
# Needs cargo (with the target), dpkg-deb, rpmbuild; SKIP_BUILD=1 uses the binary already in
# target/TRIPLE/release/.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-musl
if [ "${1:-}" = --target ]; then
    TARGET=${2:?--target needs a TRIPLE}
    shift 2
fi
OUTDIR=${1:?usage: scripts/package.sh [--target TRIPLE] OUTDIR}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

case $TARGET in
x86_64-unknown-linux-musl) DEBARCH=amd64 RPMARCH=x86_64 RUNNER= ;;
aarch64-unknown-linux-musl) DEBARCH=arm64 RPMARCH=aarch64 RUNNER=qemu-aarch64-static ;;
armv7-unknown-linux-musleabihf) DEBARCH=armhf RPMARCH=armv7hl RUNNER=qemu-arm-static ;;
*)
    echo "package.sh: unknown target $TARGET" >&2
    exit 1
    ;;
esac
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' agent/Cargo.toml | head -n 1)
RELEASE=${RELEASE:-1}
BIN=${CARGO_TARGET_DIR:-target}/$TARGET/release/edgepatch
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release -q -p edgepatch --target "$TARGET"
fi
[ -x "$BIN" ] || {
    echo "package.sh: no agent at $BIN" >&2
    exit 1
}

WORK=$(mktemp -d /tmp/edgepatch-package.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

# edgepatch(8) from --help: the usage text and exit table, verbatim in a no-fill block.
manpage() {
    local help
    help=$($RUNNER "$BIN" --help)
    {
        printf '.TH EDGEPATCH 8 "%s" "edgepatch %s" "System Administration"\n' \
            "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)" "$VERSION"
        printf '.SH NAME\nedgepatch \\- offline patch agent for edge fleets\n'
        printf '.SH SYNOPSIS\n.B edgepatch\n[\\-\\-config FILE] [\\-v|\\-q] COMMAND [ARGS]\n'
        printf '.SH DESCRIPTION\nVerifies signed patch bundles and installs them with the node'"'"'s package manager.\n'
        printf 'The text below is the output of\n.BR "edgepatch \\-\\-help" .\n'
        printf '.PP\n.nf\n'
        # Escape backslashes and hyphens, and keep lines from starting with a control character.
        sed -e 's/\\/\\e/g' -e 's/-/\\-/g' -e "s/^\\([.']\\)/\\\\\\&\\1/" <<<"$help"
        printf '.fi\n.SH FILES\n.TP\n/etc/edgepatch/agent.conf\nconfig (node_id empty: /etc/machine-id is used)\n'
        printf '.TP\n/var/lib/edgepatch\nstate: incoming bundles, journal, status.json\n'
        printf '.SH SEE ALSO\n/usr/share/doc/edgepatch/README.md\n'
    } | gzip -9n >"$1"
}

# stage ROOT UNITDIR UDEVDIR VARIANT: the installed tree.
stage() {
    local r=$1 unitdir=$2 udevdir=$3 variant=$4 doc=$1/usr/share/doc/edgepatch
    install -d -m 0755 "$r/usr/sbin" "$r$unitdir" "$r$udevdir" "$r/usr/libexec/edgepatch" \
        "$doc/examples" "$r/usr/share/man/man8" "$r/etc/edgepatch/keys"
    install -d -m 0700 "$r/var/lib/edgepatch"
    install -m 0755 "$BIN" "$r/usr/sbin/edgepatch"
    for u in edgepatch.service edgepatch.timer edgepatch-recover.service edgepatch-usb@.service \
        edgepatch-alert@.service; do
        install -m 0644 "dist/$u" "$r$unitdir/$u"
    done
    install -m 0644 dist/90-edgepatch-usb.rules "$r$udevdir/90-edgepatch-usb.rules"
    install -m 0755 dist/libexec/usb-import "$r/usr/libexec/edgepatch/usb-import"
    install -m 0644 dist/edgepatch.cron "$doc/examples/edgepatch.cron"
    install -m 0644 dist/agent.conf.example "$doc/examples/agent.conf.example"
    install -m 0644 README.md "$doc/README.md"
    gzip -9n "$doc/README.md"
    sed "s/@VARIANT@/$variant/" dist/agent.conf >"$r/etc/edgepatch/agent.conf"
    chmod 0644 "$r/etc/edgepatch/agent.conf"
    manpage "$r/usr/share/man/man8/edgepatch.8.gz"
}

# --- .deb ---------------------------------------------------------------------------------------
D=$WORK/deb
stage "$D" /lib/systemd/system /lib/udev/rules.d "debian-12-$DEBARCH"
install -m 0644 dist/deb/copyright "$D/usr/share/doc/edgepatch/copyright"
install -D -m 0644 dist/deb/lintian-overrides "$D/usr/share/lintian/overrides/edgepatch"
sed "s/@VERSION@/$VERSION/" dist/deb/changelog | gzip -9n >"$D/usr/share/doc/edgepatch/changelog.gz"
install -d -m 0755 "$D/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$D" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@DEBARCH@/$DEBARCH/" -e "s/@INSTALLED_SIZE@/$size/" \
    dist/deb/control >"$D/DEBIAN/control"
install -m 0644 dist/deb/conffiles "$D/DEBIAN/conffiles"
for s in postinst prerm postrm; do install -m 0755 "dist/deb/$s" "$D/DEBIAN/$s"; done
(cd "$D" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort |
    xargs md5sum >DEBIAN/md5sums)
chmod 0644 "$D/DEBIAN/md5sums"
find "$D" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
DEB=$OUTDIR/edgepatch_${VERSION}_${DEBARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$D" "$DEB" >/dev/null
echo "$DEB"

# --- .rpm ---------------------------------------------------------------------------------------
R=$WORK/rpmroot
stage "$R" /usr/lib/systemd/system /usr/lib/udev/rules.d "rhel-9-$RPMARCH"
install -m 0644 dist/deb/copyright "$R/usr/share/doc/edgepatch/copyright"
rpmbuild -bb --quiet --target "$RPMARCH-linux" \
    --define "_topdir $WORK/rpmbuild" --define "staging $R" \
    --define "version $VERSION" --define "release $RELEASE" \
    --define "_rpmdir $WORK/rpms" --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
    dist/rpm/edgepatch.spec >"$WORK/rpmbuild.log" 2>&1 || {
    cat "$WORK/rpmbuild.log" >&2
    exit 1
}
RPM=$OUTDIR/edgepatch-$VERSION-$RELEASE.$RPMARCH.rpm
mv "$WORK/rpms/edgepatch-$VERSION-$RELEASE.$RPMARCH.rpm" "$RPM"
echo "$RPM"
