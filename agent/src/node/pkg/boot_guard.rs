//! Boot-time recovery runs before the units that wait for it (a kiosk app ordered
//! `After=edgepatch-recover.service`). A maintainer script that restarts such a unit
//! (`deb-systemd-invoke restart kiosk.service`, what dh_installsystemd writes) would wait for a
//! job that waits for us: a deadlock until the unit's timeout kills dpkg halfway again. While
//! the recovery unit runs (it sets EDGEPATCH_BOOT=1), a `policy-rc.d` answering 101 ("action
//! forbidden") makes invoke-rc.d and deb-systemd-invoke skip service actions; those units start
//! after the recovery anyway. An admin's own policy-rc.d is never touched.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const MARK: &str = "# edgepatch boot recovery";

fn policy(root: &Path) -> PathBuf {
    root.join("usr/sbin/policy-rc.d")
}

fn ours(p: &Path) -> bool {
    std::fs::read_to_string(p).is_ok_and(|t| t.contains(MARK))
}

/// While alive (and only under EDGEPATCH_BOOT), service actions of maintainer scripts are denied.
pub struct DenyServiceActions(Option<PathBuf>);

impl DenyServiceActions {
    pub fn at_boot(root: &Path) -> DenyServiceActions {
        let p = policy(root);
        // One left by a recovery that was itself cut short goes first.
        if ours(&p) {
            let _ = std::fs::remove_file(&p);
        }
        if std::env::var_os("EDGEPATCH_BOOT").is_none() {
            return DenyServiceActions(None);
        }
        let made = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&p)
            .and_then(|mut f| {
                writeln!(
                    f,
                    "#!/bin/sh\n{MARK}: service actions wait for the end of it\nexit 101"
                )
            });
        match made {
            Ok(()) => DenyServiceActions(Some(p)),
            Err(e) => {
                log::info!(
                    "{}: {e}; service actions of maintainer scripts run",
                    p.display()
                );
                DenyServiceActions(None)
            }
        }
    }
}

impl Drop for DenyServiceActions {
    fn drop(&mut self) {
        if let Some(p) = self.0.take().filter(|p| ours(p)) {
            let _ = std::fs::remove_file(p);
        }
    }
}
