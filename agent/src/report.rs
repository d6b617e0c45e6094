//! Reports: every exit of the agent becomes one report that reaches the center, even from sites
//! that are offline for weeks.
//!
//! - `spool` writes the report as one JSON file in `state_dir/spool/` (atomically) and compacts
//!   the spool when it holds more than [`SPOOL_CAP`] reports: for each cycle the first and the
//!   last report stay, the ones between are dropped and counted in the last one's
//!   `dropped_before`; the newest report is never dropped.
//! - `flush` POSTs the spool to the center in batches of at most [`BATCH`]; a 2xx removes the
//!   batch. The center ignores report ids it already has, so a retry never double-counts.
//! - `export_status` writes the spool and `status.json` to a directory (a USB stick), signed
//!   with the node's own Ed25519 key (`node_key`, created at first use, 0600).
//! - `write_metrics` writes a Prometheus textfile for node_exporter.
//!
//! Spool file names are `SEQ-CYCLEKEY.json`: SEQ orders them, CYCLEKEY (16 hex digits of
//! sha256(cycle), or `none`) groups them by cycle without parsing JSON. The JSON is written here
//! and always ends with `"dropped_before":N}` so compaction can update that one field.

use crate::format::{hex, sha256};
use crate::fsutil::{create_dir_mode, sync_dir, write_atomic};
use crate::json;
use crate::keys;
use ed25519_compact::{KeyPair, Seed};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Reports kept in the spool before it is compacted.
pub const SPOOL_CAP: usize = 500;
/// Reports per POST.
pub const BATCH: usize = 100;
/// A reason longer than this is cut (the center refuses longer strings anyway).
pub const MAX_REASON: usize = 1000;
/// Undeliverable reports (refused by the center with a 4xx) kept for a technician.
pub const REJECTED_KEEP: usize = 50;

pub const SPOOL_DIR: &str = "spool";
pub const REJECTED_DIR: &str = "spool-rejected";
pub const NODE_KEY_FILE: &str = "node.key";
pub const NODE_PUB_FILE: &str = "node.pub";
pub const STATUS_FILE: &str = "status.json";
pub const EXPORT_FORMAT: &str = "edgepatch-export/1";
pub const EXPORT_JSON: &str = "export.json";
pub const EXPORT_SIG: &str = "export.sig";
pub const SIGNATURE_TAG: &str = "edgepatch-ed25519-signature";
/// HTTP header carrying `SIGNATURE_TAG HEX` over the exact bytes of a POSTed envelope.
pub const SIGNATURE_HEADER: &str = "X-Edgepatch-Signature";
/// The node's report counter (`state_dir/report-seq`): the center orders a node's reports by it.
pub const REPORT_SEQ_FILE: &str = "report-seq";
/// Why the center refused a report: `spool-rejected/NAME.why` beside `NAME`.
pub const WHY_SUFFIX: &str = ".why";

/// One outcome of one agent run, as sent to the center.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// Unique: see [`new_id`].
    pub id: String,
    pub node_id: String,
    pub variant: String,
    pub labels: Vec<(String, String)>,
    /// apply | fetch | run | rollback | verify
    pub command: String,
    pub cycle: Option<String>,
    pub sequence: Option<u64>,
    pub exit_code: i32,
    /// `error::Exit::word()`
    pub result: String,
    /// One line.
    pub reason: String,
    pub timings_ms: Vec<(String, u64)>,
    pub snapshot_id: Option<String>,
    pub installed_cycle: Option<String>,
    pub installed_sequence: Option<u64>,
    pub agent_version: String,
    /// Unix seconds, system clock.
    pub time: u64,
    /// Unix seconds, the clock ratchet (never goes back).
    pub trusted_time: u64,
}

/// A report id: node id, unix millis, process id and a per-process counter.
pub fn new_id(node_id: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{node_id}-{millis}-{}-{n}", std::process::id())
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Report {
    /// The wire form. `dropped_before` is always the last key (see the module docs).
    pub fn to_json(&self, node_pubkey: &str, dropped_before: u64) -> String {
        self.to_json_seq(node_pubkey, 0, dropped_before)
    }

    /// The wire form with the node's report sequence (`report_seq`, omitted when 0).
    pub fn to_json_seq(&self, node_pubkey: &str, seq: u64, dropped_before: u64) -> String {
        let mut labels = json::Object::new();
        for (k, v) in &self.labels {
            labels = labels.str(k, v);
        }
        let mut timings = json::Object::new();
        for (k, v) in &self.timings_ms {
            timings = timings.num(k, *v);
        }
        let reason = self.reason.replace(['\n', '\r'], " ");
        let o = json::Object::new()
            .str("id", &self.id)
            .str("node_id", &self.node_id)
            .str("node_pubkey", node_pubkey)
            .str("variant", &self.variant)
            .raw("labels", &labels.finish())
            .str("command", &self.command)
            .opt_str("cycle", self.cycle.as_deref())
            .opt_num("sequence", self.sequence)
            .num("exit_code", self.exit_code)
            .str("result", &self.result)
            .str("reason", cut(&reason, MAX_REASON))
            .raw("timings_ms", &timings.finish())
            .opt_str("snapshot_id", self.snapshot_id.as_deref())
            .opt_str("installed_cycle", self.installed_cycle.as_deref())
            .opt_num("installed_sequence", self.installed_sequence)
            .str("agent_version", &self.agent_version)
            .num("time", self.time)
            .num("trusted_time", self.trusted_time);
        let o = if seq > 0 { o.num("report_seq", seq) } else { o };
        o.num("dropped_before", dropped_before).finish()
    }
}

/// What `flush` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlushStats {
    /// Reports the center acknowledged (2xx); removed from the spool.
    pub delivered: usize,
    /// Reports the center refused one by one with a 4xx; moved to `spool-rejected/`.
    pub rejected: usize,
    /// Reports still in the spool.
    pub remaining: usize,
}

// ---------------------------------------------------------------------------------------------
// Node key

/// The node's own signing key, `state_dir/node.key` (0600), created from /dev/urandom at first
/// use, with `node.pub` beside it. A damaged key file is an error, never silently replaced: the
/// center has accepted the old public key.
pub fn node_key(state_dir: &Path) -> io::Result<KeyPair> {
    let path = state_dir.join(NODE_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let origin = path.display().to_string();
            let sk = keys::parse_secret(&text, &origin).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{e}; remove it to make a new key, then accept the node again at the center"),
                )
            })?;
            Ok(KeyPair {
                pk: sk.public_key(),
                sk,
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !state_dir.is_dir() {
                create_dir_mode(state_dir, 0o700)?;
            }
            let mut seed = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut seed))
                .map_err(|e| io::Error::new(e.kind(), format!("/dev/urandom: {e}")))?;
            let kp = KeyPair::from_seed(Seed::new(seed));
            write_atomic(&path, keys::secret_text(&kp.sk).as_bytes(), true)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            let pub_path = state_dir.join(NODE_PUB_FILE);
            write_atomic(&pub_path, keys::public_text(&kp.pk).as_bytes(), false)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", pub_path.display())))?;
            log::info!("created node key {}", path.display());
            Ok(kp)
        }
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

// ---------------------------------------------------------------------------------------------
// Spool

#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    key: String,
    path: PathBuf,
}

fn cycle_key(cycle: Option<&str>) -> String {
    match cycle {
        Some(c) => hex(&sha256(c.as_bytes())[..8]),
        None => "none".to_string(),
    }
}

fn parse_name(name: &str) -> Option<(u64, String)> {
    let stem = name.strip_suffix(".json")?;
    let (seq, key) = stem.split_once('-')?;
    let ok_key = key == "none" || (key.len() == 16 && key.bytes().all(|b| b.is_ascii_hexdigit()));
    if seq.len() != 10 || !seq.bytes().all(|b| b.is_ascii_digit()) || !ok_key {
        return None;
    }
    Some((seq.parse().ok()?, key.to_string()))
}

/// The spool's reports, oldest first. A missing spool is an empty one.
fn entries(dir: &Path) -> io::Result<Vec<Entry>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    };
    let mut out = Vec::new();
    for d in rd {
        let d = d?;
        let name = d.file_name();
        if let Some((seq, key)) = name.to_str().and_then(parse_name) {
            out.push(Entry {
                seq,
                key,
                path: d.path(),
            });
        }
    }
    out.sort_by_key(|e| e.seq);
    Ok(out)
}

/// Number of reports waiting in the spool.
pub fn pending(state_dir: &Path) -> io::Result<usize> {
    Ok(entries(&state_dir.join(SPOOL_DIR))?.len())
}

const DROPPED_KEY: &str = "\"dropped_before\":";

fn dropped_of(text: &str) -> u64 {
    text.rfind(DROPPED_KEY)
        .map(|i| &text[i + DROPPED_KEY.len()..])
        .and_then(|rest| rest.trim_end().strip_suffix('}'))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn with_dropped(text: &str, n: u64) -> String {
    match text.rfind(DROPPED_KEY) {
        Some(i) => format!("{}{DROPPED_KEY}{n}}}", &text[..i]),
        None => text.to_string(),
    }
}

/// Append a report to the spool (one file, written atomically), then compact if over the cap.
pub fn spool(state_dir: &Path, r: &Report) -> io::Result<()> {
    spool_with_cap(state_dir, r, SPOOL_CAP)
}

/// `spool` with an explicit cap (tests; sites with tiny disks).
pub fn spool_with_cap(state_dir: &Path, r: &Report, cap: usize) -> io::Result<()> {
    let dir = state_dir.join(SPOOL_DIR);
    if !dir.is_dir() {
        create_dir_mode(&dir, 0o700)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    }
    let kp = node_key(state_dir)?;
    let list = entries(&dir)?;
    let seq = list.last().map_or(1, |e| e.seq + 1);
    let name = format!("{seq:010}-{}.json", cycle_key(r.cycle.as_deref()));
    let path = dir.join(name);
    let report_seq = next_report_seq(state_dir)?;
    write_atomic(
        &path,
        r.to_json_seq(&hex(kp.pk.as_ref()), report_seq, 0)
            .as_bytes(),
        false,
    )
    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    if list.len() + 1 > cap {
        compact(&dir, cap)?;
    }
    Ok(())
}

/// The next value of the node's report counter (1, 2, ...; persisted before use, never reused).
fn next_report_seq(state_dir: &Path) -> io::Result<u64> {
    let path = state_dir.join(REPORT_SEQ_FILE);
    let last: u64 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let next = last.saturating_add(1);
    write_atomic(&path, format!("{next}\n").as_bytes(), false)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok(next)
}

/// Bring the spool down to at most `cap` reports (at least one, the newest, always stays).
fn compact(dir: &Path, cap: usize) -> io::Result<()> {
    let list = entries(dir)?;
    if list.len() <= cap {
        return Ok(());
    }
    let read = |e: &Entry| std::fs::read_to_string(&e.path).unwrap_or_default();
    // 1. Per cycle: keep the first and the last, count the ones between in the last.
    let mut keys: Vec<&str> = Vec::new();
    for e in &list {
        if !keys.contains(&e.key.as_str()) {
            keys.push(&e.key);
        }
    }
    let mut dropped_total = 0usize;
    for key in keys {
        let group: Vec<&Entry> = list.iter().filter(|e| e.key == key).collect();
        if group.len() <= 2 {
            continue;
        }
        let last = group[group.len() - 1];
        let middle = &group[1..group.len() - 1];
        let count: u64 = middle.iter().map(|e| 1 + dropped_of(&read(e))).sum();
        let text = read(last);
        write_atomic(
            &last.path,
            with_dropped(&text, dropped_of(&text) + count).as_bytes(),
            false,
        )?;
        for e in middle {
            std::fs::remove_file(&e.path)?;
        }
        dropped_total += middle.len();
    }
    // 2. Still too many (hundreds of cycles): drop the oldest, count them in the newest.
    let list = entries(dir)?;
    if list.len() > cap {
        let keep = cap.max(1);
        let (old, _) = list.split_at(list.len() - keep);
        let newest = &list[list.len() - 1];
        let count: u64 = old.iter().map(|e| 1 + dropped_of(&read(e))).sum();
        let text = read(newest);
        write_atomic(
            &newest.path,
            with_dropped(&text, dropped_of(&text) + count).as_bytes(),
            false,
        )?;
        for e in old {
            std::fs::remove_file(&e.path)?;
        }
        dropped_total += old.len();
    }
    sync_dir(dir)?;
    log::warn!("report spool over {cap}: compacted, {dropped_total} old reports counted, not kept");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Delivery

enum Post {
    Delivered,
    /// The center refused this input (4xx): sending it again will not help.
    Refused(String),
    /// Network down, 5xx, ...: try again next run.
    Retry(String),
}

fn post(agent: &ureq::Agent, url: &str, (body, sig): &(String, String)) -> Post {
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

/// The signed envelope (the same `edgepatch-export/1` document a USB export carries): the body,
/// and the signature line over its exact bytes.
pub fn envelope(kp: &KeyPair, reports: &[String], status: Option<&str>) -> (String, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let body = json::Object::new()
        .str("format", EXPORT_FORMAT)
        .str("node_pubkey", &hex(kp.pk.as_ref()))
        .num("exported_at", now)
        .opt_str("status", status)
        .raw("reports", &json::array(reports.iter().cloned()))
        .finish();
    let sig = kp.sk.sign(body.as_bytes(), None);
    let line = format!("{SIGNATURE_TAG} {}\n", hex(sig.as_ref()));
    (body, line)
}

fn reject(state_dir: &Path, e: &Entry, why: &str) -> io::Result<()> {
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

// ---------------------------------------------------------------------------------------------
// USB export

/// The value of a top-level string field in JSON this module wrote (for naming only).
fn json_str_field(text: &str, key: &str) -> Option<String> {
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

fn prom_label(v: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ep-report-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn report(cycle: Option<&str>, code: i32) -> Report {
        Report {
            id: new_id("n1"),
            node_id: "n1".into(),
            variant: "debian-12-amd64".into(),
            labels: vec![("role".into(), "till".into())],
            command: "apply".into(),
            cycle: cycle.map(str::to_string),
            sequence: Some(7),
            exit_code: code,
            result: "ok".into(),
            reason: "line one\nline \"two\"".into(),
            timings_ms: vec![("verify".into(), 1234)],
            snapshot_id: None,
            installed_cycle: Some("c1".into()),
            installed_sequence: Some(7),
            agent_version: crate::VERSION.into(),
            time: 1_700_000_000,
            trusted_time: 1_700_000_000,
        }
    }

    #[test]
    fn json_shape_and_dropped_field() {
        let j = report(Some("c1"), 0).to_json("ab", 0);
        assert!(j.starts_with("{\"id\":\"n1-"));
        assert!(j.contains("\"labels\":{\"role\":\"till\"}"));
        assert!(j.contains("\"reason\":\"line one line \\\"two\\\"\""));
        assert!(j.ends_with(",\"dropped_before\":0}"));
        assert_eq!(dropped_of(&j), 0);
        let j2 = with_dropped(&j, 41);
        assert_eq!(dropped_of(&j2), 41);
        assert_eq!(j2.len(), j.len() + 1);
        assert_eq!(json_str_field(&j, "node_id").as_deref(), Some("n1"));
    }

    #[test]
    fn ids_are_unique() {
        let a: Vec<String> = (0..1000).map(|_| new_id("n")).collect();
        let mut b = a.clone();
        b.sort();
        b.dedup();
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn node_key_is_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tmp("key");
        let k1 = node_key(&d).unwrap();
        let k2 = node_key(&d).unwrap();
        assert_eq!(k1.pk, k2.pk);
        let mode = std::fs::metadata(d.join(NODE_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(d.join(NODE_KEY_FILE), "garbage").unwrap();
        assert!(
            node_key(&d).is_err(),
            "a damaged key is never replaced silently"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn compaction_keeps_first_last_and_counts() {
        let d = tmp("compact");
        let cap = 10;
        // 8 reports of c1, then 8 of c2: over the cap twice.
        for i in 0..8 {
            let mut r = report(Some("c1"), 5);
            r.sequence = Some(i);
            spool_with_cap(&d, &r, cap).unwrap();
        }
        for i in 0..8 {
            let mut r = report(Some("c2"), 5);
            r.sequence = Some(100 + i);
            spool_with_cap(&d, &r, cap).unwrap();
        }
        let list = entries(&d.join(SPOOL_DIR)).unwrap();
        assert!(list.len() <= cap, "{} files", list.len());
        let texts: Vec<String> = list
            .iter()
            .map(|e| std::fs::read_to_string(&e.path).unwrap())
            .collect();
        // First of c1 and the newest of c2 are there; counts add up to 16.
        assert!(texts[0].contains("\"cycle\":\"c1\"") && texts[0].contains("\"sequence\":0,"));
        assert!(texts.last().unwrap().contains("\"sequence\":107,"));
        let total: u64 = texts.iter().map(|t| 1 + dropped_of(t)).sum();
        assert_eq!(total, 16);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn compaction_with_many_cycles_keeps_newest() {
        let d = tmp("many");
        for i in 0..30 {
            spool_with_cap(&d, &report(Some(&format!("c{i}")), 0), 5).unwrap();
        }
        let list = entries(&d.join(SPOOL_DIR)).unwrap();
        assert_eq!(list.len(), 5);
        let newest = std::fs::read_to_string(&list[4].path).unwrap();
        assert!(newest.contains("\"cycle\":\"c29\""));
        let total: u64 = list
            .iter()
            .map(|e| 1 + dropped_of(&std::fs::read_to_string(&e.path).unwrap()))
            .sum();
        assert_eq!(total, 30);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A loopback server answering each POST with the next status from `codes` (then 200),
    /// recording the bodies.
    fn server(codes: Vec<u16>) -> (String, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/v1/reports", l.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let b2 = bodies.clone();
        std::thread::spawn(move || {
            let mut codes = codes.into_iter();
            for s in l.incoming() {
                let Ok(s) = s else { break };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.to_ascii_lowercase();
                    if let Some(v) = l.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let body = String::from_utf8(body).unwrap();
                let code = codes.next().unwrap_or(200);
                let is_stop = body.contains("STOP");
                b2.lock().unwrap().push(body);
                let mut s = s;
                let _ = write!(
                    s,
                    "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
                if is_stop {
                    break;
                }
            }
        });
        (url, bodies)
    }

    #[test]
    fn flush_batches_and_removes_delivered() {
        let d = tmp("flush");
        for _ in 0..250 {
            spool(&d, &report(Some("c1"), 0)).unwrap();
        }
        // Server down: nothing lost.
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_url = format!("http://{}/x", dead.local_addr().unwrap());
        drop(dead);
        let err = flush(&d, &dead_url, Duration::from_secs(2)).unwrap_err();
        assert!(err.contains("250 report(s) stay"), "{err}");
        assert_eq!(pending(&d).unwrap(), 250);
        // First batch 503: stops, keeps all.
        let (url, bodies) = server(vec![503]);
        assert!(flush(&d, &url, Duration::from_secs(5)).is_err());
        assert_eq!(pending(&d).unwrap(), 250);
        let stats = flush(&d, &url, Duration::from_secs(5)).unwrap();
        assert_eq!(
            stats,
            FlushStats {
                delivered: 250,
                rejected: 0,
                remaining: 0
            }
        );
        let b = bodies.lock().unwrap();
        assert_eq!(b.len(), 4, "one refused try, then 100+100+50");
        // 100 reports plus the envelope's own key.
        assert_eq!(b[1].matches("\"node_pubkey\"").count(), 101);
        assert!(b[1].starts_with("{\"format\":\"edgepatch-export/1\""));

        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refused_report_is_set_aside_not_blocking() {
        let d = tmp("refused");
        for _ in 0..3 {
            spool(&d, &report(None, 5)).unwrap();
        }
        // Batch refused, then one by one: ok, refused, ok.
        let (url, bodies) = server(vec![400, 200, 422, 200]);
        let stats = flush(&d, &url, Duration::from_secs(5)).unwrap();
        assert_eq!(stats.delivered, 2);
        assert_eq!(stats.rejected, 1);
        assert_eq!(stats.remaining, 0);
        assert_eq!(bodies.lock().unwrap().len(), 4);
        assert_eq!(entries(&d.join(REJECTED_DIR)).unwrap().len(), 1);
        let why = rejected(&d).unwrap();
        assert_eq!(why.len(), 1);
        assert!(why[0].1.contains("HTTP 422"), "{why:?}");
        assert_eq!(retry_rejected(&d).unwrap(), 1);
        assert_eq!((pending(&d).unwrap(), rejected(&d).unwrap().len()), (1, 0));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn export_is_signed_over_exact_bytes() {
        let d = tmp("export");
        let out = tmp("export-out");
        spool(&d, &report(Some("c1"), 0)).unwrap();
        std::fs::write(d.join(STATUS_FILE), "{\"state\":\"done\"}\n").unwrap();
        let dir = export_status(&d, &out).unwrap();
        assert!(dir
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("edgepatch-export-n1-"));
        let body = std::fs::read(dir.join(EXPORT_JSON)).unwrap();
        let sig_text = std::fs::read_to_string(dir.join(EXPORT_SIG)).unwrap();
        let hexsig = sig_text.trim().strip_prefix(SIGNATURE_TAG).unwrap().trim();
        let sig: [u8; 64] = crate::format::parse_hex(hexsig).unwrap();
        let pk = keys::parse_public(
            &std::fs::read_to_string(dir.join(NODE_PUB_FILE)).unwrap(),
            "t",
        )
        .unwrap()
        .key;
        let sig = ed25519_compact::Signature::new(sig);
        pk.verify(&body, &sig).unwrap();
        let mut bad = body.clone();
        bad[10] ^= 1;
        assert!(pk.verify(&bad, &sig).is_err());
        assert_eq!(pending(&d).unwrap(), 1, "export keeps the spool");
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn metrics_textfile() {
        let d = tmp("metrics");
        let p = d.join("edgepatch.prom");
        let mut r = report(Some("c1"), 6);
        r.node_id = "a\"b".into();
        write_metrics(&p, &r).unwrap();
        let t = std::fs::read_to_string(&p).unwrap();
        assert!(t.contains("edgepatch_last_run_exit_code{node_id=\"a\\\"b\""));
        assert!(t.contains("} 6\n"));
        assert!(t.contains("step=\"verify\"} 1.234\n"));
        assert!(t.contains(
            "edgepatch_last_run_success{node_id=\"a\\\"b\",variant=\"debian-12-amd64\"} 0\n"
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
