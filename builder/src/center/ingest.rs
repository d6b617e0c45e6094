//! `edgepatch-builder ingest --db FILE DIR`: load USB exports written by `edgepatch
//! export-status`. Each export is checked before anything is stored: the Ed25519 signature by
//! the node key over the exact bytes of export.json, the key inside matching node.pub, every
//! report naming the same node and key, and the key matching the one pinned for that node.

use super::db;
use super::model::WireReport;
use anyhow::{bail, Context};
use edgepatch::bundle::format::{hex, parse_hex};
use edgepatch::bundle::keys;
use edgepatch::support::error::{Error as AgentError, Exit};
use edgepatch::transport::report::{
    EXPORT_FORMAT, EXPORT_JSON, EXPORT_SIG, NODE_PUB_FILE, SIGNATURE_TAG,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct Export {
    format: String,
    node_pubkey: String,
    exported_at: u64,
    status: Option<String>,
    reports: Vec<serde_json::Value>,
}

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

/// An export whose bytes are authentic: parsed reports, the node id, the status text.
pub struct Verified {
    pub node_id: Option<String>,
    pub pubkey: String,
    pub exported_at: u64,
    pub status: Option<String>,
    pub reports: Vec<WireReport>,
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

/// Check one export directory. Errors carry exit code 3 (authenticity) for a bad signature.
pub fn verify_export(dir: &Path) -> anyhow::Result<Verified> {
    let read = |name: &str| {
        std::fs::read(dir.join(name)).with_context(|| format!("{}", dir.join(name).display()))
    };
    let body = read(EXPORT_JSON)?;
    let sig_text = String::from_utf8(read(EXPORT_SIG)?).unwrap_or_default();
    let pub_text = String::from_utf8(read(NODE_PUB_FILE)?).unwrap_or_default();
    let pk = keys::parse_public(&pub_text, &dir.join(NODE_PUB_FILE).display().to_string())
        .map_err(|e| tampered(dir, e))?;
    let sig_hex = sig_text
        .trim()
        .strip_prefix(SIGNATURE_TAG)
        .map(str::trim)
        .and_then(parse_hex::<64>)
        .ok_or_else(|| {
            tampered(
                dir,
                format!("{EXPORT_SIG} is not '{SIGNATURE_TAG} <128 hex digits>'"),
            )
        })?;
    pk.key
        .verify(&body, &ed25519_compact::Signature::new(sig_hex))
        .map_err(|_| {
            tampered(
                dir,
                format!(
                    "signature in {EXPORT_SIG} does not match the bytes of {EXPORT_JSON} \
                     (node key {})",
                    hex(&pk.id)
                ),
            )
        })?;
    let pubkey = hex(pk.key.as_ref());
    let export: Export = serde_json::from_slice(&body).with_context(|| {
        format!(
            "{}: signed but not an export",
            dir.join(EXPORT_JSON).display()
        )
    })?;
    if export.format != EXPORT_FORMAT {
        bail!(
            "{}: format {:?}, this center reads {EXPORT_FORMAT}; upgrade the center",
            dir.display(),
            export.format
        );
    }
    if export.node_pubkey != pubkey {
        return Err(tampered(
            dir,
            "node_pubkey inside export.json differs from node.pub".into(),
        ));
    }
    let mut reports = Vec::new();
    let mut node_id: Option<String> = None;
    for (i, v) in export.reports.into_iter().enumerate() {
        let r: WireReport = serde_json::from_value(v)
            .with_context(|| format!("{}: reports[{i}]", dir.display()))?;
        r.check()
            .map_err(|e| anyhow::anyhow!("{}: reports[{i}]: {e}", dir.display()))?;
        if r.node_pubkey != pubkey {
            bail!("{}: reports[{i}] names another node key", dir.display());
        }
        match &node_id {
            None => node_id = Some(r.node_id.clone()),
            Some(n) if *n != r.node_id => bail!(
                "{}: reports for two nodes ({n}, {}) in one export",
                dir.display(),
                r.node_id
            ),
            Some(_) => {}
        }
        reports.push(r);
    }
    if node_id.is_none() {
        node_id = export
            .status
            .as_deref()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .and_then(|v| v.get("node_id").and_then(|n| n.as_str()).map(String::from));
    }
    Ok(Verified {
        node_id,
        pubkey,
        exported_at: export.exported_at,
        status: export.status,
        reports,
    })
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
    let v = verify_export(dir)?;
    let Some(node) = v.node_id.clone() else {
        return Ok(format!(
            "{}: signature ok, but no reports and no node id: nothing to store",
            dir.display()
        ));
    };
    if let Some(pinned) = db::pinned_key(conn, &node)? {
        if !pinned.is_empty() && pinned != v.pubkey {
            return Err(AgentError::new(
                Exit::Authenticity,
                format!(
                    "{}: REJECTED: signed by key {}…, but node {node} is pinned to key {}… \
                     since its first report; if the node was reinstalled, run \
                     'edgepatch-builder fleet --db DB --unpin {node}' and ingest again",
                    dir.display(),
                    &v.pubkey[..16],
                    &pinned[..pinned.len().min(16)]
                ),
            )
            .into());
        }
    }
    let now = db::now();
    let newest = v.reports.iter().map(|r| r.event_time()).max().unwrap_or(0);
    let seen = (v.exported_at.min(i64::MAX as u64) as i64)
        .max(newest)
        .min(now);
    let got = if v.reports.is_empty() {
        db::Ingested::default()
    } else {
        db::ingest(conn, &v.reports, seen, "usb")
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
    };
    if let Some(s) = &v.status {
        db::set_status(conn, &node, s)?;
    }
    Ok(format!(
        "{}: node {node}: signature ok, {} report(s): {} new, {} already known",
        dir.display(),
        v.reports.len(),
        got.accepted,
        got.duplicates
    ))
}
