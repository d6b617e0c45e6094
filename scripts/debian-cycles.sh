#!/usr/bin/env bash
# Download a corpus of real Debian packages as two patch cycles, for benchmarks and realistic demos.
# (Vendored from the project's shared corpus script so a fresh checkout can fetch it; the tests use
# a five-package corpus of it, see scripts/test-deps.sh.)
#
#   debian-cycles.sh OUTDIR [PACKAGE...]
#
# For each package it asks apt which versions the configured suites offer (bookworm, -updates,
# -security), then writes
#   OUTDIR/cycle-1/*.deb   the oldest available version of every package
#   OUTDIR/cycle-2/*.deb   the newest available version of every package
#   OUTDIR/MANIFEST        package, old version, new version, changed?
# Packages offered in one version only appear identically in both cycles, as in a real month where
# most of a variant's package set does not change. Needs apt-get update to have run (it runs it once
# when the lists are empty). Network: Debian's package registry only. Re-running skips files that are
# already there.
set -euo pipefail
out=${1:?usage: debian-cycles.sh OUTDIR [PACKAGE...]}
shift || true
if (($# == 0)); then
  set -- openssl libssl3 curl libcurl4 tzdata jq libjq1 libxml2 sudo libc6 libc-bin systemd \
    libsystemd0 libudev1 openssh-client openssh-server libexpat1 python3.11 python3.11-minimal \
    libpython3.11-minimal libpython3.11-stdlib git git-man libxslt1.1 ca-certificates hello tree \
    less nano bash coreutils
fi
if [[ -z $(apt-cache madison bash 2>/dev/null) ]]; then apt-get update -qq; fi
mkdir -p "$out/cycle-1" "$out/cycle-2"
out=$(cd "$out" && pwd)
: >"$out/MANIFEST"
for pkg in "$@"; do
  mapfile -t versions < <(apt-cache madison "$pkg" | awk -F'|' '{gsub(/ /,"",$2); print $2}' | sort -u)
  if ((${#versions[@]} == 0)); then
    echo "skip $pkg: apt offers no version" >&2
    continue
  fi
  oldest=${versions[0]} newest=${versions[0]}
  for v in "${versions[@]}"; do
    dpkg --compare-versions "$v" lt "$oldest" && oldest=$v
    dpkg --compare-versions "$v" gt "$newest" && newest=$v
  done
  (cd "$out/cycle-1" && ls "${pkg}_"*.deb >/dev/null 2>&1) || (cd "$out/cycle-1" && apt-get download -qq "$pkg=$oldest" >/dev/null)
  (cd "$out/cycle-2" && ls "${pkg}_"*.deb >/dev/null 2>&1) || (cd "$out/cycle-2" && apt-get download -qq "$pkg=$newest" >/dev/null)
  changed=no
  [[ $oldest != "$newest" ]] && changed=yes
  printf '%s\t%s\t%s\t%s\n' "$pkg" "$oldest" "$newest" "$changed" >>"$out/MANIFEST"
done
for c in cycle-1 cycle-2; do
  printf '%s: %s packages, %s bytes\n' "$c" "$(ls "$out/$c" | wc -l)" "$(cat "$out/$c"/*.deb | wc -c)"
done
printf 'changed between cycles: %s of %s packages\n' "$(grep -c $'\tyes$' "$out/MANIFEST")" "$(wc -l <"$out/MANIFEST")"
