use anyhow::Result;
use edgepatch::bundle::format::{self, hex, EntryKind, Manifest};
use serde_json::json;
use std::path::Path;

/// Print the manifest. Signatures are listed by key id but not checked: `verify` does that.
pub fn run(file: &Path, as_json: bool) -> Result<()> {
    let mut r = edgepatch::support::fsutil::open_bundle(file)?;
    let head = format::read_head(&mut r).map_err(edgepatch::support::error::Error::from)?;
    let m =
        Manifest::parse(&head.manifest_bytes).map_err(edgepatch::support::error::Error::from)?;
    let signers: Vec<String> = head.signatures.iter().map(|s| hex(&s.key_id)).collect();
    let kind = |k: EntryKind| match k {
        EntryKind::File => "file",
        EntryKind::Ref => "ref",
        EntryKind::Delta => "delta",
    };
    if as_json {
        let entries: Vec<_> = m
            .entries
            .iter()
            .map(|e| {
                json!({"name": e.name, "kind": kind(e.kind), "size": e.size, "stored": e.stored,
                       "sha256": hex(&e.sha256), "deflate": e.encoding == format::Encoding::Deflate,
                       "base_sha256": e.base_sha256.map(|b| hex(&b))})
            })
            .collect();
        let doc = json!({
            "variant": m.variant, "cycle": m.cycle, "sequence": m.sequence,
            "created": m.created, "expires": m.expires, "key_id": m.key_id,
            "signatures": signers, "install": m.install,
            "delta_base": m.delta_base.as_ref().map(|b| json!({"sequence": b.sequence, "manifest_sha256": hex(&b.manifest_sha256)})),
            "policy": m.policy.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "manifest_sha256": hex(&head.manifest_sha256()),
            "payload_bytes": m.payload_len(),
            "entries": entries,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("variant   {}", m.variant);
    println!("cycle     {}  sequence {}", m.cycle, m.sequence);
    println!(
        "created   {}  expires {}",
        edgepatch::support::clock::iso_utc(m.created),
        edgepatch::support::clock::iso_utc(m.expires)
    );
    println!(
        "signed by {} (not checked here; use verify)",
        signers.join(",")
    );
    if !m.install.is_empty() {
        println!("install   {}", m.install.join(" "));
    }
    if let Some(b) = &m.delta_base {
        println!(
            "delta of  sequence {} ({}..)",
            b.sequence,
            &hex(&b.manifest_sha256)[..16]
        );
    }
    for (k, v) in &m.policy {
        println!("policy    {k} {v}");
    }
    println!(
        "entries   {} ({} payload bytes)",
        m.entries.len(),
        m.payload_len()
    );
    for e in &m.entries {
        // 80 columns: name up to 46, kind, size, short sum.
        let name = if e.name.len() > 46 {
            format!("..{}", &e.name[e.name.len() - 44..])
        } else {
            e.name.clone()
        };
        println!(
            "  {name:<46} {:<5} {:>11} {}",
            kind(e.kind),
            e.size,
            &hex(&e.sha256)[..12]
        );
    }
    Ok(())
}
