#!/usr/bin/env bash
# The main job end to end on embedded defaults, in a scratch directory, printing each step:
# keys -> two patch cycles of sample packages -> signed bundles -> verify -> apply into a scratch
# Debian root with every other repository disabled -> upgrade -> replay refused -> tampered bundle
# quarantined -> rollback -> status. No servers, nothing outside the scratch dir is changed.
#
#   sudo scripts/demo.sh            (root: dpkg writes the scratch root's files and database)
#   KEEP=1 scripts/demo.sh          keep the scratch dir afterwards
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
for tool in cargo dpkg-deb apt-get; do
  command -v "$tool" >/dev/null || { echo "demo: $tool not found (install rustup / dpkg / apt)" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "demo: run as root (dpkg installs into a scratch root)" >&2; exit 1; }

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }
try() { printf '$ %s\n' "$*"; set +e; "$@"; local rc=$?; set -e; echo "(exit $rc)"; }

step "build edgepatch (agent) and edgepatch-builder"
(cd "$top" && cargo build -q --release -p edgepatch -p edgepatch-builder)
A=$top/target/release/edgepatch B=$top/target/release/edgepatch-builder
work=$(mktemp -d /tmp/edgepatch-demo.XXXXXX)
[[ -n ${KEEP:-} ]] || trap 'rm -rf "$work"' EXIT
cd "$work"
echo "scratch dir: $work"

step "central: a release key"
show "$B" keygen --out keys

step "central: sample packages for two patch cycles (kiosk-app depends on kiosk-lib)"
mkpkg() { # name version depends outdir
  local d=src/$1-$2
  mkdir -p "$d/DEBIAN" "$d/usr/share/kiosk"
  printf 'Package: %s\nVersion: %s\nArchitecture: all\nMaintainer: demo <demo@example.invalid>\nDescription: edgepatch demo package\n' "$1" "$2" >"$d/DEBIAN/control"
  [[ -n $3 ]] && echo "Depends: $3" >>"$d/DEBIAN/control"
  echo "$1 $2" >"$d/usr/share/kiosk/$1.txt"
  mkdir -p "$4" && dpkg-deb --root-owner-group -Zgzip --build "$d" "$4/$1_$2_all.deb" >/dev/null
}
mkpkg kiosk-lib 1.0 "" cycle-1; mkpkg kiosk-app 1.0 "kiosk-lib (>= 1.0)" cycle-1
mkpkg kiosk-lib 1.1 "" cycle-2; mkpkg kiosk-app 1.1 "kiosk-lib (>= 1.1)" cycle-2
ls cycle-1 cycle-2

step "central: seal one signed bundle per cycle (repo metadata made here, not on the node)"
show "$B" build --key keys/edgepatch.key --variant debian-12-amd64 --cycle 20261124-build-1 --sequence 1 --install kiosk-app --out c1.epb cycle-1
show "$B" build --key keys/edgepatch.key --variant debian-12-amd64 --cycle 20261201-build-2 --sequence 2 --out c2.epb cycle-2
show "$B" inspect c2.epb

step "node: a scratch root (the host's dpkg database, so base packages count as installed)"
mkdir -p root/var/lib/dpkg/{info,updates,triggers} && cp /var/lib/dpkg/status root/var/lib/dpkg/ && : >root/var/lib/dpkg/available
cat >agent.conf <<EOF
node_id = "store-0042-till-1"
variant = "debian-12-amd64"
labels = ["role=kiosk", "region=eu-west"]
trusted_keys = "$work/keys/edgepatch.pub"
state_dir = "$work/state"
root = "$work/root"
package_manager = "apt"
snapshot = "packages"
EOF
cat agent.conf

step "node: verify offline (Ed25519 + sha256 + variant + freshness + sequence)"
show "$A" --config agent.conf verify c1.epb

step "node: the bundle arrives by USB stick / rsync drop into incoming/; apply installs it offline"
mkdir -p state/incoming && cp c1.epb state/incoming/
show "$A" --config agent.conf apply
show cat root/usr/share/kiosk/kiosk-app.txt

step "node: apply again is a no-op (idempotent)"
show "$A" --config agent.conf apply c1.epb

step "node: next cycle upgrades both packages"
show "$A" --config agent.conf apply c2.epb
show cat root/usr/share/kiosk/kiosk-app.txt

step "node: replaying the older, validly signed bundle is refused (exit 4)"
try "$A" --config agent.conf apply c1.epb

step "node: a tampered bundle is refused (exit 2) and quarantined"
show "$B" build --key keys/edgepatch.key --variant debian-12-amd64 --cycle 20261208-build-3 --sequence 3 --out bad.epb cycle-2
printf 'X' | dd of=bad.epb bs=1 seek=$(($(stat -c %s bad.epb) - 50)) conv=notrunc 2>/dev/null
try "$A" --config agent.conf apply bad.epb
show ls state/quarantine

step "node: roll back the last cycle (serial console)"
show "$A" --config agent.conf rollback
show cat root/usr/share/kiosk/kiosk-app.txt

step "node: status, as a technician sees it over a serial console"
show "$A" --config agent.conf status
echo
echo "demo finished; status.json: $work/state/status.json${KEEP:+ (kept)}"
