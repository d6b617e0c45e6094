//! The commands behind `edgepatch COMMAND`: each parses its own arguments, builds the context
//! (trusted keys, clock, reporter) and calls the layer that does the work.

use crate::bundle::format::hex;
use crate::bundle::verify::{self, Discard, NodeFacts};
use crate::node::ctx::{Ctx, RunInfo};
use crate::node::state::Installed;
use crate::node::{lock, session, trust};
use crate::support::clock::Ratchet;
use crate::support::config::Config;
use crate::support::error::{Error, Exit, Result};
use crate::transport::{fetch, import, keysync, reporter, run};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Run `f` with the node's trusted keys, clock and reporter: the one place commands build their
/// context. `trusted` is `trust::load` unless the command looked for a newer key list first.
fn with_ctx<T>(
    config: &Config,
    trusted: Option<Vec<crate::bundle::keys::TrustedKey>>,
    f: impl FnOnce(&Ctx) -> Result<T>,
) -> Result<T> {
    let trusted = match trusted {
        Some(t) => t,
        None => trust::load(config)?,
    };
    let clock = crate::support::clock::from_env();
    f(&Ctx {
        config,
        trusted: &trusted,
        clock: clock.as_ref(),
        reporter: &reporter::Spool,
    })
}

/// Print `ok: MSG` for a command that succeeded.
fn ok(msg: Result<String>) -> Result<()> {
    outln!("ok: {}", msg?);
    Ok(())
}

pub fn apply(config: &Config, bundle: Option<PathBuf>) -> Result<()> {
    ok(with_ctx(config, None, |ctx| {
        session::apply(ctx, bundle.as_deref())
    }))
}

pub fn rollback(config: &Config, order: Option<PathBuf>) -> Result<()> {
    ok(with_ctx(config, None, |ctx| {
        session::rollback(ctx, order.as_deref())
    }))
}

/// Show the status; first resolve an interrupted run if no other run is active.
pub fn status(config: &Config, json: bool) -> Result<()> {
    let sd = &config.state_dir;
    if crate::node::status::journal_path(sd).exists()
        || crate::node::rollback::pending_path(sd).exists()
    {
        if let Ok(_lock) = lock::acquire(&config.state_dir) {
            let recovered = with_ctx(config, None, |ctx| {
                session::recover(ctx, &mut RunInfo::default())
            });
            if let Err(e) = recovered {
                log::warn!("{e}");
            }
        }
    }
    let st = crate::node::status::Status::gather(config);
    if json {
        outln!("{}", st.to_json().trim_end());
    } else {
        outln!("{}", st.to_lines().trim_end());
    }
    Ok(())
}

pub fn verify(config: &Config, bundle: &Path) -> Result<()> {
    let trusted = trust::load(config)?;
    let installed = Installed::load(&config.state_dir)?;
    let ratchet = Ratchet::new(&config.state_dir);
    let clock = crate::support::clock::from_env();
    let node = NodeFacts {
        variant: &config.variant,
        installed_sequence: installed.map(|i| i.sequence),
        now: ratchet.now(clock.as_ref()),
    };
    let mut reader = crate::support::fsutil::open_bundle(bundle)?;
    let v = verify::verify_stream(&mut reader, &trusted, &node, &mut Discard)?;
    let m = &v.manifest;
    if let Err(e) = ratchet.observe_signed(m.created, clock.as_ref()) {
        log::warn!(
            "cannot record trusted time in {}: {e}",
            config.state_dir.display()
        );
    }
    let bytes: u64 = m.entries.iter().map(|e| e.size).sum();
    outln!(
        "ok: {} cycle {} sequence {}",
        m.variant,
        m.cycle,
        m.sequence
    );
    outln!(
        "    {} entries, {} bytes, signed by {}",
        m.entries.len(),
        bytes,
        v.signers.join(",")
    );
    outln!("    manifest sha256 {}", hex(&v.manifest_sha256));
    Ok(())
}

/// `edgepatch run [--no-splay]`.
pub fn run(config: &Config, rest: &[OsString]) -> Result<()> {
    let splay = match rest {
        [] => true,
        [a] if a == "--no-splay" => false,
        _ => return Err(Error::usage("usage: edgepatch run [--no-splay]")),
    };
    let trusted = keysync::trusted_keys(config, &config.import_paths, true)?;
    ok(with_ctx(config, Some(trusted), |ctx| {
        run::command(ctx, splay)
    }))
}

/// `edgepatch fetch [--budget DURATION]`.
pub fn fetch(config: &Config, rest: &[OsString]) -> Result<()> {
    let mut opts = fetch::Options::default();
    let mut it = rest.iter().map(|a| a.to_str());
    while let Some(arg) = it.next() {
        match arg {
            Some("--budget") => {
                let v = it.next().flatten().unwrap_or("");
                let secs = crate::support::config::parse_duration(v)
                    .ok()
                    .filter(|s| *s > 0 && *s <= fetch::MAX_BUDGET.as_secs())
                    .ok_or_else(|| {
                        Error::usage(format!(
                            "--budget {v:?}: use e.g. 90, 10m or 2h (at most 7d)"
                        ))
                    })?;
                opts.budget = Duration::from_secs(secs);
            }
            _ => return Err(Error::usage("usage: edgepatch fetch [--budget DURATION]")),
        }
    }
    let trusted = keysync::trusted_keys(config, &[], true)?;
    ok(with_ctx(config, Some(trusted), |ctx| {
        fetch::command(ctx, &opts)
    }))
}

/// `edgepatch import DIR`.
pub fn import(config: &Config, rest: &[OsString]) -> Result<()> {
    let [dir] = rest else {
        return Err(Error::usage("usage: edgepatch import DIR"));
    };
    let trusted = keysync::trusted_keys(config, &[PathBuf::from(dir)], false)?;
    ok(with_ctx(config, Some(trusted), |ctx| {
        import::command(ctx, Path::new(dir))
    }))
}

/// `edgepatch keys [--import FILE]`: import a key list, then show the trusted keys.
pub fn keys(config: &Config, rest: &[OsString]) -> Result<()> {
    let usage = || Error::usage("usage: edgepatch keys [--import FILE]");
    match rest {
        [] => {}
        [flag, file] if flag == "--import" => {
            let file = Path::new(file);
            let doc = trust::read_capped(file)?;
            let _lock = lock::acquire(&config.state_dir)?;
            let result = trust::accept_keylist(config, &doc).map(|new| {
                let state = if new { "accepted" } else { "already current" };
                format!("key list from {} {state}", file.display())
            });
            // A key list import is an operator action the center sees, like any outcome.
            with_ctx(config, None, |ctx| {
                crate::node::outcome::finish(ctx, "keys", &result, &RunInfo::default());
                Ok(())
            })
            .ok();
            outln!("ok: {}", result?);
        }
        _ => return Err(usage()),
    }
    let now = trust::node_now(config);
    outln!("{}", trust::describe(config, now)?.trim_end());
    Ok(())
}

/// `edgepatch report [--retry-rejected]`: deliver the spool now; first put the reports the
/// center refused back into it when the operator has fixed the cause.
pub fn report(config: &Config, retry_rejected: bool) -> Result<()> {
    let url = config.report_url.as_deref().ok_or_else(|| {
        Error::usage("report_url is not set in the config; use export-status DIR")
    })?;
    if retry_rejected {
        let n = crate::transport::report::retry_rejected(&config.state_dir)
            .map_err(|e| Error::io(Exit::Usage, &config.state_dir, e))?;
        outln!("requeued {n} rejected report(s)");
    }
    let timeout = Duration::from_secs(30);
    let st = crate::transport::report::flush(&config.state_dir, url, timeout)
        .map_err(|m| Error::new(Exit::Deferred, m))?;
    let kept = crate::transport::report::rejected(&config.state_dir)
        .map(|r| r.len())
        .unwrap_or(0);
    outln!(
        "ok: delivered {}, rejected {} ({kept} kept in spool-rejected/), still spooled {}",
        st.delivered,
        st.rejected,
        st.remaining
    );
    Ok(())
}

/// `edgepatch export-status DIR`.
pub fn export_status(config: &Config, dir: &Path) -> Result<()> {
    let out =
        crate::transport::report::export_status(&config.state_dir, dir).map_err(Error::usage)?;
    outln!("ok: exported to {}", out.display());
    Ok(())
}
