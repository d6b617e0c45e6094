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
    "silent",
];

/// What a state means, for the dashboard legend and `fleet`.
pub fn state_help(s: &str) -> &'static str {
    match s {
        "done" => "installed (exit 0)",
        "ready" => "bundle fetched/verified, not applied yet",
        "deferred" => "waiting: no bundle, window or wave (exit 5)",
        "pending" => "no report for this cycle yet",
        "failed" => "install failed, node at its pre-patch state (exit 6)",
        "error" => "usage/config error (exit 1)",
        "rolled-back" => "health check failed, rolled back (exit 7)",
        "quarantined" => "bundle refused: integrity or signature (exit 2/3)",
        "not-applicable" => "wrong variant, not newer, expired (exit 4)",
        "silent" => "not seen for longer than the silent threshold",
        _ => "",
    }
}

/// The node state an exit means. `None` (exit 8, locked) says nothing about the node.
pub fn state_of(command: &str, exit_code: i32) -> Option<&'static str> {
    Some(match exit_code {
        0 => match command {
            "rollback" => "rolled-back",
            "fetch" | "verify" => "ready",
            _ => "done",
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

/// One report as agents write it (`edgepatch::transport::report::Report::to_json`).
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
    #[serde(default)]
    pub dropped_before: u64,
}

impl WireReport {
    /// When it happened, as far as the node knows: the clock ratchet never goes back, the
    /// system clock may be years behind after a dead RTC battery.
    pub fn event_time(&self) -> i64 {
        i64::try_from(self.time.max(self.trusted_time)).unwrap_or(i64::MAX)
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
        if !["apply", "fetch", "run", "rollback", "verify"].contains(&self.command.as_str()) {
            return Err(format!(
                "command {:?}: want apply, fetch, run, rollback or verify",
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    reports: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypedBatch {
    reports: Vec<WireReport>,
}

/// Parse and check a POST body: `{"reports":[...]}`.
pub fn parse_batch(body: &[u8]) -> Result<Vec<WireReport>, String> {
    // Fast path: one typed parse. Only a body that fails it is parsed again, item by item, to
    // say which report is wrong.
    if let Ok(batch) = serde_json::from_slice::<TypedBatch>(body) {
        if !batch.reports.is_empty() && batch.reports.len() <= MAX_REPORTS {
            for (i, r) in batch.reports.iter().enumerate() {
                r.check()
                    .map_err(|e| format!("reports[{i}] ({}): {e}", short(&r.id)))?;
            }
            return Ok(batch.reports);
        }
    }
    let batch: Batch = serde_json::from_slice(body)
        .map_err(|e| format!("body is not {{\"reports\":[...]}} JSON: {e}"))?;
    if batch.reports.is_empty() {
        return Err("reports is empty".into());
    }
    if batch.reports.len() > MAX_REPORTS {
        return Err(format!(
            "{} reports in one request, at most {MAX_REPORTS}",
            batch.reports.len()
        ));
    }
    batch
        .reports
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let r: WireReport =
                serde_json::from_value(v).map_err(|e| format!("reports[{i}]: {e}"))?;
            r.check()
                .map_err(|e| format!("reports[{i}] ({}): {e}", short(&r.id)))?;
            Ok(r)
        })
        .collect()
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> WireReport {
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
            dropped_before: 0,
        }
    }

    #[test]
    fn states() {
        assert_eq!(state_of("apply", 0), Some("done"));
        assert_eq!(state_of("verify", 0), Some("ready"));
        assert_eq!(state_of("rollback", 0), Some("rolled-back"));
        assert_eq!(state_of("apply", 5), Some("deferred"));
        assert_eq!(state_of("apply", 2), Some("quarantined"));
        assert_eq!(state_of("apply", 3), Some("quarantined"));
        assert_eq!(state_of("apply", 4), Some("not-applicable"));
        assert_eq!(state_of("apply", 6), Some("failed"));
        assert_eq!(state_of("apply", 7), Some("rolled-back"));
        assert_eq!(state_of("apply", 8), None);
        assert_eq!(state_of("apply", 1), Some("error"));
    }

    #[test]
    fn agent_json_parses() {
        let r = edgepatch::transport::report::Report {
            id: "n1-5-1-0".into(),
            node_id: "n1".into(),
            variant: "v".into(),
            labels: vec![("role".into(), "till".into())],
            command: "apply".into(),
            cycle: Some("c1".into()),
            exit_code: 6,
            result: "install-failed".into(),
            reason: "dpkg: \"x\" failed".into(),
            timings_ms: vec![("install".into(), 5)],
            agent_version: "0.1.0".into(),
            ..Default::default()
        };
        let body = format!("{{\"reports\":[{}]}}", r.to_json(&"cd".repeat(32), 3));
        let got = parse_batch(body.as_bytes()).unwrap();
        assert_eq!(got[0].exit_code, 6);
        assert_eq!(got[0].dropped_before, 3);
        assert_eq!(got[0].labels["role"], "till");
        assert_eq!(got[0].reason, "dpkg: \"x\" failed");
    }

    #[test]
    fn bad_input_names_the_field() {
        assert!(parse_batch(b"not json")
            .unwrap_err()
            .contains("not {\"reports\""));
        assert!(parse_batch(b"{\"reports\":[]}")
            .unwrap_err()
            .contains("empty"));
        let mut r = sample();
        r.node_pubkey = "xyz".into();
        let body = serde_json::to_string(&serde_json::json!({ "reports": [sample(), r] })).unwrap();
        let e = parse_batch(body.as_bytes()).unwrap_err();
        assert!(
            e.starts_with("reports[1]") && e.contains("node_pubkey"),
            "{e}"
        );
        let mut r = sample();
        r.node_id = "a b".into();
        assert!(r.check().unwrap_err().contains("node_id"));
        let mut r = sample();
        r.reason = "x".repeat(5000);
        assert!(r.check().unwrap_err().contains("reason is 5000 bytes"));
        let body = br#"{"reports":[{"id":"x"}]}"#;
        assert!(parse_batch(body).unwrap_err().contains("missing field"));
    }
}
