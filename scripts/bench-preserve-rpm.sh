#!/usr/bin/env bash
# Issue 15 item 5 numbers, one run, side by side, for the RHEL family: N synthetic rpms (default
# 40 x 512 KiB, rpmbuild's default payload compressor unless PAYLOAD=w6.xzdio etc.) installed
# into scratch rpm roots with plain `rpm -i` (the "image"), then upgraded to 2.0 from one bundle:
#
#   - plain `dnf install` of the 2.0 packages from the same local repository (the baseline),
#   - `edgepatch apply` without the preserve step (rollback_keep = 0) and with it (default),
#   - the preserve step's time and bytes (the image's packages repacked from the rpm database),
#   - `edgepatch rollback` back to the image's versions,
#   - the agent's own peak RSS (VmHWM, from its -v log line) during apply (preserve) and rollback.
#
#   scripts/bench-preserve-rpm.sh [PACKAGES=40] [KIB_PER_PACKAGE=512]
#
# Not a test: run by hand (root; dnf, rpmbuild, createrepo_c: scripts/test-deps.sh).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-40} kib=${2:-512}
cd "$top"
cargo build -q --release -p edgepatch --target x86_64-unknown-linux-musl
cargo build -q --release -p edgepatch-builder
agent=$top/target/x86_64-unknown-linux-musl/release/edgepatch
builder=$top/target/release/edgepatch-builder
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-preserve-rpm.XXXXXX")
[ -n "${BENCH_KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
cd "$work"

rpm_pkg() { # NAME VERSION OUTDIR
    local top=$work/rpmbuild-$1-$2
    mkdir -p "$top/SPECS" "$3"
    cat >"$top/SPECS/p.spec" <<EOF
Name: $1
Version: $2
Release: 1
Summary: bench
License: MIT
BuildArch: noarch
%description
bench
%install
mkdir -p %{buildroot}/usr/share/bench %{buildroot}/etc
head -c $((kib * 1024)) /dev/urandom > %{buildroot}/usr/share/bench/$1
echo "$1 $2" > %{buildroot}/etc/$1.conf
%files
/usr/share/bench/$1
%config(noreplace) /etc/$1.conf
EOF
    rpmbuild --quiet --define "_topdir $top" ${PAYLOAD:+--define "_binary_payload $PAYLOAD"} \
        -bb "$top/SPECS/p.spec"
    cp "$top"/RPMS/noarch/*.rpm "$3/"
    rm -rf "$top"
}
for i in $(seq 1 "$n"); do
    rpm_pkg "bench-$i" 1.0 img
    rpm_pkg "bench-$i" 2.0 pkgs
done
comp=$(rpm -qp --qf '%{PAYLOADCOMPRESSOR}' img/bench-1-1.0-1.noarch.rpm)
"$builder" keygen --out keys >/dev/null
"$builder" build --key keys/edgepatch.key --variant rhel-9-x86_64 --cycle b1 --sequence 1 \
    --out b1.epb pkgs >/dev/null
cp -r pkgs repo && createrepo_c -q repo

mkroot() { # NAME [CONFIG LINES]: a fresh "image" root and an agent config for it
    local d=$work/$1
    rm -rf "$d"
    mkdir -p "$d/root"
    rpm --root "$d/root" -i img/*.rpm 2>/dev/null
    printf 'node_id = "bench"\nvariant = "rhel-9-x86_64"\ntrusted_keys = "%s"\nstate_dir = "%s"\nroot = "%s"\npackage_manager = "dnf"\n%s' \
        "$work/keys/edgepatch.pub" "$d/state" "$d/root" "${2:-}" >"$d/agent.conf"
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
timed() { # LOG CMD...: seconds
    local t0
    sync
    t0=$(now)
    "${@:2}" >"$1" 2>&1 || { tail -5 "$1" >&2; exit 1; }
    secs "$t0" "$(now)"
}

mkroot plain
specs=$(for i in $(seq 1 "$n"); do printf 'bench-%s-2.0-1 ' "$i"; done)
# shellcheck disable=SC2086
t_plain=$(timed plain.log env LC_ALL=C dnf -y -q --setopt=reposdir=/dev/null \
    --setopt=install_weak_deps=False --setopt=edgepatch.gpgcheck=0 '--disableplugin=*' \
    --repo=edgepatch "--setopt=cachedir=$work/plain/cache" "--repofrompath=edgepatch,$work/repo" \
    "--installroot=$work/plain/root" --releasever=edgepatch install $specs)

mkroot nopre 'rollback_keep = 0
'
t_nopre=$(timed nopre.log "$agent" --config nopre/agent.conf -v apply b1.epb)

mkroot pre
t_pre=$(timed pre.log "$agent" --config pre/agent.conf -v apply b1.epb)
ms_preserve=$(sed -n 's/.*preserve \([0-9]*\) ms.*/\1/p' pre.log | tail -1)
rss_apply=$(sed -n 's/.*agent peak RSS \([0-9]*\) kB.*/\1/p' pre.log | tail -1)
pool=pre/state/rollback/pool
n_pool=$(find "$pool" -name '*.rpm' | wc -l)
bytes_pool=$(du -cb "$pool"/*.rpm | tail -1 | cut -f1)
bytes_img=$(du -cb img/*.rpm | tail -1 | cut -f1)
t_rb=$(timed rollback.log "$agent" --config pre/agent.conf -v rollback)
rss_rb=$(sed -n 's/.*agent peak RSS \([0-9]*\) kB.*/\1/p' rollback.log | tail -1)
want=$(for i in $(seq 1 "$n"); do echo "bench-$i-1.0-1"; done | sort)
back=$(rpm --root "$work/pre/root" -qa | grep '^bench-' | sed 's/\.noarch$//' | sort)
[ "$back" = "$want" ] && back=yes || back=NO

echo "issue 15 item 5 (rpm): $n packages x $kib KiB, payload $comp; one run"
printf '  %-44s %8s s\n' "plain dnf install (baseline)" "$t_plain"
printf '  %-44s %8s s  %sx plain dnf\n' "edgepatch apply, no preserve (keep = 0)" "$t_nopre" "$(ratio "$t_nopre" "$t_plain")"
printf '  %-44s %8s s  %sx plain dnf, %sx no preserve\n' "edgepatch apply, with preserve" "$t_pre" \
    "$(ratio "$t_pre" "$t_plain")" "$(ratio "$t_pre" "$t_nopre")"
printf '  %-44s %8s ms %s package(s), %s bytes (the originals: %s bytes)\n' "  of which preserve (repack)" \
    "${ms_preserve:-?}" "$n_pool" "$bytes_pool" "$bytes_img"
printf '  %-44s %8s s  back at the image versions: %s\n' "edgepatch rollback" "$t_rb" "$back"
printf '  %-44s %8s kB apply (preserve) / %s kB rollback\n' "agent peak RSS (own VmHWM)" "${rss_apply:-?}" "${rss_rb:-?}"
