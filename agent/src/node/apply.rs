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

use crate::bundle::format::{hex, Manifest};
use crate::bundle::verify::{self, NodeFacts};
use crate::node::ctx::{Ctx, RunInfo};
use crate::node::journal;
use crate::node::marks;
use crate::node::pkg::PackageManager;
use crate::node::restore::{self, Versions};
use crate::node::rollback;
use crate::node::sets;
use crate::node::stage::StagingSink;
use crate::node::state::Installed;
use crate::node::store;
use crate::support::clock::Ratchet;
use crate::support::error::{Error, Exit, Result};
use crate::support::kv::Record;
use std::path::{Path, PathBuf};

fn is_verification_failure(e: &Error) -> bool {
    matches!(e.exit, Exit::Integrity | Exit::Authenticity)
}

fn quarantine(ctx: &Ctx, bundle: &Path, e: Error) -> Error {
    let q = store::quarantine(ctx.state_dir(), bundle, &e.msg, ctx.now());
    Error::new(e.exit, format!("{}{}", e.msg, store::quarantine_note(&q)))
}

pub fn apply(ctx: &Ctx, bundle: Option<&Path>, info: &mut RunInfo) -> Result<String> {
    let sd = ctx.state_dir();
    let bundle: PathBuf = match bundle {
        Some(b) => {
            // A directory, FIFO or device is never a bundle: refuse it before opening it.
            match std::fs::metadata(b) {
                Ok(m) if !m.is_file() => {
                    return Err(Error::usage(format!(
                        "{} is not a regular file; name a bundle file (*.epb)",
                        b.display()
                    )))
                }
                _ => b.to_path_buf(),
            }
        }
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

    // One open file, one pass: the authenticated head decides (already applied? refused? halted?
    // policy?), and the same reader then streams the payload into staging. Nothing is read twice,
    // so a stick or mirror cannot show one manifest to the decisions and another to the install.
    let mut reader = crate::support::fsutil::open_bundle(&bundle)?;
    let first = verify::authenticate(&mut reader, ctx.trusted).map_err(|e| {
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
    if marks::is_refused(sd, &first.manifest.cycle) {
        return Err(Error::new(
            Exit::NotApplicable,
            format!(
                "cycle {} was rolled back on this node; publish a new cycle",
                first.manifest.cycle
            ),
        ));
    }
    if marks::is_halted(sd, &first.manifest.cycle) {
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
    journal::save(ctx, &journal)?;
    crate::support::testhook::pause_point("decided");

    let t_stage = std::time::Instant::now();
    let verified = stage(
        ctx,
        &mut reader,
        &first,
        &staging,
        installed.as_ref().map(|i| i.sequence),
    )
    .inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&staging);
        let _ = journal::clear(ctx);
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
    crate::support::testhook::pause_point("staged");
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
            Ok(m) if m.len() <= crate::bundle::signed::MAX_DOC as u64 => match std::fs::read(&path)
            {
                Ok(d) => d,
                Err(_) => continue,
            },
            _ => continue,
        };
        let rec = match crate::bundle::signed::open(&doc, "edgepatch-policy", ctx.trusted, 1) {
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
            best = Some((issued, crate::bundle::policy::reissued_lines(&rec)));
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
    use crate::bundle::policy::{decide, tz::ZONEINFO_DIR, Decision, Policy};
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

/// Verify the rest of the bundle (after its authenticated head) while writing it into `staging`.
fn stage<'v>(
    ctx: &Ctx,
    reader: &mut impl std::io::Read,
    head: &'v verify::Verified,
    staging: &Path,
    installed_sequence: Option<u64>,
) -> Result<&'v verify::Verified> {
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
    verify::verify_payload(reader, head, &node, &mut sink)?;
    sink.finish(&head.manifest_bytes)?;
    if let Err(e) = ratchet.observe_signed(head.manifest.created, ctx.clock) {
        log::warn!("cannot record trusted time: {e}");
    }
    Ok(head)
}

/// Install from the staged repo, health-check and commit. `pre` is the journal's record of
/// pre-patch versions when resuming; None on a fresh run (then they are read now and journaled
/// before anything runs).
pub fn install_and_commit(
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
    names.sort_unstable();
    names.dedup();
    for want in &manifest.install {
        if !names.contains(want) {
            return Err(fail(format!(
                "bundle asks to install {want} but carries no such package"
            )));
        }
    }
    let resuming = pre.is_some();
    let mut pre = match pre {
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
        .set("pre", restore::encode_versions(&pre))
        .set("targets", restore::encode_versions(&as_versions));

    if !targets.is_empty() && !resuming {
        // Refuse before touching anything when the package manager would not get through.
        let changes = match pm.simulate(staging, &targets) {
            Ok(c) => c,
            Err(m) => {
                let _ = std::fs::remove_dir_all(staging);
                journal::clear(ctx)?;
                return Err(fail(format!(
                    "{} refused the install, nothing changed: {m}",
                    pm.name()
                )));
            }
        };
        if !changes.is_empty() {
            journal.set("changed", changes.len());
        }
        // Packages the install removes (obsoleted, conflicting) come back on undo too.
        for c in &changes {
            if let (Some(old), false) = (&c.old, pre.iter().any(|(n, _)| *n == c.name)) {
                pre.push((c.name.clone(), Some(old.clone())));
            }
        }
        journal.set("pre", restore::encode_versions(&pre));
        // Keep a way back to every version the install replaces, image packages included.
        if ctx.config.rollback_keep > 0 {
            journal.set("step", "preserving");
            journal::save(ctx, journal)?;
            crate::support::testhook::pause_point("preserving");
            let t_preserve = std::time::Instant::now();
            let set = sets::preserve(
                ctx,
                pm.as_ref(),
                &manifest.cycle,
                manifest.sequence,
                &changes,
                &pre,
            )
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(staging);
                let _ = journal::clear(ctx);
                fail(format!(
                    "cannot preserve packages, nothing changed: {}",
                    e.msg
                ))
            })?;
            info.time("preserve", t_preserve);
            journal.set("rollback_set", set.display());
        }
        journal.set("step", "snapshot");
        journal::save(ctx, journal)?;
        let id = rollback::take_snapshot(ctx, manifest).map_err(|m| {
            let _ = std::fs::remove_dir_all(staging);
            let _ = journal::clear(ctx);
            fail(format!(
                "snapshot before install failed, nothing changed: {m}"
            ))
        })?;
        journal.set("snapshot", &id);
    } else if targets.is_empty() && !resuming && ctx.config.rollback_keep > 0 {
        // A cycle that changes nothing still gets its (empty) set: `rollback` then steps back
        // over it, refusing it, instead of undoing the cycle before it while it stays installed.
        let set = sets::preserve(
            ctx,
            pm.as_ref(),
            &manifest.cycle,
            manifest.sequence,
            &[],
            &pre,
        )
        .map_err(|e| fail(format!("cannot write the rollback set: {}", e.msg)))?;
        journal.set("rollback_set", set.display());
    }
    info.snapshot = journal.get("snapshot").map(str::to_string);
    journal.set("step", "installing");
    journal::save(ctx, journal)?;
    crate::support::testhook::pause_point("installing");

    if !targets.is_empty() {
        let t_install = std::time::Instant::now();
        let done = pm
            .install(staging, &targets)
            .and_then(|_| check_installed(pm.as_ref(), &targets));
        info.time("install", t_install);
        if let Err(m) = done {
            let restored = rollback::undo(ctx, pm.as_ref(), journal);
            info.restored = Some(restored.clone());
            drop_set(journal, &restored);
            let _ = std::fs::remove_dir_all(staging);
            journal::clear(ctx)?;
            let tries = marks::count_install_failure(ctx.state_dir(), &manifest.cycle);
            let retry = if tries >= marks::INSTALL_ATTEMPTS && !restore::incomplete(&restored) {
                marks::refuse_cycle(ctx.state_dir(), &manifest.cycle);
                format!(
                    "; failed {tries} times here: cycle {} refused (ship the fix as a new cycle)",
                    manifest.cycle
                )
            } else {
                format!("; attempt {tries} of {}", marks::INSTALL_ATTEMPTS)
            };
            return Err(fail(format!("install failed: {m}; {restored}{retry}")));
        }
        journal.set("step", "health");
        journal::save(ctx, journal)?;
        crate::support::testhook::pause_point("health");
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
    journal::save(ctx, journal)?;
    crate::support::testhook::pause_point("committing");
    commit(ctx, journal)?;
    Ok(format!(
        "cycle {} sequence {} applied: {} package(s) changed{}",
        manifest.cycle,
        manifest.sequence,
        journal.num("changed").unwrap_or(targets.len() as u64),
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
    let Err(why) = crate::node::health::check(&spec) else {
        return Ok(());
    };
    let restored = rollback::undo(ctx, pm, journal);
    info.restored = Some(restored.clone());
    drop_set(journal, &restored);
    marks::refuse_cycle(ctx.state_dir(), &manifest.cycle);
    let _ = std::fs::remove_dir_all(staging);
    journal::clear(ctx)?;
    Err(Error::new(
        Exit::HealthFailed,
        format!("{why}; rolled back: {restored}"),
    ))
}

/// A set whose install was undone is spent; one whose restore was incomplete is kept.
pub fn drop_set(journal: &Record, account: &str) {
    if let Some(p) = journal.get("rollback_set") {
        if !restore::incomplete(account) {
            let _ = std::fs::remove_file(p);
        }
    }
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

/// Make the applied bundle the installed one and keep its packages as the rollback cache.
/// Idempotent: a commit interrupted half-way is simply run again.
pub fn commit(ctx: &Ctx, journal: &Record) -> Result<()> {
    let sd = ctx.state_dir();
    let err = |p: &Path, e: std::io::Error| Error::io(Exit::InstallFailed, p, e);
    let staging = PathBuf::from(journal.get("staging").unwrap_or_default());
    let sum = journal
        .get("manifest_sha256")
        .and_then(crate::bundle::format::parse_hex)
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
    crate::support::testhook::pause_point("commit-recorded");
    if staging.exists() {
        let (cur, prev) = (store::cache_current(sd), store::cache_previous(sd));
        crate::support::fsutil::create_dir_mode(&sd.join("cache"), 0o700)
            .map_err(|e| err(sd, e))?;
        if prev.exists() {
            std::fs::remove_dir_all(&prev).map_err(|e| err(&prev, e))?;
        }
        if cur.exists() {
            std::fs::rename(&cur, &prev).map_err(|e| err(&cur, e))?;
        }
        std::fs::rename(&staging, &cur).map_err(|e| err(&staging, e))?;
        crate::support::fsutil::sync_dir(&sd.join("cache")).map_err(|e| err(sd, e))?;
    }
    rollback::remember_apply(ctx, journal);
    let _ = std::fs::remove_file(restore::attention_path(sd));
    journal::clear(ctx)
}
