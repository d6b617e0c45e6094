//! Files a rollback set keeps whole, beside the repacked package. rpm reads exactly the header's
//! size of each file from a payload, so a repack carries a %config file the admin edited, or any
//! file whose size changed or that is gone, cut or zero-padded to its packaged size; and rpm
//! itself moves %config files aside (`.rpmsave`) or leaves defaults beside them (`.rpmnew`).
//! So before the install each such file (for %config also its `.rpmnew` and `.rpmsave`) is
//! copied into the pool as `file-<sha256>`, with its mode, owner and mtime; after the restore
//! `put_back` writes each back exactly and deletes those that did not exist, whatever rpm did.
//! An edit made after the cycle (neither the pre-patch text nor what the install left) is first
//! kept beside as `PATH.edgepatch-saved` and named: a rollback loses nothing.
//!
//! Set key `whole`: tab-separated items `PACKAGE PATH STATE...` (PATH escaped, see [`esc`]): one
//! STATE for a plain file, three (the file, `.rpmnew`, `.rpmsave`) for %config; a STATE is `-`
//! (absent), `*` (not a regular file: left alone) or `SHA256:MODE:UID:GID:MTIME`.
//! `whole_after`: `PATH SHA256` of each %config as the install left it.

use crate::node::preserve::{check_space, err, hex, TempOut};
use crate::support::error::Result;
use crate::support::kv::Record;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const CONFIG_SUFFIXES: [&str; 3] = ["", ".rpmnew", ".rpmsave"];

/// Escape a path for a set record: `%`, whitespace, `,`, `=` and control bytes as `%XX`.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_control() || matches!(c, ' ' | '%' | ',' | '=') {
            for b in c.to_string().bytes() {
                o += &format!("%{b:02X}");
            }
        } else {
            o.push(c);
        }
    }
    o
}

pub fn unesc(s: &str) -> String {
    let b = s.as_bytes();
    let mut o = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hexval = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hexval) {
            (b'%', Some(v)) => {
                o.push(v);
                i += 3;
            }
            (c, _) => {
                o.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&o).into_owned()
}

/// One item of `whole`: the package, the path, the state of each variant.
struct Item<'a> {
    package: &'a str,
    path: String,
    states: Vec<&'a str>,
}

fn items(set: &Record) -> impl Iterator<Item = Item<'_>> {
    set.get("whole")
        .unwrap_or("")
        .split('\t')
        .filter_map(|item| {
            let mut w = item.split(' ');
            let (package, path) = (w.next()?, w.next()?);
            let states: Vec<&str> = w.collect();
            matches!(states.len(), 1 | 3).then(|| Item {
                package,
                path: unesc(path),
                states,
            })
        })
}

fn suffixes(states: usize) -> &'static [&'static str] {
    &CONFIG_SUFFIXES[..states]
}

fn target(root: &Path, path: &str) -> std::io::Result<PathBuf> {
    crate::node::preserve::db::resolve(root, path, false)
}

/// The paths the set keeps whole (their state after a restore is the set's doing).
pub fn paths(set: &Record) -> Vec<String> {
    items(set).map(|i| i.path).collect()
}

/// The pool files the set's kept files use (so that pruning keeps them).
pub fn pool_files(set: &Record) -> Vec<String> {
    items(set)
        .flat_map(|i| i.states.into_iter())
        .filter_map(|s| s.split(':').next().filter(|h| h.len() == 64))
        .map(|h| format!("file-{h}"))
        .collect()
}

/// Copy `path` (and for a %config, its `.rpmnew` / `.rpmsave`) of `package` into `pool`;
/// returns the `whole` item and the bytes kept.
pub fn keep(
    root: &Path,
    pool: &Path,
    package: &str,
    path: &str,
    config: bool,
) -> Result<(String, u64)> {
    let (mut item, mut bytes) = (format!("{package} {}", esc(path)), 0);
    for sfx in suffixes(if config { 3 } else { 1 }) {
        let full = format!("{path}{sfx}");
        let src = target(root, &full).map_err(|e| err(format!("{full}: {e}")))?;
        item.push(' ');
        item += &match std::fs::symlink_metadata(&src) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "-".to_string(),
            Err(e) => return Err(err(format!("{full}: {e}"))),
            Ok(m) if !m.is_file() => "*".to_string(),
            Ok(m) => {
                let sum = copy_in(&src, pool, m.len())?;
                bytes += m.len();
                format!(
                    "{sum}:{:o}:{}:{}:{}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    m.mtime()
                )
            }
        };
    }
    Ok((item, bytes))
}

/// Stream `src` into `pool/file-<sha256>` (reusing an identical copy); returns the sha256.
fn copy_in(src: &Path, pool: &Path, size: u64) -> Result<String> {
    let sum = hex(&crate::node::rebuild::file_sha256(src)
        .map_err(|e| crate::node::preserve::ioerr(src, e))?);
    let dest = pool.join(format!("file-{sum}"));
    if matches!(crate::node::rebuild::file_sha256(&dest), Ok(s) if hex(&s) == sum) {
        return Ok(sum);
    }
    check_space(pool, size)?;
    let mut f = crate::support::fsutil::open_regular(src)
        .map_err(|e| crate::node::preserve::ioerr(src, e))?;
    let mut t = TempOut::create(&dest)?;
    if stream(&mut f, &mut t.w).map_err(|e| crate::node::preserve::ioerr(src, e))? != sum {
        return Err(err(format!(
            "{} changed while preserving; run again",
            src.display()
        )));
    }
    t.commit()?;
    Ok(sum)
}

/// Copy `from` to `to`; returns the sha256 (hex) of what was copied.
fn stream(from: &mut std::fs::File, to: &mut impl Write) -> std::io::Result<String> {
    let (mut h, mut buf) = (Sha256::new(), vec![0u8; 64 * 1024]);
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&h.finalize()));
        }
        h.update(&buf[..n]);
        to.write_all(&buf[..n])?;
    }
}

/// `whole_after`: each kept %config of `set` as the install left it.
pub fn after(root: &Path, set: &Record) -> String {
    items(set)
        .filter(|i| i.states.len() == 3)
        .filter_map(|i| {
            let sum = crate::node::rebuild::file_sha256(&target(root, &i.path).ok()?).ok()?;
            Some(format!("{} {}", esc(&i.path), hex(&sum)))
        })
        .collect::<Vec<_>>()
        .join("\t")
}

/// Before a rollback of `names`: a %config whose text is neither the pre-patch one nor what the
/// install left (the admin edited it since) is copied to `PATH.edgepatch-saved` (or `.2`, ...).
/// Returns the copies made; errors name what could not be kept (the rollback must not go on).
pub fn save_later_edits(
    root: &Path,
    set: &Record,
    names: &[String],
) -> std::result::Result<Vec<String>, String> {
    let after: Vec<(String, &str)> = set
        .get("whole_after")
        .unwrap_or("")
        .split('\t')
        .filter_map(|x| x.split_once(' '))
        .map(|(p, s)| (unesc(p), s))
        .collect();
    let mut saved = Vec::new();
    for i in items(set).filter(|i| i.states.len() == 3 && names.iter().any(|n| n == i.package)) {
        let Some((_, left)) = after.iter().find(|(p, _)| *p == i.path) else {
            continue;
        };
        let Ok(now) = target(root, &i.path) else {
            continue;
        };
        if !std::fs::symlink_metadata(&now).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let sum =
            crate::node::rebuild::file_sha256(&now).map_err(|e| format!("{}: {e}", i.path))?;
        let sum = hex(&sum);
        if sum == *left || i.states[0].starts_with(&sum) {
            continue;
        }
        let mut n = 1;
        let copy = loop {
            let name = match n {
                1 => format!("{}.edgepatch-saved", i.path),
                _ => format!("{}.edgepatch-saved.{n}", i.path),
            };
            match target(root, &name) {
                Ok(p) if std::fs::symlink_metadata(&p).is_err() => break (name, p),
                _ if n > 99 => return Err(format!("{}: no free .edgepatch-saved name", i.path)),
                _ => n += 1,
            }
        };
        let keep = |e: std::io::Error| format!("{}: {e}", copy.0);
        let mut t = TempOut::create(&copy.1).map_err(|e| e.msg)?;
        stream(&mut std::fs::File::open(&now).map_err(keep)?, &mut t.w).map_err(keep)?;
        t.commit().map_err(|e| e.msg)?;
        saved.push(copy.0);
    }
    Ok(saved)
}

/// After the restore of `names`: write each kept file back exactly and delete the variants that
/// did not exist before the cycle. Returns (deleted paths, problems).
pub fn put_back(
    root: &Path,
    pool: &Path,
    set: &Record,
    names: &[String],
) -> (Vec<String>, Vec<String>) {
    let (mut deleted, mut bad) = (Vec::new(), Vec::new());
    for i in items(set).filter(|i| names.iter().any(|n| n == i.package)) {
        for (sfx, state) in suffixes(i.states.len()).iter().zip(&i.states) {
            let full = format!("{}{sfx}", i.path);
            let Ok(dest) = target(root, &full) else {
                bad.push(format!("{full}: cannot resolve it in the root"));
                continue;
            };
            match *state {
                "*" => {}
                "-" => {
                    if std::fs::symlink_metadata(&dest).is_ok_and(|m| m.is_file()) {
                        match std::fs::remove_file(&dest) {
                            Ok(()) => deleted.push(full),
                            Err(e) => bad.push(format!("{full}: {e}")),
                        }
                    }
                }
                s => {
                    if let Err(e) = write_back(pool, &dest, s) {
                        bad.push(format!("{full} not put back: {e}"));
                    }
                }
            }
        }
    }
    (deleted, bad)
}

/// Write the pool copy named by `state` (`SHA256:MODE:UID:GID:MTIME`) over `dest`, atomically.
fn write_back(pool: &Path, dest: &Path, state: &str) -> std::result::Result<(), String> {
    let f: Vec<&str> = state.split(':').collect();
    let [sum, mode, uid, gid, mtime] = f[..] else {
        return Err(format!("bad record {state}"));
    };
    let (Ok(mode), Ok(uid), Ok(gid), Ok(mtime)) = (
        u32::from_str_radix(mode, 8),
        uid.parse::<u32>(),
        gid.parse::<u32>(),
        mtime.parse::<i64>(),
    ) else {
        return Err(format!("bad record {state}"));
    };
    let src = pool.join(format!("file-{sum}"));
    let mut from = crate::support::fsutil::open_regular(&src)
        .map_err(|e| format!("kept copy {}: {e}", src.display()))?;
    let mut t = TempOut::create(dest).map_err(|e| e.msg)?;
    if stream(&mut from, &mut t.w).map_err(|e| e.to_string())? != sum {
        return Err(format!(
            "kept copy {} changed since it was preserved (sha256 mismatch)",
            src.display()
        ));
    }
    t.w.flush().map_err(|e| e.to_string())?;
    let file = t.w.get_ref();
    std::os::unix::fs::fchown(file, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| e.to_string())?;
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.max(0) as u64);
    file.set_modified(when).map_err(|e| e.to_string())?;
    t.commit().map_err(|e| e.msg)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_paths_round_trip() {
        for p in ["/etc/a b.conf", "/etc/x%20y", "/etc/t\tab,=\n", "/etc/ünï"] {
            let e = esc(p);
            assert!(!e.contains([' ', '\t', ',', '=', '\n']), "{e}");
            assert_eq!(unesc(&e), p);
        }
    }
}
