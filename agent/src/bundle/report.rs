//! The report document a node sends to the center, and the signed envelope it travels in (over
//! HTTP and on a USB stick): pure, shared by the agent that writes it and the center that
//! verifies and reads it. Spooling and delivery are the agent's (`transport::report`).

use crate::bundle::format::{hex, sha256};
use crate::support::json;
use ed25519_compact::KeyPair;
use std::sync::atomic::{AtomicU64, Ordering};

/// A reason longer than this is cut (the center refuses longer strings anyway).
pub const MAX_REASON: usize = 1000;
pub const NODE_PUB_FILE: &str = "node.pub";
pub const EXPORT_FORMAT: &str = "edgepatch-export/1";
pub const EXPORT_JSON: &str = "export.json";
pub const EXPORT_SIG: &str = "export.sig";
pub const SIGNATURE_TAG: &str = "edgepatch-ed25519-signature";
/// HTTP header carrying `SIGNATURE_TAG HEX` over the exact bytes of a POSTed envelope.
pub const SIGNATURE_HEADER: &str = "X-Edgepatch-Signature";

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

/// The one fingerprint of a node key that people see (center CLI, dashboard, ingest messages,
/// HTTP errors; `edgepatch status`/`doctor` on the node): the first 16 hex digits of the sha256
/// of the raw 32-byte public key, the same as a signing key's id (`bundle::keys`).
pub fn key_fingerprint(pk: &[u8; 32]) -> String {
    hex(&sha256(pk)[..8])
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

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
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
