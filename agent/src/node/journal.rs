//! The journal (`state_dir/journal`): one record per step that changes the disk, written with the
//! atomic-write helper before the step, so an interrupted run can be resolved (see `recover`).

use crate::node::ctx::Ctx;
use crate::node::status::{self, journal_path};
use crate::support::error::{Error, Exit, Result};
use crate::support::kv::Record;

/// Write the journal record, then the status file (it shows the step in progress).
pub fn save(ctx: &Ctx, j: &Record) -> Result<()> {
    let p = journal_path(ctx.state_dir());
    j.save(&p)
        .map_err(|e| Error::io(Exit::InstallFailed, &p, e))?;
    status::write(ctx.config);
    Ok(())
}

pub fn clear(ctx: &Ctx) -> Result<()> {
    let p = journal_path(ctx.state_dir());
    match std::fs::remove_file(&p) {
        Ok(()) => crate::support::fsutil::sync_dir(ctx.state_dir())
            .map_err(|e| Error::io(Exit::InstallFailed, ctx.state_dir(), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(Exit::InstallFailed, &p, e)),
    }
}
