//! `edgepatch-builder ingest --db FILE DIR`: load USB exports written by `edgepatch
//! export-status`. Each export is checked before anything is stored: the Ed25519 signature by
//! the node key over the exact bytes of export.json, the key inside matching node.pub, every
//! report naming the same node and key with a plausible clock. The same envelope arrives over
//! HTTP (`model::open_envelope`); a key seen for the first time waits as `unaccepted`.

use super::db;
use super::model::{open_envelope_partial, Envelope, EnvelopeError, Refused, MAX_BODY};
use anyhow::{bail, Context};
use edgepatch::bundle::format::hex;
use edgepatch::bundle::keys;
use edgepatch::bundle::report::{
    key_fingerprint, EXPORT_JSON, EXPORT_SIG, NODE_PUB_FILE, SIGNATURE_TAG,
};
use edgepatch::support::error::{Error as AgentError, Exit};
use std::path::{Path, PathBuf};

/// The export directories under `dir`: `dir` itself, or its subdirectories holding export.json.
pub fn find_exports(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if dir.join(EXPORT_JSON).is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(EXPORT_JSON).is_file())
        .collect();
    out.sort();
    if out.is_empty() {
        bail!(
            "{}: no edgepatch export here (want {EXPORT_JSON}, {EXPORT_SIG} and {NODE_PUB_FILE}, \
             written by 'edgepatch export-status DIR')",
            dir.display()
        );
    }
    Ok(out)
}

fn tampered(dir: &Path, what: String) -> anyhow::Error {
    AgentError::new(
        Exit::Authenticity,
        format!(
            "{}: REJECTED: {what}; the export was changed after the node wrote it \
             (tampered or damaged copy): nothing stored; run 'edgepatch export-status' again",
            dir.display()
        ),
    )
    .into()
}

/// Read a file of an export, refusing one larger than `max` bytes before reading it (a stick
/// may hold anything; an agent's export is far below the HTTP body cap).
fn read_capped(path: &Path, max: usize) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let too_big = |n: u64| {
        anyhow::anyhow!(
            "{}: {n} bytes, at most {max} (not an edgepatch export; nothing read)",
            path.display()
        )
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > max as u64 {
        return Err(too_big(len));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("{}", path.display()))?;
    if buf.len() > max {
        return Err(too_big(buf.len() as u64));
    }
    Ok(buf)
}

/// Check one export directory. Errors carry exit code 3 (authenticity) for a bad signature;
/// reports refused on their own (a bad clock, a bad field) come back beside the good ones.
pub fn verify_export(dir: &Path) -> anyhow::Result<(Envelope, Vec<Refused>)> {
    let read = |name: &str| {
        let max = if name == EXPORT_JSON { MAX_BODY } else { 4096 };
        read_capped(&dir.join(name), max)
    };
    let body = read(EXPORT_JSON)?;
    let sig_text = String::from_utf8(read(EXPORT_SIG)?).unwrap_or_default();
    let pub_text = String::from_utf8(read(NODE_PUB_FILE)?).unwrap_or_default();
    let pk = keys::parse_public(&pub_text, &dir.join(NODE_PUB_FILE).display().to_string())
        .map_err(|e| tampered(dir, e))?;
    let (mut env, refused) =
        open_envelope_partial(&body, &sig_text, db::now()).map_err(|e| match e {
            EnvelopeError::Unsigned(_) => tampered(
                dir,
                format!("{EXPORT_SIG} is not '{SIGNATURE_TAG} <128 hex digits>'"),
            ),
            EnvelopeError::BadSignature(_) => tampered(
                dir,
                format!(
                    "signature in {EXPORT_SIG} does not match the bytes of {EXPORT_JSON} \
                 (node key {})",
                    key_fingerprint(&pk.key)
                ),
            ),
            EnvelopeError::Invalid(m) => anyhow::anyhow!("{}: {m}", dir.display()),
        })?;
    if env.pubkey != hex(pk.key.as_ref()) {
        return Err(tampered(
            dir,
            "node_pubkey inside export.json differs from node.pub".into(),
        ));
    }
    if env.node_id.is_none() {
        env.node_id = env
            .status
            .as_deref()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .and_then(|v| v.get("node_id").and_then(|n| n.as_str()).map(String::from));
    }
    Ok((env, refused))
}

/// Verify and store every export under `dir`. One bad export does not stop the others, but
/// makes the command fail (exit 3 when a signature or key was wrong).
pub fn run(db_path: &Path, dir: &Path) -> anyhow::Result<()> {
    let exports = find_exports(dir)?;
    let mut conn = db::open(db_path)?;
    let mut failed: Vec<anyhow::Error> = Vec::new();
    for e in &exports {
        match ingest_one(&mut conn, e) {
            Ok(msg) => println!("{msg}"),
            Err(err) => {
                eprintln!("edgepatch-builder ingest: {err:#}");
                failed.push(err);
            }
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    let exit = if failed.iter().any(|e| {
        e.downcast_ref::<AgentError>()
            .is_some_and(|a| a.exit == Exit::Authenticity)
    }) {
        Exit::Authenticity
    } else {
        Exit::Usage
    };
    Err(AgentError::new(
        exit,
        format!(
            "{} of {} export(s) rejected (see above); the others were stored",
            failed.len(),
            exports.len()
        ),
    )
    .into())
}

fn ingest_one(conn: &mut rusqlite::Connection, dir: &Path) -> anyhow::Result<String> {
    let (v, refused) = verify_export(dir)?;
    for r in &refused {
        eprintln!(
            "edgepatch-builder ingest: {}: report {} ({}) REFUSED, the others are stored: {}",
            dir.display(),
            r.index,
            if r.id.is_empty() { "no id" } else { &r.id },
            r.reason
        );
    }
    let refused_note = if refused.is_empty() {
        String::new()
    } else {
        format!(", {} refused (see stderr)", refused.len())
    };
    let Some(node) = v.node_id.clone() else {
        return Ok(format!(
            "{}: signature ok, but no reports and no node id: nothing to store",
            dir.display()
        ));
    };
    let (got, state) = if v.reports.is_empty() {
        (db::Ingested::default(), "none")
    } else {
        // The center heard of these when the stick was written, not when it was plugged in
        // (a node last exported a week ago is silent): the export's time, never later than now.
        let now = db::now();
        let written = i64::try_from(v.exported_at).unwrap_or(now).min(now);
        let received = written.max(super::model::MIN_TIME as i64);
        db::ingest(conn, &v, received, "usb")
            .map_err(|e| anyhow::anyhow!("{}: database: {e}", dir.display()))?
    };
    if let (Some(s), "accepted") = (&v.status, state) {
        db::set_status(conn, &node, s)?;
    }
    let waiting = if state == "unaccepted" || state == "retired" {
        format!(
            "; node key {} is not accepted: reports stored, not counted; check it and run \
             'edgepatch-builder fleet --db DB accept {node}'",
            &db::key_id(&v.pubkey)
        )
    } else {
        String::new()
    };
    Ok(format!(
        "{}: node {node}: signature ok, {} report(s): {} new, {} already known{refused_note}{waiting}",
        dir.display(),
        v.reports.len() + refused.len(),
        got.accepted,
        got.duplicates
    ))
}
