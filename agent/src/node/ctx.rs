//! The context every node operation gets (config, trusted keys, clock, where outcomes go), and
//! the facts one run gathers for its result record and report.

use crate::bundle::keys::TrustedKey;
use crate::node::pkg::{self, PackageManager};
use crate::support::clock::{Clock, Ratchet};
use crate::support::config::Config;
use crate::support::error::{Exit, Result};
use std::path::Path;

/// What the command needs: config, trust roots, a clock.
pub struct Ctx<'a> {
    pub config: &'a Config,
    pub trusted: &'a [TrustedKey],
    pub clock: &'a dyn Clock,
    pub reporter: &'a dyn Reporter,
}

/// Now, for freshness and windows: the ratcheted clock.
pub fn now(ctx: &Ctx) -> u64 {
    ctx.now()
}

impl Ctx<'_> {
    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    pub fn now(&self) -> u64 {
        Ratchet::new(self.state_dir()).now(self.clock)
    }

    pub fn package_manager(&self) -> Result<Box<dyn PackageManager>> {
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
    /// The command word for the report when it is not the command's own (`order-halt`, ...).
    pub command: Option<String>,
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
    pub fn time(&mut self, step: &str, since: std::time::Instant) {
        self.timings
            .push((step.to_string(), since.elapsed().as_millis() as u64));
    }
}

/// Where each outcome goes after it is recorded on the node (the report spool, the center, the
/// metrics textfile). `transport::report` has the real one; tests and tools may use [`NoReports`].
pub trait Reporter {
    fn outcome(&self, ctx: &Ctx, command: &str, exit: Exit, reason: &str, info: &RunInfo);
}

/// Records nothing beyond the node's own result file and status.
pub struct NoReports;

impl Reporter for NoReports {
    fn outcome(&self, _: &Ctx, _: &str, _: Exit, _: &str, _: &RunInfo) {}
}
