#!/usr/bin/env bash
# Delta bundles vs Debian's debdelta/debpatch on the same two-cycle corpus, in one run.
#
#   scripts/bench-delta.sh [CORPUS_DIR]      (default $EDGEPATCH_CORPUS or /tmp/corpus)
#
# CORPUS_DIR/cycle-1 and cycle-2 hold .debs (make them with ../shared/corpus/debian-cycles.sh).
# Needs: cargo build --release -p edgepatch -p edgepatch-builder (or BIN_DIR=...), debdelta,
# bsdiff, /usr/bin/time. Not a test: run it by hand, as root. Prints full size, package-level
# (refs only) size, binary-delta size, build time, apply time and peak RSS for both tools.
#
# "apply" for edgepatch is `edgepatch apply DELTA` on a node that applied the full cycle-1 bundle:
# verify + rebuild every package into staging + commit (the scratch root has none of the corpus
# packages installed, so no package manager work is timed). "agent RSS" is the agent process's own
# VmHWM (it logs it after rebuilding); "max RSS" is /usr/bin/time's, which includes the largest
# child (dpkg-deb decompressing an old data.tar.xz). For debpatch it is the same /usr/bin/time
# figure over the whole loop (debpatch and its xz/bsdiff children).
set -euo pipefail
corpus=${1:-${EDGEPATCH_CORPUS:-/tmp/corpus}}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN_DIR:-$root/target/release}
B=$bin/edgepatch-builder
A=$bin/edgepatch
for t in "$B" "$A" /usr/bin/time debdelta debpatch; do
  command -v "$t" >/dev/null || { echo "missing $t (cargo build --release; scripts/test-deps.sh)" >&2; exit 1; }
done
[[ -d $corpus/cycle-1 && -d $corpus/cycle-2 ]] || { echo "no corpus at $corpus" >&2; exit 1; }
work=$(mktemp -d /tmp/bench-delta.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }

"$B" keygen --out keys >/dev/null
k=(--key keys/edgepatch.key --variant debian-12-amd64)
"$B" build "${k[@]}" --cycle c1 --sequence 1 --out c1.epb "$corpus/cycle-1" >/dev/null
"$B" build "${k[@]}" --cycle c2 --sequence 2 --out c2.epb "$corpus/cycle-2" >/dev/null
"$B" build "${k[@]}" --cycle c2 --sequence 2 --base c1.epb --refs-only --out c2-refs.epb "$corpus/cycle-2" >/dev/null
t0=$(now)
/usr/bin/time -f '%M' -o build.rss "$B" build "${k[@]}" --cycle c2 --sequence 2 --base c1.epb \
  --out c2-delta.epb "$corpus/cycle-2" >build.log
t1=$(now)
ep_build=$(secs "$t0" "$t1")
ep_build_rss=$(tail -1 build.rss)

# A node that applied the full cycle-1 bundle (empty scratch root: nothing gets installed).
mkdir -p node/root/var/lib/dpkg/{info,updates,triggers}
: >node/root/var/lib/dpkg/status
: >node/root/var/lib/dpkg/available
printf 'node_id = "bench"\nvariant = "debian-12-amd64"\ntrusted_keys = "%s/keys/edgepatch.pub"\nstate_dir = "%s/node/state"\nroot = "%s/node/root"\npackage_manager = "apt"\n' \
  "$work" "$work" "$work" >node.conf
"$A" --config node.conf apply c1.epb >/dev/null
sync
t0=$(now)
/usr/bin/time -f '%M' -o apply.rss "$A" --config node.conf -v apply c2-delta.epb >apply.out 2>apply.log
t1=$(now)
ep_apply=$(secs "$t0" "$t1")
ep_apply_rss=$(tail -1 apply.rss)
ep_agent_rss=$(sed -n 's/.*agent peak RSS \([0-9]*\) kB.*/\1/p' apply.log | tail -1)
# The rebuilt set must be exactly what the signed manifest says (the agent checked; show it).
rebuilt=$(ls node/state/cache/current/pool | wc -l)

# debdelta / debpatch on the changed packages (same pairs: package name and architecture).
mkdir -p dd out
pairs=()
for new in "$corpus"/cycle-2/*.deb; do
  f=$(basename "$new")
  [[ -e $corpus/cycle-1/$f ]] && continue
  key=${f%%_*}
  old=$(ls "$corpus"/cycle-1/"${key}"_*.deb 2>/dev/null | head -1)
  [[ -n $old ]] && pairs+=("$old|$new")
done
printf '%s\n' "${pairs[@]}" >pairs
t0=$(now)
/usr/bin/time -f '%M' -o dd-build.rss bash -c '
  while IFS="|" read -r old new; do debdelta "$old" "$new" "dd/$(basename "$new").debdelta" >/dev/null; done <pairs'
t1=$(now)
dd_build=$(secs "$t0" "$t1")
t0=$(now)
/usr/bin/time -f '%M' -o dd-apply.rss bash -c '
  while IFS="|" read -r old new; do debpatch -A "dd/$(basename "$new").debdelta" "$old" "out/$(basename "$new")" >/dev/null; done <pairs'
t1=$(now)
dd_apply=$(secs "$t0" "$t1")
unchanged=$(comm -12 <(ls "$corpus/cycle-1") <(ls "$corpus/cycle-2") | wc -l)
dd_bytes=$(cat dd/*.debdelta | wc -c)
same=$(for p in "${pairs[@]}"; do new=${p#*|}; cmp -s "$new" "out/$(basename "$new")" && echo ok; done | wc -l)

full=$(stat -c %s c2.epb)
refs=$(stat -c %s c2-refs.epb)
delta=$(stat -c %s c2-delta.epb)
pct() { echo "scale=2; 100 * $1 / $full" | bc; }
echo "corpus $corpus: $(ls "$corpus/cycle-2" | wc -l) packages, ${#pairs[@]} changed, $unchanged unchanged"
grep '^delta against' build.log
printf '%-34s %14s %14s\n' "" edgepatch debdelta
printf '%-34s %14s %14s\n' "full cycle-2 bundle (bytes)" "$full" "$full"
printf '%-34s %14s %14s\n' "package-level, refs only (bytes)" "$refs ($(pct "$refs")%)" "-"
printf '%-34s %14s %14s\n' "binary delta (bytes)" "$delta ($(pct "$delta")%)" "$dd_bytes ($(pct "$dd_bytes")%)"
printf '%-34s %14s %14s\n' "build time (s)" "$ep_build" "$dd_build"
printf '%-34s %14s %14s\n' "build peak RSS (KB)" "$ep_build_rss" "$(tail -1 dd-build.rss)"
printf '%-34s %14s %14s\n' "apply time (s)" "$ep_apply" "$dd_apply"
printf '%-34s %14s %14s\n' "apply peak RSS, agent only (KB)" "${ep_agent_rss:-?}" "-"
printf '%-34s %14s %14s\n' "apply max RSS incl. children (KB)" "$ep_apply_rss" "$(tail -1 dd-apply.rss)"
printf '%-34s %14s %14s\n' "rebuilt packages" "$rebuilt (sha256 = manifest)" "$same of ${#pairs[@]} byte-identical"
