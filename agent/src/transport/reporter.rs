//! The node's reporter: every outcome is spooled first (it survives weeks offline), mirrored into
//! the Prometheus textfile when `metrics_file` is set, and delivered when `report_url` is set.

use crate::node::ctx::{Ctx, Reporter, RunInfo};
use crate::node::state::Installed;
use crate::support::clock::Ratchet;
use crate::support::error::Exit;
use crate::transport::report;

/// Spool, metrics textfile, delivery to the center.
pub struct Spool;

impl Reporter for Spool {
    fn outcome(&self, ctx: &Ctx, command: &str, exit: Exit, reason: &str, info: &RunInfo) {
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
            time: crate::support::clock::Clock::now(ctx.clock),
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
}
