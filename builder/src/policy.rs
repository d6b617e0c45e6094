//! `policy check`: read and validate a PatchPolicy YAML document, and optionally check it against
//! the bundle it pins. [`load_policy_yaml`] is also what `build --policy` embeds (compact form,
//! see `edgepatch::bundle::policy`).
//!
//! The document has exactly the shape of the seed article; unknown fields are refused with their
//! line number. edgepatch adds two optional fields under `spec.schedule.rolloutStrategy`:
//! `fleetSize` (number of targeted nodes; waves = ceil(fleetSize / batchSize); without it every
//! targeted node starts when the window opens, unless the caller supplies the size from the index)
//! and `haltFailurePercent` (1..=100: the center halts the rollout when that share of the nodes
//! reporting so far failed).
//!
//! ```yaml
//! apiVersion: patchmgmt.io/v1           # required, exactly
//! kind: PatchPolicy                     # required, exactly
//! metadata: {name: edge-fleet-q4-2024, namespace: operations}   # name required
//! spec:
//!   bundleRef: {version: "20241105-build-42", checksum: "sha256:..."}  # checksum optional
//!   targets: {selector: {matchLabels: {role: edge-node}}}  # optional; empty = every node
//!   schedule:                                              # required
//!     maintenanceWindow: "Tue 02:00-04:00"                 # required
//!     timezone: "America/New_York"                         # required, must exist
//!     rolloutStrategy: {type: RollingUpdate, batchSize: 100, batchDelayMinutes: 15,
//!                       fleetSize: 1000, haltFailurePercent: 10}   # optional
//!   rollback: {enabled: true, healthCheckUrl: "http://localhost:8080/health",
//!              healthCheckTimeoutSeconds: 120}             # optional; url and timeout optional
//! ```
//!
//! Exit codes of `policy check`: 0 valid (and matches the bundle), 1 invalid policy or unreadable
//! file, 2 `bundleRef` does not match the bundle (cycle or sha256).

use anyhow::{anyhow, bail, Context, Result};
use edgepatch::bundle::format::{self, hex, Manifest};
use edgepatch::bundle::policy::{self, tz, Policy, Tz, Window};
use edgepatch::support::error::{Error, Exit};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum PolicyCommand {
    /// Validate a PatchPolicy YAML file; with --bundle also its bundleRef (cycle and sha256)
    Check {
        file: PathBuf,
        /// The bundle the policy pins: bundleRef.version must be its cycle and
        /// bundleRef.checksum "sha256:" + the sha256 of the whole file
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Time zone database to check spec.schedule.timezone against
        #[arg(long, default_value = tz::ZONEINFO_DIR, hide = true)]
        zoneinfo: PathBuf,
    },
    /// Re-issue a policy for an existing bundle (widen a window, change waves) as a small signed
    /// file, without rebuilding the bundle; nodes take the newest valid one for that bundle
    Issue {
        file: PathBuf,
        /// The bundle the policy is for; bundleRef must pin its cycle and sha256
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

const API_VERSION: &str = "patchmgmt.io/v1";
const KIND: &str = "PatchPolicy";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Doc {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    bundle_ref: BundleRef,
    targets: Option<Targets>,
    schedule: Schedule,
    rollback: Option<Rollback>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleRef {
    version: String,
    checksum: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Targets {
    selector: Option<Selector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Selector {
    #[serde(default, deserialize_with = "unique_map")]
    match_labels: Option<Vec<(String, String)>>,
}

/// A string-to-string mapping in document order; a key given twice is an error (plain serde maps
/// would silently keep the last one).
fn unique_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Vec<(String, String)>>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<Vec<(String, String)>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a mapping of label names to strings")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut out: Vec<(String, String)> = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if out.iter().any(|(seen, _)| *seen == k) {
                    return Err(serde::de::Error::custom(format!(
                        "duplicate label key `{k}`"
                    )));
                }
                out.push((k, v));
            }
            Ok(Some(out))
        }
        fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Schedule {
    maintenance_window: String,
    timezone: String,
    rollout_strategy: Option<Strategy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Strategy {
    #[serde(rename = "type")]
    kind: String,
    batch_size: i64,
    batch_delay_minutes: i64,
    fleet_size: Option<i64>,
    halt_failure_percent: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Rollback {
    enabled: bool,
    health_check_url: Option<String>,
    health_check_timeout_seconds: Option<i64>,
}

/// " (line N)" when `key:` appears on exactly one line of the document.
fn line_of(text: &str, key: &str) -> String {
    let pat = format!("{key}:");
    let hits: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            l.match_indices(&pat).any(|(i, _)| {
                !l[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric())
            })
        })
        .map(|(n, _)| n + 1)
        .collect();
    match hits[..] {
        [n] => format!(" (line {n})"),
        _ => String::new(),
    }
}

fn in_range(v: i64, lo: i64, hi: i64) -> Result<u64, String> {
    if (lo..=hi).contains(&v) {
        Ok(v as u64)
    } else {
        Err(format!("{v} must be in {lo}..={hi}"))
    }
}

/// Read, parse and validate a PatchPolicy file, checking the time zone against the system tz
/// database. The result has no `rollout_start`: `build --policy` sets it (see [`lines_for_build`]).
pub fn load_policy_yaml(path: &Path) -> Result<Policy> {
    load_with(path, Path::new(tz::ZONEINFO_DIR))
}

fn load_with(path: &Path, zoneinfo: &Path) -> Result<Policy> {
    let shown = path.display();
    let meta = std::fs::metadata(path).with_context(|| format!("{shown}"))?;
    if meta.len() > 1 << 20 {
        bail!("{shown}: {} bytes; a policy is at most 1 MiB", meta.len());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{shown}"))?;
    let doc: Doc = serde_norway::from_str(&text).map_err(|e| anyhow!("{shown}: {e}"))?;
    // Every value error names the YAML field and, where it is unambiguous, the line.
    let bad = |field: &str, key: &str, msg: String| {
        anyhow!("{shown}: {field}: {msg}{}", line_of(&text, key))
    };
    if doc.api_version != API_VERSION {
        return Err(bad(
            "apiVersion",
            "apiVersion",
            format!("{:?} must be {API_VERSION}", doc.api_version),
        ));
    }
    if doc.kind != KIND {
        return Err(bad(
            "kind",
            "kind",
            format!("{:?} must be {KIND}", doc.kind),
        ));
    }
    let name = match &doc.metadata.namespace {
        Some(ns) => format!("{ns}/{}", doc.metadata.name),
        None => doc.metadata.name.clone(),
    };
    if doc.metadata.name.contains('/') {
        return Err(bad(
            "metadata.name",
            "name",
            "must not contain /".to_string(),
        ));
    }
    policy::check_name(&name).map_err(|m| bad("metadata", "name", m))?;
    let spec = &doc.spec;
    policy::check_version(&spec.bundle_ref.version)
        .map_err(|m| bad("spec.bundleRef.version", "version", m))?;
    let checksum = match &spec.bundle_ref.checksum {
        Some(c) => Some(
            policy::parse_checksum(c).map_err(|m| bad("spec.bundleRef.checksum", "checksum", m))?,
        ),
        None => None,
    };
    let sched = &spec.schedule;
    let window = Window::parse(&sched.maintenance_window)
        .map_err(|m| bad("spec.schedule.maintenanceWindow", "maintenanceWindow", m))?;
    Tz::load(zoneinfo, &sched.timezone)
        .map_err(|m| bad("spec.schedule.timezone", "timezone", m))?;
    let mut p = Policy::new(&spec.bundle_ref.version, window, &sched.timezone);
    p.name = Some(name);
    p.bundle_checksum = checksum;
    let labels = spec
        .targets
        .as_ref()
        .and_then(|t| t.selector.as_ref())
        .and_then(|s| s.match_labels.as_ref());
    for (k, v) in labels.into_iter().flatten() {
        let field = "spec.targets.selector.matchLabels";
        policy::check_label_key(k).map_err(|m| bad(field, k, m))?;
        policy::check_label_value(v).map_err(|m| bad(field, k, m))?;
        p.match_labels.push((k.clone(), v.clone()));
    }
    if let Some(s) = &sched.rollout_strategy {
        let field = |f: &str| format!("spec.schedule.rolloutStrategy.{f}");
        if s.kind != "RollingUpdate" {
            return Err(bad(
                &field("type"),
                "type",
                format!("{:?} must be RollingUpdate", s.kind),
            ));
        }
        let max_batch = policy::MAX_BATCH_SIZE as i64;
        p.batch_size = Some(
            in_range(s.batch_size, 1, max_batch)
                .map_err(|m| bad(&field("batchSize"), "batchSize", m))?,
        );
        p.batch_delay_minutes =
            in_range(s.batch_delay_minutes, 0, policy::MAX_DELAY_MINUTES as i64)
                .map_err(|m| bad(&field("batchDelayMinutes"), "batchDelayMinutes", m))?;
        if let Some(f) = s.fleet_size {
            p.fleet_size = Some(
                in_range(f, 1, policy::MAX_FLEET_SIZE as i64)
                    .map_err(|m| bad(&field("fleetSize"), "fleetSize", m))?,
            );
        }
        if let Some(h) = s.halt_failure_percent {
            p.halt_failure_percent = Some(
                in_range(h, 1, 100)
                    .map_err(|m| bad(&field("haltFailurePercent"), "haltFailurePercent", m))?
                    as u8,
            );
        }
    }
    if let Some(r) = &spec.rollback {
        p.rollback = r.enabled;
        if let Some(u) = &r.health_check_url {
            policy::check_url(u)
                .map_err(|m| bad("spec.rollback.healthCheckUrl", "healthCheckUrl", m))?;
            p.health_check_url = Some(u.clone());
        }
        if let Some(t) = r.health_check_timeout_seconds {
            p.health_check_timeout_seconds = in_range(t, 1, policy::MAX_HEALTH_TIMEOUT as i64)
                .map_err(|m| {
                    bad(
                        "spec.rollback.healthCheckTimeoutSeconds",
                        "healthCheckTimeoutSeconds",
                        m,
                    )
                })?;
        }
    }
    p.validate().map_err(|m| anyhow!("{shown}: {m}"))?;
    // The agent must read back exactly this policy from the compact form.
    let mut probe = p.clone();
    probe.rollout_start = Some(0);
    match Policy::from_lines(&probe.to_lines()) {
        Ok(back) if back == probe => {}
        Ok(_) => bail!("{shown}: compact form does not round-trip; report this as a bug"),
        Err(m) => bail!("{shown}: {m}"),
    }
    Ok(p)
}

/// The `policy` lines `build --policy FILE` signs into a bundle of `cycle` created at `created`.
/// The policy must be for that cycle and must not carry a checksum (it cannot pin the bundle it
/// is inside). Waves are counted from `created`.
pub fn lines_for_build(
    path: Option<&Path>,
    cycle: &str,
    created: u64,
) -> Result<Vec<(String, String)>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let mut p = load_policy_yaml(path)?;
    if p.bundle_version != cycle {
        bail!(
            "{}: spec.bundleRef.version {} is not the --cycle {cycle}; fix one of them",
            path.display(),
            p.bundle_version
        );
    }
    if p.bundle_checksum.is_some() {
        bail!(
            "{}: spec.bundleRef.checksum cannot pin the bundle it is built into; remove it",
            path.display()
        );
    }
    p.rollout_start = Some(created as i64);
    let lines = p.to_lines();
    Policy::from_lines(&lines).map_err(|m| anyhow!("{}: {m}", path.display()))?;
    Ok(lines)
}

pub fn run(cmd: &PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Check {
            file,
            bundle,
            zoneinfo,
        } => check(file, bundle.as_deref(), zoneinfo),
        PolicyCommand::Issue {
            file,
            bundle,
            key,
            out,
        } => issue(file, bundle, key, out),
    }
}

/// A signed `edgepatch-policy` document: the compact policy lines plus the bundle's variant,
/// cycle and manifest sha256 (what the node can check without re-reading the whole bundle; the
/// whole-file sha256 was checked here, against bundleRef.checksum) and the issue time.
fn issue(file: &Path, bundle: &Path, key: &Path, out: &Path) -> Result<()> {
    let mut p = load_policy_yaml(file)?;
    check_bundle(file, &p, bundle)?;
    let key_text =
        std::fs::read_to_string(key).with_context(|| format!("key {}", key.display()))?;
    let sk = edgepatch::bundle::keys::parse_secret(&key_text, &key.display().to_string())
        .map_err(anyhow::Error::msg)?;
    let mut r = edgepatch::support::fsutil::open_bundle(bundle)?;
    let head = format::read_head(&mut r).map_err(Error::from)?;
    let m = Manifest::parse(&head.manifest_bytes).map_err(Error::from)?;
    let issued = edgepatch::support::clock::Clock::now(&edgepatch::support::clock::SystemClock);
    if p.batch_size.is_some() && p.rollout_start.is_none() {
        p.rollout_start = Some(issued as i64);
    }
    let mut body = format!(
        "edgepatch-policy 1\nvariant {}\ncycle {}\nmanifest_sha256 {}\nissued {issued}\n",
        m.variant,
        m.cycle,
        hex(&head.manifest_sha256())
    );
    for (k, v) in p.to_lines() {
        body += &format!("policy {k} {v}\n");
    }
    let doc = edgepatch::bundle::signed::seal(&body, &[&sk]);
    edgepatch::support::fsutil::write_atomic(out, doc.as_bytes(), false)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "policy for {} cycle {} issued to {}",
        m.variant,
        m.cycle,
        out.display()
    );
    Ok(())
}

fn check(file: &Path, bundle: Option<&Path>, zoneinfo: &Path) -> Result<()> {
    let p = load_with(file, zoneinfo)?;
    if let Some(bundle) = bundle {
        check_bundle(file, &p, bundle)?;
    }
    let zone = p.load_zone(zoneinfo).map_err(anyhow::Error::msg)?;
    let now = edgepatch::support::clock::Clock::now(&edgepatch::support::clock::SystemClock) as i64;
    let next = p
        .next_window_start(&zone, now)
        .map(|t| policy::local_time(&zone, t))
        .unwrap_or_else(|| "never".into());
    println!(
        "ok: policy {} for bundle {}{}",
        p.name.as_deref().unwrap_or("-"),
        p.bundle_version,
        if bundle.is_some() {
            " (cycle and sha256 match)"
        } else {
            ""
        }
    );
    println!("    window {} {}, next opens {next}", p.window, p.timezone);
    match (p.batch_size, p.fleet_size) {
        (Some(b), Some(f)) => println!(
            "    {} waves of about {b} every {} min ({f} nodes)",
            f.div_ceil(b),
            p.batch_delay_minutes
        ),
        (Some(_), None) => println!(
            "    note: no rolloutStrategy.fleetSize; all targeted nodes start when the window opens"
        ),
        _ => {}
    }
    Ok(())
}

fn check_bundle(file: &Path, p: &Policy, bundle: &Path) -> Result<()> {
    let mut r = edgepatch::support::fsutil::open_bundle(bundle)?;
    let head = format::read_head(&mut r).map_err(Error::from)?;
    let m = Manifest::parse(&head.manifest_bytes).map_err(Error::from)?;
    let (_, sum) = crate::build::hash_file(bundle)?;
    let actual = format!("sha256:{}", hex(&sum));
    let mismatch = |msg: String| -> anyhow::Error { Error::new(Exit::Integrity, msg).into() };
    if m.cycle != p.bundle_version {
        return Err(mismatch(format!(
            "{}: bundleRef.version {} but {} is cycle {}",
            file.display(),
            p.bundle_version,
            bundle.display(),
            m.cycle
        )));
    }
    match &p.bundle_checksum {
        None => bail!(
            "{}: bundleRef.checksum missing; a policy for an existing bundle must pin it: {actual}",
            file.display()
        ),
        Some(c) if *c != sum => Err(mismatch(format!(
            "{}: bundleRef.checksum sha256:{} does not match {} ({actual})",
            file.display(),
            hex(c),
            bundle.display()
        ))),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"apiVersion: patchmgmt.io/v1
kind: PatchPolicy
metadata: {name: edge-fleet-q4-2024, namespace: operations}
spec:
  bundleRef: {version: "20241105-build-42", checksum: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
  targets: {selector: {matchLabels: {role: edge-node, region: us-east}}}
  schedule:
    maintenanceWindow: "Tue 02:00-04:00"
    timezone: "America/New_York"
    rolloutStrategy: {type: RollingUpdate, batchSize: 100, batchDelayMinutes: 15}
  rollback: {enabled: true, healthCheckUrl: "http://localhost:8080/health", healthCheckTimeoutSeconds: 120}
"#;

    fn load_text(text: &str) -> Result<Policy> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("policy.yaml");
        std::fs::write(&f, text)?;
        load_with(&f, Path::new(tz::ZONEINFO_DIR))
    }

    fn err(text: &str) -> String {
        format!("{:#}", load_text(text).unwrap_err())
    }

    #[test]
    fn example_loads() {
        let p = load_text(EXAMPLE).unwrap();
        assert_eq!(p.name.as_deref(), Some("operations/edge-fleet-q4-2024"));
        assert_eq!(p.bundle_version, "20241105-build-42");
        assert!(p.bundle_checksum.is_some());
        assert_eq!(
            p.match_labels,
            vec![
                ("role".to_string(), "edge-node".to_string()),
                ("region".to_string(), "us-east".to_string())
            ]
        );
        assert_eq!(p.window.to_string(), "Tue 02:00-04:00");
        assert_eq!(p.timezone, "America/New_York");
        assert_eq!((p.batch_size, p.batch_delay_minutes), (Some(100), 15));
        assert_eq!(p.fleet_size, None);
        assert!(p.rollback);
        assert_eq!(p.health_check_timeout_seconds, 120);
    }

    #[test]
    fn extensions_and_optional_parts() {
        let text = EXAMPLE.replace(
            "batchDelayMinutes: 15}",
            "batchDelayMinutes: 15, fleetSize: 2500, haltFailurePercent: 5}",
        );
        let p = load_text(&text).unwrap();
        assert_eq!(p.fleet_size, Some(2500));
        assert_eq!(p.halt_failure_percent, Some(5));
        let minimal = "apiVersion: patchmgmt.io/v1\nkind: PatchPolicy\nmetadata: {name: m}\n\
            spec:\n  bundleRef: {version: c1}\n  schedule: {maintenanceWindow: \"Sat,Sun 00:00-24:00\", timezone: UTC}\n";
        let p = load_text(minimal).unwrap();
        assert!(p.match_labels.is_empty() && p.batch_size.is_none() && p.rollback);
        let off = EXAMPLE.replace(
            "rollback: {enabled: true, healthCheckUrl: \"http://localhost:8080/health\", healthCheckTimeoutSeconds: 120}",
            "rollback: {enabled: false}",
        );
        let p = load_text(&off).unwrap();
        assert!(!p.rollback && p.health_check_url.is_none());
    }

    #[test]
    fn unknown_fields_name_their_line() {
        for (from, to, line) in [
            ("kind: PatchPolicy\n", "kind: PatchPolicy\nextra: 1\n", 3),
            (
                "    timezone: \"America/New_York\"\n",
                "    timezone: \"America/New_York\"\n    timeZone: UTC\n",
                10,
            ),
            ("batchSize: 100", "batchsize: 100", 10),
            ("enabled: true", "enable: true", 11),
            (
                "namespace: operations",
                "namespace: operations, labels: {}",
                3,
            ),
        ] {
            let e = err(&EXAMPLE.replace(from, to));
            assert!(e.contains("unknown field"), "{e}");
            assert!(e.contains(&format!("line {line}")), "{e}");
        }
    }

    #[test]
    fn bad_values() {
        for (from, to, want) in [
            ("patchmgmt.io/v1", "patchmgmt.io/v2", "apiVersion: \"patchmgmt.io/v2\" must be patchmgmt.io/v1 (line 1)"),
            ("kind: PatchPolicy", "kind: Policy", "must be PatchPolicy (line 2)"),
            ("name: edge-fleet-q4-2024", "name: Edge_Fleet", "metadata"),
            ("version: \"20241105-build-42\"", "version: \"2024 11\"", "spec.bundleRef.version"),
            ("sha256:0123", "md5:0123", "spec.bundleRef.checksum"),
            ("abcdef\"}", "abcde\"}", "spec.bundleRef.checksum"),
            ("role: edge-node", "role: edge node", "matchLabels: label value"),
            ("role: edge-node", "\"ro le\": x", "matchLabels: label key"),
            ("\"Tue 02:00-04:00\"", "\"Tuesday 02:00-04:00\"", "spec.schedule.maintenanceWindow: day \"Tuesday\""),
            ("\"Tue 02:00-04:00\"", "\"Tue 02:00-26:00\"", "maintenanceWindow: time \"26:00\" is out of range (line 8)"),
            ("\"America/New_York\"", "\"America/Gotham\"", "spec.schedule.timezone: timezone America/Gotham: /usr/share/zoneinfo/America/Gotham not found"),
            ("\"America/New_York\"", "\"../../etc/passwd\"", "spec.schedule.timezone"),
            ("type: RollingUpdate", "type: Recreate", "must be RollingUpdate"),
            ("batchSize: 100", "batchSize: 0", "batchSize: 0 must be in 1..=1000000 (line 10)"),
            ("batchSize: 100", "batchSize: -3", "batchSize: -3 must be in 1"),
            ("batchSize: 100", "batchSize: many", "batchSize"),
            ("batchDelayMinutes: 15", "batchDelayMinutes: -1", "batchDelayMinutes"),
            ("batchDelayMinutes: 15", "batchDelayMinutes: 20000", "batchDelayMinutes"),
            ("batchDelayMinutes: 15", "batchDelayMinutes: 15, fleetSize: 0", "fleetSize"),
            ("batchDelayMinutes: 15", "batchDelayMinutes: 15, haltFailurePercent: 150", "haltFailurePercent"),
            ("enabled: true", "enabled: maybe", "enabled"),
            ("\"http://localhost:8080/health\"", "\"localhost:8080\"", "spec.rollback.healthCheckUrl"),
            ("healthCheckTimeoutSeconds: 120", "healthCheckTimeoutSeconds: 0", "healthCheckTimeoutSeconds: 0 must be in 1..=3600"),
            ("    timezone: \"America/New_York\"\n", "", "missing field `timezone`"),
            ("  bundleRef:", "  bundleRef: 5\n  x:", ""),
        ] {
            let text = EXAMPLE.replace(from, to);
            assert_ne!(text, EXAMPLE, "{from}");
            let e = err(&text);
            assert!(e.contains(want), "{to}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        assert!(err("").contains("policy.yaml"));
        assert!(err("- a\n- b\n").contains("invalid type"));
        let e = err(&EXAMPLE.replace("region: us-east", "role: other"));
        assert!(e.contains("duplicate"), "{e}");
    }

    #[test]
    fn build_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(&f, EXAMPLE).unwrap();
        let e = lines_for_build(Some(&f), "20241105-build-42", 5).unwrap_err();
        assert!(format!("{e}").contains("cannot pin"), "{e}");
        let no_sum = EXAMPLE.replace(
            ", checksum: \"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"",
            "",
        );
        std::fs::write(&f, no_sum).unwrap();
        let e = lines_for_build(Some(&f), "other-cycle", 5).unwrap_err();
        assert!(
            format!("{e}").contains("not the --cycle other-cycle"),
            "{e}"
        );
        let lines = lines_for_build(Some(&f), "20241105-build-42", 1_730_419_200).unwrap();
        let p = Policy::from_lines(&lines).unwrap();
        assert_eq!(p.rollout_start, Some(1_730_419_200));
        assert!(lines_for_build(None, "x", 1).unwrap().is_empty());
    }
}
