//! Every outcome, once: recorded in state_dir (last-result, status.json), then handed to the
//! context's reporter (spool, center, metrics).

use crate::node::ctx::{Ctx, RunInfo};
use crate::node::status;
use crate::support::error::{Exit, Result};

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
    // For a technician with -v and for benchmarks: where the time went, and the agent's own
    // memory high-water mark (package managers it ran are not counted).
    let steps: Vec<String> = info
        .timings
        .iter()
        .map(|(step, ms)| format!("{step} {ms} ms"))
        .collect();
    log::info!(
        "{command}: {}; agent peak RSS {} kB",
        if steps.is_empty() {
            "-".to_string()
        } else {
            steps.join(", ")
        },
        crate::support::fsutil::peak_rss_kb().unwrap_or(0)
    );
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
    ctx.reporter.outcome(ctx, command, exit, reason, info);
}
