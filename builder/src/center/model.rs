//! What agents send, how it is checked, and how an exit maps to a node state.
//!
//! Input from agents is untrusted: every string has a length limit, ids and keys have a fixed
//! shape, and a batch is refused whole (400) with the index and field of the first bad report.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest request body accepted on POST /api/v1/reports.
pub const MAX_BODY: usize = 4 << 20;
/// Most reports in one POST (agents send at most 100).
pub const MAX_REPORTS: usize = 1000;

/// States, in the order the dashboard shows them.
pub const STATES: &[&str] = &[
    "done",
    "ready",
    "deferred",
    "pending",
    "failed",
    "error",
    "rolled-back",
    "quarantined",
    "not-applicable",
    "superseded",
    "silent",
];

/// Oldest report time accepted (2020-01-01 UTC): a node clock before it is broken.
pub const MIN_TIME: u64 = 1_577_836_800;
/// How far ahead of the center's clock a node's clock may be.
pub const MAX_AHEAD: u64 = 86_400;

/// Commands whose reports are operator actions (they break a "self-healed" streak): a manual
/// rollback, a carried-out signed order, a key list import. (`import` and `recover` also run
/// automatically inside `run` and at every start, so they are not.)
pub fn operator_action(command: &str) -> bool {
    matches!(command, "rollback" | "keys") || command.starts_with("order")
}

/// What a state means, for the dashboard legend and `fleet`.
pub fn state_help(s: &str) -> &'static str {
    match s {
        "done" => "installed (exit 0)",
        "ready" => "bundle fetched/verified, not applied yet",
        "deferred" => "waiting: no bundle, window or wave (exit 5)",
        "pending" => "node of this cycle's variant, not on it or newer yet",
        "superseded" => "already on a newer cycle without an outcome for this one",
        "unaccepted" => "node key not accepted yet: reports stored, not counted",
        "failed" => "install failed, node at its pre-patch state (exit 6)",
        "error" => "usage/config error (exit 1)",
        "rolled-back" => "health check failed, rolled back (exit 7)",
        "quarantined" => "bundle refused: integrity or signature (exit 2/3)",
        "not-applicable" => "wrong variant, not newer, expired (exit 4)",
        "silent" => "not seen for longer than the silent threshold",
        _ => "",
    }
}

/// The node state an exit means. `None` says nothing about the node's state in the cycle:
/// exit 8 (locked), and successful orders other than rollback (halt, resume), key list imports
/// and recoveries (their effect shows in the next report).
pub fn state_of(command: &str, exit_code: i32) -> Option<&'static str> {
    Some(match exit_code {
        0 => match command {
            "rollback" | "order-rollback" => "rolled-back",
            "fetch" | "verify" | "import" => "ready",
            "apply" | "run" => "done",
            _ => return None,
        },
        2 | 3 => "quarantined",
        4 => "not-applicable",
        5 => "deferred",
        6 => "failed",
        7 => "rolled-back",
        8 => return None,
        _ => "error",
    })
}

/// One report as agents write it (`edgepatch::bundle::report::Report::to_json`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct WireReport {
    pub id: String,
    pub node_id: String,
    pub node_pubkey: String,
    pub variant: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub command: String,
    pub cycle: Option<String>,
    pub sequence: Option<u64>,
    pub exit_code: i32,
    pub result: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub timings_ms: BTreeMap<String, u64>,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    #[serde(default)]
    pub installed_cycle: Option<String>,
    #[serde(default)]
    pub installed_sequence: Option<u64>,
    pub agent_version: String,
    pub time: u64,
    pub trusted_time: u64,
    /// The node's report counter (0 from agents before it existed).
    #[serde(default)]
    pub report_seq: u64,
    #[serde(default)]
    pub dropped_before: u64,
}

impl WireReport {
    /// When it happened, as far as the node knows: the clock ratchet never goes back, the
    /// system clock may be years behind after a dead RTC battery. Shown, never used to order.
    pub fn event_time(&self) -> i64 {
        i64::try_from(self.time.max(self.trusted_time)).unwrap_or(i64::MAX)
    }

    /// The node's clock must be plausible: not before 2020, not more than a day ahead of `now`.
    pub fn check_time(&self, now: i64) -> Result<(), String> {
        let t = self.time.max(self.trusted_time);
        let limit = u64::try_from(now).unwrap_or(0).saturating_add(MAX_AHEAD);
        if t < MIN_TIME {
            return Err(format!(
                "time {t} is before 2020; set the node's clock (or let it fetch a bundle)"
            ));
        }
        if t > limit {
            return Err(format!(
                "time {t} is more than a day ahead of the center ({now}); fix the node's clock"
            ));
        }
        Ok(())
    }

    pub fn state(&self) -> Option<&'static str> {
        state_of(&self.command, self.exit_code)
    }
}

fn printable(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

fn check_str(field: &str, v: &str, max: usize, graphic: bool) -> Result<(), String> {
    if v.len() > max {
        return Err(format!("{field} is {} bytes, at most {max}", v.len()));
    }
    if graphic && !printable(v) {
        return Err(format!("{field} must be printable ASCII without spaces"));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(format!("{field} contains control characters"));
    }
    Ok(())
}

fn nonempty(field: &str, v: &str, max: usize) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("{field} is empty"));
    }
    check_str(field, v, max, true)
}

impl WireReport {
    /// Schema checks beyond types. The message names the field and the limit.
    pub fn check(&self) -> Result<(), String> {
        nonempty("id", &self.id, 200)?;
        nonempty("node_id", &self.node_id, 128)?;
        if self.node_pubkey.len() != 64 || !self.node_pubkey.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err("node_pubkey must be 64 hex digits".into());
        }
        nonempty("variant", &self.variant, 128)?;
        if self.labels.len() > 32 {
            return Err(format!("{} labels, at most 32", self.labels.len()));
        }
        for (k, v) in &self.labels {
            nonempty("label key", k, 64)?;
            check_str(&format!("label {k}"), v, 128, true)?;
        }
        // Every command the agent reports is stored (import, recover, order-*, keys, ...): a
        // lowercase word; unknown ones just do not change a node's state.
        if self.command.is_empty()
            || self.command.len() > 32
            || !self
                .command
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'-')
        {
            return Err(format!(
                "command {:?}: want a lowercase word such as apply, import or recover",
                self.command.chars().take(32).collect::<String>()
            ));
        }
        if let Some(c) = &self.cycle {
            nonempty("cycle", c, 128)?;
        }
        if !(0..=255).contains(&self.exit_code) {
            return Err(format!("exit_code {} is not 0..255", self.exit_code));
        }
        nonempty("result", &self.result, 32)?;
        check_str("reason", &self.reason, 4096, false)?;
        if self.timings_ms.len() > 32 {
            return Err(format!("{} timings, at most 32", self.timings_ms.len()));
        }
        for k in self.timings_ms.keys() {
            nonempty("timing name", k, 64)?;
        }
        if let Some(s) = &self.snapshot_id {
            check_str("snapshot_id", s, 256, false)?;
        }
        if let Some(c) = &self.installed_cycle {
            nonempty("installed_cycle", c, 128)?;
        }
        nonempty("agent_version", &self.agent_version, 64)?;
        for (f, v) in [("time", self.time), ("trusted_time", self.trusted_time)] {
            if v > i64::MAX as u64 {
                return Err(format!("{f} is out of range"));
            }
        }
        Ok(())
    }
}

/// A signed envelope whose signature checked: one node key, one node, its reports.
#[derive(Debug)]
pub struct Envelope {
    pub pubkey: String,
    pub node_id: Option<String>,
    /// When the node wrote it (its clock, signed); bounds a USB export's receive time.
    pub exported_at: u64,
    pub status: Option<String>,
    pub reports: Vec<WireReport>,
}

#[derive(Deserialize)]
struct RawEnvelope {
    format: String,
    node_pubkey: String,
    #[serde(default)]
    exported_at: u64,
    #[serde(default)]
    status: Option<String>,
    reports: Vec<serde_json::Value>,
}

/// Why an envelope was refused: `Unsigned`/`BadSignature` are authenticity (401 / exit 3),
/// `Invalid` is bad input (400 / exit 1).
#[derive(Debug)]
pub enum EnvelopeError {
    Unsigned(String),
    BadSignature(String),
    Invalid(String),
}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvelopeError::Unsigned(m)
            | EnvelopeError::BadSignature(m)
            | EnvelopeError::Invalid(m) => f.write_str(m),
        }
    }
}

/// Check the node's signature (`SIGNATURE_TAG HEX` in `sig_line`) over the exact `body` bytes
/// of an `edgepatch-export/1` envelope, then every report in it: same key, one node id, schema,
/// and a plausible clock relative to `now` (the center's).
pub fn open_envelope(body: &[u8], sig_line: &str, now: i64) -> Result<Envelope, EnvelopeError> {
    open(body, sig_line, now, false).map(|(env, _)| env)
}

/// One report of a correctly signed envelope that was refused on its own.
#[derive(Debug)]
pub struct Refused {
    pub index: usize,
    pub id: String,
    pub reason: String,
}

/// `open_envelope` for USB exports: the signature and the envelope must be right, but a bad
/// report (a clock 3 days ahead, a bad field) is refused alone, so the node's other reports
/// are not lost with it (the node's spool keeps it and would sink every later export too).
pub fn open_envelope_partial(
    body: &[u8],
    sig_line: &str,
    now: i64,
) -> Result<(Envelope, Vec<Refused>), EnvelopeError> {
    open(body, sig_line, now, true)
}

fn open(
    body: &[u8],
    sig_line: &str,
    now: i64,
    partial: bool,
) -> Result<(Envelope, Vec<Refused>), EnvelopeError> {
    use edgepatch::bundle::format::parse_hex;
    use edgepatch::bundle::report::{EXPORT_FORMAT, SIGNATURE_TAG};
    let bad = EnvelopeError::Invalid;
    let sig = sig_line
        .trim()
        .strip_prefix(SIGNATURE_TAG)
        .map(str::trim)
        .and_then(parse_hex::<64>)
        .ok_or_else(|| {
            EnvelopeError::Unsigned(format!(
                "no node signature: want '{SIGNATURE_TAG} <128 hex digits>'; \
                 upgrade the agent (reports must be signed by the node key)"
            ))
        })?;
    let raw: RawEnvelope = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "body is not a signed report envelope ({EXPORT_FORMAT} JSON): {e}"
        ))
    })?;
    if raw.format != EXPORT_FORMAT {
        return Err(bad(format!(
            "format {:?}, this center reads {EXPORT_FORMAT}; upgrade the center",
            short(&raw.format)
        )));
    }
    let key: [u8; 32] = parse_hex(&raw.node_pubkey)
        .ok_or_else(|| bad("node_pubkey must be 64 hex digits".into()))?;
    ed25519_compact::PublicKey::new(key)
        .verify(body, &ed25519_compact::Signature::new(sig))
        .map_err(|_| {
            EnvelopeError::BadSignature(format!(
                "signature does not match the body under node key {}; nothing stored",
                edgepatch::bundle::report::key_fingerprint(&key)
            ))
        })?;
    if raw.reports.len() > MAX_REPORTS {
        return Err(bad(format!(
            "{} reports in one envelope, at most {MAX_REPORTS}",
            raw.reports.len()
        )));
    }
    let mut node_id: Option<String> = None;
    let mut reports = Vec::with_capacity(raw.reports.len());
    let mut refused = Vec::new();
    for (i, v) in raw.reports.into_iter().enumerate() {
        let id = v
            .get("id")
            .and_then(|x| x.as_str())
            .map(short)
            .unwrap_or_default();
        let one = |v: serde_json::Value| -> Result<WireReport, String> {
            let r: WireReport = serde_json::from_value(v).map_err(|e| e.to_string())?;
            r.check()?;
            r.check_time(now)?;
            if r.node_pubkey != raw.node_pubkey {
                return Err("names another node key than the envelope".into());
            }
            if let Some(n) = &node_id {
                if *n != r.node_id {
                    return Err(format!("node {} in an envelope of node {n}", r.node_id));
                }
            }
            Ok(r)
        };
        match one(v) {
            Ok(r) => {
                if node_id.is_none() {
                    node_id = Some(r.node_id.clone());
                }
                reports.push(r);
            }
            Err(e) if partial => refused.push(Refused {
                index: i,
                id,
                reason: e,
            }),
            Err(e) if id.is_empty() => return Err(bad(format!("reports[{i}]: {e}"))),
            Err(e) => return Err(bad(format!("reports[{i}] ({id}): {e}"))),
        }
    }
    Ok((
        Envelope {
            pubkey: raw.node_pubkey,
            node_id,
            exported_at: raw.exported_at,
            status: raw.status,
            reports,
        },
        refused,
    ))
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WireReport {
        WireReport {
            id: "n1-1-1-0".into(),
            node_id: "n1".into(),
            node_pubkey: "ab".repeat(32),
            variant: "debian-12-amd64".into(),
            labels: [("role".to_string(), "till".to_string())].into(),
            command: "apply".into(),
            cycle: Some("2025-w01".into()),
            sequence: Some(1),
            exit_code: 0,
            result: "ok".into(),
            reason: String::new(),
            timings_ms: BTreeMap::new(),
            snapshot_id: None,
            installed_cycle: None,
            installed_sequence: None,
            agent_version: "0.1.0".into(),
            time: 10,
            trusted_time: 20,
            report_seq: 0,
            dropped_before: 0,
        }
    }

    #[test]
    fn states() {
        assert_eq!(state_of("apply", 0), Some("done"));
        assert_eq!(state_of("verify", 0), Some("ready"));
        assert_eq!(state_of("rollback", 0), Some("rolled-back"));
        assert_eq!(state_of("order-rollback", 0), Some("rolled-back"));
        assert_eq!(state_of("order-halt", 0), None);
        assert_eq!(state_of("import", 0), Some("ready"));
        assert_eq!(state_of("import", 2), Some("quarantined"));
        assert_eq!(state_of("recover", 0), None);
        assert!(operator_action("order-resume") && !operator_action("import"));
        assert_eq!(state_of("apply", 5), Some("deferred"));
        assert_eq!(state_of("apply", 2), Some("quarantined"));
        assert_eq!(state_of("apply", 3), Some("quarantined"));
        assert_eq!(state_of("apply", 4), Some("not-applicable"));
        assert_eq!(state_of("apply", 6), Some("failed"));
        assert_eq!(state_of("apply", 7), Some("rolled-back"));
        assert_eq!(state_of("apply", 8), None);
        assert_eq!(state_of("apply", 1), Some("error"));
    }

    fn signed(reports: &[String], seed: u8) -> (String, String, String) {
        let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]));
        let (body, sig) = edgepatch::bundle::report::envelope(&kp, reports, None);
        (body, sig, edgepatch::bundle::format::hex(kp.pk.as_ref()))
    }

    fn agent_report(code: i32) -> edgepatch::bundle::report::Report {
        edgepatch::bundle::report::Report {
            id: "n1-5-1-0".into(),
            node_id: "n1".into(),
            variant: "v".into(),
            labels: vec![("role".into(), "till".into())],
            command: "apply".into(),
            cycle: Some("c1".into()),
            exit_code: code,
            result: "install-failed".into(),
            reason: "dpkg: \"x\" failed".into(),
            timings_ms: vec![("install".into(), 5)],
            agent_version: "0.1.0".into(),
            time: 1_700_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn agent_envelope_opens() {
        let pk = signed(&[], 7).2;
        let r = agent_report(6).to_json_seq(&pk, 9, 3);
        let (body, sig, _) = signed(&[r], 7);
        let env = open_envelope(body.as_bytes(), &sig, 1_700_000_100).unwrap();
        let got = &env.reports[0];
        assert_eq!(
            (got.exit_code, got.report_seq, got.dropped_before),
            (6, 9, 3)
        );
        assert_eq!(got.labels["role"], "till");
        assert_eq!(got.reason, "dpkg: \"x\" failed");
        assert_eq!(env.node_id.as_deref(), Some("n1"));
    }

    #[test]
    fn bad_envelopes_name_the_problem() {
        let pk = signed(&[], 7).2;
        let r = agent_report(0).to_json(&pk, 0);
        let (body, sig, _) = signed(std::slice::from_ref(&r), 7);
        let now = 1_700_000_100;
        // Unsigned, tampered, signed by another key than it names.
        assert!(matches!(
            open_envelope(body.as_bytes(), "", now),
            Err(EnvelopeError::Unsigned(_))
        ));
        let tampered = body.replace("\"exit_code\":0", "\"exit_code\":6");
        assert!(matches!(
            open_envelope(tampered.as_bytes(), &sig, now),
            Err(EnvelopeError::BadSignature(_))
        ));
        let (other, osig, _) = signed(std::slice::from_ref(&r), 8);
        let e = open_envelope(other.as_bytes(), &osig, now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("another node key"), "{e}");
        // Clocks: far future, before 2020.
        let future = agent_report(0);
        let mut f = future.clone();
        f.time = now as u64 + 2 * 86_400;
        let (b, s, _) = signed(&[f.to_json(&pk, 0)], 7);
        let e = open_envelope(b.as_bytes(), &s, now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than a day ahead"), "{e}");
        let mut old = future;
        old.time = 1000;
        let (b, s, _) = signed(&[old.to_json(&pk, 0)], 7);
        let e = open_envelope(b.as_bytes(), &s, now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("before 2020"), "{e}");
        // Every agent command is accepted; junk is not.
        let mut imp = agent_report(2);
        imp.command = "import".into();
        let (b, s, _) = signed(&[imp.to_json(&pk, 0)], 7);
        assert!(open_envelope(b.as_bytes(), &s, now).is_ok());
        let mut r = sample();
        r.command = "'; DROP TABLE".into();
        assert!(r.check().unwrap_err().contains("command"));
        let mut r = sample();
        r.node_id = "a b".into();
        assert!(r.check().unwrap_err().contains("node_id"));
        let mut r = sample();
        r.reason = "x".repeat(5000);
        assert!(r.check().unwrap_err().contains("reason is 5000 bytes"));
        let e = open_envelope(b"not json", &s, now).unwrap_err().to_string();
        assert!(e.contains("not a signed report envelope"), "{e}");
    }
}
