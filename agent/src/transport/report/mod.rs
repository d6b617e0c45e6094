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

mod deliver;
mod export;

pub use crate::bundle::report::*;
pub use deliver::{flush, probe, rejected, retry_rejected};
#[cfg(test)]
use export::json_str_field;
pub use export::{export_status, metrics_text, write_metrics};

use crate::bundle::format::{hex, sha256};
use crate::bundle::keys;
use crate::support::fsutil::{create_dir_mode, sync_dir, write_atomic};
use ed25519_compact::{KeyPair, Seed};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use std::time::Duration;

/// Reports kept in the spool before it is compacted.
pub const SPOOL_CAP: usize = 500;
/// Reports per POST.
pub const BATCH: usize = 100;
/// Undeliverable reports (refused by the center with a 4xx) kept for a technician.
pub const REJECTED_KEEP: usize = 50;

pub const SPOOL_DIR: &str = "spool";
pub const REJECTED_DIR: &str = "spool-rejected";
pub const NODE_KEY_FILE: &str = "node.key";
pub const STATUS_FILE: &str = "status.json";
/// The node's report counter (`state_dir/report-seq`): the center orders a node's reports by it.
pub const REPORT_SEQ_FILE: &str = "report-seq";
/// Why the center refused a report: `spool-rejected/NAME.why` beside `NAME`.
pub const WHY_SUFFIX: &str = ".why";

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
    out.sort_unstable_by(|a, b| a.seq.cmp(&b.seq).then_with(|| a.path.cmp(&b.path)));
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
        let sig: [u8; 64] = crate::bundle::format::parse_hex(hexsig).unwrap();
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
