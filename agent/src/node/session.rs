//! One locked session on the node: take the lock, resolve what an interrupted run left behind
//! (the journal), carry out one operation, record its outcome. `apply`, `rollback`, `status` and
//! the transport commands all come through here.

use crate::node::apply::{self, commit, install_and_commit};
use crate::node::ctx::{Ctx, RunInfo};
use crate::node::journal;
use crate::node::outcome::finish;
use crate::node::restore::decode_versions;
use crate::node::rollback;
use crate::node::status::journal_path;
use crate::support::error::{Error, Exit, Result};
use crate::support::kv::Record;
use std::path::{Path, PathBuf};

/// `edgepatch apply [BUNDLE]`: lock, recover, apply, record the result, rewrite status.json.
pub fn apply(ctx: &Ctx, bundle: Option<&Path>) -> Result<String> {
    let _lock = crate::node::lock::acquire(ctx.state_dir())?;
    let mut info = RunInfo::default();
    let result = recover(ctx, &mut info).and_then(|_| apply::apply(ctx, bundle, &mut info));
    finish(ctx, "apply", &result, &info);
    result
}

/// Resolve what an interrupted run left behind. Called with the lock held.
pub fn recover(ctx: &Ctx, info: &mut RunInfo) -> Result<()> {
    rollback::settle_restore(ctx, &rollback::boot_id())?;
    let jp = journal_path(ctx.state_dir());
    let Some(mut journal) = Record::load(&jp).map_err(|e| Error::io(Exit::Usage, &jp, e))? else {
        return Ok(());
    };
    let staging = PathBuf::from(journal.get("staging").unwrap_or_default());
    let step = journal.get("step").unwrap_or("").to_string();
    log::warn!("found an interrupted run (step {step}); resolving it first");
    let _no_restarts = crate::node::pkg::DenyServiceActions::at_boot(&ctx.config.root);
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
            let forward = crate::node::stage::recheck(&staging)
                .and_then(|m| install_and_commit(ctx, &mut journal, &staging, &m, Some(pre), info));
            match forward {
                Ok(msg) => {
                    finish(ctx, "recover", &Ok(msg.clone()), info);
                    log::warn!("{msg}");
                    Ok(())
                }
                Err(e) => {
                    if journal_path(ctx.state_dir()).exists() {
                        let account = rollback::undo(ctx, pm.as_ref(), &journal);
                        apply::drop_set(&journal, &account);
                        info.restored = Some(account);
                        let _ = std::fs::remove_dir_all(&staging);
                        journal::clear(ctx)?;
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
            // Interrupted while staging, preserving or taking the snapshot: nothing was installed
            // yet (a half-written set is never applied, and is pruned).
            if staging.starts_with(ctx.state_dir()) && staging.exists() {
                let _ = std::fs::remove_dir_all(&staging);
            }
            journal::clear(ctx)
        }
    }
}

/// `edgepatch rollback [--order FILE]`: lock, recover, roll back, record the outcome.
pub fn rollback(ctx: &Ctx, order: Option<&Path>) -> Result<String> {
    let _lock = crate::node::lock::acquire(ctx.state_dir())?;
    let mut info = RunInfo::default();
    // A rollback killed half-way is finished by `recover`; that rollback is this one (stepping
    // back once more would undo a second cycle).
    let jp = journal_path(ctx.state_dir());
    let half_done = Record::load(&jp)
        .ok()
        .flatten()
        .is_some_and(|j| j.get("op") == Some("rollback"));
    let result = recover(ctx, &mut info).and_then(|_| match order {
        Some(path) => rollback::carry_out_order(ctx, path, &mut info),
        None if half_done => Ok(format!(
            "cycle {} rolled back: {}",
            info.cycle.as_deref().unwrap_or("-"),
            info.restored.as_deref().unwrap_or("-")
        )),
        None => rollback::roll_back_last(ctx, &mut info, None),
    });
    let command = info.command.clone().unwrap_or_else(|| "rollback".into());
    finish(ctx, &command, &result, &info);
    result
}
