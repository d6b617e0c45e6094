//! Tar and gzip members: expanding the gzip members of a data.tar for diffing, compressing them
//! back with the system's `gzip -9n`, and reading one member of a .deb through `dpkg-deb`.

use super::*;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// Gzip members inside data.tar (recipe deb-gz).
//
// Man pages and changelogs in a .deb are `gzip -9n` files: a small change to the text changes
// every compressed byte after it. The builder lists the members whose content `gzip -9n`
// reproduces byte for byte; both data tars are diffed with those members *expanded*: the content
// and padding of each become its inflated length (u64 LE) and the inflated bytes (tar headers stay
// as they are). The node expands the old tar the same way (pure inflate, any gzip member of the
// plain form), patches, and compresses the listed members back with the system's `gzip -9n`.
// Everything streams through files; the memory is one inflater and a few 64 KB buffers.

/// The size field of a tar header (octal, as GNU tar and dpkg write it for small files).
pub fn tar_size(h: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    let mut digits = false;
    for &b in h.get(124..136)? {
        match b {
            b'0'..=b'7' => {
                v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
                digits = true;
            }
            b' ' | 0 if digits => break,
            b' ' => {}
            _ => return None,
        }
    }
    digits.then_some(v)
}

/// Zero bytes that pad `n` bytes of tar content to a block.
pub fn tar_pad(n: u64) -> u64 {
    (512 - n % 512) % 512
}

fn copy_n<R: Read + ?Sized, W: Write + ?Sized>(
    r: &mut R,
    w: &mut W,
    n: u64,
) -> Result<(), DeltaError> {
    let got = io::copy(&mut r.take(n), w)?;
    if got != n {
        return Err(corrupt("stream ends inside a gzip-expanded tar"));
    }
    Ok(())
}

/// Inflate one gzip member of `len` bytes in the plain form `gzip -n` writes (no optional header
/// fields) from `r` into `out`; returns the inflated length. Refuses more than `GZ_CAP` bytes.
pub fn gunzip_member<R: Read, W: Write + ?Sized>(
    r: &mut R,
    len: u64,
    out: &mut W,
) -> Result<u64, DeltaError> {
    let mut take = r.take(len);
    let mut head = [0u8; 10];
    take.read_exact(&mut head)
        .map_err(|_| corrupt("gzip member shorter than its header"))?;
    if head[..4] != [0x1f, 0x8b, 8, 0] {
        return Err(corrupt("not a plain gzip member"));
    }
    let mut inf = Inflate::new(&mut take);
    let mut buf = vec![0u8; 16 * 1024];
    let mut n = 0u64;
    loop {
        let k = inf.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += k as u64;
        if n > GZ_CAP {
            return Err(corrupt("gzip member inflates past the limit"));
        }
        out.write_all(&buf[..k])?;
    }
    let left = (inf.end - inf.start) as u64 + io::copy(&mut inf.inner, &mut io::sink())?;
    if left != 8 {
        return Err(corrupt("gzip member does not end after its trailer"));
    }
    Ok(n)
}

/// Expand the gzip members whose tar headers start at `offsets` (increasing) in the tar `r`
/// (`len` bytes) into `w`. Returns where those headers are in the output.
pub fn expand_gz<R: Read + Seek, W: Write + ?Sized>(
    r: &mut R,
    len: u64,
    offsets: &[u64],
    w: &mut W,
) -> Result<Vec<u64>, DeltaError> {
    r.seek(SeekFrom::Start(0))?;
    let (mut pos, mut opos) = (0u64, 0u64);
    let mut outs = Vec::with_capacity(offsets.len());
    for &off in offsets {
        if off < pos || off.saturating_add(512) > len {
            return Err(corrupt("gzip member offset outside the base"));
        }
        copy_n(r, w, off - pos)?;
        opos += off - pos;
        let mut h = [0u8; 512];
        r.read_exact(&mut h)?;
        w.write_all(&h)?;
        outs.push(opos);
        let s = tar_size(&h).ok_or_else(|| corrupt("listed gzip member has no tar header"))?;
        let end = (off + 512).saturating_add(s).saturating_add(tar_pad(s));
        if s < 18 || end > len {
            return Err(corrupt("listed gzip member runs past the base"));
        }
        r.seek(SeekFrom::Start(off + 512 + s - 4))?;
        let mut b = [0u8; 4];
        r.read_exact(&mut b)?;
        let l = u64::from(u32::from_le_bytes(b));
        if l > GZ_CAP {
            return Err(corrupt("gzip member inflates past the limit"));
        }
        r.seek(SeekFrom::Start(off + 512))?;
        w.write_all(&l.to_le_bytes())?;
        if gunzip_member(r, s, w)? != l {
            return Err(corrupt("gzip member length does not match its trailer"));
        }
        r.seek(SeekFrom::Start(end))?;
        pos = end;
        opos += 512 + 8 + l;
    }
    copy_n(r, w, len - pos)?;
    Ok(outs)
}

/// Compress files with `gzip -9n` (each `F` becomes `F.gz`), a few hundred per run.
pub fn gzip_files(paths: &[PathBuf]) -> Result<(), DeltaError> {
    for chunk in paths.chunks(256) {
        crate::support::cmd::Cmd::new("gzip")
            .args(["-9n", "--"])
            .args(chunk)
            .run()
            .map_err(DeltaError::Base)?;
    }
    Ok(())
}

/// A scratch directory removed with its content when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Undo `expand_gz`: copy the expanded stream `x` (`x_len` bytes) to `out`, compressing the
/// members whose headers are at `offsets` back with `gzip -9n`. Returns the bytes written.
pub fn compress_gz<W: Write + ?Sized>(
    x: &mut File,
    x_len: u64,
    offsets: &[u64],
    tmp_dir: &Path,
    out: &mut W,
) -> Result<u64, DeltaError> {
    let dir = ScratchDir(tmp_dir.join(format!(".edgepatch-gz-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir(&dir.0)?;
    let mut r = BufReader::with_capacity(CHUNK, x);
    // Pass 1: every listed member's inflated bytes into its own file; then gzip them all.
    let mut members = Vec::with_capacity(offsets.len());
    let mut files = Vec::with_capacity(offsets.len());
    let mut pos = 0u64;
    for (k, &off) in offsets.iter().enumerate() {
        if off < pos || off.saturating_add(520) > x_len {
            return Err(corrupt("gzip member offset outside the output"));
        }
        r.seek(SeekFrom::Start(off))?;
        let mut h = [0u8; 520];
        r.read_exact(&mut h)?;
        let s = tar_size(&h).ok_or_else(|| corrupt("listed gzip member has no tar header"))?;
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[512..]);
        let l = u64::from_le_bytes(b);
        if l > GZ_CAP || off + 520 + l > x_len {
            return Err(corrupt("expanded gzip member out of bounds"));
        }
        let p = dir.0.join(k.to_string());
        copy_n(&mut r, &mut File::create(&p)?, l)?;
        files.push(p);
        members.push((off, s, l));
        pos = off + 520 + l;
    }
    gzip_files(&files)?;
    // Pass 2: the tar with each member's gzip bytes in place of its expansion.
    r.seek(SeekFrom::Start(0))?;
    let (mut pos, mut written) = (0u64, 0u64);
    for ((off, s, l), p) in members.into_iter().zip(&files) {
        copy_n(&mut r, out, off + 512 - pos)?;
        written += off + 512 - pos;
        let gz = p.with_extension("gz");
        let mut f = File::open(&gz)?;
        if f.metadata()?.len() != s {
            return Err(DeltaError::Base(
                "gzip -9n on this node does not reproduce the package's gzip files".into(),
            ));
        }
        copy_n(&mut f, out, s)?;
        out.write_all(&[0u8; 512][..tar_pad(s) as usize])?;
        let _ = std::fs::remove_file(&gz);
        written += s + tar_pad(s);
        pos = off + 520 + l;
        r.seek(SeekFrom::Start(pos))?;
    }
    copy_n(&mut r, out, x_len - pos)?;
    Ok(written + x_len - pos)
}

/// A writer that hashes and counts what passes through.
pub struct HashingWriter<W: Write> {
    pub inner: W,
    pub hasher: Sha256,
    pub written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    pub fn finish(self) -> (W, u64, [u8; 32]) {
        (self.inner, self.written, self.hasher.finalize().into())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Run `dpkg-deb --ctrl-tarfile|--fsys-tarfile base` into an unlinked temporary file in `tmp_dir`.
pub fn deb_member(base: &Path, which: Source, tmp_dir: &Path) -> Result<File, DeltaError> {
    let flag = match which {
        Source::DebControl => "--ctrl-tarfile",
        Source::DebData => "--fsys-tarfile",
        _ => return Err(corrupt("not a deb member source")),
    };
    let f = scratch(tmp_dir, &format!("base{flag}"))?;
    crate::support::cmd::Cmd::new("dpkg-deb")
        .arg(flag)
        .arg(base)
        .run_to_file(f.try_clone()?)
        .map_err(DeltaError::Base)?;
    Ok(f)
}
