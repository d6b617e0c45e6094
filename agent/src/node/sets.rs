//! Rollback sets (both families): before an install changes anything, every installed package it
//! will upgrade, downgrade or remove is repacked (`preserve`) into `state_dir/rollback/pool/`, and
//! `state_dir/rollback/SEQ-CYCLE.set` records the cycle, the pre-patch versions, the preserved
//! files (`name=version=file=sha256`: a copy that changed since is not installed) and the
//! packages it newly installs, and the files kept whole beside the packages (`whole`, see
//! [`crate::node::whole`]). One set per applied cycle, `rollback_keep` kept;
//! `rollback` steps back through them newest first.

use crate::node::ctx::Ctx;
use crate::node::pkg::{Change, PackageManager};
use crate::support::error::{Error, Exit, Result};
use crate::support::kv::Record;
use std::path::{Path, PathBuf};

/// Package versions (None: not installed), kept as `name=version,...` (`-` for none).
pub type Versions = Vec<(String, Option<String>)>;
pub fn encode_versions(v: &[(String, Option<String>)]) -> String {
    v.iter()
        .map(|(n, ver)| format!("{n}={}", ver.as_deref().unwrap_or("-")))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn decode_versions(s: &str) -> Versions {
    s.split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(n, v)| (n.to_string(), (v != "-").then(|| v.to_string())))
        .collect()
}

pub fn dir(sd: &Path) -> PathBuf {
    sd.join("rollback")
}

pub fn pool(sd: &Path) -> PathBuf {
    dir(sd).join("pool")
}

/// Repack what `changes` will replace or remove, then write the set (not yet `applied`).
/// `pre` (the journal's pre-patch versions) is merged in, so the set alone can undo the install.
pub fn preserve(
    ctx: &Ctx,
    pm: &dyn PackageManager,
    cycle: &str,
    sequence: u64,
    changes: &[Change],
    pre: &[(String, Option<String>)],
) -> Result<PathBuf> {
    let sd = ctx.state_dir();
    let pool = pool(sd);
    for d in [dir(sd), pool.clone()] {
        crate::support::fsutil::create_dir_mode(&d, 0o700)
            .map_err(|e| Error::io(Exit::InstallFailed, &d, e))?;
    }
    let (mut versions, mut files, mut new, mut bytes): (Versions, Vec<String>, Vec<&str>, u64) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    let (mut conffiles, mut dist_before, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    for c in changes {
        let Some(old) = &c.old else {
            new.push(&c.name);
            versions.push((c.name.clone(), None));
            continue;
        };
        let (name, arch) = match c.name.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (c.name.as_str(), None),
        };
        let mut r = pm.repack(name, arch, &pool)?;
        // A cached copy is reused only when a kept set recorded exactly these bytes; one left by
        // a failed attempt (or put there by someone else) is packed again.
        let mut sum = crate::node::rebuild::file_sha256(&r.path)
            .map_err(|e| Error::io(Exit::InstallFailed, &r.path, e))?;
        if r.reused && !recorded(sd, &r.path, &crate::node::preserve::hex(&sum)) {
            log::info!(
                "{}: not a copy a kept set recorded; packing it again",
                r.path.display()
            );
            std::fs::remove_file(&r.path)
                .map_err(|e| Error::io(Exit::InstallFailed, &r.path, e))?;
            r = pm.repack(name, arch, &pool)?;
            sum = crate::node::rebuild::file_sha256(&r.path)
                .map_err(|e| Error::io(Exit::InstallFailed, &r.path, e))?;
        }
        if r.version != *old {
            return Err(Error::new(
                Exit::InstallFailed,
                format!("{name} is at {}, {} said {old}", r.version, pm.name()),
            ));
        }
        if files.is_empty() {
            crate::support::testhook::pause_point("preserved-one");
        }
        let file = r.path.file_name().unwrap_or_default().to_string_lossy();
        // The sha256 of the copy as it is now: restore installs only these bytes.
        files.push(format!(
            "{name}={old}={file}={}",
            crate::node::preserve::hex(&sum)
        ));
        for (path, md5) in &r.conffiles {
            conffiles.push(format!("{name} {} {path} {md5}", r.arch));
            if dist_file(&ctx.config.root, path).is_some_and(|p| p.exists()) {
                dist_before.push(path.clone());
            }
        }
        for (path, config) in &r.whole {
            let (item, size) =
                crate::node::whole::keep(&ctx.config.root, &pool, name, path, *config)?;
            whole.push(item);
            bytes += size;
        }
        bytes += r.bytes;
        versions.push((name.to_string(), Some(old.clone())));
    }
    // (A plain NAME is left out where the plan keys it per arch, NAME.ARCH: rpm multilib.)
    const ARCHES: [&str; 11] = [
        "x86_64", "i686", "i586", "i386", "noarch", "aarch64", "armv7hl", "armhfp", "ppc64le",
        "s390x", "riscv64",
    ];
    let per_arch = |m: &str, n: &str| {
        pm.name() == "dnf"
            && m.strip_prefix(n)
                .and_then(|r| r.strip_prefix('.'))
                .is_some_and(|a| ARCHES.contains(&a))
    };
    for (n, v) in pre {
        if !versions.iter().any(|(m, _)| m == n || per_arch(m, n)) {
            versions.push((n.clone(), v.clone()));
        }
    }
    let safe: String = cycle
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = dir(sd).join(format!("{sequence}-{safe}.set"));
    let mut r = Record::new();
    r.set("cycle", cycle)
        .set("sequence", sequence)
        .set("pre", encode_versions(&versions))
        .set("files", files.join(","))
        .set("new", new.join(","))
        .set("conffiles", conffiles.join("\t"))
        .set("dist_before", dist_before.join("\t"))
        .set("whole", whole.join("\t"))
        .set("bytes", bytes);
    r.save(&path)
        .map_err(|e| Error::io(Exit::InstallFailed, &path, e))?;
    Ok(path)
}

pub fn load(path: &str) -> Option<Record> {
    Record::load(Path::new(path)).ok().flatten()
}

/// All sets, oldest sequence first: (path, record).
pub fn list(sd: &Path) -> Vec<(PathBuf, Record)> {
    let mut v: Vec<(PathBuf, Record)> = std::fs::read_dir(dir(sd))
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let r = (p.extension()? == "set").then(|| Record::load(&p).ok().flatten())??;
            Some((p, r))
        })
        .collect();
    v.sort_unstable_by_key(|(p, r)| (r.num("sequence").unwrap_or(0), p.clone()));
    v
}

fn live(r: &Record) -> bool {
    r.get("applied") == Some("yes") && r.get("rolled_back") != Some("yes")
}

/// The set the next `rollback` undoes: the newest applied one not rolled back.
pub fn next(sd: &Path) -> Option<(PathBuf, Record)> {
    list(sd).into_iter().rev().find(|(_, r)| live(r))
}

/// One preserved file of a set: `name=version=file=sha256` (sets written before the sha256
/// was recorded have three fields).
struct PoolEntry<'a> {
    name: &'a str,
    version: &'a str,
    file: &'a str,
    sha256: Option<&'a str>,
}

fn entries(set: &Record) -> impl Iterator<Item = PoolEntry<'_>> {
    set.get("files").unwrap_or("").split(',').filter_map(|f| {
        let mut p = f.splitn(4, '=');
        Some(PoolEntry {
            name: p.next()?,
            version: p.next()?,
            file: p.next().filter(|f| !f.is_empty())?,
            sha256: p.next(),
        })
    })
}

/// Does a kept set name pool file `path` with sha256 `hex`?
fn recorded(sd: &Path, path: &Path, hex: &str) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    list(sd)
        .iter()
        .any(|(_, r)| entries(r).any(|e| e.file == name && e.sha256 == Some(hex)))
}

/// The preserved file of `name` at `version` in `set`: Ok(None) when the set has none, Err
/// naming the file when it is missing or its bytes are not the ones preserved (never installed).
pub fn file_for(
    sd: &Path,
    set: &Record,
    name: &str,
    version: &str,
) -> std::result::Result<Option<PathBuf>, String> {
    let Some(e) = entries(set).find(|e| e.name == name && e.version == version) else {
        return Ok(None);
    };
    let path = pool(sd).join(e.file);
    let Some(want) = e.sha256 else {
        return Ok(Some(path));
    };
    match crate::node::rebuild::file_sha256(&path) {
        Ok(sum) if crate::node::preserve::hex(&sum) == want => Ok(Some(path)),
        Ok(_) => Err(format!(
            "rollback copy {} changed since it was preserved (sha256 mismatch), not installed",
            path.display()
        )),
        Err(err) => Err(format!("rollback copy {}: {err}", path.display())),
    }
}

/// After `name` was put back from `set`'s repacked file: write its pre-patch conffile md5s back
/// into the dpkg status (see `preserve::db::set_conffile_md5s`). A failure is only a warning:
/// the files themselves are right, only a later upgrade's "modified by the admin" test is not.
pub fn restore_conffile_records(root: &Path, set: &Record, name: &str) {
    let mut arch = None;
    let mut sums = Vec::new();
    for item in set.get("conffiles").unwrap_or("").split('\t') {
        let w: Vec<&str> = item.split(' ').collect();
        if let [n, a, path, md5] = w.as_slice() {
            if *n == name {
                arch = Some(a.to_string());
                sums.push((path.to_string(), md5.to_string()));
            }
        }
    }
    let Some(arch) = arch else { return };
    if let Err(e) = crate::node::preserve::db::set_conffile_md5s(root, name, &arch, &sums) {
        log::warn!("{name}: {}", e.msg);
    }
}

/// Where dpkg leaves a new version's conffile when it keeps the admin's (`--force-confold`).
fn dist_file(root: &Path, conffile: &str) -> Option<PathBuf> {
    crate::node::preserve::db::resolve(root, &format!("{conffile}.dpkg-dist"), false).ok()
}

/// After `name` was put back from `set`: remove the `.dpkg-dist` files the undone version left
/// beside conffiles the admin had edited (its default text, no longer anyone's), but none that
/// was there before the cycle. Returns the paths removed.
pub fn remove_new_dist_files(root: &Path, set: &Record, name: &str) -> Vec<String> {
    let before: Vec<&str> = set.get("dist_before").unwrap_or("").split('\t').collect();
    let mut removed = Vec::new();
    for item in set.get("conffiles").unwrap_or("").split('\t') {
        let w: Vec<&str> = item.split(' ').collect();
        let [n, _, path, _] = w.as_slice() else {
            continue;
        };
        if *n != name || before.contains(path) {
            continue;
        }
        let Some(dist) = dist_file(root, path) else {
            continue;
        };
        if dist.is_file() && std::fs::remove_file(&dist).is_ok() {
            removed.push(format!("{path}.dpkg-dist"));
        }
    }
    removed
}

/// Pre-patch versions recorded in a set.
pub fn pre(set: &Record) -> Versions {
    decode_versions(set.get("pre").unwrap_or(""))
}

/// Keep the newest `keep` applied sets; drop the rest and every pool file no set names.
pub fn prune(sd: &Path, keep: usize) {
    let sets = list(sd);
    let mut drop = sets
        .iter()
        .filter(|(_, r)| live(r))
        .count()
        .saturating_sub(keep);
    let mut named = Vec::new();
    for (p, r) in &sets {
        if !live(r) || drop > 0 {
            drop -= usize::from(live(r));
            let _ = std::fs::remove_file(p);
            continue;
        }
        named.extend(entries(r).map(|e| e.file.to_string()));
        named.extend(crate::node::whole::pool_files(r));
    }
    for e in std::fs::read_dir(pool(sd)).into_iter().flatten().flatten() {
        if !named.iter().any(|n| *n == *e.file_name().to_string_lossy()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
