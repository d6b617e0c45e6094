//! Staging: while a bundle streams through verification, each entry is written into a private
//! 0700 directory under state_dir. Only this copy is used afterwards, so a USB stick or drop dir
//! that changes after verification cannot change what gets installed.
//!
//! Files are created with O_EXCL|O_NOFOLLOW and mode 0644 inside the 0700 directory (so the package
//! manager can read them, nobody else can reach them); no setuid, setgid or device files are ever
//! written. The staged directory becomes the package cache of the applied bundle after success.

use crate::bundle::format::{self, Entry, EntryKind, Manifest};
use crate::bundle::verify::EntrySink;
use crate::support::error::{Error, Exit, Result};
use crate::support::fsutil::{create_dir_mode, sync_dir};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use crate::node::store::MANIFEST_FILE;
/// Head room kept free on the state_dir filesystem beyond the staged files themselves.
pub const SPACE_MARGIN: u64 = 16 << 20;

/// Bytes staging `m` writes at most: every final file, plus the patch bytes of delta entries
/// (kept until their file is rebuilt), plus the manifest.
pub fn staging_need(m: &Manifest) -> u64 {
    m.entries
        .iter()
        .map(|e| {
            e.size
                + if e.kind == EntryKind::Delta {
                    e.stored
                } else {
                    0
                }
        })
        .fold(0u64, u64::saturating_add)
        .saturating_add(format::MAX_MANIFEST as u64)
}

/// Pure: does `need` fit in `available` with the margin? The error says how much to free.
pub fn check_space(dir: &Path, need: u64, available: u64) -> Result<()> {
    let want = need.saturating_add(SPACE_MARGIN);
    if available < want {
        return Err(Error::new(
            Exit::Deferred,
            format!(
                "not enough free space to stage in {}: need {} MiB, {} MiB free; free {} MiB there",
                dir.display(),
                want.div_ceil(1 << 20),
                available >> 20,
                (want - available).div_ceil(1 << 20)
            ),
        ));
    }
    Ok(())
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
pub fn available_space(dir: &Path) -> Result<u64> {
    crate::support::fsutil::free_bytes(dir).map_err(|e| {
        Error::new(
            Exit::InstallFailed,
            format!("statvfs {}: {e}", dir.display()),
        )
    })
}

pub struct StagingSink {
    pub dir: PathBuf,
    /// Where ref entries are looked up (the package cache of the last applied bundle).
    pub base_dirs: Vec<PathBuf>,
    /// Delta entries whose patch is staged and verified only once the whole entry has streamed
    /// past; they are rebuilt in `finish` (patch file, base file).
    deltas: Vec<(Entry, PathBuf, PathBuf)>,
    bases: Option<crate::node::rebuild::BaseIndex>,
}

fn stage_error(path: &Path, e: std::io::Error) -> Error {
    Error::new(
        Exit::InstallFailed,
        format!(
            "staging {}: {e}; check free space in state_dir",
            path.display()
        ),
    )
}

impl StagingSink {
    /// Create a fresh staging directory (removing a leftover one of the same name).
    pub fn create(dir: PathBuf, base_dirs: Vec<PathBuf>) -> Result<StagingSink> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| stage_error(&dir, e))?;
        }
        create_dir_mode(&dir, 0o700).map_err(|e| stage_error(&dir, e))?;
        Ok(StagingSink {
            dir,
            base_dirs,
            deltas: Vec::new(),
            bases: None,
        })
    }

    fn create_file(&self, name: &str) -> Result<(PathBuf, File)> {
        format::check_entry_name(name).map_err(|m| Error::new(Exit::Integrity, m))?;
        let path = self.dir.join(name);
        if let Some(parent) = path.parent() {
            create_dir_mode(parent, 0o700).map_err(|e| stage_error(parent, e))?;
        }
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| stage_error(&path, e))?;
        Ok((path, f))
    }

    /// A ref entry: copy the file with that sha256 from the previous bundle's cache.
    fn stage_ref(&self, entry: &Entry) -> Result<()> {
        for base in &self.base_dirs {
            let candidate = base.join(&entry.name);
            if let Ok(mut src) = File::open(&candidate) {
                let (path, mut dst) = self.create_file(&entry.name)?;
                let sum = copy_hashing(&mut src, &mut dst).map_err(|e| stage_error(&path, e))?;
                if sum == entry.sha256 {
                    return Ok(());
                }
                std::fs::remove_file(&path).map_err(|e| stage_error(&path, e))?;
            }
        }
        Err(no_base(entry, "this node does not hold it"))
    }

    /// A delta entry: check the node holds its base, then keep the patch in the staging dir; it
    /// is applied in `finish`, after the verifier has checked the patch's sha256.
    fn stage_delta(&mut self, entry: &Entry, data: &mut dyn Read) -> Result<()> {
        let bases = self
            .bases
            .get_or_insert_with(|| crate::node::rebuild::BaseIndex::load(&self.base_dirs));
        let base = entry
            .base_sha256
            .and_then(|b| bases.find(&b, None).map(Path::to_path_buf))
            .ok_or_else(|| no_base(entry, "this node does not hold its base"))?;
        let patch = self
            .dir
            .join(format!(".edgepatch-delta-{}", self.deltas.len()));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&patch)
            .map_err(|e| stage_error(&patch, e))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = data
                .read(&mut buf)
                .map_err(|e| Error::new(Exit::Integrity, format!("entry {}: {e}", entry.name)))?;
            if n == 0 {
                break;
            }
            f.write_all(&buf[..n]).map_err(|e| stage_error(&patch, e))?;
        }
        self.deltas.push((entry.clone(), patch, base));
        Ok(())
    }

    /// Rebuild every delta entry from its verified patch and its base, checking the result.
    fn rebuild_deltas(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        let count = self.deltas.len();
        for (entry, patch, base) in std::mem::take(&mut self.deltas) {
            // A cache file that rotted on disk is the node's problem, not the bundle's.
            let sum =
                crate::node::rebuild::file_sha256(&base).map_err(|e| stage_error(&base, e))?;
            if Some(sum) != entry.base_sha256 {
                return Err(no_base(&entry, "its cached base changed on disk"));
            }
            let (path, out) = self.create_file(&entry.name)?;
            let rebuilt = crate::node::rebuild::rebuild(&entry, &patch, &base, &self.dir, out);
            let _ = std::fs::remove_file(&patch);
            match rebuilt {
                Ok(()) => {}
                Err(crate::bundle::delta::DeltaError::Corrupt(m)) => {
                    return Err(Error::new(
                        Exit::Integrity,
                        format!("delta {}: {m}", entry.name),
                    ))
                }
                Err(crate::bundle::delta::DeltaError::Base(m)) => {
                    return Err(no_base(&entry, &format!("reading its base failed: {m}")))
                }
                Err(crate::bundle::delta::DeltaError::Io(e)) => return Err(stage_error(&path, e)),
            }
            crate::support::testhook::pause_point("staging");
        }
        if count > 0 {
            log::info!(
                "rebuilt {count} file(s) from deltas in {} ms; agent peak RSS {} kB",
                started.elapsed().as_millis(),
                crate::support::fsutil::peak_rss_kb().unwrap_or(0)
            );
        }
        Ok(())
    }

    /// Stage ref entries and rebuild delta entries (the verifier has checked every payload byte
    /// by now), then write the raw manifest beside the payload and fsync the directory's top.
    pub fn finish(&mut self, manifest_bytes: &[u8]) -> Result<()> {
        let manifest = Manifest::parse(manifest_bytes)?;
        for e in manifest.entries.iter().filter(|e| e.kind == EntryKind::Ref) {
            if !self.dir.join(&e.name).exists() {
                self.stage_ref(e)?;
            }
        }
        self.rebuild_deltas()?;
        let p = self.dir.join(MANIFEST_FILE);
        crate::support::fsutil::write_atomic(&p, manifest_bytes, false)
            .map_err(|e| stage_error(&p, e))?;
        sync_dir(&self.dir).map_err(|e| stage_error(&self.dir, e))
    }
}

/// The node cannot rebuild `entry` from its package cache: defer, and say what to do.
fn no_base(entry: &Entry, why: &str) -> Error {
    let what = if entry.kind == EntryKind::Ref {
        "a reference to the base bundle"
    } else {
        "a delta against the base bundle"
    };
    Error::new(
        Exit::Deferred,
        format!("{} is {what}, but {why}; fetch the full bundle", entry.name),
    )
}

fn copy_hashing(src: &mut dyn Read, dst: &mut File) -> std::io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
    }
    dst.sync_all()?;
    Ok(h.finalize().into())
}

impl EntrySink for StagingSink {
    /// Before the first byte is written: the whole bundle must fit (exit 5 when it does not, so
    /// the node tries again later instead of filling its disk half way through).
    fn begin(&mut self, manifest: &Manifest) -> Result<()> {
        check_space(
            &self.dir,
            staging_need(manifest),
            available_space(&self.dir)?,
        )
    }

    fn entry(&mut self, entry: &Entry, data: &mut dyn Read) -> Result<()> {
        match entry.kind {
            EntryKind::File => {
                let (path, mut f) = self.create_file(&entry.name)?;
                // The EntryReader checks size and sha256 as the bytes pass; errors there are
                // integrity errors, errors writing are ours.
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = data.read(&mut buf).map_err(|e| {
                        Error::new(Exit::Integrity, format!("entry {}: {e}", entry.name))
                    })?;
                    if n == 0 {
                        break;
                    }
                    f.write_all(&buf[..n]).map_err(|e| stage_error(&path, e))?;
                }
                f.sync_all().map_err(|e| stage_error(&path, e))?;
                crate::support::testhook::pause_point("staging");
                Ok(())
            }
            EntryKind::Ref => self.stage_ref(entry),
            EntryKind::Delta => self.stage_delta(entry, data),
        }
    }
}

/// Check an already staged directory against its manifest (used when resuming after a crash).
pub fn recheck(dir: &Path) -> Result<Manifest> {
    let mpath = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&mpath).map_err(|e| stage_error(&mpath, e))?;
    let manifest = Manifest::parse(&bytes)?;
    refuse_extraneous(dir, &manifest)?;
    for e in &manifest.entries {
        let p = dir.join(&e.name);
        let mut f = File::open(&p).map_err(|err| stage_error(&p, err))?;
        let mut h = Sha256::new();
        let n =
            std::io::copy(&mut f, &mut HashWriter(&mut h)).map_err(|err| stage_error(&p, err))?;
        let sum: [u8; 32] = h.finalize().into();
        if n != e.size || sum != e.sha256 {
            return Err(Error::new(
                Exit::Integrity,
                format!("staged {} changed since verification", p.display()),
            ));
        }
    }
    Ok(manifest)
}

/// Only what the signed manifest names may be in a staged directory: a file that appeared there
/// (planted, or left by something else) would be offered to the package manager. Regular files
/// and directories only; no symlinks, devices, fifos or setuid/setgid bits.
pub fn refuse_extraneous(dir: &Path, manifest: &Manifest) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| stage_error(&d, e))?;
        for item in rd {
            let item = item.map_err(|e| stage_error(&d, e))?;
            let name = format!("{prefix}{}", item.file_name().to_string_lossy());
            let path = item.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| stage_error(&path, e))?;
            let bad = |why: &str| {
                Err(Error::new(
                    Exit::Integrity,
                    format!("staged {}: {why}; not installing", path.display()),
                ))
            };
            if meta.permissions().mode() & 0o7000 != 0 {
                return bad("has setuid, setgid or sticky bits");
            }
            if meta.is_dir() {
                stack.push((path, format!("{name}/")));
            } else if !meta.is_file() {
                return bad("is not a regular file");
            } else if name != MANIFEST_FILE && !manifest.entries.iter().any(|e| e.name == name) {
                return bad("is not in the signed manifest");
            }
        }
    }
    Ok(())
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_space_defers_with_what_to_free() {
        let dir = Path::new("/var/lib/edgepatch/staging/7");
        check_space(dir, 100 << 20, 200 << 20).unwrap();
        let e = check_space(dir, 100 << 20, 50 << 20).unwrap_err();
        assert_eq!(e.exit, Exit::Deferred);
        assert!(e.msg.contains("need 116 MiB, 50 MiB free"), "{}", e.msg);
        assert!(check_space(dir, u64::MAX, u64::MAX - 1).is_err());
    }

    #[test]
    fn only_manifest_files_may_be_in_a_staged_dir() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ep-stage-extra-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pool")).unwrap();
        std::fs::write(dir.join("pool/a.deb"), b"abc").unwrap();
        std::fs::write(dir.join(MANIFEST_FILE), b"m").unwrap();
        let m = Manifest {
            entries: vec![Entry {
                name: "pool/a.deb".into(),
                kind: EntryKind::File,
                encoding: format::Encoding::Raw,
                size: 3,
                stored: 3,
                sha256: format::sha256(b"abc"),
                base_sha256: None,
                patch_sha256: None,
            }],
            ..Manifest::default()
        };
        refuse_extraneous(&dir, &m).unwrap();
        let p = dir.join("pool/a.deb");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o4755)).unwrap();
        assert!(refuse_extraneous(&dir, &m).is_err(), "setuid");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("pool/b.deb")).unwrap();
        let e = refuse_extraneous(&dir, &m).unwrap_err();
        assert!(e.msg.contains("not a regular file"), "{}", e.msg);
        std::fs::remove_file(dir.join("pool/b.deb")).unwrap();
        std::fs::write(dir.join("pool/evil.deb"), b"x").unwrap();
        let e = refuse_extraneous(&dir, &m).unwrap_err();
        assert!(e.msg.contains("not in the signed manifest"), "{}", e.msg);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
