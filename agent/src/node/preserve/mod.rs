//! Preserve: rebuild installable packages from what is installed on a root, so a failed install
//! or a rollback can put back the exact pre-patch versions, even those that came with the image
//! and were never in a bundle. `dpkg-repack` without perl or dpkg-repack on the node:
//!
//! - [`plan_deb`] reads the dpkg database (status stanza, `info/` files, diversions) and lstats
//!   the package's files. It is cheap and gives [`DebPlan::identity`], a sha256 over everything
//!   the repacked bytes depend on, so a cached copy with the same identity can be reused.
//! - [`DebPlan::write`] streams the .deb (uncompressed `control.tar` and `data.tar` in the ar
//!   container; bounded buffers, no file is ever held whole in memory) to a temp file beside the
//!   target, checks free space first, fsyncs and renames it into place.
//! - [`repack_deb_cached`] does both and reuses `<dir>/<pkg>_<ver>_<arch>.<id>.deb` when present.
//!
//! Output is deterministic: members in sorted path order, files' own modes, mtimes and numeric
//! owners, no time of day anywhere. Files changed since install (md5sums mismatch) are carried
//! as they are now, with a warning; conffiles keep the admin's version.
//!
//! The RHEL family's counterpart, a native rpmrebuild, is [`rpm::repack`].

pub mod ar;
pub mod db;
pub mod dpkg;
pub mod rpm;
pub mod tar;

pub use dpkg::{installed_debs, plan_deb, repack_deb, repack_deb_cached, DebPlan};

use crate::support::error::{Error, Exit, Result};
use std::fs::{File, OpenOptions};
use std::io::BufWriter;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// One repacked package on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repacked {
    pub path: PathBuf,
    pub package: String,
    pub version: String,
    pub arch: String,
    /// [`DebPlan::identity`] of what was packed.
    pub identity: [u8; 32],
    pub bytes: u64,
    /// Files whose contents differ from dpkg's md5sums (carried as they are now).
    pub changed: Vec<String>,
    /// Listed files that are not on disk (left out, as dpkg-repack does).
    pub missing: Vec<String>,
    /// The Conffiles record before the repack: (path, md5 of the version the package shipped).
    /// Installing the repacked package records the admin's text as shipped instead; putting
    /// these back into the status file keeps later upgrades prompting as before (dpkg).
    pub conffiles: Vec<(String, String)>,
    /// Files the package cannot carry exactly, which the rollback set keeps whole
    /// (see `node/whole.rs`): (path, is %config). rpm only.
    pub whole: Vec<(String, bool)>,
    /// True when an identical cached copy was reused instead of packing again.
    pub reused: bool,
}

/// Lowercase hex of `b`.
pub fn hex(b: &[u8]) -> String {
    crate::bundle::format::hex(b)
}

/// A preserve failure: the install must not go ahead without its way back.
pub(crate) fn err(msg: impl Into<String>) -> Error {
    Error::new(Exit::InstallFailed, msg)
}

pub(crate) fn ioerr(path: &Path, e: std::io::Error) -> Error {
    Error::io(Exit::InstallFailed, path, e)
}

/// Refuse to start writing `need` bytes into `dir` unless they fit with a margin.
pub(crate) fn check_space(dir: &Path, need: u64) -> Result<()> {
    let free = crate::node::stage::available_space(dir)?;
    let want = need.saturating_add(16 << 20);
    if free < want {
        return Err(err(format!(
            "no room to preserve packages in {}: need {} MiB, {} MiB free; free space there",
            dir.display(),
            want.div_ceil(1 << 20),
            free >> 20
        )));
    }
    Ok(())
}

/// A file being written beside its final name; renamed into place by `commit`, removed if
/// dropped before (a failed or interrupted repack leaves no half package behind).
pub(crate) struct TempOut {
    tmp: PathBuf,
    dest: PathBuf,
    pub w: BufWriter<File>,
    done: bool,
}

impl TempOut {
    pub fn create(dest: &Path) -> Result<TempOut> {
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = dest.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| ioerr(&tmp, e))?;
        Ok(TempOut {
            tmp,
            dest: dest.to_path_buf(),
            w: BufWriter::with_capacity(64 * 1024, f),
            done: false,
        })
    }

    /// fsync, rename over `dest`, fsync the directory. Returns the file's size.
    pub fn commit(mut self) -> Result<u64> {
        use std::io::Write;
        let tmp = self.tmp.clone();
        self.w.flush().map_err(|e| ioerr(&tmp, e))?;
        let f = self.w.get_ref();
        f.sync_all().map_err(|e| ioerr(&tmp, e))?;
        let size = f.metadata().map_err(|e| ioerr(&tmp, e))?.len();
        std::fs::rename(&tmp, &self.dest).map_err(|e| ioerr(&self.dest, e))?;
        self.done = true;
        let dir = self.dest.parent().unwrap_or(Path::new("."));
        crate::support::fsutil::sync_dir(dir).map_err(|e| ioerr(dir, e))?;
        Ok(size)
    }
}

impl Drop for TempOut {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
