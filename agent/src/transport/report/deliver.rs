//! Delivering the spool to the center: signed POSTs in batches, the center's refusals kept in
//! spool-rejected/ with their reasons (and sent again on request), and a probe for `doctor`.

use super::*;

pub(super) enum Post {
    Delivered,
    /// The center refused this input (4xx): sending it again will not help.
    Refused(String),
    /// Network down, 5xx, ...: try again next run.
    Retry(String),
}

pub(super) fn post(agent: &ureq::Agent, url: &str, (body, sig): &(String, String)) -> Post {
    match agent
        .post(url)
        .header("Content-Type", "application/json")
        .header(SIGNATURE_HEADER, sig.trim())
        .send(body.as_bytes())
    {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let text = resp
                .body_mut()
                .with_config()
                .limit(2048)
                .read_to_string()
                .unwrap_or_default();
            let text = cut(text.trim(), 200).replace(['\n', '\r'], " ");
            match status {
                200..=299 => Post::Delivered,
                408 | 429 => Post::Retry(format!("{url}: HTTP {status} {text}")),
                400..=499 => Post::Refused(format!("{url}: HTTP {status} {text}")),
                _ => Post::Retry(format!("{url}: HTTP {status} {text}")),
            }
        }
        Err(e) => Post::Retry(format!("{url}: {e}")),
    }
}

pub(super) fn reject(state_dir: &Path, e: &Entry, why: &str) -> io::Result<()> {
    let dir = state_dir.join(REJECTED_DIR);
    if !dir.is_dir() {
        create_dir_mode(&dir, 0o700)?;
    }
    let name = e.path.file_name().unwrap_or_default();
    log::warn!("center refused report {}: {why}", name.to_string_lossy());
    let mut why_name = name.to_os_string();
    why_name.push(WHY_SUFFIX);
    write_atomic(&dir.join(why_name), format!("{why}\n").as_bytes(), false)?;
    std::fs::rename(&e.path, dir.join(name))?;
    let mut old = entries(&dir)?;
    while old.len() > REJECTED_KEEP {
        let e = old.remove(0);
        std::fs::remove_file(&e.path)?;
        let mut why = e.path.into_os_string();
        why.push(WHY_SUFFIX);
        let _ = std::fs::remove_file(why);
    }
    Ok(())
}

/// Reports the center refused (`spool-rejected/`), oldest first: (file name, why).
pub fn rejected(state_dir: &Path) -> io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for e in entries(&state_dir.join(REJECTED_DIR))? {
        let mut why = e.path.clone().into_os_string();
        why.push(WHY_SUFFIX);
        let why = std::fs::read_to_string(&why)
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|_| "reason not recorded".into());
        let name = e.path.file_name().unwrap_or_default();
        out.push((name.to_string_lossy().into_owned(), why));
    }
    Ok(out)
}

/// Move every rejected report back to the end of the spool (`report --retry-rejected`); the
/// next flush sends them again. Returns how many were moved.
pub fn retry_rejected(state_dir: &Path) -> io::Result<usize> {
    let rej = state_dir.join(REJECTED_DIR);
    let list = entries(&rej)?;
    if list.is_empty() {
        return Ok(0);
    }
    let dir = state_dir.join(SPOOL_DIR);
    if !dir.is_dir() {
        create_dir_mode(&dir, 0o700)?;
    }
    let mut seq = entries(&dir)?.last().map_or(0, |e| e.seq);
    for e in &list {
        seq += 1;
        std::fs::rename(&e.path, dir.join(format!("{seq:010}-{}.json", e.key)))?;
        let mut why = e.path.clone().into_os_string();
        why.push(WHY_SUFFIX);
        let _ = std::fs::remove_file(why);
    }
    sync_dir(&dir)?;
    sync_dir(&rej)?;
    Ok(list.len())
}

/// `doctor`: does `report_url` answer? The center answers GET on its report URL with 200.
pub fn probe(report_url: &str, timeout: Duration) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    match agent.get(report_url).call() {
        Ok(resp) if resp.status().is_success() => Ok(format!("{report_url} answers")),
        Ok(resp) => Err(format!(
            "{report_url}: HTTP {}; is report_url the center's /api/v1/reports?",
            resp.status().as_u16()
        )),
        Err(e) => Err(format!("{report_url}: {e}; is the center running?")),
    }
}

/// POST the spool to `report_url`, oldest first, in batches of at most [`BATCH`]. Delivered
/// reports are removed. A batch the center refuses with a 4xx is resent one report at a time so
/// one bad report cannot block the others; a report refused on its own moves to
/// `spool-rejected/`. Err when the center could not be reached (the reports stay for next time).
pub fn flush(state_dir: &Path, report_url: &str, timeout: Duration) -> Result<FlushStats, String> {
    let dir = state_dir.join(SPOOL_DIR);
    let kp = node_key(state_dir).map_err(|e| e.to_string())?;
    let list = entries(&dir).map_err(|e| e.to_string())?;
    let mut stats = FlushStats {
        remaining: list.len(),
        ..FlushStats::default()
    };
    if list.is_empty() {
        return Ok(stats);
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let io_err = |e: io::Error| format!("{}: {e}", dir.display());
    for chunk in list.chunks(BATCH) {
        let mut batch: Vec<(&Entry, String)> = Vec::new();
        for e in chunk {
            match std::fs::read_to_string(&e.path) {
                Ok(t) => batch.push((e, t)),
                Err(err) if err.kind() == io::ErrorKind::NotFound => stats.remaining -= 1,
                Err(err) => return Err(format!("{}: {err}", e.path.display())),
            }
        }
        if batch.is_empty() {
            continue;
        }
        let texts: Vec<String> = batch.iter().map(|(_, t)| t.clone()).collect();
        match post(&agent, report_url, &envelope(&kp, &texts, None)) {
            Post::Delivered => {
                for (e, _) in &batch {
                    std::fs::remove_file(&e.path).map_err(io_err)?;
                }
                stats.delivered += batch.len();
                stats.remaining -= batch.len();
            }
            Post::Retry(msg) => {
                sync_dir(&dir).map_err(io_err)?;
                return Err(format!(
                    "{msg}; {} report(s) stay in the spool for the next run",
                    stats.remaining
                ));
            }
            Post::Refused(msg) => {
                log::warn!("center refused a batch of {}: {msg}", batch.len());
                for (e, text) in &batch {
                    match post(
                        &agent,
                        report_url,
                        &envelope(&kp, std::slice::from_ref(text), None),
                    ) {
                        Post::Delivered => {
                            std::fs::remove_file(&e.path).map_err(io_err)?;
                            stats.delivered += 1;
                        }
                        Post::Refused(why) => {
                            reject(state_dir, e, &why).map_err(io_err)?;
                            stats.rejected += 1;
                        }
                        Post::Retry(msg) => {
                            sync_dir(&dir).map_err(io_err)?;
                            return Err(format!(
                                "{msg}; {} report(s) stay in the spool for the next run",
                                stats.remaining
                            ));
                        }
                    }
                    stats.remaining -= 1;
                }
            }
        }
    }
    sync_dir(&dir).map_err(io_err)?;
    Ok(stats)
}
