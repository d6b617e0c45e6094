//! Rollout policy: who patches (labels), when (maintenance window in a time zone), in which wave,
//! and with which rollback settings. Pure apart from [`Policy::load_zone`], which reads one tz
//! file; every function takes `now` as an argument and never reads the clock.
//!
//! The builder turns the PatchPolicy YAML into the compact form below and signs it into the
//! bundle manifest as `policy <key> <value>` lines (see `format`), so the agent needs no YAML
//! parser. Unknown keys and repeated keys (except `match`) are refused: an old agent never
//! silently ignores a rule a newer builder wrote.
//!
//! # Compact keys
//!
//! ```text
//! key                      value                                   YAML field (spec.)
//! name                     [namespace/]name               optional metadata.namespace/name
//! bundle_version           the bundle's cycle             required bundleRef.version
//! bundle_checksum          sha256:<64 hex>                optional bundleRef.checksum
//! match                    key=value (repeat per label)   optional targets.selector.matchLabels
//! window                   e.g. Mon-Fri 22:00-02:00       required schedule.maintenanceWindow
//! timezone                 e.g. America/New_York or UTC   required schedule.timezone
//! batch_size               1..=1000000                    optional rolloutStrategy.batchSize
//! batch_delay_minutes      0..=10080                      with batch_size   .batchDelayMinutes
//! fleet_size               1..=10000000                   optional rolloutStrategy.fleetSize
//! rollout_start            unix seconds                   with batch_size (set by the builder)
//! halt_failure_percent     1..=100                        optional rolloutStrategy.haltFailurePercent
//! rollback                 true | false                   default true   rollback.enabled
//! health_url               http(s)://...                  optional rollback.healthCheckUrl
//! health_timeout_seconds   1..=3600                       default 120    rollback.healthCheckTimeoutSeconds
//! ```
//!
//! `fleetSize`, `haltFailurePercent` are edgepatch extensions of the PatchPolicy document;
//! `rollout_start` is written by the builder (the bundle's creation time for `build --policy`)
//! so every node counts waves from the same window. Waves: see [`wave`]. Without a fleet size
//! (from the policy or set by the caller from the index) there is one wave: every targeted node
//! starts when the window opens.
//!
//! # Decision
//!
//! [`decide`] checks, in order: the policy is for this bundle's cycle, the node's labels match,
//! the window is open, the node's wave is due. The halt order and the bundle checksum of a
//! separately issued policy are checked by the caller.

pub use crate::support::{tz, window};
pub mod wave;

pub use tz::Tz;
pub use window::Window;

use std::path::Path;

pub const DEFAULT_HEALTH_TIMEOUT: u64 = 120;
pub const MAX_BATCH_SIZE: u64 = 1_000_000;
pub const MAX_FLEET_SIZE: u64 = 10_000_000;
pub const MAX_DELAY_MINUTES: u64 = 7 * 24 * 60;
pub const MAX_HEALTH_TIMEOUT: u64 = 3600;
const MAX_LABELS: usize = 32;
const MAX_URL: usize = 2048;

/// The rollout policy of one bundle. Build it with [`Policy::from_lines`] (agent) or field by
/// field followed by [`Policy::validate`] (builder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `namespace/name` or `name`, for reports.
    pub name: Option<String>,
    pub bundle_version: String,
    pub bundle_checksum: Option<[u8; 32]>,
    pub match_labels: Vec<(String, String)>,
    pub window: Window,
    pub timezone: String,
    /// `None`: no waves.
    pub batch_size: Option<u64>,
    pub batch_delay_minutes: u64,
    /// May be set by the caller from the index when the policy has none.
    pub fleet_size: Option<u64>,
    /// Unix seconds waves are counted from; required with `batch_size` in the compact form.
    pub rollout_start: Option<i64>,
    pub halt_failure_percent: Option<u8>,
    pub rollback: bool,
    pub health_check_url: Option<String>,
    pub health_check_timeout_seconds: u64,
}

/// What the node does with a bundle under this policy now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Apply,
    /// Not now: exit 5, `next_start` (unix seconds) goes into the status file.
    Defer {
        reason: String,
        next_start: i64,
    },
    /// Not for this node: exit 4, reported, nothing installed.
    NotTargeted {
        reason: String,
    },
}

/// Printable token of 1..=256 bytes (the bundle cycle's own rule).
pub fn check_version(v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 256 || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{v:?} must be 1..=256 printable characters without spaces"
        ));
    }
    Ok(())
}

/// `sha256:` followed by 64 hex digits.
pub fn parse_checksum(v: &str) -> Result<[u8; 32], String> {
    v.strip_prefix("sha256:")
        .and_then(|h| crate::bundle::format::parse_hex::<32>(&h.to_ascii_lowercase()))
        .ok_or_else(|| format!("{v:?} must be sha256: followed by 64 hex digits"))
}

/// Label keys: 1..=253 of `[A-Za-z0-9._/-]`, starting and ending alphanumeric.
pub fn check_label_key(k: &str) -> Result<(), String> {
    let ok = (1..=253).contains(&k.len())
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
        && k.starts_with(|c: char| c.is_ascii_alphanumeric())
        && k.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        return Err(format!(
            "label key {k:?} must be 1..=253 of A-Z a-z 0-9 . _ / -"
        ));
    }
    Ok(())
}

/// Label values: 0..=63 of `[A-Za-z0-9._-]`.
pub fn check_label_value(v: &str) -> Result<(), String> {
    if v.len() > 63
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!(
            "label value {v:?} must be 0..=63 of A-Z a-z 0-9 . _ -"
        ));
    }
    Ok(())
}

/// `http://` or `https://` with a host, no spaces or control characters, ≤ 2048 bytes.
pub fn check_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"));
    let ok = u.len() <= MAX_URL
        && u.bytes().all(|b| b.is_ascii_graphic())
        && rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'));
    if !ok {
        return Err(format!(
            "{u:?} must be an http:// or https:// URL with a host"
        ));
    }
    Ok(())
}

/// `name` or `namespace/name`, each 1..=253 of `[a-z0-9.-]`.
pub fn check_name(n: &str) -> Result<(), String> {
    let part_ok = |p: &str| {
        (1..=253).contains(&p.len())
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    };
    let ok = match n.split_once('/') {
        Some((ns, name)) => part_ok(ns) && part_ok(name),
        None => part_ok(n),
    };
    if !ok {
        return Err(format!(
            "{n:?} must be lowercase letters, digits, . and - (namespace/name)"
        ));
    }
    Ok(())
}

fn num(key: &str, v: &str, range: std::ops::RangeInclusive<u64>) -> Result<u64, String> {
    v.parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            format!(
                "policy {key} {v:?}: want a whole number in {}..={}",
                range.start(),
                range.end()
            )
        })
}

const KEYS: [&str; 14] = [
    "name",
    "bundle_version",
    "bundle_checksum",
    "match",
    "window",
    "timezone",
    "batch_size",
    "batch_delay_minutes",
    "fleet_size",
    "rollout_start",
    "halt_failure_percent",
    "rollback",
    "health_url",
    "health_timeout_seconds",
];

impl Policy {
    /// A policy with only the required fields and every default.
    pub fn new(bundle_version: &str, window: Window, timezone: &str) -> Policy {
        Policy {
            name: None,
            bundle_version: bundle_version.into(),
            bundle_checksum: None,
            match_labels: Vec::new(),
            window,
            timezone: timezone.into(),
            batch_size: None,
            batch_delay_minutes: 0,
            fleet_size: None,
            rollout_start: None,
            halt_failure_percent: None,
            rollback: true,
            health_check_url: None,
            health_check_timeout_seconds: DEFAULT_HEALTH_TIMEOUT,
        }
    }

    /// Parse the manifest's `policy` lines. Errors name the key and what to do.
    pub fn from_lines(lines: &[(String, String)]) -> Result<Policy, String> {
        let mut seen: Vec<&str> = Vec::new();
        let mut version = None;
        let mut window = None;
        let mut timezone = None;
        let mut p = Policy::new("", Window::parse("Mon 00:00-00:01")?, "UTC");
        let mut delay = None;
        for (k, v) in lines {
            let k = k.as_str();
            let v = v.as_str();
            if !KEYS.contains(&k) {
                return Err(format!(
                    "policy key {k:?} is unknown to this agent; upgrade the agent"
                ));
            }
            if k != "match" && seen.contains(&k) {
                return Err(format!("policy key {k} given twice; rebuild the policy"));
            }
            seen.push(k);
            let field = |r: Result<(), String>| r.map_err(|m| format!("policy {k}: {m}"));
            match k {
                "name" => {
                    field(check_name(v))?;
                    p.name = Some(v.into());
                }
                "bundle_version" => {
                    field(check_version(v))?;
                    version = Some(v);
                }
                "bundle_checksum" => {
                    p.bundle_checksum =
                        Some(parse_checksum(v).map_err(|m| format!("policy {k}: {m}"))?)
                }
                "match" => {
                    let (lk, lv) = v
                        .split_once('=')
                        .ok_or_else(|| format!("policy match {v:?}: want key=value"))?;
                    field(check_label_key(lk))?;
                    field(check_label_value(lv))?;
                    p.match_labels.push((lk.into(), lv.into()));
                }
                "window" => {
                    window = Some(Window::parse(v).map_err(|m| format!("policy window: {m}"))?)
                }
                "timezone" => {
                    field(tz::check_name(v))?;
                    timezone = Some(v);
                }
                "batch_size" => p.batch_size = Some(num(k, v, 1..=MAX_BATCH_SIZE)?),
                "batch_delay_minutes" => delay = Some(num(k, v, 0..=MAX_DELAY_MINUTES)?),
                "fleet_size" => p.fleet_size = Some(num(k, v, 1..=MAX_FLEET_SIZE)?),
                "rollout_start" => {
                    p.rollout_start = Some(num(k, v, 0..=253_402_300_799)? as i64);
                }
                "halt_failure_percent" => {
                    p.halt_failure_percent = Some(num(k, v, 1..=100)? as u8);
                }
                "rollback" => {
                    p.rollback = match v {
                        "true" => true,
                        "false" => false,
                        _ => return Err(format!("policy rollback {v:?}: want true or false")),
                    }
                }
                "health_url" => {
                    field(check_url(v))?;
                    p.health_check_url = Some(v.into());
                }
                "health_timeout_seconds" => {
                    p.health_check_timeout_seconds = num(k, v, 1..=MAX_HEALTH_TIMEOUT)?;
                }
                _ => unreachable!("key list and match arms agree"),
            }
        }
        let missing = |k: &str| format!("policy key {k} missing; rebuild the policy");
        p.bundle_version = version.ok_or_else(|| missing("bundle_version"))?.into();
        p.window = window.ok_or_else(|| missing("window"))?;
        p.timezone = timezone.ok_or_else(|| missing("timezone"))?.into();
        match (p.batch_size, delay) {
            (Some(_), Some(d)) => p.batch_delay_minutes = d,
            (None, None) => {}
            _ => {
                return Err(
                    "policy batch_size and batch_delay_minutes go together; rebuild the policy"
                        .into(),
                )
            }
        }
        if p.batch_size.is_some() && p.rollout_start.is_none() {
            return Err(missing("rollout_start"));
        }
        p.validate()?;
        Ok(p)
    }

    /// Cross-field and value checks for a policy built field by field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(n) = &self.name {
            check_name(n).map_err(|m| format!("policy name: {m}"))?;
        }
        check_version(&self.bundle_version).map_err(|m| format!("policy bundle_version: {m}"))?;
        tz::check_name(&self.timezone).map_err(|m| format!("policy timezone: {m}"))?;
        if self.match_labels.len() > MAX_LABELS {
            return Err(format!("policy has more than {MAX_LABELS} match labels"));
        }
        for (i, (k, v)) in self.match_labels.iter().enumerate() {
            check_label_key(k).map_err(|m| format!("policy match: {m}"))?;
            check_label_value(v).map_err(|m| format!("policy match: {m}"))?;
            if self.match_labels[..i].iter().any(|(k2, _)| k2 == k) {
                return Err(format!("policy match: label {k} given twice"));
            }
        }
        let range = |what: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("policy {what} {v} not in {lo}..={hi}"))
            }
        };
        if let Some(b) = self.batch_size {
            range("batch_size", b, 1, MAX_BATCH_SIZE)?;
        }
        range(
            "batch_delay_minutes",
            self.batch_delay_minutes,
            0,
            MAX_DELAY_MINUTES,
        )?;
        if let Some(f) = self.fleet_size {
            range("fleet_size", f, 1, MAX_FLEET_SIZE)?;
            if let Some(b) = self.batch_size {
                if f.div_ceil(b) > wave::MAX_WAVES {
                    return Err(format!(
                        "policy fleet_size {f} / batch_size {b} gives more than {} waves; raise batch_size",
                        wave::MAX_WAVES
                    ));
                }
            }
        }
        if let Some(h) = self.halt_failure_percent {
            range("halt_failure_percent", h as u64, 1, 100)?;
        }
        if let Some(u) = &self.health_check_url {
            check_url(u).map_err(|m| format!("policy health_url: {m}"))?;
        }
        range(
            "health_timeout_seconds",
            self.health_check_timeout_seconds,
            1,
            MAX_HEALTH_TIMEOUT,
        )?;
        Ok(())
    }

    /// The compact form for the manifest; `from_lines(to_lines())` gives the policy back.
    pub fn to_lines(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: String| out.push((k.into(), v));
        if let Some(n) = &self.name {
            put("name", n.clone());
        }
        put("bundle_version", self.bundle_version.clone());
        if let Some(c) = &self.bundle_checksum {
            put(
                "bundle_checksum",
                format!("sha256:{}", crate::bundle::format::hex(c)),
            );
        }
        for (k, v) in &self.match_labels {
            put("match", format!("{k}={v}"));
        }
        put("window", self.window.to_string());
        put("timezone", self.timezone.clone());
        if let Some(b) = self.batch_size {
            put("batch_size", b.to_string());
            put("batch_delay_minutes", self.batch_delay_minutes.to_string());
        }
        if let Some(f) = self.fleet_size {
            put("fleet_size", f.to_string());
        }
        if let Some(s) = self.rollout_start {
            put("rollout_start", s.to_string());
        }
        if let Some(h) = self.halt_failure_percent {
            put("halt_failure_percent", h.to_string());
        }
        put("rollback", self.rollback.to_string());
        if let Some(u) = &self.health_check_url {
            put("health_url", u.clone());
        }
        put(
            "health_timeout_seconds",
            self.health_check_timeout_seconds.to_string(),
        );
        out
    }

    /// Load the policy's time zone from `zoneinfo_dir` (normally [`tz::ZONEINFO_DIR`]).
    pub fn load_zone(&self, zoneinfo_dir: &Path) -> Result<Tz, String> {
        Tz::load(zoneinfo_dir, &self.timezone)
    }

    /// All `match` labels are among the node's labels; an empty selector matches every node.
    pub fn targets(&self, labels: &[(String, String)]) -> bool {
        self.unmatched(labels).is_none()
    }

    fn unmatched(&self, labels: &[(String, String)]) -> Option<&(String, String)> {
        self.match_labels.iter().find(|want| !labels.contains(want))
    }

    pub fn in_window(&self, tz: &Tz, now: i64) -> bool {
        self.window.in_window(tz, now)
    }

    pub fn next_window_start(&self, tz: &Tz, now: i64) -> Option<i64> {
        self.window.next_window_start(tz, now)
    }

    /// Number of waves (see [`wave`]); 1 without batch_size, fleet_size or rollout_start.
    pub fn waves(&self) -> u64 {
        match (self.batch_size, self.rollout_start) {
            (Some(b), Some(_)) => wave::wave_count(self.fleet_size, b),
            _ => 1,
        }
    }

    /// `Ok(())` when the node's wave is due and the window is open; otherwise when to look again.
    pub fn wave_due(&self, tz: &Tz, node_id: &str, cycle: &str, now: i64) -> Result<(), NotYet> {
        let now = now.clamp(-tz::T_LIMIT, tz::T_LIMIT);
        let waves = self.waves();
        let wave = wave::wave_of(node_id, cycle, waves);
        let not_open = || NotYet {
            next: self
                .next_window_start(tz, now)
                .unwrap_or(now.saturating_add(3600)),
            wave,
            waves,
        };
        let open = self.window.current(tz, now);
        let Some(start) = self.rollout_start.filter(|_| waves > 1) else {
            return if open.is_some() {
                Ok(())
            } else {
                Err(not_open())
            };
        };
        match wave::due_at(&self.window, tz, start, wave, self.batch_delay_minutes) {
            Some((due, _)) if now < due => Err(NotYet {
                next: due,
                wave,
                waves,
            }),
            // Due, or missed its slot: any open window will do.
            _ if open.is_some() => Ok(()),
            _ => Err(not_open()),
        }
    }
}

/// Not yet: look again at `next` (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotYet {
    pub next: i64,
    pub wave: u64,
    pub waves: u64,
}

/// `YYYY-MM-DD HH:MM` in zone `tz`, for messages.
pub fn local_time(tz: &Tz, t: i64) -> String {
    tz::format_local(t + tz.offset_at(t) as i64)
}

/// The whole decision for one node and one bundle, at `now` (unix seconds). `tz` is
/// `policy.load_zone(..)`; `cycle` is the bundle's cycle.
pub fn decide(
    policy: &Policy,
    tz: &Tz,
    node_id: &str,
    labels: &[(String, String)],
    cycle: &str,
    now: i64,
) -> Decision {
    let now = now.clamp(0, tz::T_LIMIT);
    if policy.bundle_version != cycle {
        return Decision::NotTargeted {
            reason: format!(
                "policy is for bundle {}, not cycle {cycle}",
                policy.bundle_version
            ),
        };
    }
    if let Some((k, v)) = policy.unmatched(labels) {
        let has = labels
            .iter()
            .find(|(nk, _)| nk == k)
            .map_or("no such label".to_string(), |(_, nv)| format!("{k}={nv}"));
        return Decision::NotTargeted {
            reason: format!("policy wants label {k}={v}, node has {has}"),
        };
    }
    match policy.wave_due(tz, node_id, cycle, now) {
        Ok(()) => Decision::Apply,
        Err(n) => {
            let at = format!("{} {}", local_time(tz, n.next), policy.timezone);
            let reason = if policy.in_window(tz, now) {
                format!("wave {} of {} starts {at}", n.wave + 1, n.waves)
            } else if n.waves > 1 {
                format!(
                    "outside window {}; wave {} of {} starts {at}",
                    policy.window,
                    n.wave + 1,
                    n.waves
                )
            } else {
                format!("outside window {}; next opens {at}", policy.window)
            };
            Decision::Defer {
                reason,
                next_start: n.next,
            }
        }
    }
}

/// The `policy <key> <value>` lines of a re-issued policy document (`edgepatch-policy`, from
/// `edgepatch-builder policy issue`), in the form [`Policy::from_lines`] takes.
pub fn reissued_lines(rec: &crate::support::kv::Record) -> Vec<(String, String)> {
    rec.fields
        .iter()
        .filter(|(k, _)| k == "policy")
        .filter_map(|(_, v)| v.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
#[cfg(test)]
mod tests;
