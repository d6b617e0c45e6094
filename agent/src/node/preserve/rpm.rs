//! Native rpmrebuild: an installed package of an rpm root rebuilt as an installable .rpm from
//! rpm's database and the files on disk, with no rpmbuild, cpio or compressor on the node.
//!
//! - The main header is the package's own immutable header region as rpm keeps it
//!   (`%{HEADERIMMUTABLE}`): name, version, dependencies, scriptlets, file list and digests. rpm
//!   installs it unchanged, so its database afterwards holds the original package's header.
//! - The payload is a cpio "newc" archive in header order (`./path`, header modes and mtimes,
//!   uid/gid 0, symlink targets as data, hardlinked content with the set's last link), read
//!   from disk through one bounded buffer.
//! - The immutable header still names the original PAYLOADCOMPRESSOR, so the payload is a valid
//!   gzip, xz or zstd stream of stored / uncompressed / raw blocks: nothing is compressed.
//! - A lead and a signature header carrying the header's SHA256. The header's payload digests
//!   no longer match, nor do file digests of files changed since install: restores run
//!   `rpm -U --nodigest --nofiledigest` (the set's own sha256 guards the file).
//!
//! rpm 4.18 limits what can be carried (found by experiment): every non-%ghost file of the
//! header must be in the payload ("cpio: Missing file(s)", even ones rpm would skip), so a
//! listed file that is not on disk (deleted, or never installed: nodocs) is carried as zeros;
//! and a file's payload size must be the header's (rpm reads exactly that
//! many bytes: "cpio: Bad magic"). So every %config file, any file whose size changed or that
//! is gone, is carried cut or zero-padded to its packaged size, and the rollback set keeps it
//! whole beside the package (see `node/whole.rs`), to be written back after the restore.

use super::{check_space, err, hex, Repacked, TempOut};
use crate::support::cmd::Cmd;
use crate::support::error::Result;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bumped whenever the bytes written for the same inputs change: part of the identity.
const FORMAT: &str = "edgepatch-preserve-rpm-1\n";
const MAGIC: [u8; 8] = [0x8e, 0xad, 0xe8, 1, 0, 0, 0, 0];
/// Largest block every format can store as is (gzip stored blocks hold 65535 bytes).
const CHUNK: usize = 65535;
/// (FILESIZES: files over 4 GiB, which cpio "newc" cannot hold, are refused anyway.)
const QF: &str = "%{NVR}\n%{EVR}\n%{ARCH}\n\
%{PAYLOADCOMPRESSOR}\n[%{FILEFLAGS}\t%{FILEMODES}\t%{FILESIZES}\t%{FILEINODES}\t\
%{FILESTATES}\t%{FILEMTIMES}\t%{FILEUSERNAME}\t%{FILEGROUPNAME}\t%{FILEDIGESTS}\t\
%{FILELINKTOS}\t%{FILENAMES}\n]\
%{HEADERIMMUTABLE:base64}\nEND\n";
/// Lead (magic, v3.0, binary, archnum 1: rpm ignores it, name, osnum 1, header-style
/// signature), then the signature header: one entry, RPMSIGTAG_SHA256 (273), a string.
const LEAD: [u8; 128] = {
    let mut l = [0u8; 128];
    let start = [0xed, 0xab, 0xee, 0xdb, 3, 0, 0, 0, 0, 1];
    let sig = [
        0, 0, 0, 1, 0, 0, 0, 65, 0, 0, 1, 17, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 1,
    ];
    let mut i = 0;
    while i < 24 {
        if i < 10 {
            l[i] = start[i];
        }
        if i < 8 {
            l[96 + i] = MAGIC[i];
        }
        l[104 + i] = sig[i];
        i += 1;
    }
    l[77] = 1;
    l[79] = 5;
    l
};
const CONFIG: u64 = 1;
const GHOST: u64 = 64;
const REG: u64 = 0o100000;
const LNK: u64 = 0o120000;

/// One file of the header: flags, mode, size, inode, state, mtime (`n`); digest, link target,
/// path (`s`); `data`: the entry carrying the content (the last of a hardlink set), `nlink`.
struct F<'a> {
    n: [u64; 6],
    /// The header's user and group names.
    owner: [&'a str; 2],
    s: [&'a str; 3],
    nlink: u64,
    data: bool,
    /// Kept whole by the set (see `node/whole.rs`): carried cut or padded to size.
    whole: bool,
    /// Not on disk: carried as zeros (the set deletes it again after the restore).
    gone: bool,
    /// The inode on disk (0: not a regular file), to tell hardlinks still linked.
    disk_ino: u64,
}

/// Repack the installed `name` into `dir/NAME-VERSION-RELEASE.ARCH.<identity>.rpm`, reusing an
/// existing file of that name (the same package, same files: `reused`). `rpm` is the rpm
/// command for the root (`--root` included).
pub fn repack(rpm: Cmd, root: &Path, name: &str, dir: &Path) -> Result<Repacked> {
    let out = rpm
        .args(["-q", "--qf", QF, name])
        .run()
        .map_err(err)?
        .stdout;
    let mut r = Repacked {
        path: dir.to_path_buf(),
        package: name.to_string(),
        version: String::new(),
        arch: String::new(),
        identity: [0; 32],
        bytes: 0,
        changed: Vec::new(),
        missing: Vec::new(),
        conffiles: Vec::new(),
        whole: Vec::new(),
        reused: false,
    };
    match pack(&out, root, &mut r) {
        Ok(()) => Ok(r),
        Err(m) => Err(err(format!("{name}: {m}"))),
    }
}

fn pack(out: &str, root: &Path, r: &mut Repacked) -> std::result::Result<(), String> {
    let mut lines = out.lines();
    let mut next = || lines.next().unwrap_or_default();
    let (nevr, evr, arch, comp) = (next(), next(), next(), next());
    let (mut files, mut main, mut ends) = (Vec::new(), MAGIC.to_vec(), 0);
    let (mut acc, mut bits, mut ok) = (0u32, 0, true);
    for l in lines {
        let w: Vec<&str> = l.split('\t').collect();
        if let [a, b, c, d, e, f, user, group, g, h, i] = w[..] {
            let n = [a, b, c, d, e, f].map(|x| x.parse().unwrap_or(u64::MAX));
            if n[0] & GHOST == 0 {
                files.push(F {
                    n,
                    owner: [user, group],
                    s: [g, h, i],
                    nlink: 1,
                    data: true,
                    whole: false,
                    gone: false,
                    disk_ino: 0,
                });
            }
        } else if l == "END" {
            ends += 1;
        } else {
            // The header, base64.
            for c in l.bytes() {
                let v = match c {
                    b'A'..=b'Z' => c - b'A',
                    b'a'..=b'z' => c - b'a' + 26,
                    b'0'..=b'9' => c - b'0' + 52,
                    b'+' => 62,
                    b'/' => 63,
                    b'=' => continue,
                    _ => {
                        ok = false;
                        continue;
                    }
                };
                acc = acc << 6 | u32::from(v);
                bits += 6;
                if bits >= 8 {
                    bits -= 8;
                    main.push((acc >> bits) as u8);
                }
            }
        }
    }
    let kind = match comp.as_bytes() {
        [b'g' | b'(', ..] => b'g',
        b"xz" => b'x',
        [b'z', ..] => b'z',
        _ => 0,
    };
    let be = |i| {
        main.get(i..i + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, |b| u32::from_be_bytes(b) as usize)
    };
    if ends > 1 {
        return Err(
            "is installed for more than one architecture (multilib), which a rollback set \
             cannot carry yet; set rollback_keep = 0 to patch this node without one"
                .to_string(),
        );
    }
    if kind == 0 || ends != 1 || !ok || main.len() != 16 + 16 * be(8) + be(12) {
        return Err(format!(
            "cannot rebuild it from rpm's database (payload {comp})"
        ));
    }
    // Names rpm printed that are not UTF-8 came out lossy: such a copy would not install.
    if out.contains('\u{fffd}') {
        return Err(format!(
            "has a file name that is not UTF-8, which a rollback set cannot carry; {FIX}"
        ));
    }
    let ids = [Ids::load(root, "etc/passwd"), Ids::load(root, "etc/group")];
    // Identity: everything the bytes depend on, and what each carried file looks like now.
    let mut h = Sha256::new();
    h.update(FORMAT);
    h.update(out);
    let mut need = 4096 + main.len() as u64;
    for i in 0..files.len() {
        // Hardlink sets: rpm wants the content with the set's last member, in header order.
        let ino = files[i].n[3];
        let same = |g: &F| g.n[1] & 0o170000 == REG && g.n[3] == ino;
        let count = files.iter().filter(|g| same(g)).count() as u64;
        let last = !files[i + 1..].iter().any(same);
        let f = &mut files[i];
        (f.nlink, f.data) = (count, last);
        need += 128 + f.n[2] + f.n[2] / 4096;
        let [_, link, path] = f.s;
        let why = match f.n[1] & 0o170000 {
            LNK if f.n[2] != link.len() as u64 => "is an odd link",
            REG if f.n[2] <= u32::MAX as u64 => {
                let config = f.n[0] & CONFIG != 0;
                let m = super::db::resolve(root, path, false).and_then(std::fs::symlink_metadata);
                match m {
                    Ok(m) if m.is_file() || m.file_type().is_symlink() => {
                        // Exactly as packaged, or kept whole: a %config (the admin's text, and
                        // rpm's .rpmnew / .rpmsave), a file of another size, mode or owner, one
                        // rpm did not install (state not normal: another arch's, or excluded
                        // docs), a symlink where the package has a file (carried as zeros).
                        let owner = [0, 1].map(|k| ids[k].id(f.owner[k]));
                        let as_packaged = m.is_file()
                            && m.len() == f.n[2]
                            && m.mode() as u64 & 0o7777 == f.n[1] & 0o7777
                            && [m.uid(), m.gid()] == owner;
                        f.disk_ino = if m.is_file() { m.ino() } else { 0 };
                        if config || f.n[4] != 0 || !as_packaged {
                            f.whole = true;
                            f.gone = !m.is_file();
                            r.whole.push((path.to_string(), config));
                        }
                        for v in [
                            m.len(),
                            m.mode() as u64,
                            m.mtime() as u64,
                            m.ctime() as u64,
                            m.ino(),
                            m.ctime_nsec() as u64,
                        ] {
                            h.update(v.to_le_bytes());
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        (f.whole, f.gone) = (true, true);
                        r.whole.push((path.to_string(), config));
                        r.missing.push(path.to_string());
                        h.update(b"gone");
                        continue;
                    }
                    _ => "is listed as a file but is a directory or device on disk",
                }
            }
            REG => "is over 4 GiB (cpio newc cannot hold it)",
            _ => continue,
        };
        return Err(format!("{path} {why}; {FIX}"));
    }
    // A hardlink set carries its content once, with the last link, and rpm writes it to every
    // link: when one link is kept whole, or the links are no longer one file on disk, every link
    // is kept whole (they come back as separate files).
    for i in 0..files.len() {
        let (ino, disk) = (files[i].n[3], files[i].disk_ino);
        let group = |g: &&F| g.n[1] & 0o170000 == REG && g.n[3] == ino;
        if files[i].nlink > 1
            && !files[i].whole
            && files
                .iter()
                .filter(group)
                .any(|g| g.whole || g.disk_ino != disk)
        {
            files[i].whole = true;
            r.whole
                .push((files[i].s[2].to_string(), files[i].n[0] & CONFIG != 0));
        }
    }
    r.identity = h.finalize().into();
    r.path
        .push(format!("{nevr}.{arch}.{}.rpm", hex(&r.identity[..8])));
    r.version = evr.strip_prefix("0:").unwrap_or(evr).to_string();
    r.arch = arch.to_string();
    if let Ok(m) = std::fs::metadata(&r.path) {
        (r.bytes, r.reused) = (m.len(), m.len() > 0);
    }
    if r.reused {
        return Ok(());
    }
    let dir = r.path.parent().unwrap_or(Path::new("."));
    check_space(dir, need).map_err(|e| e.msg)?;
    let mut t = TempOut::create(&r.path).map_err(|e| e.msg)?;
    let sum = hex(&crate::bundle::format::sha256(&main));
    let mut lead = LEAD;
    for (d, s) in lead[10..75].iter_mut().zip(nevr.bytes()) {
        *d = s;
    }
    let mut z = Enc::new(&mut t.w, kind);
    let done = write(
        &mut z,
        [&lead, sum.as_bytes(), &[0; 8], &main],
        &files,
        root,
        &mut r.changed,
    );
    done.map_err(|e| format!("{}: {e}", r.path.display()))?;
    r.bytes = t.commit().map_err(|e| e.msg)?;
    Ok(())
}

/// User or group names of the root (`etc/passwd`, `etc/group`) to ids, as rpm maps them
/// (a name it does not know becomes root).
struct Ids(Vec<(String, u32)>);

impl Ids {
    fn load(root: &Path, file: &str) -> Ids {
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_default();
        Ids(text
            .lines()
            .filter_map(|l| {
                let mut w = l.split(':');
                let name = w.next()?;
                Some((name.to_string(), w.nth(1)?.parse().ok()?))
            })
            .collect())
    }

    fn id(&self, name: &str) -> u32 {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, id)| *id)
    }
}

/// The cpio trailer entry.
const END: F = F {
    n: [0; 6],
    owner: ["", ""],
    s: ["", "", "TRAILER!!!"],
    nlink: 1,
    data: false,
    whole: false,
    gone: false,
    disk_ino: 0,
};

const FIX: &str = "put the packaged file back (or set rollback_keep = 0)";

/// Lead, signature header, main header (`head`), then the payload. `changed`: files other
/// than %config whose digest is not the header's (carried as they are now).
fn write(
    z: &mut Enc,
    head: [&[u8]; 4],
    files: &[F],
    root: &Path,
    changed: &mut Vec<String>,
) -> io::Result<()> {
    for part in head {
        z.w.write_all(part)?;
    }
    z.frame(true)?;
    for f in files.iter().chain([&END]) {
        let [digest, link, path] = f.s;
        // What rpm reads from the payload: the header's size for files (with the data) and
        // symlink targets, nothing for the rest.
        let kind = f.n[1] & 0o170000;
        let size = if (kind == REG && f.data) || kind == LNK {
            f.n[2]
        } else {
            0
        };
        // cpio "newc": ino, mode, uid, gid, nlink, mtime, size, dev, rdev, name size, check.
        let dot = usize::from(kind != 0);
        let mut h = b"070701".to_vec();
        for x in [
            f.n[3],
            f.n[1],
            0,
            0,
            f.nlink,
            f.n[5],
            size,
            0,
            0,
            0,
            0,
            (path.len() + dot + 1) as u64,
            0,
        ] {
            for i in 0..8 {
                h.push(b"0123456789abcdef"[(x >> (28 - 4 * i)) as usize & 15]);
            }
        }
        h.extend(&b"."[..dot]);
        h.extend(path.as_bytes());
        // The name's NUL, then padding to 4 bytes.
        h.resize((h.len() + 4) & !3, 0);
        z.write(&h)?;
        if kind == LNK {
            z.write(link.as_bytes())?;
        } else if size > 0 && f.gone {
            z.zeros(size)?;
        } else if size > 0 {
            let mut file = File::open(super::db::resolve(root, path, false)?)?;
            if file.metadata()?.len() != size && !f.whole {
                return Err(io::Error::other(format!(
                    "{path} changed while preserving; run again"
                )));
            }
            // A file kept whole is cut or zero-padded to the packaged size here.
            let sum = z.copy(&mut file, size)?;
            // Digests other than sha256 (md5 of old packages) are not checked.
            if digest.len() == 64 && sum != digest && !f.whole {
                log::warn!("{path} differs from its package; carried as it is");
                changed.push(path.to_string());
            }
        }
        z.write(&[0; 3][..(4 - size as usize % 4) % 4])?;
    }
    z.frame(false)
}

/// A gzip (`g`), xz (`x`) or zstd (`z`) stream that stores its data uncompressed, in blocks of
/// up to [`CHUNK`] bytes: gzip stored deflate blocks + CRC32; xz LZMA2 uncompressed chunks,
/// check type None (CRC32 only in headers and index); zstd raw blocks, no checksum.
pub(crate) struct Enc<'a> {
    w: &'a mut BufWriter<File>,
    kind: u8,
    buf: Vec<u8>,
    table: [u32; 256],
    crc: u32,
    total: u64,
    /// xz: bytes of the block's data so far (chunk headers included).
    packed: u64,
}

impl<'a> Enc<'a> {
    pub fn new(w: &'a mut BufWriter<File>, kind: u8) -> Enc<'a> {
        let mut table = [0u32; 256];
        for (i, t) in table.iter_mut().enumerate() {
            *t = (0..8).fold(i as u32, |c, _| {
                (c >> 1) ^ (0xedb8_8320 & (c & 1).wrapping_neg())
            });
        }
        Enc {
            w,
            kind,
            buf: Vec::with_capacity(CHUNK),
            table,
            crc: 0,
            total: 0,
            packed: 0,
        }
    }

    fn crc32(&self, c: u32, d: &[u8]) -> u32 {
        !d.iter().fold(!c, |c, &b| {
            self.table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
        })
    }

    /// Append `d` and its CRC32 (little-endian) to `v`.
    fn put_crc(&self, v: &mut Vec<u8>, d: &[u8]) {
        v.extend_from_slice(d);
        v.extend(self.crc32(0, d).to_le_bytes());
    }

    pub fn write(&mut self, mut d: &[u8]) -> io::Result<()> {
        while !d.is_empty() {
            let n = d.len().min(CHUNK - self.buf.len());
            self.buf.extend_from_slice(&d[..n]);
            d = &d[n..];
            self.block(CHUNK)?;
        }
        Ok(())
    }

    /// Copy `n` bytes of `r` (zero-padded past its end) through the block buffer; returns
    /// their sha256 (hex).
    fn copy(&mut self, r: &mut File, mut n: u64) -> io::Result<String> {
        let mut sha = Sha256::new();
        while n > 0 {
            let at = self.buf.len();
            let k = (CHUNK - at).min(n as usize);
            self.buf.resize(at + k, 0);
            let got = match r.read(&mut self.buf[at..])? {
                0 => k,
                g => g,
            };
            self.buf.truncate(at + got);
            sha.update(&self.buf[at..]);
            n -= got as u64;
            self.block(CHUNK)?;
        }
        Ok(hex(&sha.finalize()))
    }

    /// `n` zero bytes (a listed file that is not on disk).
    fn zeros(&mut self, mut n: u64) -> io::Result<()> {
        let z = [0u8; 4096];
        while n > 0 {
            let k = n.min(z.len() as u64) as usize;
            self.write(&z[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Write out the buffered block when it holds at least `min` bytes (and any).
    fn block(&mut self, min: usize) -> io::Result<()> {
        let n = self.buf.len();
        if n == 0 || n < min {
            return Ok(());
        }
        let l = n as u16;
        let (a, b, m) = (l.to_le_bytes(), (!l).to_le_bytes(), (l - 1).to_be_bytes());
        let h: &[u8] = match self.kind {
            b'g' => {
                self.crc = self.crc32(self.crc, &self.buf);
                &[0, a[0], a[1], b[0], b[1]]
            }
            b'x' => {
                self.packed += 3 + n as u64;
                &[if self.total == 0 { 1 } else { 2 }, m[0], m[1]]
            }
            _ => &(u32::from(l) << 3).to_le_bytes()[..3],
        };
        self.w.write_all(h)?;
        self.w.write_all(&self.buf)?;
        self.total += n as u64;
        self.buf.clear();
        Ok(())
    }

    /// The stream's start (`true`) or, after the last data, its end.
    pub fn frame(&mut self, start: bool) -> io::Result<()> {
        self.block(1)?;
        let mut v = Vec::with_capacity(64);
        match (self.kind, start) {
            (b'g', true) => v.extend([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]),
            (b'g', _) => {
                v.extend([1, 0, 0, 0xff, 0xff]);
                v.extend(self.crc.to_le_bytes());
                v.extend((self.total as u32).to_le_bytes());
            }
            (b'x', true) => {
                // Stream header (check None), block header: one filter, LZMA2, dict 64 KiB.
                v.extend(*b"\xfd7zXZ\0");
                self.put_crc(&mut v, &[0, 0]);
                self.put_crc(&mut v, &[2, 0, 0x21, 1, 8, 0, 0, 0]);
            }
            (b'x', _) => {
                // End of LZMA2 data, block padding, index (one record), stream footer.
                let end = self.packed + 1;
                v.resize(1 + ((4 - end % 4) % 4) as usize, 0);
                let mut idx = vec![0, 1];
                for mut x in [12 + end, self.total] {
                    while x >= 0x80 {
                        idx.push(x as u8 | 0x80);
                        x >>= 7;
                    }
                    idx.push(x as u8);
                }
                idx.resize(idx.len().div_ceil(4) * 4, 0);
                self.put_crc(&mut v, &idx);
                let mut foot = ((idx.len() / 4) as u32).to_le_bytes().to_vec();
                foot.extend([0, 0]);
                v.extend(self.crc32(0, &foot).to_le_bytes());
                v.extend(foot);
                v.extend(*b"YZ");
            }
            (_, true) => v.extend([0x28, 0xb5, 0x2f, 0xfd, 0, 0x30]),
            _ => v.extend([1, 0, 0]),
        }
        self.w.write_all(&v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        let f = tempfile();
        let mut w = BufWriter::new(File::create(&f).unwrap());
        let z = Enc::new(&mut w, b'g');
        assert_eq!(z.crc32(0, b"123456789"), 0xcbf4_3926);
    }

    fn tempfile() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("ep-rpm-enc-{}", std::process::id()))
    }

    #[test]
    fn stored_gzip_inflates_to_the_data() {
        let f = tempfile();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        {
            let mut w = BufWriter::new(File::create(&f).unwrap());
            let mut z = Enc::new(&mut w, b'g');
            z.frame(true).unwrap();
            z.write(&data[..70_000]).unwrap();
            z.write(&data[70_000..]).unwrap();
            z.frame(false).unwrap();
            w.flush().unwrap();
        }
        let gz = std::fs::read(&f).unwrap();
        let _ = std::fs::remove_file(&f);
        let n = gz.len();
        let raw = miniz_oxide::inflate::decompress_to_vec(&gz[10..n - 8]).unwrap();
        assert_eq!(raw, data);
        let crc = u32::from_le_bytes(gz[n - 8..n - 4].try_into().unwrap());
        let mut w = BufWriter::new(File::create(&f).unwrap());
        assert_eq!(crc, Enc::new(&mut w, b'g').crc32(0, &data));
        let _ = std::fs::remove_file(&f);
    }
}
