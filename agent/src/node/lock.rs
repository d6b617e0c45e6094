//! One edgepatch run at a time per state dir: an exclusive, non-blocking flock. The kernel drops
//! it when the process dies, so a power cut or kill -9 never leaves a stale lock behind.

use crate::support::error::{Error, Exit, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Create state_dir 0700 if it is missing, then refuse it unless it and everything directly in it
/// belong to the user running the agent and nobody else can write there. A state_dir that
/// another user could write would let them plant symlinks that make root write, chmod or delete
/// files elsewhere (hardening item 8).
pub fn prepare_state_dir(state_dir: &Path) -> Result<()> {
    if std::fs::symlink_metadata(state_dir).is_err() {
        crate::support::fsutil::create_dir_mode(state_dir, 0o700)
            .map_err(|e| Error::io(Exit::Usage, state_dir, e))?;
    }
    crate::support::fsutil::check_owned(state_dir, true).map_err(refuse)?;
    let entries = std::fs::read_dir(state_dir).map_err(|e| Error::io(Exit::Usage, state_dir, e))?;
    for e in entries.filter_map(|e| e.ok()) {
        crate::support::fsutil::check_owned(&e.path(), false).map_err(refuse)?;
    }
    Ok(())
}

fn refuse(msg: String) -> Error {
    Error::new(
        Exit::Usage,
        format!("{msg}; state_dir must be root's alone (chown root, chmod go-w)"),
    )
}

pub struct RunLock {
    _lock: Flock<File>,
}

/// The install lock: everything that changes the machine (apply, rollback, orders, recovery).
pub fn acquire(state_dir: &Path) -> Result<RunLock> {
    take(state_dir, "lock")
}

/// The transfer lock: fetch and import, which only write into incoming/. Separate from the
/// install lock so that a slow mirror never keeps a USB bundle from being applied.
pub fn acquire_transfer(state_dir: &Path) -> Result<RunLock> {
    take(state_dir, "transfer.lock")
}

fn take(state_dir: &Path, name: &str) -> Result<RunLock> {
    prepare_state_dir(state_dir)?;
    let path = state_dir.join(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(Exit::Usage, &path, e))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(RunLock { _lock: lock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(Error::new(
            Exit::Locked,
            format!(
                "another edgepatch run holds {}; try again later",
                path.display()
            ),
        )),
        Err((_, e)) => Err(Error::new(
            Exit::Usage,
            format!("{}: lock: {e}", path.display()),
        )),
    }
}
