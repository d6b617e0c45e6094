//! A minimal streaming tar writer for repacked packages (GNU format, as dpkg-deb writes):
//! directories, regular files and symlinks; GNU `././@LongLink` records for names or link
//! targets over 100 bytes; base-256 numbers when a size or id does not fit in octal.
//! File contents are copied through one bounded buffer, never read whole.

use std::io::{self, Read, Write};

pub const BLOCK: u64 = 512;
/// Copy buffer: the only per-file memory a repack needs.
const BUF: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(u64),
    Symlink(String),
}

/// One member's header fields. `name` is the archive path (`./usr/bin/x`, dirs end in `/`).
#[derive(Debug, Clone)]
pub struct Header<'a> {
    pub name: &'a str,
    pub kind: &'a Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
}

/// Bytes a member takes in the archive (headers, long-name records, data, padding).
pub fn member_len(name: &str, kind: &Kind) -> u64 {
    let long = |n: usize| {
        if n > 100 {
            BLOCK + padded(n as u64 + 1)
        } else {
            0
        }
    };
    let link = match kind {
        Kind::Symlink(t) => long(t.len()),
        _ => 0,
    };
    let data = match kind {
        Kind::File(n) => padded(*n),
        _ => 0,
    };
    long(name.len()) + link + BLOCK + data
}

/// `n` rounded up to whole blocks.
pub fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// Write the header block(s) for `h`. For a file, the caller then writes exactly its size in
/// bytes and calls [`pad`].
pub fn write_header<W: Write>(w: &mut W, h: &Header) -> io::Result<()> {
    if h.name.len() > 100 {
        long_record(w, b'L', h.name)?;
    }
    let (flag, size, link) = match h.kind {
        Kind::Dir => (b'5', 0, ""),
        Kind::File(n) => (b'0', *n, ""),
        Kind::Symlink(t) => (b'2', 0, t.as_str()),
    };
    if link.len() > 100 {
        long_record(w, b'K', link)?;
    }
    let mut b = [0u8; 512];
    put_str(&mut b[0..100], h.name);
    put_num(&mut b[100..108], u64::from(h.mode & 0o7777));
    put_num(&mut b[108..116], h.uid);
    put_num(&mut b[116..124], h.gid);
    put_num(&mut b[124..136], size);
    put_num(&mut b[136..148], h.mtime.max(0) as u64);
    b[156] = flag;
    put_str(&mut b[157..257], link);
    finish_block(&mut b);
    w.write_all(&b)
}

/// GNU long name ('L') or long link target ('K') record: a header, then the name + NUL.
fn long_record<W: Write>(w: &mut W, flag: u8, name: &str) -> io::Result<()> {
    let mut b = [0u8; 512];
    put_str(&mut b[0..100], "././@LongLink");
    put_num(&mut b[100..108], 0o644);
    put_num(&mut b[108..116], 0);
    put_num(&mut b[116..124], 0);
    put_num(&mut b[124..136], name.len() as u64 + 1);
    put_num(&mut b[136..148], 0);
    b[156] = flag;
    finish_block(&mut b);
    w.write_all(&b)?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w, name.len() as u64 + 1)
}

/// GNU magic, empty owner names (so dpkg uses the numeric ids), then the checksum.
fn finish_block(b: &mut [u8; 512]) {
    b[257..265].copy_from_slice(b"ustar  \0");
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
}

fn put_str(field: &mut [u8], s: &str) {
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Octal with a NUL when it fits, else GNU base-256 (high bit set, big-endian).
fn put_num(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    if digits >= 22 || v < 1u64 << (3 * digits) {
        let s = format!("{v:0digits$o}\0");
        field.copy_from_slice(s.as_bytes());
    } else {
        field.fill(0);
        let bytes = v.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&bytes);
        field[0] |= 0x80;
    }
}

/// Zero padding after `written` data bytes, up to the next block.
pub fn pad<W: Write>(w: &mut W, written: u64) -> io::Result<()> {
    let n = (padded(written) - written) as usize;
    w.write_all(&[0u8; 512][..n])
}

/// The end-of-archive marker: two zero blocks.
pub fn finish<W: Write>(w: &mut W) -> io::Result<()> {
    w.write_all(&[0u8; 1024])
}

/// Copy exactly `size` bytes from `r` to `w`, feeding each chunk to `seen`, then pad.
/// A source shorter than `size` is an error (the file shrank while it was being packed).
pub fn copy_data<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    size: u64,
    mut seen: impl FnMut(&[u8]),
) -> io::Result<()> {
    let mut buf = vec![0u8; BUF.min(size.max(1) as usize)];
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file shrank while packing ({left} bytes short)"),
            ));
        }
        seen(&buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    pad(w, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checksum_and_fields() {
        let mut out = Vec::new();
        let kind = Kind::File(5);
        let h = Header {
            name: "./etc/x",
            kind: &kind,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            mtime: 1,
        };
        write_header(&mut out, &h).unwrap();
        copy_data(&mut &b"hello"[..], &mut out, 5, |_| {}).unwrap();
        assert_eq!(out.len(), 1024);
        assert_eq!(&out[100..108], b"0000644\0");
        let sum: u32 = out[..512]
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(x)
                }
            })
            .sum();
        assert_eq!(&out[148..155], format!("{sum:06o}\0").as_bytes());
        assert_eq!(member_len("./etc/x", &kind), 1024);
    }

    #[test]
    fn long_names_and_big_numbers() {
        let name = format!("./{}", "a/".repeat(80));
        let target = "b".repeat(150);
        let kind = Kind::Symlink(target.clone());
        let mut out = Vec::new();
        let h = Header {
            name: &name,
            kind: &kind,
            mode: 0o777,
            uid: 1 << 40,
            gid: 0,
            mtime: 0,
        };
        write_header(&mut out, &h).unwrap();
        assert_eq!(out.len() as u64, member_len(&name, &kind));
        assert_eq!(out[156], b'L');
        let mut field = [0u8; 8];
        put_num(&mut field, 1 << 40);
        assert_eq!(field[0] & 0x80, 0x80);
        let mut short = &b"abc"[..];
        assert!(copy_data(&mut short, &mut Vec::new(), 4, |_| {}).is_err());
    }
}
