//! `run`: what cron or the systemd timer calls. One pass of everything, in order:
//!
//! ```text
//! splay    sleep a random 0..splay seconds (config `splay`; `--no-splay` skips it), so a fleet
//!          started by the same timer does not hit the mirror in the same second
//! fetch    if `mirror` is set: one fetch pass (it does nothing outside `transfer_window`)
//! import   each `import_paths` directory that exists (USB mount points, rsync drops)
//! apply    the newest complete bundle in incoming/, gated by its signed rollout policy
//! ```
//!
//! Each step records its own result (last-result, status.json). The exit code is the most
//! important outcome: a failed install or health check, then a bad bundle (integrity,
//! authenticity), then a config error, then a refused index or bundle (not applicable), then
//! whatever apply said (applied, nothing to do, or deferred). A fetch that is merely deferred
//! (outside the window, mirror unreachable) never hides apply's result.

use crate::node::ctx::{Ctx, RunInfo};
use crate::node::outcome::finish;
use crate::node::session;
use crate::support::error::{Error, Exit, Result};
use crate::transport::{fetch, import};
use std::time::Duration;

/// How much an outcome matters for the exit code of `run` (higher wins).
fn weight(exit: Exit) -> u8 {
    match exit {
        Exit::InstallFailed | Exit::HealthFailed => 6,
        Exit::Integrity | Exit::Authenticity => 5,
        Exit::Usage => 4,
        Exit::NotApplicable => 3,
        Exit::Locked => 2,
        _ => 0,
    }
}

pub fn command(ctx: &Ctx, splay: bool) -> Result<String> {
    let cfg = ctx.config;
    if splay && cfg.splay > 0 {
        let ms = fetch::Rng::seeded().below(cfg.splay.saturating_mul(1000));
        log::info!(
            "splay: sleeping {}.{}s before this pass",
            ms / 1000,
            ms % 1000 / 100
        );
        std::thread::sleep(Duration::from_millis(ms));
    }
    let mut steps: Vec<(&str, Result<String>)> = Vec::new();
    {
        // fetch and import share one hold of the lock; apply takes it again itself.
        let _lock = crate::node::lock::acquire_transfer(&cfg.state_dir)?;
        if cfg.mirror.is_some() {
            let mut info = RunInfo::default();
            let r = fetch::pass(ctx, &fetch::Options::default(), &mut info);
            finish(ctx, "fetch", &r, &info);
            steps.push(("fetch", r));
        }
        for dir in cfg.import_paths.iter().filter(|d| d.is_dir()) {
            let mut info = RunInfo::default();
            let r = import::scan(ctx, dir, &mut info).map(|(msg, _)| msg);
            finish(ctx, "import", &r, &info);
            steps.push(("import", r));
        }
    }
    // Between the two holds another run may take the lock: apply then exits 8 (locked) and the
    // next timer tick tries again, which is harmless.
    let applied = session::apply(ctx, None);

    let summary: Vec<String> = steps
        .iter()
        .chain(std::iter::once(&("apply", applied.clone())))
        .map(|(name, r)| match r {
            Ok(m) => format!("{name}: {m}"),
            Err(e) => format!("{name}: {} ({})", e.exit.word(), e.msg),
        })
        .collect();
    for line in &summary {
        log::info!("{line}");
    }
    let worst = steps
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|e| (*name, e)))
        .filter(|(_, e)| weight(e.exit) > 0)
        .max_by_key(|(_, e)| weight(e.exit));
    let apply_weight = applied.as_ref().err().map_or(0, |e| weight(e.exit));
    match worst {
        Some((name, e)) if weight(e.exit) > apply_weight => {
            // Put the outcome that decides the exit code back on top of last-result.
            let info = RunInfo::default();
            finish(ctx, name, &Err(e.clone()), &info);
            Err(Error::new(e.exit, summary.join("; ")))
        }
        _ => match applied {
            Ok(_) => Ok(summary.join("; ")),
            Err(e) => Err(Error::new(e.exit, summary.join("; "))),
        },
    }
}
