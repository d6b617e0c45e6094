//! The edgepatch bundle format: the one place that knows how a bundle is laid out.
//!
//! Pure: `Read`/`Write` in, values out. No files, no clock, no network. The builder writes bundles
//! through this module and reads every bundle back through it; the agent reads bundles only here.
//!
//! # Wire format (version 1)
//!
//! ```text
//! offset  size   field
//! 0       8      magic  "EDGEPTCH"
//! 8       2      container version, u16 little endian (= 1)
//! 10      4      manifest length M, u32 little endian (1 ..= MAX_MANIFEST)
//! 14      M      manifest: UTF-8 text, see below (this exact byte string is what is signed)
//! 14+M    1      signature count S (1 ..= MAX_SIGNATURES)
//!         S*72   S signatures: 8-byte key id (first 8 bytes of sha256(public key)),
//!                64-byte Ed25519 signature over the manifest bytes
//!         ...    payload: the stored bytes of every entry that carries bytes, in manifest order,
//!                back to back; nothing may follow the last one
//! ```
//!
//! The manifest is plain text, one `key value` pair per line, `\n` terminated, so that
//! `edgepatch-builder inspect` and a technician can read it:
//!
//! ```text
//! edgepatch-manifest 1
//! variant debian-12-amd64          OS variant the bundle is for
//! cycle 20261124-build-42          patch cycle id
//! sequence 42                      strictly increasing per variant (anti-rollback)
//! created 1764000000               unix seconds, signed: also feeds the node's clock ratchet
//! expires 1766592000               unix seconds (anti-freeze)
//! key_id 0123456789abcdef          the primary signing key
//! install hello                    zero or more: packages to install, not only upgrade
//! delta_base 41 <sha256>           optional: sequence and manifest sha256 of the base bundle
//! policy <key> <value>             zero or more: rollout policy, compact form
//! entry <name> <kind> <enc> <size> <stored> <sha256> [<base_sha256> <patch_sha256>]
//! ```
//!
//! `entry` fields: `name` is a relative path (see [`check_entry_name`]); `kind` is `file` (bytes
//! in the payload), `ref` (no bytes; the node already holds a file with this sha256 from the base
//! bundle) or `delta` (payload is a binary delta against the base file `base_sha256`, whose own
//! bytes hash to `patch_sha256`, so `verify` checks them without the base); `enc` is `raw` or
//! `deflate` (raw DEFLATE, miniz_oxide; deltas are always raw); `size` and `sha256` describe the
//! final file; `stored` is the number of payload bytes. Already-compressed packages (.deb, .rpm) are always
//! `raw`. Every number has a hard upper bound checked before anything is allocated or read.
//!
//! Readers verify in this order: container limits, signatures over the raw manifest bytes (before
//! the manifest is parsed), manifest syntax, then each entry's bytes as they stream past.

mod manifest;

pub use manifest::*;

use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, Read, Write};

pub const MAGIC: &[u8; 8] = b"EDGEPTCH";
pub const CONTAINER_VERSION: u16 = 1;
pub const MANIFEST_VERSION: u32 = 1;
/// Upper bound of the manifest (about 20,000 entries of long names).
pub const MAX_MANIFEST: u32 = 4 << 20;
pub const MAX_SIGNATURES: u8 = 16;
pub const MAX_ENTRIES: usize = 20_000;
/// Upper bound of any single entry (size or stored size): 8 GiB.
pub const MAX_ENTRY_SIZE: u64 = 8 << 30;
pub const MAX_NAME_LEN: usize = 200;
pub const MAX_FIELD_LEN: usize = 256;
pub const KEY_ID_LEN: usize = 8;
pub const SIGNATURE_LEN: usize = 64;
const HEADER_LEN: usize = 14;

/// What went wrong while reading a bundle. `Integrity` means bytes are missing, extra or not as
/// the manifest says; `Authenticity` means the signatures do not vouch for the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    Integrity(String),
    Authenticity(String),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Integrity(m) | FormatError::Authenticity(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for FormatError {}

fn integrity(msg: impl Into<String>) -> FormatError {
    FormatError::Integrity(msg.into())
}

fn io_integrity(what: &str, e: io::Error) -> FormatError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        integrity(format!("bundle truncated in {what}"))
    } else {
        integrity(format!("read error in {what}: {e}"))
    }
}
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Write the header, manifest and signatures. The caller then writes each entry's stored bytes
/// in manifest order.
pub fn write_head<W: Write>(w: &mut W, manifest: &[u8], sigs: &[Signature]) -> io::Result<()> {
    if manifest.is_empty() || manifest.len() > MAX_MANIFEST as usize {
        return Err(io::Error::other("manifest size out of bounds"));
    }
    if sigs.is_empty() || sigs.len() > MAX_SIGNATURES as usize {
        return Err(io::Error::other("signature count out of bounds"));
    }
    w.write_all(MAGIC)?;
    w.write_all(&CONTAINER_VERSION.to_le_bytes())?;
    w.write_all(&(manifest.len() as u32).to_le_bytes())?;
    w.write_all(manifest)?;
    w.write_all(&[sigs.len() as u8])?;
    for s in sigs {
        w.write_all(&s.key_id)?;
        w.write_all(&s.bytes)?;
    }
    Ok(())
}

/// Size of header + manifest + signatures, i.e. the offset of the payload.
pub fn head_len(manifest_len: usize, sig_count: usize) -> u64 {
    (HEADER_LEN + manifest_len + 1 + sig_count * (KEY_ID_LEN + SIGNATURE_LEN)) as u64
}

/// The unauthenticated front of a bundle: raw manifest bytes and signatures.
#[derive(Debug)]
pub struct Head {
    pub manifest_bytes: Vec<u8>,
    pub signatures: Vec<Signature>,
}

impl Head {
    pub fn manifest_sha256(&self) -> [u8; 32] {
        sha256(&self.manifest_bytes)
    }
}

/// Read the header, manifest bytes and signatures; limits are checked before allocating.
pub fn read_head<R: Read>(r: &mut R) -> Result<Head, FormatError> {
    let mut fixed = [0u8; HEADER_LEN];
    r.read_exact(&mut fixed)
        .map_err(|e| io_integrity("header", e))?;
    if &fixed[..8] != MAGIC {
        return Err(integrity("not an edgepatch bundle (bad magic)"));
    }
    let version = u16::from_le_bytes([fixed[8], fixed[9]]);
    if version != CONTAINER_VERSION {
        return Err(integrity(format!(
            "container version {version}, this agent reads {CONTAINER_VERSION}"
        )));
    }
    let len = u32::from_le_bytes([fixed[10], fixed[11], fixed[12], fixed[13]]);
    if len == 0 || len > MAX_MANIFEST {
        return Err(integrity(format!(
            "manifest length {len} not in 1..={MAX_MANIFEST}"
        )));
    }
    let mut manifest_bytes = vec![0u8; len as usize];
    r.read_exact(&mut manifest_bytes)
        .map_err(|e| io_integrity("manifest", e))?;
    let mut count = [0u8; 1];
    r.read_exact(&mut count)
        .map_err(|e| io_integrity("signatures", e))?;
    if count[0] == 0 || count[0] > MAX_SIGNATURES {
        return Err(FormatError::Authenticity(format!(
            "signature count {} not in 1..={MAX_SIGNATURES}",
            count[0]
        )));
    }
    let mut signatures = Vec::with_capacity(count[0] as usize);
    for _ in 0..count[0] {
        let mut raw = [0u8; KEY_ID_LEN + SIGNATURE_LEN];
        r.read_exact(&mut raw)
            .map_err(|e| io_integrity("signatures", e))?;
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&raw[..KEY_ID_LEN]);
        let mut bytes = [0u8; SIGNATURE_LEN];
        bytes.copy_from_slice(&raw[KEY_ID_LEN..]);
        signatures.push(Signature { key_id, bytes });
    }
    Ok(Head {
        manifest_bytes,
        signatures,
    })
}

/// Streams one entry's stored bytes out of the payload, decoding them and hashing the result.
/// Reads exactly `entry.stored` bytes from the underlying reader, never more.
pub struct EntryReader<'a, R: Read> {
    inner: io::Take<&'a mut R>,
    entry: &'a Entry,
    inflater: Option<Box<Inflater>>,
    hasher: Sha256,
    produced: u64,
    /// What the decoded stream must come to: the file itself, or for a delta the patch bytes.
    expect_len: u64,
    expect_sum: [u8; 32],
}

struct Inflater {
    state: miniz_oxide::inflate::stream::InflateState,
    input: Vec<u8>,
    start: usize,
    end: usize,
    done: bool,
}

const BUF: usize = 64 * 1024;

impl<'a, R: Read> EntryReader<'a, R> {
    pub fn new(r: &'a mut R, entry: &'a Entry) -> Self {
        let inflater = (entry.encoding == Encoding::Deflate).then(|| {
            Box::new(Inflater {
                state: miniz_oxide::inflate::stream::InflateState::new(
                    miniz_oxide::DataFormat::Raw,
                ),
                input: vec![0u8; BUF],
                start: 0,
                end: 0,
                done: false,
            })
        });
        let (expect_len, expect_sum) = match (entry.kind, entry.patch_sha256) {
            (EntryKind::Delta, Some(sum)) => (entry.stored, sum),
            _ => (entry.size, entry.sha256),
        };
        EntryReader {
            inner: r.take(entry.stored),
            entry,
            inflater,
            hasher: Sha256::new(),
            produced: 0,
            expect_len,
            expect_sum,
        }
    }

    fn read_decoded(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(inf) = self.inflater.as_mut() else {
            return self.inner.read(buf);
        };
        use miniz_oxide::inflate::stream::inflate;
        use miniz_oxide::{MZFlush, MZStatus};
        loop {
            if inf.done {
                return Ok(0);
            }
            if inf.start == inf.end {
                inf.end = self.inner.read(&mut inf.input)?;
                inf.start = 0;
            }
            let eof = inf.end == 0;
            let res = inflate(
                &mut inf.state,
                &inf.input[inf.start..inf.end],
                buf,
                if eof { MZFlush::Finish } else { MZFlush::None },
            );
            inf.start += res.bytes_consumed;
            match res.status {
                Ok(MZStatus::StreamEnd) => inf.done = true,
                Ok(_) => {}
                Err(miniz_oxide::MZError::Buf) if res.bytes_written == 0 && eof => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "deflate stream cut",
                    ))
                }
                Err(miniz_oxide::MZError::Buf) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}"))),
            }
            if res.bytes_written > 0 {
                return Ok(res.bytes_written);
            }
            if eof && !inf.done {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "deflate stream cut",
                ));
            }
        }
    }

    /// Check that all stored bytes were consumed and the decoded bytes match size and sha256.
    pub fn finish(mut self) -> Result<(), FormatError> {
        let name = &self.entry.name;
        // Drain anything the caller did not read, so the check covers the whole entry.
        let mut sink = [0u8; 8192];
        loop {
            match self.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(integrity(format!("entry {name}: {e}"))),
            }
        }
        if self.inner.limit() != 0 {
            return Err(integrity(format!(
                "bundle truncated in entry {name}: {} of {} bytes missing",
                self.inner.limit(),
                self.entry.stored
            )));
        }
        if let Some(inf) = &self.inflater {
            if inf.start != inf.end {
                return Err(integrity(format!(
                    "entry {name}: data after deflate stream end"
                )));
            }
        }
        let got: [u8; 32] = self.hasher.finalize().into();
        if got != self.expect_sum {
            return Err(integrity(format!(
                "entry {name}: sha256 is {}, manifest says {}",
                hex(&got),
                hex(&self.expect_sum)
            )));
        }
        Ok(())
    }
}

impl<R: Read> Read for EntryReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_decoded(buf)?;
        self.produced += n as u64;
        if self.produced > self.expect_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("longer than the declared {} bytes", self.expect_len),
            ));
        }
        if n == 0 && self.produced != self.expect_len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} of {} bytes", self.produced, self.expect_len),
            ));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// After the last entry: the bundle must end here.
pub fn expect_end<R: Read>(r: &mut R) -> Result<(), FormatError> {
    let mut byte = [0u8; 1];
    match r.read(&mut byte) {
        Ok(0) => Ok(()),
        Ok(_) => Err(integrity("bundle has data after its last entry")),
        Err(e) => Err(integrity(format!("read error at bundle end: {e}"))),
    }
}

/// Deflate a buffer (builder side), raw DEFLATE as the reader expects.
pub fn deflate(data: &[u8]) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec(data, 6)
}

/// Format errors map onto the agent's exit codes (2 integrity, 3 authenticity).
impl From<FormatError> for crate::support::error::Error {
    fn from(e: FormatError) -> crate::support::error::Error {
        use crate::support::error::{Error, Exit};
        use FormatError as F;
        match e {
            F::Integrity(m) => Error::new(Exit::Integrity, m),
            F::Authenticity(m) => Error::new(Exit::Authenticity, m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> Manifest {
        Manifest {
            variant: "debian-12-amd64".into(),
            cycle: "20261124-build-42".into(),
            sequence: 42,
            created: 1_764_000_000,
            expires: 1_766_592_000,
            key_id: "0123456789abcdef".into(),
            install: vec!["hello".into()],
            delta_base: Some(DeltaBase {
                sequence: 41,
                manifest_sha256: [7; 32],
            }),
            policy: vec![("window".into(), "Tue 02:00-04:00".into())],
            entries: vec![
                Entry {
                    name: "pool/a.deb".into(),
                    kind: EntryKind::File,
                    encoding: Encoding::Raw,
                    size: 3,
                    stored: 3,
                    sha256: sha256(b"abc"),
                    base_sha256: None,
                    patch_sha256: None,
                },
                Entry {
                    name: "Packages".into(),
                    kind: EntryKind::File,
                    encoding: Encoding::Deflate,
                    size: 0,
                    stored: 0,
                    sha256: sha256(b""),
                    base_sha256: None,
                    patch_sha256: None,
                },
            ],
        }
    }

    #[test]
    fn manifest_round_trips_every_field() {
        let m = sample();
        let bytes = m.to_bytes().unwrap();
        assert_eq!(Manifest::parse(&bytes).unwrap(), m);
    }

    #[test]
    fn unknown_key_names_the_line() {
        let mut bytes = sample().to_bytes().unwrap();
        bytes.extend_from_slice(b"color blue\n");
        let e = Manifest::parse(&bytes).unwrap_err().to_string();
        assert!(e.contains("unknown key \"color\""), "{e}");
        assert!(e.contains("line "), "{e}");
    }

    #[test]
    fn missing_and_repeated_fields_are_refused() {
        let text = String::from_utf8(sample().to_bytes().unwrap()).unwrap();
        let without: String = text
            .lines()
            .filter(|l| !l.starts_with("expires"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(Manifest::parse(without.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("no expires"));
        let twice = text.clone() + "sequence 43\n";
        assert!(Manifest::parse(twice.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn entry_names_cannot_escape() {
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../b",
            ".hidden",
            "a//b",
            "a b",
            "a\\b",
            "",
            "a/b/c/d/e",
        ] {
            assert!(check_entry_name(bad).is_err(), "{bad}");
        }
        for good in [
            "Packages",
            "pool/hello_2.10-3_amd64.deb",
            "repodata/repomd.xml",
            "a+b~c",
            "pool/git_1%3a2.39.5-0+deb12u3_amd64.deb",
        ] {
            check_entry_name(good).unwrap();
        }
    }

    #[test]
    fn limits_are_checked_before_allocating() {
        let mut bad = Vec::new();
        bad.extend_from_slice(MAGIC);
        bad.extend_from_slice(&1u16.to_le_bytes());
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        let e = read_head(&mut &bad[..]).unwrap_err();
        assert!(e.to_string().contains("manifest length"), "{e}");
        let mut huge = sample();
        huge.entries[0].size = MAX_ENTRY_SIZE + 1;
        huge.entries[0].stored = MAX_ENTRY_SIZE + 1;
        assert!(huge.to_bytes().is_err());
    }

    fn container(m: &Manifest, payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let sig = Signature {
            key_id: [1; 8],
            bytes: [2; 64],
        };
        write_head(&mut out, &m.to_bytes().unwrap(), &[sig]).unwrap();
        for p in payloads {
            out.extend_from_slice(p);
        }
        out
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Vec<u8>>, FormatError> {
        let mut r = bytes;
        let head = read_head(&mut r)?;
        let m = Manifest::parse(&head.manifest_bytes)?;
        let mut out = Vec::new();
        for e in &m.entries {
            let mut er = EntryReader::new(&mut r, e);
            let mut data = Vec::new();
            er.read_to_end(&mut data)
                .map_err(|e| integrity(e.to_string()))?;
            er.finish()?;
            out.push(data);
        }
        expect_end(&mut r)?;
        Ok(out)
    }

    fn two_entry_bundle() -> (Manifest, Vec<u8>, Vec<u8>) {
        let text = b"Package: hello\nVersion: 1\n".repeat(100);
        let packed = deflate(&text);
        let mut m = sample();
        m.entries[1].size = text.len() as u64;
        m.entries[1].stored = packed.len() as u64;
        m.entries[1].sha256 = sha256(&text);
        (m, text, packed)
    }

    #[test]
    fn container_round_trip_with_deflate() {
        let (m, text, packed) = two_entry_bundle();
        let bytes = container(&m, &[b"abc", &packed]);
        assert_eq!(read_all(&bytes).unwrap(), vec![b"abc".to_vec(), text]);
        assert_eq!(
            bytes.len() as u64,
            head_len(m.to_bytes().unwrap().len(), 1) + m.payload_len()
        );
    }

    #[test]
    fn truncation_garbage_and_flips_are_integrity_errors() {
        let (m, _, packed) = two_entry_bundle();
        let good = container(&m, &[b"abc", &packed]);
        for cut in [1, 5, 20, good.len() - 1] {
            assert!(
                matches!(
                    read_all(&good[..good.len() - cut]),
                    Err(FormatError::Integrity(_))
                ),
                "cut {cut}"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert!(read_all(&long)
            .unwrap_err()
            .to_string()
            .contains("after its last entry"));
        let payload_start = head_len(m.to_bytes().unwrap().len(), 1) as usize;
        // The last byte of a DEFLATE stream carries padding bits the decoder ignores; flipping
        // those changes no content, so the content hash rightly still matches.
        for pos in payload_start..good.len() - 1 {
            let mut bad = good.clone();
            bad[pos] ^= 0x40;
            assert!(
                matches!(read_all(&bad), Err(FormatError::Integrity(_))),
                "flip at {pos}"
            );
        }
    }
}
