//! `apply`: turn a verified bundle into installed packages, with no network, crash-safely.
//!
//! Steps, each preceded by a journal record (`state_dir/journal`, written with `write_atomic`):
//!
//! ```text
//! staging     verify the bundle while copying it into state_dir/staging/SEQ (0700)
//! installing  pre-patch versions recorded; simulate, then install from the staged repo only
//! committing  record the installed cycle, keep the staged packages as the rollback cache
//! ```
//!
//! A run killed anywhere is resolved by the next `apply` or `status`: an interrupted `staging` is
//! discarded (nothing was installed yet); an interrupted `installing` is finished forward
//! (`dpkg --configure -a`, then the same install again) or, when that fails, undone by putting the
//! pre-patch versions back from the package cache; an interrupted `committing` is completed.

use crate::clock::{Clock, Ratchet};
use crate::config::Config;
use crate::error::{Error, Exit, Result};
use crate::format::{hex, Manifest};
use crate::keys::TrustedKey;
use crate::kv::Record;
use crate::pkg::{self, PackageManager};
use crate::rollback;
use crate::stage::StagingSink;
use crate::state::Installed;
use crate::status::{self, journal_path};
use crate::store;
use crate::verify::{self, NodeFacts};
use std::path::{Path, PathBuf};

/// What the command needs: config, trust roots, a clock.
pub struct Ctx<'a> {
    pub config: &'a Config,
    pub trusted: &'a [TrustedKey],
    pub clock: &'a dyn Clock,
}

/// Now, for freshness and windows: the ratcheted clock.
pub fn now(ctx: &Ctx) -> u64 {
    ctx.now()
}

impl Ctx<'_> {
    pub(crate) fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    fn now(&self) -> u64 {
        Ratchet::new(self.state_dir()).now(self.clock)
    }

    pub(crate) fn package_manager(&self) -> Result<Box<dyn PackageManager>> {
        pkg::select(
            self.config.package_manager,
            &self.config.root,
            self.state_dir(),
        )
    }
}

/// Facts gathered during one run, for the result record and the report.
#[derive(Default, Debug)]
pub struct RunInfo {
    pub cycle: Option<String>,
    pub sequence: Option<u64>,
    pub restored: Option<String>,
    /// When deferred by the rollout policy: the next time this node may start (unix seconds).
    pub next_window: Option<i64>,
    /// Snapshot taken before install (backend:name).
    pub snapshot: Option<String>,
    /// Milliseconds per step (stage, install, health), for reports.
    pub timings: Vec<(String, u64)>,
}

impl RunInfo {
    fn time(&mut self, step: &str, since: std::time::Instant) {
        self.timings
            .push((step.to_string(), since.elapsed().as_millis() as u64));
    }
}

/// `edgepatch apply [BUNDLE]`: lock, recover, apply, record the result, rewrite status.json.
pub fn command(ctx: &Ctx, bundle: Option<&Path>) -> Result<String> {
    let _lock = crate::lock::acquire(ctx.state_dir())?;
    let mut info = RunInfo::default();
    let result = recover(ctx, &mut info).and_then(|_| apply(ctx, bundle, &mut info));
    finish(ctx, "apply", &result, &info);
    result
}

/// Record the outcome and rewrite the status file.
pub fn finish(ctx: &Ctx, command: &str, result: &Result<String>, info: &RunInfo) {
    let (exit, reason) = match result {
        Ok(msg) => (Exit::Ok, msg.as_str()),
        Err(e) => (e.exit, e.msg.as_str()),
    };
    let mut extra = Vec::new();
    if let Some(r) = &info.restored {
        extra.push(("restored", r.clone()));
    }
    if let Some(sn) = &info.snapshot {
        extra.push(("snapshot", sn.clone()));
    }
    if let Some(t) = info.next_window {
        extra.push(("next_window", t.to_string()));
    }
    let sd = ctx.state_dir();
    if let Err(e) = status::record_result(
        sd,
        command,
        exit,
        reason,
        info.cycle.as_deref(),
        ctx.now(),
        &extra,
    ) {
        log::warn!("cannot record result in {}: {e}", sd.display());
    }
    status::write(ctx.config);
    report_outcome(ctx, command, exit, reason, info);
}

/// Every outcome reaches the center: spooled first (survives weeks offline), then delivered if
/// `report_url` is set, and mirrored into the Prometheus textfile if `metrics_file` is set.
fn report_outcome(ctx: &Ctx, command: &str, exit: Exit, reason: &str, info: &RunInfo) {
    use crate::report;
    let sd = ctx.state_dir();
    let installed = Installed::load(sd).ok().flatten();
    let r = report::Report {
        id: report::new_id(&ctx.config.node_id),
        node_id: ctx.config.node_id.clone(),
        variant: ctx.config.variant.clone(),
        labels: ctx.config.labels.clone(),
        command: command.to_string(),
        cycle: info.cycle.clone(),
        sequence: info.sequence,
        exit_code: exit.code(),
        result: exit.word().to_string(),
        reason: reason.to_string(),
        timings_ms: info.timings.clone(),
        snapshot_id: info.snapshot.clone(),
        installed_cycle: installed.as_ref().map(|i| i.cycle.clone()),
        installed_sequence: installed.as_ref().map(|i| i.sequence),
        agent_version: crate::VERSION.to_string(),
        time: crate::clock::Clock::now(ctx.clock),
        trusted_time: Ratchet::new(sd).floor(),
    };
    if let Err(e) = report::spool(sd, &r) {
        log::warn!("cannot spool report in {}: {e}", sd.display());
    }
    if let Some(path) = &ctx.config.metrics_file {
        if let Err(e) = report::write_metrics(path, &r) {
            log::warn!("cannot write metrics {}: {e}", path.display());
        }
    }
    if let Some(url) = &ctx.config.report_url {
        match report::flush(sd, url, std::time::Duration::from_secs(10)) {
            Ok(st) => log::info!(
                "reports delivered {}, spooled {}",
                st.delivered,
                st.remaining
            ),
            Err(e) => log::warn!("report delivery: {e}"),
        }
    }
}

fn save_journal(ctx: &Ctx, j: &Record) -> Result<()> {
    let p = journal_path(ctx.state_dir());
    j.save(&p)
        .map_err(|e| Error::io(Exit::InstallFailed, &p, e))?;
    status::write(ctx.config);
    Ok(())
}

fn clear_journal(ctx: &Ctx) -> Result<()> {
    let p = journal_path(ctx.state_dir());
    match std::fs::remove_file(&p) {
        Ok(()) => crate::fsutil::sync_dir(ctx.state_dir())
            .map_err(|e| Error::io(Exit::InstallFailed, ctx.state_dir(), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(Exit::InstallFailed, &p, e)),
    }
}

fn is_verification_failure(e: &Error) -> bool {
    matches!(e.exit, Exit::Integrity | Exit::Authenticity)
}

fn quarantine(ctx: &Ctx, bundle: &Path, e: Error) -> Error {
    match store::quarantine(ctx.state_dir(), bundle, &e.msg, ctx.now()) {
        Ok(q) => Error::new(
            e.exit,
            format!("{} (bundle quarantined as {})", e.msg, q.display()),
        ),
        Err(qe) => Error::new(e.exit, format!("{}; quarantine failed: {qe}", e.msg)),
    }
}

fn apply(ctx: &Ctx, bundle: Option<&Path>, info: &mut RunInfo) -> Result<String> {
    let sd = ctx.state_dir();
    let bundle: PathBuf = match bundle {
        Some(b) => b.to_path_buf(),
        None => store::newest_complete(sd, ctx.trusted, &ctx.config.variant).ok_or_else(|| {
            Error::new(
                Exit::Deferred,
                format!(
                    "no complete bundle in {}; waiting for fetch or import",
                    store::incoming_dir(sd).display()
                ),
            )
        })?,
    };
    let installed = Installed::load(sd)?;

    // A first look at the signed manifest: is this exactly what is installed already?
    let first = crate::cli::open_bundle(&bundle)
        .and_then(|mut r| verify::authenticate(&mut r, ctx.trusted))
        .map_err(|e| {
            if is_verification_failure(&e) {
                quarantine(ctx, &bundle, e)
            } else {
                e
            }
        })?;
    info.cycle = Some(first.manifest.cycle.clone());
    info.sequence = Some(first.manifest.sequence);
    if installed
        .as_ref()
        .is_some_and(|i| i.manifest_sha256 == first.manifest_sha256)
    {
        return Ok(format!(
            "cycle {} already applied; nothing to do",
            first.manifest.cycle
        ));
    }
    if rollback::is_refused(sd, &first.manifest.cycle) {
        return Err(Error::new(
            Exit::NotApplicable,
            format!(
                "cycle {} was rolled back on this node; publish a new cycle",
                first.manifest.cycle
            ),
        ));
    }
    if rollback::is_halted(sd, &first.manifest.cycle) {
        return Err(Error::new(
            Exit::Deferred,
            format!(
                "rollout of cycle {} is halted by a signed order",
                first.manifest.cycle
            ),
        ));
    }
    let policy = reissued_policy(ctx, &first).unwrap_or_else(|| first.manifest.policy.clone());
    if !policy.is_empty() {
        rollout_gate(ctx, &first.manifest, &policy, info)?;
    }

    let staging = sd.join("staging").join(first.manifest.sequence.to_string());
    let mut journal = Record::new();
    journal
        .set("op", "apply")
        .set("step", "staging")
        .set("bundle", bundle.display())
        .set("cycle", &first.manifest.cycle)
        .set("sequence", first.manifest.sequence)
        .set("staging", staging.display())
        .set("started", ctx.now());
    save_journal(ctx, &journal)?;

    let t_stage = std::time::Instant::now();
    let verified = stage(
        ctx,
        &bundle,
        &staging,
        installed.as_ref().map(|i| i.sequence),
    )
    .inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&staging);
        let _ = clear_journal(ctx);
    });
    let verified = verified.map_err(|e| {
        if is_verification_failure(&e) {
            quarantine(ctx, &bundle, e)
        } else {
            e
        }
    })?;
    info.time("verify_stage", t_stage);
    journal.set("manifest_sha256", hex(&verified.manifest_sha256));
    crate::testhook::pause_point("staged");
    install_and_commit(ctx, &mut journal, &staging, &verified.manifest, None, info)
}

/// The newest valid re-issued policy for this exact bundle (`incoming/*.policy`, signed
/// `edgepatch-policy` documents from `edgepatch-builder policy issue`), if any. Invalid ones are
/// logged and ignored: they can only fail to change the sealed policy, never weaken trust.
fn reissued_policy(ctx: &Ctx, bundle: &verify::Verified) -> Option<Vec<(String, String)>> {
    let dir = store::incoming_dir(ctx.state_dir());
    let mut best: Option<(u64, Vec<(String, String)>)> = None;
    for path in std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
    {
        if path.extension().is_none_or(|x| x != "policy") {
            continue;
        }
        let doc = match std::fs::metadata(&path) {
            Ok(m) if m.len() <= crate::signed::MAX_DOC as u64 => match std::fs::read(&path) {
                Ok(d) => d,
                Err(_) => continue,
            },
            _ => continue,
        };
        let rec = match crate::signed::open(&doc, "edgepatch-policy", ctx.trusted, 1) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("ignoring {}: {e}", path.display());
                continue;
            }
        };
        let for_this = rec.get("variant") == Some(ctx.config.variant.as_str())
            && rec.get("cycle") == Some(bundle.manifest.cycle.as_str())
            && rec.get("manifest_sha256") == Some(hex(&bundle.manifest_sha256).as_str());
        let issued = rec.num("issued").unwrap_or(0);
        if for_this && best.as_ref().is_none_or(|(t, _)| issued > *t) {
            let lines = rec
                .fields
                .iter()
                .filter(|(k, _)| k == "policy")
                .filter_map(|(_, v)| v.split_once(' '))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            best = Some((issued, lines));
        }
    }
    best.map(|(t, lines)| {
        log::info!(
            "using the policy re-issued at {t} for cycle {}",
            bundle.manifest.cycle
        );
        lines
    })
}

/// The bundle's signed rollout policy: labels, maintenance window, wave. Checked on the node
/// itself, so it holds for a bundle carried in on a USB stick too.
fn rollout_gate(
    ctx: &Ctx,
    m: &Manifest,
    lines: &[(String, String)],
    info: &mut RunInfo,
) -> Result<()> {
    use crate::policy::{decide, tz::ZONEINFO_DIR, Decision, Policy};
    let policy = Policy::from_lines(lines)
        .map_err(|e| Error::new(Exit::NotApplicable, format!("bundle policy: {e}")))?;
    let tz = policy
        .load_zone(Path::new(ZONEINFO_DIR))
        .map_err(|e| Error::usage(format!("policy time zone: {e}")))?;
    let now = ctx.now() as i64;
    let labels = &ctx.config.labels;
    match decide(&policy, &tz, &ctx.config.node_id, labels, &m.cycle, now) {
        Decision::Apply => Ok(()),
        Decision::Defer { reason, next_start } => {
            info.next_window = Some(next_start);
            Err(Error::new(Exit::Deferred, reason))
        }
        Decision::NotTargeted { reason } => Err(Error::new(Exit::NotApplicable, reason)),
    }
}

/// Verify the bundle in one streaming pass while writing it into `staging`.
fn stage(
    ctx: &Ctx,
    bundle: &Path,
    staging: &Path,
    installed_sequence: Option<u64>,
) -> Result<verify::Verified> {
    let ratchet = Ratchet::new(ctx.state_dir());
    let node = NodeFacts {
        variant: &ctx.config.variant,
        installed_sequence,
        now: ratchet.now(ctx.clock),
    };
    let sd = ctx.state_dir();
    let mut sink = StagingSink::create(
        staging.to_path_buf(),
        vec![store::cache_current(sd), store::cache_previous(sd)],
    )?;
    let mut reader = crate::cli::open_bundle(bundle)?;
    let v = verify::verify_stream(&mut reader, ctx.trusted, &node, &mut sink)?;
    sink.finish(&v.manifest_bytes)?;
    if let Err(e) = ratchet.advance(v.manifest.created.max(node.now)) {
        log::warn!("cannot record trusted time: {e}");
    }
    Ok(v)
}

type Versions = Vec<(String, Option<String>)>;

fn encode_versions(v: &[(String, Option<String>)]) -> String {
    v.iter()
        .map(|(n, ver)| format!("{n}={}", ver.as_deref().unwrap_or("-")))
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn decode_versions(s: &str) -> Versions {
    s.split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(n, v)| (n.to_string(), (v != "-").then(|| v.to_string())))
        .collect()
}

/// Install from the staged repo, health-check and commit. `pre` is the journal's record of
/// pre-patch versions when resuming; None on a fresh run (then they are read now and journaled
/// before anything runs).
fn install_and_commit(
    ctx: &Ctx,
    journal: &mut Record,
    staging: &Path,
    manifest: &Manifest,
    pre: Option<Versions>,
    info: &mut RunInfo,
) -> Result<String> {
    let pm = ctx.package_manager()?;
    let fail = |m: String| Error::new(Exit::InstallFailed, m);
    let offered = pm.repo_packages(staging).map_err(fail)?;
    let mut names: Vec<String> = offered.iter().map(|p| p.name.clone()).collect();
    names.sort();
    names.dedup();
    for want in &manifest.install {
        if !names.contains(want) {
            return Err(fail(format!(
                "bundle asks to install {want} but carries no such package"
            )));
        }
    }
    let resuming = pre.is_some();
    let pre = match pre {
        Some(p) => p,
        None => names
            .iter()
            .cloned()
            .zip(pm.installed(&names).map_err(fail)?)
            .collect(),
    };
    // Targets: installed packages the bundle has newer versions of, and the --install names.
    let mut targets: Vec<(String, String)> = Vec::new();
    for p in &offered {
        let before = pre
            .iter()
            .find(|(n, _)| *n == p.name)
            .and_then(|(_, v)| v.clone());
        let wanted = match &before {
            None => manifest.install.contains(&p.name),
            Some(v) => pm.newer(&p.version, v).map_err(fail)?,
        };
        if wanted && !targets.iter().any(|(n, _)| *n == p.name) {
            targets.push((p.name.clone(), p.version.clone()));
        }
    }
    let as_versions: Versions = targets
        .iter()
        .map(|(n, v)| (n.clone(), Some(v.clone())))
        .collect();
    journal
        .set("package_manager", pm.name())
        .set("pre", encode_versions(&pre))
        .set("targets", encode_versions(&as_versions));

    if !targets.is_empty() && !resuming {
        // Refuse before touching anything when the package manager would not get through.
        if let Err(m) = pm.simulate(staging, &targets) {
            let _ = std::fs::remove_dir_all(staging);
            clear_journal(ctx)?;
            return Err(fail(format!(
                "{} refused the install, nothing changed: {m}",
                pm.name()
            )));
        }
        journal.set("step", "snapshot");
        save_journal(ctx, journal)?;
        let id = rollback::take_snapshot(ctx, manifest).map_err(|m| {
            let _ = std::fs::remove_dir_all(staging);
            let _ = clear_journal(ctx);
            fail(format!(
                "snapshot before install failed, nothing changed: {m}"
            ))
        })?;
        journal.set("snapshot", &id);
    }
    info.snapshot = journal.get("snapshot").map(str::to_string);
    journal.set("step", "installing");
    save_journal(ctx, journal)?;
    crate::testhook::pause_point("installing");

    if !targets.is_empty() {
        let t_install = std::time::Instant::now();
        let done = pm
            .install(staging, &targets)
            .and_then(|_| check_installed(pm.as_ref(), &targets));
        info.time("install", t_install);
        if let Err(m) = done {
            let restored = rollback::undo(ctx, pm.as_ref(), journal);
            info.restored = Some(restored.clone());
            let _ = std::fs::remove_dir_all(staging);
            clear_journal(ctx)?;
            return Err(fail(format!("install failed: {m}; {restored}")));
        }
        journal.set("step", "health");
        save_journal(ctx, journal)?;
        crate::testhook::pause_point("health");
        let t_health = std::time::Instant::now();
        let healthy = health_or_roll_back(ctx, pm.as_ref(), journal, manifest, staging, info);
        info.time("health", t_health);
        healthy?;
    }
    // What was installed before, so `rollback` can point back at it (kept in the journal so a
    // commit re-run after a crash still knows).
    if let Some(prev) = Installed::load(ctx.state_dir())? {
        journal
            .set("prev_cycle", &prev.cycle)
            .set("prev_sequence", prev.sequence)
            .set("prev_manifest_sha256", hex(&prev.manifest_sha256))
            .set("prev_applied_at", prev.applied_at);
    }
    journal.set("step", "committing");
    save_journal(ctx, journal)?;
    crate::testhook::pause_point("committing");
    commit(ctx, journal)?;
    Ok(format!(
        "cycle {} sequence {} applied: {} package(s) changed{}",
        manifest.cycle,
        manifest.sequence,
        targets.len(),
        if resuming {
            " (resumed after interruption)"
        } else {
            ""
        }
    ))
}

/// Run the health check; on failure roll back to the snapshot, refuse this cycle, exit 7.
fn health_or_roll_back(
    ctx: &Ctx,
    pm: &dyn PackageManager,
    journal: &Record,
    manifest: &Manifest,
    staging: &Path,
    info: &mut RunInfo,
) -> Result<()> {
    let spec = rollback::health_spec(ctx.config, manifest);
    let Err(why) = crate::health::check(&spec) else {
        return Ok(());
    };
    let restored = rollback::undo(ctx, pm, journal);
    info.restored = Some(restored.clone());
    rollback::refuse_cycle(ctx.state_dir(), &manifest.cycle);
    let _ = std::fs::remove_dir_all(staging);
    clear_journal(ctx)?;
    Err(Error::new(
        Exit::HealthFailed,
        format!("{why}; rolled back: {restored}"),
    ))
}

fn check_installed(
    pm: &dyn PackageManager,
    targets: &[(String, String)],
) -> std::result::Result<(), String> {
    let names: Vec<String> = targets.iter().map(|(n, _)| n.clone()).collect();
    let now = pm.installed(&names)?;
    for ((name, want), have) in targets.iter().zip(now) {
        if have.as_deref() != Some(want.as_str()) {
            return Err(format!(
                "{name} is at {} after install, expected {want}",
                have.as_deref().unwrap_or("nothing")
            ));
        }
    }
    pm.audit()
}

/// Put every package back to its pre-patch version. Returns a one-line account of what was done.
pub(crate) fn restore_packages(
    ctx: &Ctx,
    pm: &dyn PackageManager,
    pre: &[(String, Option<String>)],
) -> String {
    let names: Vec<String> = pre.iter().map(|(n, _)| n.clone()).collect();
    if let Err(e) = pm.repair() {
        log::warn!("repair before restore: {e}");
    }
    let now = match pm.installed(&names) {
        Ok(v) => v,
        Err(e) => return format!("could not read installed versions to restore: {e}"),
    };
    let sd = ctx.state_dir();
    let caches = [store::cache_current(sd), store::cache_previous(sd)];
    let (mut files, mut remove, mut restored, mut missing) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((name, before), after) in pre.iter().zip(now) {
        if *before == after {
            continue;
        }
        match before {
            None => remove.push(name.clone()),
            Some(v) => {
                let found = caches.iter().find_map(|c| {
                    let p = pm
                        .repo_packages(c)
                        .ok()?
                        .into_iter()
                        .find(|p| p.name == *name && p.version == *v)?;
                    Some(c.join(p.file))
                });
                match found {
                    Some(f) => {
                        files.push(f);
                        restored.push(format!("{name}={v}"));
                    }
                    None => missing.push(format!("{name}={v}")),
                }
            }
        }
    }
    let mut msg = match pm.restore(&files, &remove) {
        Ok(()) if restored.is_empty() && remove.is_empty() => {
            "nothing needed restoring".to_string()
        }
        Ok(()) => {
            let mut parts = Vec::new();
            if !restored.is_empty() {
                parts.push(format!("restored {}", restored.join(" ")));
            }
            if !remove.is_empty() {
                parts.push(format!("removed {}", remove.join(" ")));
            }
            parts.join("; ")
        }
        Err(e) => format!("RESTORE FAILED ({e}); node needs attention"),
    };
    if !missing.is_empty() {
        msg += &format!("; no cached package to restore {}", missing.join(" "));
    }
    msg
}

/// Make the applied bundle the installed one and keep its packages as the rollback cache.
/// Idempotent: a commit interrupted half-way is simply run again.
fn commit(ctx: &Ctx, journal: &Record) -> Result<()> {
    let sd = ctx.state_dir();
    let err = |p: &Path, e: std::io::Error| Error::io(Exit::InstallFailed, p, e);
    let staging = PathBuf::from(journal.get("staging").unwrap_or_default());
    let sum = journal
        .get("manifest_sha256")
        .and_then(crate::format::parse_hex)
        .ok_or_else(|| {
            Error::new(
                Exit::InstallFailed,
                "journal has no manifest_sha256; remove state_dir/journal after checking the node",
            )
        })?;
    Installed {
        cycle: journal.get("cycle").unwrap_or("-").to_string(),
        sequence: journal.num("sequence").unwrap_or(0),
        manifest_sha256: sum,
        applied_at: ctx.now(),
    }
    .save(sd)?;
    crate::testhook::pause_point("commit-recorded");
    if staging.exists() {
        let (cur, prev) = (store::cache_current(sd), store::cache_previous(sd));
        crate::fsutil::create_dir_mode(&sd.join("cache"), 0o700).map_err(|e| err(sd, e))?;
        if prev.exists() {
            std::fs::remove_dir_all(&prev).map_err(|e| err(&prev, e))?;
        }
        if cur.exists() {
            std::fs::rename(&cur, &prev).map_err(|e| err(&cur, e))?;
        }
        std::fs::rename(&staging, &cur).map_err(|e| err(&staging, e))?;
        crate::fsutil::sync_dir(&sd.join("cache")).map_err(|e| err(sd, e))?;
    }
    rollback::remember_apply(ctx, journal);
    clear_journal(ctx)
}

/// Resolve what an interrupted run left behind. Called with the lock held.
pub fn recover(ctx: &Ctx, info: &mut RunInfo) -> Result<()> {
    let jp = journal_path(ctx.state_dir());
    let Some(mut journal) = Record::load(&jp).map_err(|e| Error::io(Exit::Usage, &jp, e))? else {
        return Ok(());
    };
    let staging = PathBuf::from(journal.get("staging").unwrap_or_default());
    let step = journal.get("step").unwrap_or("").to_string();
    log::warn!("found an interrupted run (step {step}); resolving it first");
    info.cycle = journal.get("cycle").map(str::to_string);
    if journal.get("op") == Some("rollback") {
        let msg = rollback::finish_rollback(ctx, &journal, info)?;
        log::warn!("{msg}");
        return Ok(());
    }
    match step.as_str() {
        // Killed while installing or health-checking: finish forward (the install is idempotent,
        // the health check runs again), or undo when that fails.
        "installing" | "health" => {
            let pm = ctx.package_manager()?;
            if let Err(e) = pm.repair() {
                log::warn!("repair after interruption: {e}");
            }
            let pre = decode_versions(journal.get("pre").unwrap_or(""));
            let forward = crate::stage::recheck(&staging)
                .and_then(|m| install_and_commit(ctx, &mut journal, &staging, &m, Some(pre), info));
            match forward {
                Ok(msg) => {
                    finish(ctx, "recover", &Ok(msg.clone()), info);
                    log::warn!("{msg}");
                    Ok(())
                }
                Err(e) => {
                    if journal_path(ctx.state_dir()).exists() {
                        info.restored = Some(rollback::undo(ctx, pm.as_ref(), &journal));
                        let _ = std::fs::remove_dir_all(&staging);
                        clear_journal(ctx)?;
                    }
                    let e = match e.exit {
                        Exit::HealthFailed => e,
                        _ => Error::new(
                            Exit::InstallFailed,
                            format!("interrupted install could not be finished: {}", e.msg),
                        ),
                    };
                    finish(ctx, "recover", &Err(e.clone()), info);
                    Err(e)
                }
            }
        }
        "committing" => commit(ctx, &journal),
        _ => {
            // Interrupted while staging or taking the snapshot: nothing was installed yet.
            if staging.starts_with(ctx.state_dir()) && staging.exists() {
                let _ = std::fs::remove_dir_all(&staging);
            }
            clear_journal(ctx)
        }
    }
}
