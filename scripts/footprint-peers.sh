#!/usr/bin/env bash
# Installed footprint of the peers (rauc, swupdate, mender-client, ostree) from Debian's own
# packages, next to our static agent. Not a test: a measurement for docs/footprint.md.
#
#   scripts/footprint-peers.sh            # uses target/x86_64-unknown-linux-musl/release/edgepatch
#
# Method (nothing is installed on this machine; only apt's configured Debian mirror is used):
#  1. `apt-cache policy` says whether the package exists here and which version apt would take.
#  2. `apt-get download` the package and every library package in its Depends/Pre-Depends closure
#     (`apt-cache depends --important`, breadth-first through packages named lib* or zlib*: by
#     Debian policy shared libraries ship in packages named after their soname), into a cache dir.
#  3. `dpkg -x` all of them into one scratch root: the same files `apt-get install` would put on a
#     node, without running maintainer scripts or touching this machine's dpkg database.
#  4. The main binary's shared-library closure is what `ldd` reports with LD_LIBRARY_PATH set to
#     every library directory of the scratch root (so the package's own libraries win over
#     anything this host happens to have). Cross-check: the transitive DT_NEEDED walk with
#     `objdump -p` against the same directories must give the same count; a library found only on
#     the host is marked. Closure bytes: sum of the resolved files (symlinks followed), the
#     dynamic loader included, the binary itself not.
# Output: one row per peer: binary bytes, libs in the closure, closure bytes, binary + closure,
# the package's Installed-Size; then our agent (one static file, no libraries).
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${PEERS_CACHE:-/tmp/edgepatch-peers-cache}
AGENT=${AGENT:-$top/target/x86_64-unknown-linux-musl/release/edgepatch}
AGENT_TLS=${AGENT_TLS:-$top/target/tls/x86_64-unknown-linux-musl/release/edgepatch}
ARCH=$(dpkg --print-architecture)
mkdir -p "$CACHE/debs"
WORK=$(mktemp -d /tmp/edgepatch-peers.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# peer = package:binary-inside-the-package
PEERS=(rauc:/usr/bin/rauc swupdate:/usr/bin/swupdate mender-client:/usr/bin/mender ostree:/usr/bin/ostree)

say() { printf 'peers: %s\n' "$*" >&2; }

# The cached .deb of a package for this architecture (or arch all); the cache may also hold
# other architectures' files (multiarch hosts list foo:armhf alternatives).
debfile() {
    compgen -G "$CACHE/debs/${1}_*_$ARCH.deb" | head -n1
    compgen -G "$CACHE/debs/${1}_*_all.deb" | head -n1
}

download() { # names... -> into $CACHE/debs, skipping files already there
    local need=() p f
    for p in "$@"; do
        f=$(debfile "$p" | head -n1)
        [ -n "$f" ] || need+=("$p")
    done
    [ "${#need[@]}" -eq 0 ] && return 0
    say "apt-get download ${#need[@]} package(s)"
    (cd "$CACHE/debs" && apt-get download -q "${need[@]}" >/dev/null 2>"$WORK/dl.err") ||
        { say "apt-get download failed: $(tail -n 3 "$WORK/dl.err")"; return 1; }
}

# Transitive DT_NEEDED walk (objdump -p) over the given dirs; prints resolved paths.
needed_walk() { # binary dirs...
    local bin=$1
    shift
    local -A seen=()
    local queue=("$bin") f n d hit
    while [ "${#queue[@]}" -gt 0 ]; do
        f=${queue[0]}
        queue=("${queue[@]:1}")
        for n in $(objdump -p "$f" 2>/dev/null | awk '$1 == "NEEDED" {print $2}'); do
            [ -n "${seen[$n]:-}" ] && continue
            hit=""
            for d in "$@"; do
                if [ -e "$d/$n" ]; then hit="$d/$n"; break; fi
            done
            seen[$n]=${hit:-MISSING}
            [ -n "$hit" ] && queue+=("$hit")
        done
    done
    for n in "${!seen[@]}"; do printf '%s %s\n' "$n" "${seen[$n]}"; done
}

# Library packages a package needs: breadth-first over Depends/Pre-Depends, following only
# lib* packages (a library's own dependencies are libraries; following daemons and tools such as
# dbus or systemd would pull in libraries the binary never loads).
lib_closure() {
    local -A seen=()
    local level=("$1") next p
    while [ "${#level[@]}" -gt 0 ]; do
        next=()
        for p in $(apt-cache depends --important --no-recommends --no-suggests --no-conflicts \
            --no-breaks --no-replaces --no-enhances "${level[@]}" 2>/dev/null |
            awk '$1 ~ /^(Depends|PreDepends):$/ && $2 !~ /^</ {print $2}' | sed "s/:$ARCH\$//" |
            grep -E '^(lib|zlib)' | sort -u); do
            [ -n "${seen[$p]:-}" ] && continue
            seen[$p]=1
            next+=("$p")
        done
        level=("${next[@]}")
    done
    printf '%s\n' "${!seen[@]}" | sort
}

rows=()
for peer in "${PEERS[@]}"; do
    pkg=${peer%%:*} bin=${peer#*:}
    cand=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
        rows+=("$(printf '%-32s %s' "$pkg" "not in this apt's sources (apt-cache policy: no candidate)")")
        continue
    fi
    say "$pkg $cand"
    libs=$(lib_closure "$pkg")
    # shellcheck disable=SC2086
    download "$pkg" $libs || { rows+=("$(printf '%-32s %s' "$pkg" "download failed")"); continue; }
    root="$WORK/root-$pkg"
    mkdir -p "$root"
    for p in "$pkg" $libs; do
        f=$(debfile "$p" | head -n1)
        [ -n "$f" ] && dpkg -x "$f" "$root"
    done
    deb=$(debfile "$pkg" | head -n1)
    isize=$(dpkg-deb -f "$deb" Installed-Size)
    if [ ! -f "$root$bin" ]; then
        rows+=("$(printf '%-32s %s' "$pkg $cand" "no $bin in the package")")
        continue
    fi
    bsize=$(stat -c %s "$root$bin")
    # Library dirs of the scratch root first, then the host's (as the loader would on a node).
    mapfile -t dirs < <(find "$root" -name '*.so*' \( -type f -o -type l \) -printf '%h\n' | sort -u)
    hostdirs=(/lib/$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu) /usr/lib/x86_64-linux-gnu /lib64 /usr/lib /lib)
    ldpath=$(IFS=:; echo "${dirs[*]}")
    ldd_out=$(LD_LIBRARY_PATH=$ldpath ldd "$root$bin" 2>&1)
    if grep -q 'not found' <<<"$ldd_out"; then
        say "$pkg: ldd: $(grep 'not found' <<<"$ldd_out" | tr -s ' \t' ' ' | tr '\n' ';')"
    fi
    # Resolved libraries: "name => /path (addr)" plus the interpreter line "/lib64/ld-linux... (addr)".
    mapfile -t paths < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$ldd_out" | sort -u)
    nlibs=${#paths[@]}
    cbytes=0 fromhost=0
    for i in "${!paths[@]}"; do
        p=${paths[$i]}
        case "$p" in
            "$root"/*) ;;
            *) # the interpreter is an absolute path (PT_INTERP): take the root's copy if it has one
                for d in "${dirs[@]}"; do
                    if [ -f "$d/$(basename "$p")" ]; then p="$d/$(basename "$p")"; break; fi
                done
                paths[$i]=$p
                case "$p" in "$root"/*) ;; *) fromhost=$((fromhost + 1)) ;; esac
                ;;
        esac
        cbytes=$((cbytes + $(stat -L -c %s "$p")))
    done
    walk=$(needed_walk "$root$bin" "${dirs[@]}" "${hostdirs[@]}")
    nwalk=$(grep -vc ' MISSING$' <<<"$walk")
    missing=$(grep -c ' MISSING$' <<<"$walk")
    # Both list the loader (ldd as the interpreter, the walk as libc.so.6's NEEDED).
    note=""
    if [ "$nwalk" -ne "$nlibs" ]; then note+=" objdump-walk=$nwalk(differs)"; fi
    if [ "$missing" -gt 0 ]; then
        note+=" unresolved=$missing"
        say "$pkg: NEEDED not found in the scratch root or host dirs: $(awk '$2 == "MISSING" {print $1}' <<<"$walk" | tr '\n' ' ')"
    fi
    if [ "$fromhost" -gt 0 ]; then
        note+=" from-host=$fromhost"
        say "$pkg: resolved from this host (same Debian release): $(printf '%s\n' "${paths[@]}" | grep -v "^$root/" | xargs -n1 basename | tr '\n' ' ')"
    fi
    rows+=("$(printf '%-32s %11s %5s %12s %12s %10s%s' "$pkg $cand" "$bsize" "$nlibs" "$cbytes" \
        "$((bsize + cbytes))" "$((isize * 1024))" "$note")")
done

agent_row() { # label path
    if [ -x "$2" ]; then
        local s
        s=$(stat -c %s "$2")
        if file "$2" | grep -q 'static'; then
            printf '%-32s %11s %5s %12s %12s %10s' "$1" "$s" 0 0 "$s" "-"
        else
            printf '%-32s %11s %s' "$1" "$s" "NOT STATIC: $(file -b "$2")"
        fi
    else
        printf '%-32s %s' "$1" "not built ($2)"
    fi
}

echo
echo "installed footprint, Debian $(cat /etc/debian_version) $ARCH packages vs the edgepatch agent"
printf '%-32s %11s %5s %12s %12s %10s\n' "package version" "binary B" "libs" "closure B" "total B" "inst-size"
printf '%s\n' "${rows[@]}"
agent_row "edgepatch (static, no TLS)" "$AGENT"
echo
agent_row "edgepatch (static, TLS)" "$AGENT_TLS"
echo
echo "libs: resolved by ldd (LD_LIBRARY_PATH = the package's extracted library closure), the"
echo "dynamic loader included; closure B: their bytes (symlinks followed); inst-size: the .deb's"
echo "Installed-Size field (KiB x 1024: binary, data files, docs; not its libraries)."
