#!/usr/bin/env bash
# Benchmark: `edgepatch apply` against plain `apt-get install` of the same packages from the same
# local repository into the same kind of scratch root, in one run. Prints the overhead ratio
# (goal: <= 10%). Not a test: run it by hand, as root, after `cargo build --release`.
#
#   scripts/bench-apply.sh [PACKAGES=40] [KIB_PER_PACKAGE=512] [ROUNDS=3]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-40} kib=${2:-512} rounds=${3:-3}
agent=$top/target/release/edgepatch builder=$top/target/release/edgepatch-builder
[[ -x $agent && -x $builder ]] || (cd "$top" && cargo build --release -q -p edgepatch -p edgepatch-builder)
work=$(mktemp -d /tmp/edgepatch-bench-apply.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"

# Packages: n synthetic ones with random payload and a trivial postinst, chained dependencies.
mkdir -p pkgs
for i in $(seq 1 "$n"); do
  d=build/p$i
  mkdir -p "$d/DEBIAN" "$d/usr/share/bench"
  dep=""; ((i > 1)) && dep="Depends: bench-$((i - 1))"
  printf 'Package: bench-%s\nVersion: 1.0\nArchitecture: all\nMaintainer: bench <b@example.invalid>\nDescription: bench\n%s\n' "$i" "$dep" | sed '/^$/d' >"$d/DEBIAN/control"
  printf '#!/bin/sh\ntrue\n' >"$d/DEBIAN/postinst"; chmod 755 "$d/DEBIAN/postinst"
  head -c $((kib * 1024)) /dev/urandom >"$d/usr/share/bench/blob$i"
  dpkg-deb --root-owner-group -Zgzip -z1 --build "$d" "pkgs/bench-${i}_1.0_all.deb" >/dev/null
done
"$builder" keygen --out keys >/dev/null
"$builder" build --key keys/edgepatch.key --variant bench-amd64 --cycle b1 --sequence 1 --install "bench-$n" --out b1.epb pkgs >/dev/null

mkroot() {
  rm -rf "$1"; mkdir -p "$1/var/lib/dpkg/info" "$1/var/lib/dpkg/updates" "$1/var/lib/dpkg/triggers"
  cp /var/lib/dpkg/status "$1/var/lib/dpkg/status"; : >"$1/var/lib/dpkg/available"
}

# The baseline repo: the same flat repository the agent stages (Packages + pool/), laid out once.
mkroot seed-root
printf 'node_id = "bench"\nvariant = "bench-amd64"\ntrusted_keys = "%s/keys/edgepatch.pub"\nstate_dir = "%s/seed-state"\nroot = "%s/seed-root"\npackage_manager = "apt"\n' "$work" "$work" "$work" >seed.conf
"$agent" --config seed.conf apply b1.epb >/dev/null
repo=$work/seed-state/cache/current

baseline() {
  local R=$work/base-root W=$work/aptw
  mkroot "$R"; rm -rf "$W"
  mkdir -p "$W/lists/partial" "$W/cache/archives/partial" "$W/etc/sources.list.d" "$W/etc/preferences.d" "$W/etc/apt.conf.d" "$W/log"
  echo "deb [trusted=yes] file:$repo ./" >"$W/etc/sources.list"
  cat >"$W/apt.conf" <<CONF
Dir::Etc::SourceList "$W/etc/sources.list"; Dir::Etc::SourceParts "$W/etc/sources.list.d";
Dir::Etc::Preferences "$W/etc/preferences"; Dir::Etc::PreferencesParts "$W/etc/preferences.d";
Dir::Etc::Parts "$W/etc/apt.conf.d"; Dir::State::Lists "$W/lists"; Dir::State::status "$R/var/lib/dpkg/status";
Dir::Cache "$W/cache"; Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache ""; Dir::Log "$W/log";
APT::Sandbox::User "root"; Acquire::Languages "none";
DPkg::Options { "--root=$R"; "--admindir=$R/var/lib/dpkg"; "--force-script-chrootless"; };
CONF
  local t0=$(date +%s.%N)
  APT_CONFIG=$W/apt.conf apt-get -q -y update >/dev/null
  APT_CONFIG=$W/apt.conf DEBIAN_FRONTEND=noninteractive apt-get -q -y install "bench-$n" >/dev/null
  echo "$(date +%s.%N) - $t0" | bc
}

ours() {
  mkroot "$work/node-root"; rm -rf "$work/node-state"
  printf 'node_id = "bench"\nvariant = "bench-amd64"\ntrusted_keys = "%s/keys/edgepatch.pub"\nstate_dir = "%s/node-state"\nroot = "%s/node-root"\npackage_manager = "apt"\n' "$work" "$work" "$work" >node.conf
  local t0=$(date +%s.%N)
  "$agent" -q --config node.conf apply b1.epb >/dev/null
  echo "$(date +%s.%N) - $t0" | bc
}

best_base=999 best_ours=999
for r in $(seq 1 "$rounds"); do
  b=$(baseline); o=$(ours)
  printf 'round %s: apt-get install %.3fs   edgepatch apply %.3fs\n' "$r" "$b" "$o"
  best_base=$(echo "if ($b < $best_base) $b else $best_base" | bc)
  best_ours=$(echo "if ($o < $best_ours) $o else $best_ours" | bc)
done
bytes=$(stat -c %s b1.epb)
echo
echo "packages: $n x ${kib} KiB random payload, bundle $bytes bytes"
printf '%-44s %8.3f s\n' "plain apt-get update + install (best of $rounds)" "$best_base"
printf '%-44s %8.3f s\n' "edgepatch apply: verify+stage+install (best)" "$best_ours"
printf '%-44s %8.1f %%\n' "overhead" "$(echo "($best_ours - $best_base) * 100 / $best_base" | bc -l)"
