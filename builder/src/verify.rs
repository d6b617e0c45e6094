use anyhow::{anyhow, Result};
use edgepatch::bundle::format::hex;
use edgepatch::bundle::verify::{verify_stream, Discard, NodeFacts, Verified};
use edgepatch::support::clock::{Clock, SystemClock};
use std::path::Path;

/// Verify with one public key; the bundle's own variant, no sequence history.
pub fn run(public: &Path, bundle: &Path) -> Result<()> {
    let text = std::fs::read_to_string(public).map_err(|e| anyhow!("{}: {e}", public.display()))?;
    let key = edgepatch::bundle::keys::parse_public(&text, &public.display().to_string())
        .map_err(edgepatch::support::error::Error::usage)?;
    let v = verify_file(bundle, &[key], SystemClock.now())?;
    let m = &v.manifest;
    println!(
        "ok: {} cycle {} sequence {}",
        m.variant, m.cycle, m.sequence
    );
    println!(
        "    {} entries, signed by {}",
        m.entries.len(),
        v.signers.join(",")
    );
    println!("    manifest sha256 {}", hex(&v.manifest_sha256));
    Ok(())
}

/// Read a bundle through the agent's reader, as a node of its own variant would at `now`.
pub fn verify_file(
    bundle: &Path,
    keys: &[edgepatch::bundle::keys::TrustedKey],
    now: u64,
) -> Result<Verified, edgepatch::support::error::Error> {
    let mut r = edgepatch::support::fsutil::open_bundle(bundle)?;
    let auth = edgepatch::bundle::verify::authenticate(&mut r, keys)?;
    let node = NodeFacts {
        variant: &auth.manifest.variant,
        installed_sequence: None,
        now,
    };
    let mut r = edgepatch::support::fsutil::open_bundle(bundle)?;
    verify_stream(&mut r, keys, &node, &mut Discard)
}
