#!/bin/sh
# Seed the fuzz corpora from real artifacts made by the real builder: bundles (raw .debs,
# deflated metadata, a signed policy), their manifests, a published index, a key list, agent
# configs. Run from the repository root after `cargo build`; writes fuzz/corpus/<target>/seed-*.
set -eu
B=${BUILDER:-target/debug/edgepatch-builder}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
C=fuzz/corpus
mkdir -p $C/manifest $C/container $C/config $C/policy $C/index $C/keylist

for v in 1.0 2.0; do
  d=$W/deb-$v; mkdir -p $d/DEBIAN $d/usr/share/ep
  printf 'Package: ep-seed\nVersion: %s\nArchitecture: all\nMaintainer: t <t@example.invalid>\nDescription: seed\n' $v > $d/DEBIAN/control
  echo "seed $v" > $d/usr/share/ep/seed
  dpkg-deb --root-owner-group -Zgzip --build $d $W/ep-seed_${v}_all.deb >/dev/null
done
mkdir -p $W/p1 $W/p2; cp $W/ep-seed_1.0_all.deb $W/p1/; cp $W/ep-seed_2.0_all.deb $W/p2/
$B keygen --out $W/k >/dev/null
$B keygen --out $W/k2 >/dev/null
$B build --key $W/k/edgepatch.key --variant debian-12-amd64 --cycle c1 --sequence 1 --out $W/c1.epb $W/p1 >/dev/null
$B build --key $W/k/edgepatch.key --key $W/k2/edgepatch.key --variant debian-12-amd64 --cycle 20241105-build-42 --sequence 2 \
  --install ep-seed --policy tests/fixtures/policy/example.yaml --out $W/c2.epb $W/p2 >/dev/null
$B build --key $W/k/edgepatch.key --variant debian-12-amd64 --cycle c3 --sequence 3 --base $W/c1.epb --out $W/c3.epb $W/p2 >/dev/null 2>&1 || true
for b in $W/c*.epb; do
  n=$(basename $b .epb)
  cp $b $C/container/seed-$n
  python3 - "$b" "$C/manifest/seed-$n" "$C/policy/seed-$n" <<'PY'
import sys, struct
b = open(sys.argv[1], 'rb').read()
(m,) = struct.unpack('<I', b[10:14])
man = b[14:14+m]
open(sys.argv[2], 'wb').write(man)
pol = b''.join(l[7:] + b'\n' for l in man.split(b'\n') if l.startswith(b'policy '))
if pol:
    open(sys.argv[3], 'wb').write(pol)
PY
done
printf 'window Mon-Sun 20:00-06:00\nwindow Tue 02:00-04:00\nwindow Sat 23:30-00:30\n' > $C/policy/seed-windows

$B publish --key $W/k/edgepatch.key --out $W/mirror $W/c1.epb $W/c2.epb >/dev/null
cp $W/mirror/debian-12-amd64/index $C/index/seed-index

$B key init-root --out $W/root >/dev/null
$B key init-root --out $W/root2 >/dev/null
$B key add --root $W/root/root.key --keylist $W/keylist --pub $W/k/edgepatch.pub --name release-a >/dev/null
cp $W/keylist $C/keylist/seed-v1
$B key add --root $W/root/root.key --keylist $W/keylist --pub $W/k2/edgepatch.pub --name release-b >/dev/null
$B keygen --out $W/k3 >/dev/null
$B key add --root $W/root/root.key --keylist $W/keylist --pub $W/k3/edgepatch.pub --name release-c >/dev/null
$B key sign --root $W/root/root.key --keylist $W/keylist --threshold 2 >/dev/null
$B key revoke --root $W/root/root.key --keylist $W/keylist --pub $W/k/edgepatch.pub >/dev/null
$B key rotate-root --root $W/root/root.key --new-root $W/root2/root.key --keylist $W/keylist >/dev/null
cp $W/keylist $C/keylist/seed-rotated

sed -n '/const GOOD: &str = r#"/,/^"#;/p' agent/src/support/config.rs | sed '1d;$d' > $C/config/seed-full
printf 'node_id = "n"\nvariant = "debian-12-amd64"\nroot_keys = "/etc/edgepatch/root.pub"\nsignature_threshold = 2\ntrusted_keys = "/etc/edgepatch/keys"\n' > $C/config/seed-root
# Delta patches (format EPDELTA2, see agent/src/bundle/delta/mod.rs), each after its base: 2-byte length,
# base, patch. A raw patch with seeks, adds and extra bytes; a deb patch of two sections.
mkdir -p $C/delta
python3 - $C/delta <<'PY'
import sys, zlib
def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7f) | 0x80); v >>= 7
    out.append(v)
    return bytes(out)
def deflate(b):
    if not b:
        return b''
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(b) + c.flush()
def section(source, old_len, new_len, controls, diff, extra):
    s = [b''] * 7
    for add, copy, seek in controls:
        s[0] += varint(add); s[1] += varint(copy); s[2] += varint((seek << 1) ^ (seek >> 63))
    i = 0
    while i < len(diff):
        z = next((k for k in range(i, len(diff)) if diff[k]), len(diff)) - i
        l = next((k for k in range(i + z, len(diff)) if not diff[k]), len(diff)) - i - z
        s[3] += varint(z); s[4] += varint(l); s[5] += diff[i + z:i + z + l]; i += z + l
    s[6] = extra
    s = [deflate(x) for x in s]
    head = bytes([source]) + varint(old_len) + varint(new_len) + b''.join(varint(len(x)) for x in s)
    return head, b''.join(s)
def patch(recipe, secs):
    heads = [section(*x) for x in secs]
    return b'EPDELTA2' + bytes([recipe, len(heads)]) + b''.join(h for h, _ in heads) + b''.join(b for _, b in heads)
old = bytes((i * 7) % 251 for i in range(3000))
new = bytearray(old[:2000]); new[100] ^= 0x55; new += b'INSERTED' + old[10:510]
diff = bytes((n - o) % 256 for n, o in zip(new[:2000], old[:2000])) + bytes(500)
raw = patch(0, [(1, len(old), len(new), [(2000, 8, -1990), (500, 0, 0)], diff, b'INSERTED')])
deb = patch(1, [(2, len(old), 10, [(0, 10, 0)], b'', b'0123456789'),
                (3, len(old), 2000, [(2000, 0, 0)], bytes(2000), b'')])
for name, p in (('raw', raw), ('deb', deb)):
    open(f'{sys.argv[1]}/seed-{name}', 'wb').write(len(old).to_bytes(2, 'little') + old + p)
PY
ls $C/*/ | head -50
