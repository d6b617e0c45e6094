//! The status file `state_dir/status.json`: what a kiosk UI, a monitoring agent or a technician
//! on a serial console reads. It is a rendering, rewritten atomically after every step from the
//! agent's own records (installed, journal, last-result, quarantine), never read back.

use crate::node::state::Installed;
use crate::support::clock::{iso_utc, iso_utc_text};
use crate::support::config::Config;
use crate::support::error::Exit;
use crate::support::json::{self, Object};
use crate::support::kv::Record;
use std::path::{Path, PathBuf};

pub fn last_result_path(state_dir: &Path) -> PathBuf {
    state_dir.join("last-result")
}

pub fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join("journal")
}

/// The outcome of the last run, as recorded in `last-result`.
#[derive(Debug, Clone, Default)]
pub struct LastResult {
    pub record: Record,
}

impl LastResult {
    pub fn load(state_dir: &Path) -> LastResult {
        LastResult {
            record: Record::load(&last_result_path(state_dir))
                .ok()
                .flatten()
                .unwrap_or_default(),
        }
    }
}

/// Record a run's outcome. `alert` stays raised until a later apply succeeds.
pub fn record_result(
    state_dir: &Path,
    command: &str,
    exit: Exit,
    reason: &str,
    cycle: Option<&str>,
    now: u64,
    extra: &[(&str, String)],
) -> std::io::Result<()> {
    let old = LastResult::load(state_dir).record;
    let raise = matches!(exit, Exit::Integrity | Exit::Authenticity);
    let alert =
        raise || (old.get("alert") == Some("yes") && !(command == "apply" && exit == Exit::Ok));
    let mut r = Record::new();
    r.set("command", command)
        .set("exit", exit.code())
        .set("result", exit.word())
        .set("reason", reason)
        .set("time", now)
        .set("cycle", cycle.unwrap_or("-"))
        .set("alert", if alert { "yes" } else { "no" });
    for (k, v) in extra {
        r.set(k, v);
    }
    r.save(&last_result_path(state_dir))
}

/// Everything status.json shows.
pub struct Status {
    pub node_id: String,
    pub variant: String,
    pub installed: Option<Installed>,
    pub step: String,
    pub journal: Option<Record>,
    pub last: Record,
    pub quarantined: Vec<String>,
    /// This node's report key fingerprint (what `fleet list --state unaccepted` shows), once the
    /// node has made its key.
    pub key_fingerprint: Option<String>,
    /// Reports the center refused (`spool-rejected/`): file name and why.
    pub rejected: Vec<(String, String)>,
    /// First-contact weaknesses (no trust floor, no trusted time), shown loudly.
    pub warnings: Vec<String>,
    /// What the next `rollback` restores: (cycle, packages, bytes preserved).
    pub next_rollback: Option<(String, u64, u64)>,
    /// Cycles this node will not apply again (rolled back, ordered back or halted, failed).
    pub refused: Vec<String>,
    /// The last restore left packages not at their pre-patch versions.
    pub needs_attention: Option<String>,
}

impl Status {
    pub fn gather(config: &Config) -> Status {
        let sd = &config.state_dir;
        let journal = Record::load(&journal_path(sd)).ok().flatten();
        Status {
            node_id: config.node_id.clone(),
            variant: config.variant.clone(),
            installed: Installed::load(sd).ok().flatten(),
            step: journal
                .as_ref()
                .and_then(|j| j.get("step"))
                .unwrap_or("idle")
                .to_string(),
            journal,
            last: LastResult::load(sd).record,
            quarantined: crate::node::store::list_quarantine(sd),
            warnings: crate::node::trust::first_contact_warnings(config),
            rejected: rejected_reports(sd),
            key_fingerprint: node_key_fingerprint(sd),
            next_rollback: crate::node::sets::next(sd).map(|(_, r)| {
                let n = crate::node::sets::pre(&r).len() as u64;
                (
                    r.get("cycle").unwrap_or("-").into(),
                    n,
                    r.num("bytes").unwrap_or(0),
                )
            }),
            needs_attention: std::fs::read_to_string(crate::node::restore::attention_path(sd))
                .ok()
                .map(|t| t.trim().to_string()),
            refused: crate::node::marks::read_list(sd, "refused"),
        }
    }

    pub fn alert(&self) -> bool {
        self.last.get("alert") == Some("yes")
    }

    pub fn to_json(&self) -> String {
        let inst = self.installed.as_ref();
        let last = &self.last;
        let last_json = if last.fields.is_empty() {
            "null".to_string()
        } else {
            let mut o = Object::new()
                .str("command", last.get("command").unwrap_or("-"))
                .num("exit_code", last.num("exit").unwrap_or(0))
                .str("result", last.get("result").unwrap_or("-"))
                .str("reason", last.get("reason").unwrap_or(""))
                .num("time", last.num("time").unwrap_or(0))
                .str("time_date", &iso_utc(last.num("time").unwrap_or(0)))
                .opt_str("cycle", last.get("cycle").filter(|c| *c != "-"));
            for key in ["restored", "snapshot", "next_window", "health"] {
                if let Some(v) = last.get(key) {
                    o = o.str(key, v);
                }
            }
            if let Some(next) = last.get("next_window") {
                o = o.str("next_window_date", &iso_utc_text(next));
            }
            o.finish()
        };
        let staged = self.journal.as_ref().map(|j| {
            Object::new()
                .str("cycle", j.get("cycle").unwrap_or("-"))
                .num("sequence", j.num("sequence").unwrap_or(0))
                .str("bundle", j.get("bundle").unwrap_or("-"))
                .str("staging_dir", j.get("staging").unwrap_or("-"))
                .opt_str("snapshot", j.get("snapshot"))
                .finish()
        });
        Object::new()
            .num("schema", 1u64)
            .str("node_id", &self.node_id)
            .str("variant", &self.variant)
            .opt_str("installed_cycle", inst.map(|i| i.cycle.as_str()))
            .opt_num("installed_sequence", inst.map(|i| i.sequence))
            .opt_num("applied_at", inst.map(|i| i.applied_at))
            .opt_str(
                "applied_at_date",
                inst.map(|i| iso_utc(i.applied_at)).as_deref(),
            )
            .str("step", &self.step)
            .raw("last_result", &last_json)
            .raw("staged", staged.as_deref().unwrap_or("null"))
            .raw(
                "quarantined",
                &json::array(self.quarantined.iter().map(|q| json::string(q))),
            )
            .bool("alert", self.alert())
            .raw(
                "next_rollback",
                &self
                    .next_rollback
                    .as_ref()
                    .map_or("null".into(), |(c, n, b)| {
                        Object::new()
                            .str("cycle", c)
                            .num("packages", *n)
                            .num("bytes", *b)
                            .finish()
                    }),
            )
            .opt_str("needs_attention", self.needs_attention.as_deref())
            .num("reports_rejected", self.rejected.len() as u64)
            .opt_str("key_fingerprint", self.key_fingerprint.as_deref())
            .raw(
                "refused",
                &json::array(self.refused.iter().map(|c| json::string(c))),
            )
            .raw(
                "warnings",
                &json::array(self.warnings.iter().map(|w| json::string(w))),
            )
            .finish()
            + "\n"
    }

    /// A few short lines for an 80-column serial console.
    pub fn to_lines(&self) -> String {
        let mut s = format!("node      {} ({})\n", self.node_id, self.variant);
        if let Some(fp) = &self.key_fingerprint {
            s += &format!("node key  {fp} (compare with the center before 'fleet accept')\n");
        }
        match &self.installed {
            Some(i) => {
                s += &format!(
                    "installed {} seq {} at {}\n",
                    i.cycle,
                    i.sequence,
                    iso_utc(i.applied_at)
                )
            }
            None => s += "installed nothing yet\n",
        }
        s += &format!("step      {}\n", self.step);
        if let Some(r) = self.last.get("result") {
            s += &format!(
                "last      {} {} (exit {}) at {}\n",
                self.last.get("command").unwrap_or("-"),
                r,
                self.last.get("exit").unwrap_or("?"),
                iso_utc_text(self.last.get("time").unwrap_or("?"))
            );
            if let Some(reason) = self.last.get("reason").filter(|r| !r.is_empty()) {
                s += &format!("reason    {reason}\n");
            }
            if let Some(restored) = self.last.get("restored") {
                s += &format!("rollback  {restored}\n");
            }
            if let Some(next) = self.last.get("next_window") {
                s += &format!("next      window opens {}\n", iso_utc_text(next));
            }
        }
        if !self.quarantined.is_empty() {
            s += &format!(
                "quarantine {} bundle(s), newest {}\n",
                self.quarantined.len(),
                self.quarantined[self.quarantined.len() - 1]
            );
        }
        if let Some((c, n, b)) = &self.next_rollback {
            s += &format!("rollback  {c}: {n} package(s), {b} bytes kept\n");
        }
        if let Some(a) = &self.needs_attention {
            s += &format!("ATTENTION {a}\n");
        }
        if !self.refused.is_empty() {
            s += &format!(
                "refused   {} (never applied again here; ship a fix as a new cycle)\n",
                self.refused.join(" ")
            );
        }
        if self.alert() {
            s += "ALERT     a bundle failed verification; see quarantine/\n";
        }
        if let Some((_, why)) = self.rejected.last() {
            s += &format!(
                "reports   {} rejected by the center, last: {why}\n          fix it, then: edgepatch report --retry-rejected\n",
                self.rejected.len()
            );
        }
        for w in &self.warnings {
            s += &format!("WARNING   {w}\n");
        }
        crate::support::text::wrap_labelled(&s, 80, 10)
    }
}

/// The fingerprint of `state_dir/node.pub` (the key reports are signed with), if it exists.
pub fn node_key_fingerprint(state_dir: &Path) -> Option<String> {
    let p = state_dir.join(crate::bundle::report::NODE_PUB_FILE);
    let text = crate::support::fsutil::read_capped(&p, 4096).ok()?;
    let key =
        crate::bundle::keys::parse_public(std::str::from_utf8(&text).ok()?, "node.pub").ok()?;
    let raw: [u8; 32] = key.key.as_ref().try_into().ok()?;
    Some(crate::bundle::report::key_fingerprint(&raw))
}

/// The reports the center refused, read straight from `spool-rejected/` (the spool's layout
/// belongs to `transport::report`; status only counts and shows the reasons).
fn rejected_reports(state_dir: &Path) -> Vec<(String, String)> {
    let dir = state_dir.join("spool-rejected");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".why")?.to_string();
            let why = std::fs::read_to_string(e.path()).unwrap_or_default();
            Some((name, why.trim().to_string()))
        })
        .collect();
    // Names start with the spool sequence number: oldest first.
    out.sort_unstable_by_key(|(n, _)| {
        let seq = n.split('-').next().and_then(|s| s.parse::<u64>().ok());
        (seq, n.clone())
    });
    out
}

/// Rewrite status.json; failures are logged, never fatal (the node must keep patching).
pub fn write(config: &Config) {
    let path = config.state_dir.join("status.json");
    let text = Status::gather(config).to_json();
    if let Err(e) = crate::support::fsutil::write_atomic(&path, text.as_bytes(), false) {
        log::warn!("cannot write {}: {e}", path.display());
    }
}
