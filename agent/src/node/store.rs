//! Bundles on the node: `state_dir/incoming/` holds complete bundles (`*.epb`; downloads in
//! progress are `*.partial` and never looked at), `state_dir/quarantine/` holds bundles that
//! failed verification, each with a `.reason` file. Nothing is ever deleted silently: when the
//! quarantine passes its cap the oldest entry is removed and that is logged.

use crate::bundle::format::Manifest;
use crate::bundle::keys::TrustedKey;
use crate::support::error::{Error, Exit, Result};
use std::path::{Path, PathBuf};

pub const QUARANTINE_CAP: usize = 8;
/// Where the raw manifest of a staged bundle is kept (entry names cannot start with a dot).
pub const MANIFEST_FILE: &str = ".edgepatch-manifest";

pub fn incoming_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("incoming")
}

pub fn quarantine_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("quarantine")
}

/// The complete bundle in incoming/ with the highest sequence that is signed by a trusted key and
/// meant for `variant`. Bundles that fail even this first look are left for `apply` to quarantine.
pub fn newest_complete(state_dir: &Path, trusted: &[TrustedKey], variant: &str) -> Option<PathBuf> {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut fallback = None;
    let entries = std::fs::read_dir(incoming_dir(state_dir)).ok()?;
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.extension().is_none_or(|x| x != "epb") {
            continue;
        }
        let head = crate::support::fsutil::open_bundle(&path)
            .ok()
            .and_then(|mut r| crate::bundle::verify::authenticate(&mut r, trusted).ok());
        match head {
            Some(v) if v.manifest.variant == variant => {
                if best.as_ref().is_none_or(|(s, _)| v.manifest.sequence > *s) {
                    best = Some((v.manifest.sequence, path));
                }
            }
            Some(_) => {}
            None => fallback = Some(path),
        }
    }
    best.map(|(_, p)| p).or(fallback)
}

/// Is `path` a regular file under incoming/ (downloads, import copies), i.e. one that fetch or
/// import put there? Only those are ever moved into quarantine; a file a user named stays put.
pub fn is_agent_owned(state_dir: &Path, path: &Path) -> bool {
    let regular = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file());
    let parent = path.parent().and_then(|p| std::fs::canonicalize(p).ok());
    let incoming = std::fs::canonicalize(incoming_dir(state_dir)).ok();
    match (parent, incoming) {
        (Some(p), Some(i)) => regular && p.starts_with(i),
        _ => false,
    }
}

/// Set a bad bundle aside with the reason. A file in incoming/ (the agent's own) is moved into
/// quarantine/; any other file (a path the operator named, a USB stick) is never moved or
/// copied, only its reason is recorded. Returns the quarantined file or the reason file, and
/// whether the bundle was moved.
pub fn quarantine(
    state_dir: &Path,
    bundle: &Path,
    reason: &str,
    now: u64,
) -> Result<(PathBuf, bool)> {
    let qdir = quarantine_dir(state_dir);
    crate::support::fsutil::create_dir_mode(&qdir, 0o700)
        .map_err(|e| Error::io(Exit::Usage, &qdir, e))?;
    let name = bundle
        .file_name()
        .map(|n| crate::support::text::safe_name(&n.to_string_lossy()))
        .unwrap_or_else(|| "bundle".into());
    let target = qdir.join(format!("{now}-{name}"));
    let moved = is_agent_owned(state_dir, bundle) && {
        match std::fs::rename(bundle, &target) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("cannot move {} into quarantine: {e}", bundle.display());
                false
            }
        }
    };
    let reason_file = qdir.join(format!("{now}-{name}.reason"));
    let text = format!(
        "source {}\nreason {reason}\ntime {now}\nmoved {}\n",
        bundle.display(),
        if moved {
            "yes"
        } else {
            "no (left where it was)"
        }
    );
    crate::support::fsutil::write_atomic(&reason_file, text.as_bytes(), false)
        .map_err(|e| Error::io(Exit::Usage, &reason_file, e))?;
    prune(&qdir);
    Ok(if moved {
        (target, true)
    } else {
        (reason_file, false)
    })
}

/// The words an error adds about where a bad bundle went.
pub fn quarantine_note(q: &Result<(PathBuf, bool)>) -> String {
    match q {
        Ok((p, true)) => format!(" (bundle quarantined as {})", p.display()),
        Ok((p, false)) => format!(" (file left in place; reason in {})", p.display()),
        Err(e) => format!("; quarantine failed: {e}"),
    }
}

fn prune(qdir: &Path) {
    let mut reasons = list_quarantine_in(qdir);
    while reasons.len() > QUARANTINE_CAP {
        let oldest = reasons.remove(0);
        log::warn!("quarantine holds more than {QUARANTINE_CAP}; removing oldest {oldest}");
        let _ = std::fs::remove_file(qdir.join(&oldest));
        let _ = std::fs::remove_file(qdir.join(format!("{oldest}.reason")));
    }
}

fn list_quarantine_in(qdir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(qdir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".reason"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    // Names start with the unix time, so a numeric sort is oldest first.
    names.sort_unstable_by_key(|n| {
        (
            n.split('-')
                .next()
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0),
            n.clone(),
        )
    });
    names
}

/// Quarantined bundles, oldest first (file names in quarantine/).
pub fn list_quarantine(state_dir: &Path) -> Vec<String> {
    list_quarantine_in(&quarantine_dir(state_dir))
}

/// The package cache of the bundle last applied: the staged directory kept after success.
pub fn cache_current(state_dir: &Path) -> PathBuf {
    state_dir.join("cache/current")
}

pub fn cache_previous(state_dir: &Path) -> PathBuf {
    state_dir.join("cache/previous")
}

/// Manifest of a cache dir (None if absent or damaged).
pub fn cached_manifest(dir: &Path) -> Option<Manifest> {
    let bytes = std::fs::read(dir.join(MANIFEST_FILE)).ok()?;
    Manifest::parse(&bytes).ok()
}
