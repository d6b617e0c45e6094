//! Staging: while a bundle streams through verification, each entry is written into a private
//! 0700 directory under state_dir. Only this copy is used afterwards, so a USB stick or drop dir
//! that changes after verification cannot change what gets installed.
//!
//! Files are created with O_EXCL|O_NOFOLLOW and mode 0644 inside the 0700 directory (so the package
//! manager can read them, nobody else can reach them); no setuid, setgid or device files are ever
//! written. The staged directory becomes the package cache of the applied bundle after success.

use crate::error::{Error, Exit, Result};
use crate::format::{self, Entry, EntryKind, Manifest};
use crate::fsutil::{create_dir_mode, sync_dir};
use crate::verify::EntrySink;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where the raw manifest of a staged bundle is kept (entry names cannot start with a dot).
pub const MANIFEST_FILE: &str = ".edgepatch-manifest";

pub struct StagingSink {
    pub dir: PathBuf,
    /// Where ref entries are looked up (the package cache of the last applied bundle).
    pub base_dirs: Vec<PathBuf>,
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
        Ok(StagingSink { dir, base_dirs })
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
        Err(Error::new(
            Exit::Deferred,
            format!(
                "{} is a reference to the base bundle, which this node does not hold; fetch the full bundle",
                entry.name
            ),
        ))
    }

    /// Write the raw manifest beside the payload and fsync the directory tree's top.
    pub fn finish(&self, manifest_bytes: &[u8]) -> Result<()> {
        let p = self.dir.join(MANIFEST_FILE);
        crate::fsutil::write_atomic(&p, manifest_bytes, false).map_err(|e| stage_error(&p, e))?;
        sync_dir(&self.dir).map_err(|e| stage_error(&self.dir, e))
    }
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
                crate::testhook::pause_point("staging");
                Ok(())
            }
            EntryKind::Ref => self.stage_ref(entry),
            EntryKind::Delta => Err(Error::new(
                Exit::Deferred,
                format!(
                    "{} is a binary delta; this agent build cannot apply deltas",
                    entry.name
                ),
            )),
        }
    }
}

/// Check an already staged directory against its manifest (used when resuming after a crash).
pub fn recheck(dir: &Path) -> Result<Manifest> {
    let mpath = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&mpath).map_err(|e| stage_error(&mpath, e))?;
    let manifest = Manifest::parse(&bytes)?;
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
