//! `import DIR`: take a bundle from a USB stick or an rsync drop directory, with the WAN down.
//!
//! - Only `*.epb` regular files are looked at; `*.partial`, rsync's `.name.XXXXXX` temp files and
//!   every other dot file are ignored, so a drop that is still being written is never read.
//! - Each candidate's signed head is checked first (cheap); bundles for another variant, older
//!   than what is installed, or expired are skipped and listed.
//! - The newest due bundle is copied into `state_dir/incoming/.import/` through a tee that feeds
//!   `verify_stream`, so every byte is verified while it is copied (one read of the medium), then
//!   fsynced and renamed into `incoming/`. Only the copy is used afterwards.
//! - The medium is only ever read: it may be mounted read-only. A bad bundle is reported and a
//!   copy goes to quarantine/ (with a `.reason`); the original stays on the medium.

use crate::bundle::verify::{self, NodeFacts};
use crate::node::ctx::{Ctx, RunInfo};
use crate::node::outcome::finish;
use crate::node::state::Installed;
use crate::node::store;
use crate::support::clock::Ratchet;
use crate::support::error::{Error, Exit, Result};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const SPACE_MARGIN: u64 = 1 << 20;
const NO_DUE: &str = "no due bundle";

/// Lock, scan, record the result.
pub fn command(ctx: &Ctx, dir: &Path) -> Result<String> {
    let _lock = crate::node::lock::acquire_transfer(&ctx.config.state_dir)?;
    let mut info = RunInfo::default();
    // A stick (or drop) holding only bundles not for this node: exit 4, so the technician's
    // wrong stick shows as `not-applicable` in status, not as `ok`. (`run`'s scans of its
    // import_paths keep 0: a drop with the installed bundle in it is the steady state.)
    let result = scan(ctx, dir, &mut info).and_then(|(msg, nothing_for_node)| {
        if nothing_for_node {
            Err(Error::new(
                Exit::NotApplicable,
                format!("{msg}; nothing on it for this node"),
            ))
        } else {
            Ok(msg)
        }
    });
    finish(ctx, "import", &result, &info);
    result
}

/// A bundle file name `import` will look at.
pub fn is_candidate(name: &str) -> bool {
    !name.starts_with('.') && name.ends_with(".epb") && name.len() > 4
}

/// Reads through to the copy while verification reads.
struct Tee<R, W> {
    inner: R,
    out: W,
    copied: u64,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        self.copied += n as u64;
        Ok(n)
    }
}

/// Scan `dir` with the lock held. Returns the account and whether every bundle there was one
/// not for this node (skipped, none imported).
pub fn scan(ctx: &Ctx, dir: &Path, info: &mut RunInfo) -> Result<(String, bool)> {
    let sd = &ctx.config.state_dir;
    let rd = std::fs::read_dir(dir).map_err(|e| {
        Error::usage(format!(
            "import {}: {e}; is the stick mounted?",
            dir.display()
        ))
    })?;
    let installed = Installed::load(sd)?;
    let ratchet = Ratchet::new(sd);
    let node = NodeFacts {
        variant: &ctx.config.variant,
        installed_sequence: installed.as_ref().map(|i| i.sequence),
        now: ratchet.now(ctx.clock),
    };
    let mut names: Vec<(String, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, _)| is_candidate(n))
        .collect();
    names.sort_unstable();

    let mut skipped: Vec<String> = Vec::new();
    let mut bad: Vec<Error> = Vec::new();
    let mut due: Vec<(u64, String, PathBuf, [u8; 32])> = Vec::new();
    for (name, path) in names {
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => {}
            _ => {
                skipped.push(format!("{name} (not a regular file)"));
                continue;
            }
        }
        let head = crate::support::fsutil::open_bundle(&path)
            .and_then(|mut r| verify::authenticate(&mut r, ctx.trusted));
        let head = match head {
            Ok(h) => h,
            Err(e) if matches!(e.exit, Exit::Integrity | Exit::Authenticity) => {
                bad.push(report_bad(ctx, &path, e));
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Err(e) = verify::check_applicable(&head.manifest, &node) {
            log::info!("{}: skipped: {}", path.display(), e.msg);
            skipped.push(format!("{name} ({})", e.msg));
            continue;
        }
        due.push((head.manifest.sequence, name, path, head.manifest_sha256));
    }
    // Newest first; a copy that fails verification falls back to the next one.
    due.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));

    let mut done = String::from(NO_DUE);
    let incoming = store::incoming_dir(sd);
    for (seq, name, path, manifest_sha) in due {
        info.sequence = Some(seq);
        let present = std::fs::read_dir(&incoming).ok().and_then(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "epb"))
                .find(|p| {
                    crate::support::fsutil::open_bundle(p)
                        .ok()
                        .and_then(|mut r| verify::authenticate(&mut r, ctx.trusted).ok())
                        .is_some_and(|v| v.manifest_sha256 == manifest_sha)
                })
        });
        if let Some(p) = present {
            done = format!("sequence {seq} already in {}", p.display());
            break;
        }
        match copy_verified(ctx, &path, &name, &node) {
            Ok((cycle, dest)) => {
                done = format!(
                    "imported cycle {cycle} sequence {seq} from {} into {}",
                    path.display(),
                    dest.display()
                );
                info.cycle = Some(cycle);
                break;
            }
            Err(e) if matches!(e.exit, Exit::Integrity | Exit::Authenticity) => bad.push(e),
            Err(e) => return Err(e),
        }
    }
    let mut msg = format!("{}: {done}", dir.display());
    if !skipped.is_empty() {
        msg += &format!("; skipped {}", skipped.join(", "));
    }
    match bad.first() {
        None => {
            let nothing_for_node = info.cycle.is_none() && done == NO_DUE && !skipped.is_empty();
            Ok((msg, nothing_for_node))
        }
        Some(first) => Err(Error::new(
            first.exit,
            format!("{msg}; {} bad bundle(s), first: {}", bad.len(), first.msg),
        )),
    }
}

/// Copy while verifying into incoming/.import/, then rename into incoming/. Returns (cycle, path).
fn copy_verified(ctx: &Ctx, src: &Path, name: &str, node: &NodeFacts) -> Result<(String, PathBuf)> {
    let sd = &ctx.config.state_dir;
    let incoming = store::incoming_dir(sd);
    let tmp_dir = incoming.join(".import");
    crate::support::fsutil::create_dir_mode(&tmp_dir, 0o700)
        .map_err(|e| Error::io(Exit::Usage, &tmp_dir, e))?;
    let size = std::fs::metadata(src)
        .map_err(|e| Error::io(Exit::Usage, src, e))?
        .len();
    if let Ok(free) = crate::support::fsutil::free_bytes(&tmp_dir) {
        if free < size + SPACE_MARGIN {
            return Err(Error::new(
                Exit::Deferred,
                format!(
                    "{}: {free} bytes free, {} needs {size}; free space in state_dir",
                    incoming.display(),
                    src.display()
                ),
            ));
        }
    }
    let tmp = tmp_dir.join(name);
    let input = File::open(src).map_err(|e| Error::io(Exit::Usage, src, e))?;
    let out = File::create(&tmp).map_err(|e| Error::io(Exit::Usage, &tmp, e))?;
    let mut tee = Tee {
        inner: io::BufReader::with_capacity(256 * 1024, input),
        out: BufWriter::with_capacity(256 * 1024, out),
        copied: 0,
    };
    let verified = match verify::verify_stream(&mut tee, ctx.trusted, node, &mut verify::Discard) {
        Ok(v) => v,
        Err(e) => {
            drop(tee);
            let e = Error::new(e.exit, format!("{}: {}", src.display(), e.msg));
            return Err(quarantine(ctx, src, Some(&tmp), e));
        }
    };
    let copied = tee.copied;
    let file = tee
        .out
        .into_inner()
        .map_err(|e| Error::io(Exit::Usage, &tmp, e.into_error()))?;
    file.sync_all()
        .map_err(|e| Error::io(Exit::Usage, &tmp, e))?;
    drop(file);
    let dest = incoming.join(name);
    std::fs::rename(&tmp, &dest).map_err(|e| Error::io(Exit::Usage, &dest, e))?;
    crate::support::fsutil::sync_dir(&incoming)
        .map_err(|e| Error::io(Exit::Usage, &incoming, e))?;
    let ratchet = Ratchet::new(sd);
    if let Err(e) = ratchet.observe_signed(verified.manifest.created, ctx.clock) {
        log::warn!("cannot record trusted time: {e}");
    }
    log::info!(
        "{}: {copied} bytes verified and copied to {}",
        src.display(),
        dest.display()
    );
    Ok((verified.manifest.cycle, dest))
}

/// A bad bundle on the medium: never moved, never copied (a stick of bad bundles must not fill
/// state_dir); its reason is recorded in quarantine/ and the error says so.
fn report_bad(ctx: &Ctx, src: &Path, e: Error) -> Error {
    let e = Error::new(e.exit, format!("{}: {}", src.display(), e.msg));
    quarantine(ctx, src, None, e)
}

/// Record why `src` was refused; `partial` is the agent's own incomplete copy, which is removed.
fn quarantine(ctx: &Ctx, src: &Path, partial: Option<&Path>, e: Error) -> Error {
    if let Some(p) = partial {
        let _ = std::fs::remove_file(p);
    }
    let now = Ratchet::new(&ctx.config.state_dir).now(ctx.clock);
    let q = store::quarantine(&ctx.config.state_dir, src, &e.msg, now);
    Error::new(e.exit, format!("{}{}", e.msg, store::quarantine_note(&q)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates() {
        assert!(is_candidate("3-c3.epb"));
        assert!(!is_candidate("3-c3.epb.partial"));
        assert!(!is_candidate(".3-c3.epb.Xa81kz"), "rsync temp file");
        assert!(!is_candidate(".hidden.epb"));
        assert!(!is_candidate(".epb"));
        assert!(!is_candidate("notes.txt"));
    }
}
