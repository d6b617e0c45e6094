//! Offline sites: the spool and status.json exported to a USB stick, signed with the node key,
//! and the Prometheus textfile for node_exporter.

use super::*;

/// The value of a top-level string field in JSON this module wrote (for naming only).
pub(super) fn json_str_field(text: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":\"");
    let start = text.find(&pat)? + pat.len();
    let mut out = String::new();
    let mut chars = text[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

/// Write `out_dir/edgepatch-export-NODE-UNIXTIME/` holding `export.json` (the spooled reports and
/// `status.json`), `export.sig` (Ed25519 by the node key over the exact bytes of export.json)
/// and `node.pub`. The spool is kept: reports exported and later POSTed are counted once.
pub fn export_status(state_dir: &Path, out_dir: &Path) -> Result<PathBuf, String> {
    let kp = node_key(state_dir).map_err(|e| e.to_string())?;
    let list = entries(&state_dir.join(SPOOL_DIR)).map_err(|e| e.to_string())?;
    let mut reports = Vec::new();
    for e in &list {
        match std::fs::read_to_string(&e.path) {
            Ok(t) => reports.push(t),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(format!("{}: {err}", e.path.display())),
        }
    }
    let status_path = state_dir.join(STATUS_FILE);
    let status = match std::fs::read_to_string(&status_path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", status_path.display())),
    };
    let (body, sig_text) = envelope(&kp, &reports, status.as_deref());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let node = reports
        .last()
        .and_then(|r| json_str_field(r, "node_id"))
        .unwrap_or_else(|| hex(&keys::key_id(&kp.pk)));
    let safe: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let name = format!("edgepatch-export-{safe}-{now}");
    let target = out_dir.join(&name);
    let tmp = out_dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> io::Result<()> {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir(&tmp)?;
        write_atomic(&tmp.join(EXPORT_JSON), body.as_bytes(), false)?;
        write_atomic(&tmp.join(EXPORT_SIG), sig_text.as_bytes(), false)?;
        write_atomic(
            &tmp.join(NODE_PUB_FILE),
            keys::public_text(&kp.pk).as_bytes(),
            false,
        )?;
        if target.exists() {
            std::fs::remove_dir_all(&target)?;
        }
        std::fs::rename(&tmp, &target)?;
        sync_dir(out_dir)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        format!(
            "export to {}: {e}; is the USB stick mounted and writable?",
            out_dir.display()
        )
    })?;
    log::info!(
        "exported {} report(s) and {} to {}",
        reports.len(),
        if status.is_some() {
            "status.json"
        } else {
            "no status"
        },
        target.display()
    );
    Ok(target)
}

// ---------------------------------------------------------------------------------------------
// Prometheus textfile

pub(super) fn prom_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Render the node_exporter textfile for one report.
pub fn metrics_text(r: &Report) -> String {
    let ident = format!(
        "node_id=\"{}\",variant=\"{}\"",
        prom_label(&r.node_id),
        prom_label(&r.variant)
    );
    let mut s = String::new();
    let mut metric = |name: &str, help: &str, labels: &str, value: String| {
        s += &format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {value}\n");
    };
    metric(
        "edgepatch_last_run_exit_code",
        "Exit code of the last edgepatch run (0 ok, see README).",
        &format!(
            "{ident},command=\"{}\",result=\"{}\"",
            prom_label(&r.command),
            prom_label(&r.result)
        ),
        r.exit_code.to_string(),
    );
    metric(
        "edgepatch_last_run_timestamp_seconds",
        "Unix time of the last edgepatch run.",
        &ident,
        r.time.to_string(),
    );
    metric(
        "edgepatch_last_run_success",
        "1 when the last run exited 0.",
        &ident,
        u8::from(r.exit_code == 0).to_string(),
    );
    if let Some(seq) = r.installed_sequence {
        metric(
            "edgepatch_installed_sequence",
            "Sequence of the installed bundle.",
            &format!(
                "{ident},cycle=\"{}\"",
                prom_label(r.installed_cycle.as_deref().unwrap_or(""))
            ),
            seq.to_string(),
        );
    }
    if !r.timings_ms.is_empty() {
        s += "# HELP edgepatch_last_run_step_seconds Duration of each step of the last run.\n";
        s += "# TYPE edgepatch_last_run_step_seconds gauge\n";
        for (step, ms) in &r.timings_ms {
            s += &format!(
                "edgepatch_last_run_step_seconds{{{ident},step=\"{}\"}} {}.{:03}\n",
                prom_label(step),
                ms / 1000,
                ms % 1000
            );
        }
    }
    s
}

/// Write the Prometheus textfile atomically (node_exporter must never read half a file).
pub fn write_metrics(path: &Path, r: &Report) -> io::Result<()> {
    write_atomic(path, metrics_text(r).as_bytes(), false)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}
