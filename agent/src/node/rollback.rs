//! The safety net around an install: the snapshot taken before it, the health check after it,
//! and every way back — automatic (health check failed), manual (`edgepatch rollback` on the
//! serial console) and remote (a signed rollback order from the mirror index or a USB stick).
//!
//! `last-apply` in state_dir records what the last successful apply changed (cycle, snapshot id,
//! pre-patch package versions, the previously installed bundle), so `rollback` can undo it with
//! any backend. The lists that gate later installs (refused, halted, orders) are in `marks`.

use crate::bundle::format::{hex, Manifest};
use crate::bundle::order::OrderError;
use crate::node::ctx::{Ctx, RunInfo};
use crate::node::health::HealthSpec;
use crate::node::marks::{
    add_to_list, list_path, order_done, read_list, refuse_cycle, remove_from_list,
};
use crate::node::pkg::PackageManager;
use crate::node::restore::{
    decode_versions, encode_versions, incomplete, not_back, restore_packages,
};
use crate::node::sets;
use crate::node::snapshot::{Backend, Restored, Snapshots};
use crate::node::state::Installed;
use crate::support::error::{Error, Exit, Result};
use crate::support::kv::Record;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The health check for this bundle: the policy's URL and timeout win over the node config's;
/// the command always comes from the node config (it is the node's own notion of healthy).
pub fn health_spec(config: &crate::support::config::Config, manifest: &Manifest) -> HealthSpec {
    let policy = crate::bundle::policy::Policy::from_lines(&manifest.policy).ok();
    let enabled = policy.as_ref().is_none_or(|p| p.rollback);
    if !enabled {
        return HealthSpec {
            url: None,
            command: None,
            timeout: Duration::ZERO,
        };
    }
    let url = policy
        .as_ref()
        .and_then(|p| p.health_check_url.clone())
        .or_else(|| config.health_url.clone());
    let timeout = policy
        .as_ref()
        .filter(|p| p.health_check_url.is_some())
        .map_or(config.health_timeout, |p| p.health_check_timeout_seconds);
    HealthSpec {
        url,
        command: config.health_command.clone(),
        timeout: Duration::from_secs(timeout),
    }
}

/// Snapshot the root before install; returns the id to journal.
pub fn take_snapshot(ctx: &Ctx, manifest: &Manifest) -> std::result::Result<String, String> {
    let snaps = Snapshots::new(&ctx.config.root);
    let backend = snaps.choose(&ctx.config.snapshot, ctx.state_dir())?;
    let label = format!(
        "{}-{}",
        manifest.sequence,
        crate::support::clock::Clock::now(ctx.clock)
    );
    let id = snaps.create(backend, &label)?;
    log::info!("snapshot {id} taken before install");
    Ok(id)
}

/// Put the root back to its pre-patch state: the filesystem snapshot when there is one, else the
/// pre-patch package versions from the journal. Returns a one-line account.
pub fn undo(ctx: &Ctx, pm: &dyn PackageManager, journal: &Record) -> String {
    let set = journal.get("rollback_set").and_then(sets::load);
    let pre = match &set {
        Some(s) => sets::pre(s),
        None => decode_versions(journal.get("pre").unwrap_or("")),
    };
    let snapshot = journal.get("snapshot").unwrap_or("none:");
    let backend = snapshot.split(':').next().and_then(Backend::from_name);
    if matches!(
        backend,
        Some(Backend::Btrfs | Backend::LvmThin | Backend::Timeshift)
    ) {
        match Snapshots::new(&ctx.config.root).restore(snapshot) {
            Ok(Restored::Now) => return format!("snapshot {snapshot} restored"),
            Ok(Restored::AfterReboot) => {
                let mut p = Record::new();
                p.set("snapshot", snapshot)
                    .set("cycle", journal.get("cycle").unwrap_or("-"))
                    .set("pre", encode_versions(&pre))
                    .set("boot", boot_id());
                let path = pending_path(ctx.state_dir());
                if let Err(e) = p.save(&path) {
                    log::warn!("cannot write {}: {e}", path.display());
                }
                return format!("snapshot {snapshot} restores at next boot: REBOOT REQUIRED");
            }
            Err(e) => log::error!("restoring {snapshot} failed ({e}); restoring packages instead"),
        }
    }
    restore_packages(ctx, pm, &pre, set.as_ref())
}

/// `state_dir/restore-pending`: a snapshot restore that completes at the next boot (btrfs `/`,
/// lvm-thin, timeshift): the snapshot, the cycle, the versions it brings back, the boot it was
/// made in.
pub fn pending_path(sd: &Path) -> PathBuf {
    sd.join("restore-pending")
}

/// This boot's id (the kernel makes a new one at every boot).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A restore waiting for the reboot. In the boot that made it: Err (deferred; nothing is
/// installed on a root about to be replaced). In a later boot: check that the pre-patch versions
/// are back (and the package database clean), record the outcome as `recover`, once.
pub fn settle_restore(ctx: &Ctx, boot: &str) -> Result<()> {
    let path = pending_path(ctx.state_dir());
    let Ok(Some(rec)) = Record::load(&path) else {
        return Ok(());
    };
    let snapshot = rec.get("snapshot").unwrap_or("-").to_string();
    let pm = ctx.package_manager()?;
    let Some(outcome) = settled(&rec, boot, pm.as_ref()) else {
        return Err(Error::new(
            Exit::Deferred,
            format!("snapshot {snapshot} restores at next boot: reboot first"),
        ));
    };
    let result = outcome.map_err(|m| {
        let _ = crate::support::fsutil::write_atomic(
            &crate::node::restore::attention_path(ctx.state_dir()),
            m.as_bytes(),
            false,
        );
        Error::new(Exit::InstallFailed, m)
    });
    if result.is_ok() && snapshot.starts_with("btrfs:") {
        if let Err(e) = Snapshots::new(&ctx.config.root).forget_replaced() {
            log::warn!("cannot delete the replaced root: {e}");
        }
    }
    let info = RunInfo {
        cycle: rec.get("cycle").map(str::to_string),
        restored: Some(format!("{} ({snapshot})", rec.get("pre").unwrap_or("-"))),
        snapshot: Some(snapshot),
        ..RunInfo::default()
    };
    crate::node::outcome::finish(ctx, "recover", &result, &info);
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// None in the boot that made the restore; later Ok(account) when the pre-patch versions are
/// back, else Err naming what is not.
fn settled(
    rec: &Record,
    boot: &str,
    pm: &dyn PackageManager,
) -> Option<std::result::Result<String, String>> {
    if rec.get("boot") == Some(boot) {
        return None;
    }
    let cycle = rec.get("cycle").unwrap_or("-");
    let bad = not_back(pm, &decode_versions(rec.get("pre").unwrap_or("")));
    Some(if bad.is_empty() {
        Ok(format!(
            "rollback of {cycle} took effect at boot: pre-patch versions back"
        ))
    } else {
        Err(format!(
            "rollback of {cycle} did not take effect at boot: {}",
            bad.join(", ")
        ))
    })
}

/// Record what a successful apply changed and prune old snapshots.
pub fn remember_apply(ctx: &Ctx, journal: &Record) {
    let sd = ctx.state_dir();
    let mut r = Record::new();
    const KEYS: [&str; 10] = [
        "cycle",
        "sequence",
        "manifest_sha256",
        "snapshot",
        "pre",
        "package_manager",
        "prev_cycle",
        "prev_sequence",
        "prev_manifest_sha256",
        "prev_applied_at",
    ];
    for key in KEYS {
        if let Some(v) = journal.get(key) {
            r.set(key, v);
        }
    }
    if let Err(e) = r.save(&sd.join("last-apply")) {
        log::warn!("cannot write last-apply: {e}");
    }
    if let Some(p) = journal.get("rollback_set") {
        if let Some(mut set) = sets::load(p) {
            for (k, v) in &r.fields {
                if k != "pre" {
                    set.set(k, v);
                }
            }
            set.set("applied", "yes");
            // What the install left of the files kept whole: a later edit is told from it.
            set.set(
                "whole_after",
                crate::node::whole::after(&ctx.config.root, &set),
            );
            if let Err(e) = set.save(Path::new(p)) {
                log::warn!("cannot write {p}: {e}");
            }
        }
    }
    sets::prune(sd, ctx.config.rollback_keep as usize);
    if let Some(id) = journal.get("snapshot") {
        add_to_list(sd, "snapshots", id);
        let ids = read_list(sd, "snapshots");
        let keep = ctx.config.snapshot_keep as usize;
        if ids.len() > keep {
            let snaps = Snapshots::new(&ctx.config.root);
            for old in &ids[..ids.len() - keep] {
                if let Err(e) = snaps.delete(old) {
                    log::warn!("cannot prune snapshot {old}: {e}");
                }
            }
            let text: String = ids[ids.len() - keep..]
                .iter()
                .map(|i| format!("{i}\n"))
                .collect();
            let _ = crate::support::fsutil::write_atomic(
                &list_path(sd, "snapshots"),
                text.as_bytes(),
                false,
            );
        }
    }
}

/// Roll back the last applied cycle; with `want`, only if that is exactly the cycle named (a
/// signed order names its cycle, and the agent acts on that cycle or says it cannot).
pub fn roll_back_last(ctx: &Ctx, info: &mut RunInfo, want: Option<&str>) -> Result<String> {
    let sd = ctx.state_dir();
    let path = sd.join("last-apply");
    let last = match sets::next(sd) {
        Some((p, mut set)) => {
            set.set("rollback_set", p.display());
            Some(set)
        }
        None => Record::load(&path).map_err(|e| Error::io(Exit::Usage, &path, e))?,
    };
    let Some(last) = last else {
        return Err(Error::new(
            Exit::NotApplicable,
            "no applied bundle to roll back on this node",
        ));
    };
    let cycle = last.get("cycle").unwrap_or("-").to_string();
    if let Some(want) = want.filter(|w| *w != cycle) {
        return Err(Error::new(
            Exit::InstallFailed,
            format!(
                "cannot roll back {want}: this node keeps the rollback record of {cycle} only; \
                 {want} stays installed and is refused from now on"
            ),
        ));
    }
    info.cycle = Some(cycle.clone());
    if last.get("rolled_back") == Some("yes") {
        // Stepped back past the oldest set kept: say so rather than "already rolled back".
        if let Some(now) = Installed::load(sd)?.filter(|i| i.cycle != cycle) {
            return Err(Error::new(
                Exit::NotApplicable,
                format!(
                    "cycle {} is installed, but its rollback set is gone (rollback_keep = {} \
                     keeps the newest {} cycles); nothing changed",
                    now.cycle, ctx.config.rollback_keep, ctx.config.rollback_keep
                ),
            ));
        }
        return Ok(format!("cycle {cycle} already rolled back"));
    }
    let mut journal = last.clone();
    journal.set("op", "rollback").set("step", "restoring");
    let jp = crate::node::status::journal_path(sd);
    journal
        .save(&jp)
        .map_err(|e| Error::io(Exit::Usage, &jp, e))?;
    crate::support::testhook::pause_point("rollback");
    finish_rollback(ctx, &journal, info)
}

/// Restore, re-point `installed` at the previous bundle, refuse the cycle. Safe to run twice
/// (used again by `recover` when a rollback was interrupted).
pub fn finish_rollback(ctx: &Ctx, journal: &Record, info: &mut RunInfo) -> Result<String> {
    let sd = ctx.state_dir();
    let cycle = journal.get("cycle").unwrap_or("-").to_string();
    let pm = ctx.package_manager()?;
    let account = undo(ctx, pm.as_ref(), journal);
    info.restored = Some(account.clone());
    let previous = journal
        .get("prev_manifest_sha256")
        .and_then(crate::bundle::format::parse_hex)
        .map(|sum| Installed {
            cycle: journal.get("prev_cycle").unwrap_or("-").to_string(),
            sequence: journal.num("prev_sequence").unwrap_or(0),
            manifest_sha256: sum,
            applied_at: journal.num("prev_applied_at").unwrap_or(0),
        });
    match previous {
        Some(p) => p.save(sd)?,
        None => match std::fs::remove_file(sd.join("installed")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(Exit::Usage, &sd.join("installed"), e))
            }
            _ => {}
        },
    }
    refuse_cycle(sd, &cycle);
    let done = !(account.contains("FAILED") || incomplete(&account));
    let mut last = journal.clone();
    // An incomplete restore leaves the set live: the next `rollback` tries it again instead of
    // saying "already rolled back" over packages still at the new versions.
    last.set("rolled_back", if done { "yes" } else { "no" });
    for k in ["op", "step"] {
        last.fields.retain(|(key, _)| key != k);
    }
    let lp = sd.join("last-apply");
    if let Some(p) = journal.get("rollback_set") {
        last.save(Path::new(p))
            .map_err(|e| Error::io(Exit::Usage, Path::new(p), e))?;
        // last-apply (the snapshot backends' record) is done with too when it is this cycle.
        if let Ok(Some(mut la)) = Record::load(&lp) {
            if la.get("cycle") == Some(cycle.as_str()) && done {
                la.set("rolled_back", "yes");
                la.save(&lp).map_err(|e| Error::io(Exit::Usage, &lp, e))?;
            }
        }
    } else {
        last.save(&lp).map_err(|e| Error::io(Exit::Usage, &lp, e))?;
    }
    let jp = crate::node::status::journal_path(sd);
    let _ = std::fs::remove_file(&jp);
    if !done {
        return Err(Error::new(
            Exit::InstallFailed,
            format!("rollback of {cycle}: {account}"),
        ));
    }
    Ok(format!("cycle {cycle} rolled back: {account}"))
}

/// A signed order (`bundle::order`): `kind rollback|halt|resume`, `variant`, `cycle`, `issued`,
/// `expires`. Rollback: a node with that cycle installed rolls back; any node refuses to install
/// it afterwards. Halt: nodes that have not installed the cycle defer it until a newer cycle.
pub fn carry_out_order(ctx: &Ctx, path: &Path, info: &mut RunInfo) -> Result<String> {
    let sd = ctx.state_dir();
    let bytes = crate::support::fsutil::read_capped(path, crate::bundle::signed::MAX_DOC)
        .map_err(|e| Error::new(Exit::Integrity, format!("{}: order: {e}", path.display())))?;
    let order = crate::bundle::order::Order::open(&bytes, ctx.trusted).map_err(|e| match e {
        OrderError::Authenticity(m) => {
            Error::new(Exit::Authenticity, format!("{}: {m}", path.display()))
        }
        OrderError::Integrity(m) => Error::new(Exit::Integrity, format!("{}: {m}", path.display())),
    })?;
    let (kind, variant, cycle) = (order.kind, order.variant, order.cycle);
    info.cycle = Some(cycle.clone());
    info.command = Some(format!("order-{kind}"));
    if variant != ctx.config.variant {
        return Err(Error::new(
            Exit::NotApplicable,
            format!(
                "order is for variant {variant}, this node is {}",
                ctx.config.variant
            ),
        ));
    }
    let now = ctx.now();
    if order.expires <= now {
        return Err(Error::new(
            Exit::NotApplicable,
            format!("{kind} order for {cycle} has expired"),
        ));
    }
    let digest = hex(&crate::bundle::format::sha256(&bytes));
    if order_done(sd, &digest) {
        return Ok(format!("{kind} order for {cycle} already carried out"));
    }
    let result = match kind.as_str() {
        "rollback" => {
            let installed = Installed::load(sd)?;
            if installed.is_some_and(|i| i.cycle == cycle) {
                refuse_cycle(sd, &cycle);
                roll_back_last(ctx, info, Some(&cycle))
            } else {
                refuse_cycle(sd, &cycle);
                Ok(format!(
                    "cycle {cycle} is not installed here; it will be refused"
                ))
            }
        }
        "halt" => {
            add_to_list(sd, "halted", &cycle);
            Ok(format!("rollout of {cycle} halted on this node"))
        }
        "resume" => {
            remove_from_list(sd, "halted", &cycle);
            Ok(format!("rollout of {cycle} resumed on this node"))
        }
        other => Err(Error::new(
            Exit::Integrity,
            format!("unknown order kind {other:?}"),
        )),
    }?;
    add_to_list(sd, "orders", &digest);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::pkg::{Change, RepoPackage};

    /// Answers `installed` and `audit` from fixed values; nothing else is called.
    struct Fixed(Vec<Option<String>>, std::result::Result<(), String>);

    impl PackageManager for Fixed {
        fn name(&self) -> &'static str {
            "apt"
        }
        fn repo_packages(&self, _: &Path) -> std::result::Result<Vec<RepoPackage>, String> {
            unreachable!()
        }
        fn installed(&self, names: &[String]) -> std::result::Result<Vec<Option<String>>, String> {
            assert_eq!(names, ["kiosk-app", "kiosk-extra"]);
            Ok(self.0.clone())
        }
        fn newer(&self, _: &str, _: &str) -> std::result::Result<bool, String> {
            unreachable!()
        }
        fn simulate(
            &self,
            _: &Path,
            _: &[(String, String)],
        ) -> std::result::Result<Vec<Change>, String> {
            unreachable!()
        }
        fn install(&self, _: &Path, _: &[(String, String)]) -> std::result::Result<(), String> {
            unreachable!()
        }
        fn repair(&self) -> std::result::Result<(), String> {
            unreachable!()
        }
        fn restore(&self, _: &[PathBuf], _: &[String]) -> std::result::Result<(), String> {
            unreachable!()
        }
        fn audit(&self) -> std::result::Result<(), String> {
            self.1.clone()
        }
    }

    #[test]
    fn restore_after_reboot_is_judged_in_the_next_boot_by_the_versions() {
        let mut rec = Record::new();
        rec.set("snapshot", "btrfs:edgepatch-5-1")
            .set("cycle", "c5")
            .set("pre", "kiosk-app=1.1,kiosk-extra=-")
            .set("boot", "boot-a");
        let back = Fixed(vec![Some("1.1".into()), None], Ok(()));
        assert_eq!(
            settled(&rec, "boot-a", &back),
            None,
            "same boot: still waiting"
        );
        assert_eq!(
            settled(&rec, "boot-b", &back),
            Some(Ok(
                "rollback of c5 took effect at boot: pre-patch versions back".into()
            ))
        );
        // The reboot came but the old root is still there (say, booted by a subvol= that the
        // restore did not reach): the new version and the package it added are named.
        let not = Fixed(vec![Some("1.3".into()), Some("1.0".into())], Ok(()));
        let Some(Err(m)) = settled(&rec, "boot-b", &not) else {
            panic!("not back, yet not an error");
        };
        assert!(
            m.contains("kiosk-app (at 1.3, want 1.1)")
                && m.contains("kiosk-extra (at 1.0, want none)"),
            "{m}"
        );
        let half = Fixed(
            vec![Some("1.1".into()), None],
            Err("dpkg --audit: kiosk-app".into()),
        );
        assert!(
            matches!(settled(&rec, "boot-b", &half), Some(Err(m)) if m.contains("dpkg --audit"))
        );
    }
}
