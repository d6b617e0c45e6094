//! Verifying a bundle for this node: authenticity, integrity and freshness in one streaming pass.
//!
//! Order matters: container limits, then signatures over the raw manifest bytes (nothing unsigned
//! is parsed beyond the header), then the manifest, then whether it is for this node (variant,
//! expiry against the ratcheted clock, sequence), and only then the payload, entry by entry, each
//! handed to a sink (which discards it, or stages it into a private directory) while it is hashed.
//! A bundle whose last byte is wrong fails, and whatever the sink wrote must then be thrown away.

use crate::bundle::format::{self, hex, Entry, EntryReader, Manifest};
use crate::bundle::keys::{check_signatures, required_signers, TrustedKey};
use crate::support::error::{Error, Exit, Result};
use std::io::{self, Read};

/// What the node knows that decides whether a bundle is for it.
pub struct NodeFacts<'a> {
    pub variant: &'a str,
    /// Sequence of the bundle last applied, if any.
    pub installed_sequence: Option<u64>,
    /// Ratcheted current time (see `clock`).
    pub now: u64,
}

#[derive(Debug, Clone)]
pub struct Verified {
    pub manifest: Manifest,
    /// The exact signed bytes (kept with a staged copy for crash recovery).
    pub manifest_bytes: Vec<u8>,
    pub manifest_sha256: [u8; 32],
    pub signers: Vec<String>,
}

/// Receives each entry's decoded bytes as they stream past.
pub trait EntrySink {
    /// Called once with the authentic, applicable manifest before the first entry (the staging
    /// sink checks free space here, before writing anything).
    fn begin(&mut self, _manifest: &Manifest) -> Result<()> {
        Ok(())
    }
    fn entry(&mut self, entry: &Entry, data: &mut dyn Read) -> Result<()>;
}

/// Reads and drops every byte (plain `verify`).
pub struct Discard;

impl EntrySink for Discard {
    fn entry(&mut self, _entry: &Entry, data: &mut dyn Read) -> Result<()> {
        io::copy(data, &mut io::sink())
            .map(|_| ())
            .map_err(read_error)
    }
}

fn read_error(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Error::new(Exit::Integrity, format!("bundle truncated: {e}"))
    } else {
        Error::new(Exit::Integrity, format!("bundle payload: {e}"))
    }
}

/// Authenticate the head and parse the manifest, without reading the payload. The manifest needs
/// as many distinct usable signers as the trusted set's threshold (`keys::required_signers`).
pub fn authenticate<R: Read>(r: &mut R, trusted: &[TrustedKey]) -> Result<Verified> {
    let head = format::read_head(r)?;
    let need = required_signers(trusted);
    let signers = check_signatures(&head.manifest_bytes, &head.signatures, trusted, need)
        .map_err(|m| Error::new(Exit::Authenticity, m))?;
    let manifest = Manifest::parse(&head.manifest_bytes)?;
    Ok(Verified {
        manifest_sha256: head.manifest_sha256(),
        manifest,
        manifest_bytes: head.manifest_bytes,
        signers: signers.iter().map(|id| hex(id)).collect(),
    })
}

/// Is this authentic manifest meant for this node now?
pub fn check_applicable(m: &Manifest, node: &NodeFacts) -> Result<()> {
    let na = |msg: String| Err(Error::new(Exit::NotApplicable, msg));
    if m.variant != node.variant {
        return na(format!(
            "bundle is for variant {}, this node is {}",
            m.variant, node.variant
        ));
    }
    if m.created > crate::support::clock::MAX_SIGNED_TIME || m.created > m.expires {
        return na(format!(
            "bundle {} has an implausible created time {} (expires {}); rebuild it",
            m.cycle, m.created, m.expires
        ));
    }
    if m.expires <= node.now {
        return na(format!(
            "bundle {} expired at {} (node time {}); build a new one",
            m.cycle,
            crate::support::clock::iso_utc(m.expires),
            crate::support::clock::iso_utc(node.now)
        ));
    }
    if let Some(installed) = node.installed_sequence {
        if m.sequence <= installed {
            return na(format!(
                "bundle sequence {} is not newer than installed {installed} (replay or rollback)",
                m.sequence
            ));
        }
    }
    Ok(())
}

/// The whole check: authenticate, check applicability, stream every entry through `sink`.
pub fn verify_stream<R: Read>(
    r: &mut R,
    trusted: &[TrustedKey],
    node: &NodeFacts,
    sink: &mut dyn EntrySink,
) -> Result<Verified> {
    let verified = authenticate(r, trusted)?;
    verify_payload(r, &verified, node, sink)?;
    Ok(verified)
}

/// The rest of the pass after [`authenticate`] read the head from the same reader: applicability,
/// then every entry through `sink`, then the end of the container. A caller that decides on the
/// authenticated head first (already applied? refused? policy?) continues here without reading
/// the bundle a second time, so what it decided on is exactly what gets staged.
pub fn verify_payload<R: Read>(
    r: &mut R,
    verified: &Verified,
    node: &NodeFacts,
    sink: &mut dyn EntrySink,
) -> Result<()> {
    check_applicable(&verified.manifest, node)?;
    sink.begin(&verified.manifest)?;
    for entry in &verified.manifest.entries {
        if entry.stored == 0 && entry.kind == format::EntryKind::Ref {
            continue;
        }
        let mut er = EntryReader::new(r, entry);
        sink.entry(entry, &mut er)?;
        er.finish()?;
    }
    Ok(format::expect_end(r)?)
}
