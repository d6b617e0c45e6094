//! Files a rollback set keeps whole, beside the repacked package. rpm reads exactly the header's
//! size of each file from a payload, and writes a hardlink set's content to every link, so a
//! repack carries cut or zero-padded what it cannot carry exactly: a %config file, a file whose
//! size, mode or owner changed, one that is gone or is a symlink now, the links of a set of which
//! one is kept or that no longer share an inode. And rpm itself moves %config files aside
//! (`.rpmsave`, `.rpmorig`) or leaves defaults beside them (`.rpmnew`). So before the install each
//! such file (for %config also those beside it) is copied into the pool as `file-<sha256>`, with
//! its mode, owner, mtime and extended attributes (`xattr-<sha256>`: capabilities, ACLs, SELinux
//! label); after the restore `put_back` writes each back exactly and deletes those that did not
//! exist, whatever rpm did. An edit made after the cycle (neither the pre-patch text nor what the
//! install left) is first kept beside as `PATH.edgepatch-saved` and named: nothing is lost.
//!
//! Set key `whole`: tab-separated items `PACKAGE PATH STATE...` (PATH escaped, see [`esc`]): one
//! STATE for a plain file, four (the file, `.rpmnew`, `.rpmsave`, `.rpmorig`) for %config; a
//! STATE is `-` (absent), `@TARGET` (a symlink, TARGET escaped), `*` (a directory: left alone)
//! or `SHA256:MODE:UID:GID:MTIME[:XATTRS_SHA256]`. `whole_after`: `PATH FINGERPRINT...`, each
//! variant as the install left it (the sha256 for a file, else the state).

use crate::node::preserve::{check_space, err, hex, TempOut};
use crate::support::error::Result;
use crate::support::kv::Record;
use crate::support::xattr as xattrs;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A %config and what rpm may leave beside it: its default (`.rpmnew`), the admin's text moved
/// aside (`.rpmsave`), or a file rpm found in the way of an unowned path (`.rpmorig`).
const CONFIG_SUFFIXES: [&str; 4] = ["", ".rpmnew", ".rpmsave", ".rpmorig"];

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
            matches!(states.len(), 1 | 4).then(|| Item {
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
    let mut v = Vec::new();
    for s in items(set).flat_map(|i| i.states.into_iter()) {
        let f: Vec<&str> = s.split(':').collect();
        if f.len() >= 5 {
            v.push(format!("file-{}", f[0]));
        }
        if let Some(x) = f.get(5) {
            v.push(format!("xattr-{x}"));
        }
    }
    v
}

/// Copy `path` (and for a %config, what rpm may leave beside it) of `package` into `pool`;
/// returns the `whole` item and the bytes kept.
pub fn keep(
    root: &Path,
    pool: &Path,
    package: &str,
    path: &str,
    config: bool,
) -> Result<(String, u64)> {
    let (mut item, mut bytes) = (format!("{package} {}", esc(path)), 0);
    for sfx in suffixes(if config { 4 } else { 1 }) {
        let full = format!("{path}{sfx}");
        let src = target(root, &full).map_err(|e| err(format!("{full}: {e}")))?;
        item.push(' ');
        item += &match std::fs::symlink_metadata(&src) {
            Ok(m) if m.is_file() => {
                let sum = copy_in(&src, pool, m.len())?;
                bytes += m.len();
                let mut state = format!(
                    "{sum}:{:o}:{}:{}:{}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    m.mtime()
                );
                let x = xattrs::read(&src).map_err(|e| err(format!("{full}: xattrs: {e}")))?;
                if !x.is_empty() {
                    state += &format!(":{}", keep_bytes(pool, "xattr", &x)?);
                }
                state
            }
            other => state_of(&src, other).map_err(|e| err(format!("{full}: {e}")))?,
        };
    }
    Ok((item, bytes))
}

/// The state of what is not a regular file (`-`, `@TARGET`, `*`), or the sha256 of a file.
fn state_of(p: &Path, m: std::io::Result<std::fs::Metadata>) -> std::io::Result<String> {
    match m {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok("-".into()),
        Err(e) => Err(e),
        Ok(m) if m.file_type().is_symlink() => Ok(format!(
            "@{}",
            esc(&std::fs::read_link(p)?.to_string_lossy())
        )),
        Ok(m) if m.is_file() => regular_sum(p),
        Ok(m) if m.is_dir() => Ok("*".into()),
        Ok(_) => Err(std::io::Error::other(
            "is a FIFO, socket or device, which a rollback set cannot keep; remove it (or set \
             rollback_keep = 0)",
        )),
    }
}

/// What is at `p` now, comparable with a state's fingerprint.
fn fingerprint(p: &Path) -> String {
    state_of(p, std::fs::symlink_metadata(p)).unwrap_or_else(|_| "*".into())
}

/// A state's fingerprint: the sha256 of a file state, the state itself otherwise.
fn fp(state: &str) -> &str {
    state.split(':').next().unwrap_or(state)
}

/// Stream `src` into `pool/file-<sha256>` (reusing an identical copy); returns the sha256.
fn copy_in(src: &Path, pool: &Path, size: u64) -> Result<String> {
    let sum = regular_sum(src).map_err(|e| crate::node::preserve::ioerr(src, e))?;
    let dest = pool.join(format!("file-{sum}"));
    if regular_sum(&dest).is_ok_and(|s| s == sum) {
        return Ok(sum);
    }
    check_space(pool, size)?;
    let mut f = crate::support::fsutil::open_regular(src)
        .map_err(|e| crate::node::preserve::ioerr(src, e))?;
    let mut t = private(&dest)?;
    if stream(&mut f, &mut t.w).map_err(|e| crate::node::preserve::ioerr(src, e))? != sum {
        return Err(err(format!(
            "{} changed while preserving; run again",
            src.display()
        )));
    }
    t.commit()?;
    Ok(sum)
}

/// The sha256 (hex) of the regular file at `p` (not through a symlink; a FIFO is refused).
fn regular_sum(p: &Path) -> std::io::Result<String> {
    if !std::fs::symlink_metadata(p)?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(hex(&crate::node::rebuild::file_sha256(p)?))
}

/// Keep `data` in the pool as `KIND-<sha256>`; returns the sha256.
fn keep_bytes(pool: &Path, kind: &str, data: &[u8]) -> Result<String> {
    let sum = hex(&crate::bundle::format::sha256(data));
    let dest = pool.join(format!("{kind}-{sum}"));
    if regular_sum(&dest).is_ok_and(|s| s == sum) {
        return Ok(sum);
    }
    let mut t = private(&dest)?;
    t.w.write_all(data)
        .map_err(|e| crate::node::preserve::ioerr(&dest, e))?;
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

/// `whole_after`: each kept %config (and what is beside it) as the install left it.
pub fn after(root: &Path, set: &Record) -> String {
    items(set)
        .filter(|i| i.states.len() == 4)
        .map(|i| {
            let mut line = esc(&i.path);
            for sfx in CONFIG_SUFFIXES {
                line.push(' ');
                line += &target(root, &format!("{}{sfx}", i.path))
                    .map_or_else(|_| "*".into(), |p| fingerprint(&p));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\t")
}

/// Before a rollback of `names`: a %config (or `.rpmsave`, ...) file whose text is neither the
/// pre-patch one nor what the install left (the admin wrote it since) is copied, with its mode
/// and owner, to `PATH.edgepatch-saved` (or `.2`, ...). Nothing to do without `whole_after` (a
/// failed install's restore: nobody edited anything since). Returns the copies made; an error
/// names what could not be kept (the rollback must not go on).
pub fn save_later_edits(
    root: &Path,
    set: &Record,
    names: &[String],
) -> std::result::Result<Vec<String>, String> {
    let Some(after) = set.get("whole_after") else {
        return Ok(Vec::new());
    };
    let after: Vec<(String, Vec<&str>)> = after
        .split('\t')
        .filter_map(|x| {
            let mut w = x.split(' ');
            Some((unesc(w.next()?), w.collect()))
        })
        .collect();
    let (mut saved, mut seen) = (Vec::new(), Vec::new());
    for i in items(set).filter(|i| i.states.len() == 4 && names.iter().any(|n| n == i.package)) {
        let left = after.iter().find(|(p, _)| *p == i.path).map(|(_, v)| v);
        for (k, sfx) in CONFIG_SUFFIXES.iter().enumerate() {
            let full = format!("{}{sfx}", i.path);
            let Ok(now) = target(root, &full) else {
                continue;
            };
            if !std::fs::symlink_metadata(&now).is_ok_and(|m| m.is_file()) {
                continue;
            }
            let sum = fingerprint(&now);
            let was = left.and_then(|v| v.get(k)).copied().unwrap_or("-");
            if sum == was || sum == fp(i.states[k]) {
                continue;
            }
            // (One path kept by two packages, multilib arches: one copy.)
            if !seen.contains(&full) {
                saved.push(save_copy(root, &full, &now)?);
                seen.push(full);
            }
        }
    }
    Ok(saved)
}

/// Copy `now` (at `full` in the root) to the first free `FULL.edgepatch-saved[.N]`, with its
/// mode and owner (the temp file is private until then).
fn save_copy(root: &Path, full: &str, now: &Path) -> std::result::Result<String, String> {
    let mut n = 1;
    let (name, dest) = loop {
        let name = match n {
            1 => format!("{full}.edgepatch-saved"),
            _ => format!("{full}.edgepatch-saved.{n}"),
        };
        match target(root, &name) {
            Ok(p) if std::fs::symlink_metadata(&p).is_err() => break (name, p),
            _ if n > 99 => return Err(format!("{full}: no free .edgepatch-saved name")),
            _ => n += 1,
        }
    };
    let fail = |e: std::io::Error| format!("{name}: {e}");
    let mut from = crate::support::fsutil::open_regular(now).map_err(fail)?;
    let m = from.metadata().map_err(fail)?;
    let mut t = private(&dest).map_err(|e| e.msg)?;
    stream(&mut from, &mut t.w).map_err(fail)?;
    finish(t, m.mode(), m.uid(), m.gid(), None).map_err(fail)?;
    Ok(name)
}

/// A temp file beside `dest`, readable by root only until `finish` (kept files may be secret).
fn private(dest: &Path) -> Result<TempOut> {
    use std::os::unix::fs::PermissionsExt;
    let t = TempOut::create(dest)?;
    t.w.get_ref()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| crate::node::preserve::ioerr(dest, e))?;
    Ok(t)
}

/// Owner, mode, then (when given) the extended attributes (after the chown, which drops
/// capabilities) and mtime on the temp file; then rename it into place.
fn finish(
    mut t: TempOut,
    mode: u32,
    uid: u32,
    gid: u32,
    kept: Option<(i64, &[u8])>,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    t.w.flush()?;
    let file = t.w.get_ref();
    std::os::unix::fs::fchown(file, Some(uid), Some(gid))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
    if let Some((s, attrs)) = kept {
        xattrs::write(file, attrs)?;
        file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.max(0) as u64))?;
    }
    t.commit().map_err(|e| std::io::Error::other(e.msg))?;
    Ok(())
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
            let now = std::fs::symlink_metadata(&dest);
            let link_or_file = now.as_ref().is_ok_and(|m| !m.is_dir());
            match *state {
                "*" => {}
                "-" if link_or_file => match std::fs::remove_file(&dest) {
                    Ok(()) => deleted.push(full),
                    Err(e) => bad.push(format!("{full}: {e}")),
                },
                "-" => {}
                s if s.starts_with('@') => {
                    let to = unesc(&s[1..]);
                    if std::fs::read_link(&dest).is_ok_and(|t| t.as_os_str() == to.as_str()) {
                        continue;
                    }
                    let put = (if link_or_file {
                        std::fs::remove_file(&dest)
                    } else {
                        Ok(())
                    })
                    .and_then(|()| std::os::unix::fs::symlink(&to, &dest));
                    if let Err(e) = put {
                        bad.push(format!("{full} (symlink) not put back: {e}"));
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
    let (&[sum, mode, uid, gid, mtime], x) = f.split_at(5.min(f.len())) else {
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
    // The extended attributes first: a damaged record stops before anything is written.
    let attrs = match x {
        [] => Vec::new(),
        [x] => {
            let p = pool.join(format!("xattr-{x}"));
            let data = crate::support::fsutil::read_capped(&p, 1 << 20)
                .map_err(|e| format!("kept attributes {}: {e}", p.display()))?;
            if hex(&crate::bundle::format::sha256(&data)) != *x {
                return Err(format!(
                    "kept attributes {} changed (sha256 mismatch)",
                    p.display()
                ));
            }
            data
        }
        _ => return Err(format!("bad record {state}")),
    };
    let is_sum = |h: &str| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit());
    if !is_sum(sum) || !x.iter().all(|h| is_sum(h)) {
        return Err(format!("bad record {state}"));
    }
    let src = pool.join(format!("file-{sum}"));
    if !std::fs::symlink_metadata(&src).is_ok_and(|m| m.is_file()) {
        return Err(format!("kept copy {}: missing", src.display()));
    }
    let mut from = crate::support::fsutil::open_regular(&src)
        .map_err(|e| format!("kept copy {}: {e}", src.display()))?;
    let mut t = private(dest).map_err(|e| e.msg)?;
    if stream(&mut from, &mut t.w).map_err(|e| e.to_string())? != sum {
        return Err(format!(
            "kept copy {} changed since it was preserved (sha256 mismatch)",
            src.display()
        ));
    }
    finish(t, mode, uid, gid, Some((mtime, &attrs))).map_err(|e| e.to_string())
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
