//! One edgepatch run at a time per state dir: an exclusive, non-blocking flock. The kernel drops
//! it when the process dies, so a power cut or kill -9 never leaves a stale lock behind.

use crate::support::error::{Error, Exit, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::path::Path;

pub struct RunLock {
    _lock: Flock<File>,
}

pub fn acquire(state_dir: &Path) -> Result<RunLock> {
    crate::support::fsutil::create_dir_mode(state_dir, 0o755)
        .map_err(|e| Error::io(Exit::Usage, state_dir, e))?;
    let path = state_dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
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
