//! The one way edgepatch changes a file it owns: write a temp file, fsync it, rename it over the
//! target, fsync the directory. A power cut leaves the old or the new file, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Atomically replace `path` with `data` (mode 0644, or 0600 for `private`).
pub fn write_atomic(path: &Path, data: &[u8], private: bool) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if private { 0o600 } else { 0o644 })
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsync a directory so a rename or create inside it survives a power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Create a directory (and parents) with the given mode for the last component.
pub fn create_dir_mode(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

/// Is `path` ours alone: owned by the effective user (or root), not writable by group or others, and
/// not a symlink (and a directory when `is_dir`)? Err is a one-line reason.
pub fn check_owned(path: &Path, is_dir: bool) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { nix::libc::geteuid() };
    if m.file_type().is_symlink() {
        return Err(format!("{} is a symlink", path.display()));
    }
    if is_dir && !m.is_dir() {
        return Err(format!("{} is not a directory", path.display()));
    }
    // Root's own files are fine for an unprivileged `verify`/`status`; anyone else's are not.
    if m.uid() != me && m.uid() != 0 {
        return Err(format!(
            "{} is owned by uid {}, not {me}",
            path.display(),
            m.uid()
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by others (mode {:o})",
            path.display(),
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Bytes free for an unprivileged writer on the filesystem holding `dir` (statvfs); the one
/// free-space probe every check (staging, delta scratch, fetch, import) uses.
// statvfs field types differ between targets (u32 on armv7, u64 on x86_64).
#[allow(clippy::unnecessary_cast)]
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    Ok((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

/// Open `path` for reading without blocking on a FIFO (O_NONBLOCK), and refuse anything that is
/// not a regular file once open (checked on the descriptor, so a path swapped between a check
/// and the open cannot slip a FIFO or device in).
pub fn open_regular(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// Read a small file (a config, a signed document), refusing one larger than `max` bytes
/// without reading past it: `/dev/zero` or a huge file cannot grow memory. Also refuses
/// anything but a regular file.
pub fn read_capped(path: &Path, max: usize) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let f = open_regular(path)?;
    let mut data = Vec::new();
    f.take(max as u64 + 1).read_to_end(&mut data)?;
    if data.len() > max {
        return Err(io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(data)
}

/// This process's peak resident set (VmHWM, kB), for logs and benchmarks.
pub fn peak_rss_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Open a bundle file, mapping a missing file to "deferred": no complete bundle is here yet.
pub fn open_bundle(
    path: &Path,
) -> crate::support::error::Result<std::io::BufReader<std::fs::File>> {
    use crate::support::error::{Error, Exit};
    let f = open_regular(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::new(Exit::Deferred, format!("no bundle at {}", path.display()))
        }
        _ => Error::io(Exit::Usage, path, e),
    })?;
    Ok(std::io::BufReader::with_capacity(256 * 1024, f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("ep-fsutil-{}", std::process::id()));
        create_dir_mode(&dir, 0o700).unwrap();
        let p = dir.join("status.json");
        write_atomic(&p, b"one", false).unwrap();
        write_atomic(&p, b"two", true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
