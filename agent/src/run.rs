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

use crate::apply::{self, Ctx, RunInfo};
use crate::config::Config;
use crate::error::{Error, Exit, Result};
use std::ffi::OsString;
use std::time::Duration;

/// `edgepatch run [--no-splay]` from the command line.
pub fn main(config: &Config, rest: &[OsString]) -> Result<()> {
    let splay = match rest {
        [] => true,
        [a] if a == "--no-splay" => false,
        _ => return Err(Error::usage("usage: edgepatch run [--no-splay]")),
    };
    let trusted = trusted_keys(config, &config.import_paths, true)?;
    let clock = crate::clock::from_env();
    let ctx = Ctx {
        config,
        trusted: &trusted,
        clock: clock.as_ref(),
    };
    let msg = command(&ctx, splay)?;
    println!("ok: {msg}");
    Ok(())
}

/// The keys fetch, import and run trust. With `root_keys` set, a newer root-signed key list
/// found first is accepted: `DIR/keylist` in each of `dirs` (USB stick, drop dir) and, when
/// `from_mirror`, `MIRROR/keylist`. A missing or refused list never stops the run (it is logged);
/// the node keeps the key list it has.
pub fn trusted_keys(
    config: &Config,
    dirs: &[std::path::PathBuf],
    from_mirror: bool,
) -> Result<Vec<crate::keys::TrustedKey>> {
    if config.root_keys.is_some() {
        let mut docs: Vec<(String, Vec<u8>)> = Vec::new();
        for d in dirs {
            let p = d.join("keylist");
            if let Ok(meta) = std::fs::metadata(&p) {
                if meta.len() <= crate::signed::MAX_DOC as u64 {
                    if let Ok(b) = std::fs::read(&p) {
                        docs.push((p.display().to_string(), b));
                    }
                }
            }
        }
        if let (true, Some(mirror)) = (from_mirror, config.mirror.as_deref()) {
            let url = format!("{mirror}/keylist");
            if let Some(b) = get_small(&url) {
                docs.push((url, b));
            }
        }
        for (origin, doc) in docs {
            match crate::trust::accept_keylist(config, &doc) {
                Ok(true) => log::warn!("accepted a new key list from {origin}"),
                Ok(false) => {}
                Err(e) => log::warn!("key list from {origin} refused: {e}"),
            }
        }
    }
    crate::trust::load(config)
}

/// GET a small document (≤ signed::MAX_DOC), or None on any failure.
fn get_small(url: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(15)))
        .build()
        .into();
    let mut resp = agent.get(url).call().ok()?;
    let mut body = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(crate::signed::MAX_DOC as u64 + 1)
        .read_to_end(&mut body)
        .ok()?;
    (body.len() <= crate::signed::MAX_DOC).then_some(body)
}

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
        let ms = crate::fetch::Rng::seeded().below(cfg.splay.saturating_mul(1000));
        log::info!(
            "splay: sleeping {:.1}s before this pass",
            ms as f64 / 1000.0
        );
        std::thread::sleep(Duration::from_millis(ms));
    }
    let mut steps: Vec<(&str, Result<String>)> = Vec::new();
    {
        // fetch and import share one hold of the lock; apply takes it again itself.
        let _lock = crate::lock::acquire(&cfg.state_dir)?;
        if cfg.mirror.is_some() {
            let mut info = RunInfo::default();
            let r = crate::fetch::pass(ctx, &crate::fetch::Options::default(), &mut info);
            apply::finish(ctx, "fetch", &r, &info);
            steps.push(("fetch", r));
        }
        for dir in cfg.import_paths.iter().filter(|d| d.is_dir()) {
            let mut info = RunInfo::default();
            let r = crate::import::scan(ctx, dir, &mut info);
            apply::finish(ctx, "import", &r, &info);
            steps.push(("import", r));
        }
    }
    // Between the two holds another run may take the lock: apply then exits 8 (locked) and the
    // next timer tick tries again, which is harmless.
    let applied = apply::command(ctx, None);

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
    // REPORT HOOK: the lead wires reports here (one report for this run, from `summary` and the
    // chosen outcome below; spool, then flush to report_url).
    match worst {
        Some((name, e)) if weight(e.exit) > apply_weight => {
            // Put the outcome that decides the exit code back on top of last-result.
            let info = RunInfo::default();
            apply::finish(ctx, name, &Err(e.clone()), &info);
            Err(Error::new(e.exit, summary.join("; ")))
        }
        _ => match applied {
            Ok(_) => Ok(summary.join("; ")),
            Err(e) => Err(Error::new(e.exit, summary.join("; "))),
        },
    }
}
