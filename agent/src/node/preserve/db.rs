//! Reading the dpkg database of a root for a repack: one stanza of `var/lib/dpkg/status`
//! (streamed, only the wanted stanza is kept), the `info/<pkg>[:arch].*` files, the
//! diversions, and paths resolved inside the root (symlinks in the middle of a path are
//! followed without leaving the root, as `chroot` would).

use super::{err, ioerr};
use crate::support::error::Result;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// One package's status stanza: fields in file order, values as written (continuation lines
/// kept, joined with '\n').
#[derive(Debug, Clone)]
pub struct Stanza {
    pub fields: Vec<(String, String)>,
}

impl Stanza {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn parse(lines: &[String]) -> Stanza {
        let mut fields: Vec<(String, String)> = Vec::new();
        for l in lines {
            if l.starts_with([' ', '\t']) {
                if let Some((_, v)) = fields.last_mut() {
                    v.push('\n');
                    v.push_str(l);
                }
            } else if let Some((k, v)) = l.split_once(':') {
                fields.push((k.to_string(), v.trim().to_string()));
            }
        }
        Stanza { fields }
    }

    /// "installed" when the third word of Status is, whatever the want/hold flags say.
    pub fn installed(&self) -> bool {
        self.get("Status")
            .and_then(|s| s.split_whitespace().nth(2))
            .is_some_and(|w| w == "installed")
    }
}

pub fn admindir(root: &Path) -> PathBuf {
    root.join("var/lib/dpkg")
}

/// Call `each` for every stanza of the status file, in file order; stop when it returns true.
pub fn for_each_stanza(root: &Path, mut each: impl FnMut(Stanza) -> bool) -> Result<()> {
    let path = admindir(root).join("status");
    let f = File::open(&path).map_err(|e| ioerr(&path, e))?;
    let mut lines: Vec<String> = Vec::new();
    for l in BufReader::new(f).lines() {
        let l = l.map_err(|e| ioerr(&path, e))?;
        if l.trim().is_empty() {
            if !lines.is_empty() && each(Stanza::parse(&lines)) {
                return Ok(());
            }
            lines.clear();
        } else {
            lines.push(l);
        }
    }
    if !lines.is_empty() {
        each(Stanza::parse(&lines));
    }
    Ok(())
}

/// The installed stanza of `name` (and `arch`, needed when several architectures are installed).
pub fn find(root: &Path, name: &str, arch: Option<&str>) -> Result<Stanza> {
    let mut hits = Vec::new();
    for_each_stanza(root, |s| {
        if s.get("Package") == Some(name) && arch.is_none_or(|a| s.get("Architecture") == Some(a)) {
            hits.push(s);
        }
        false
    })?;
    let arch_word = arch.map_or(String::new(), |a| format!(":{a}"));
    match hits.len() {
        0 => Err(err(format!(
            "{name}{arch_word} is not in {}/status; nothing to preserve",
            admindir(root).display()
        ))),
        1 if !hits[0].installed() => Err(err(format!(
            "{name}{arch_word} is not fully installed ({}); run dpkg --configure -a",
            hits[0].get("Status").unwrap_or("no Status")
        ))),
        1 => Ok(hits.remove(0)),
        n => Err(err(format!(
            "{name} is installed for {n} architectures; name one (package:arch)"
        ))),
    }
}

/// Prefix of the package's files in `info/`: `pkg:arch` for Multi-Arch: same, else `pkg`.
pub fn info_base(root: &Path, s: &Stanza) -> Result<PathBuf> {
    let info = admindir(root).join("info");
    let name = s.get("Package").unwrap_or_default();
    let arch = s.get("Architecture").unwrap_or_default();
    for base in [format!("{name}:{arch}"), name.to_string()] {
        if info.join(format!("{base}.list")).exists() {
            return Ok(info.join(base));
        }
    }
    Err(err(format!(
        "{}/{name}.list is missing: the dpkg database is damaged",
        info.display()
    )))
}

/// `info/<base>.<suffix>`.
pub fn info_file(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_os_string();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

/// Lines of a small text file, or none when it does not exist.
pub fn lines(path: &Path) -> Result<Vec<String>> {
    match File::open(path) {
        Ok(f) => BufReader::new(f)
            .lines()
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| ioerr(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ioerr(path, e)),
    }
}

/// A sorted lookup of `key\nvalue` rows (or bare keys). A HashMap would cost the static agent
/// its hashing code; '\n' sorts below every path byte, so row order is key order.
#[derive(Debug, Default)]
pub struct Table(Vec<String>);

impl Table {
    pub fn new(mut rows: Vec<String>) -> Table {
        rows.sort_unstable();
        rows.dedup();
        Table(rows)
    }

    fn key(row: &str) -> &str {
        row.split('\n').next().unwrap_or_default()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        let i = self.0.partition_point(|r| Table::key(r) < key);
        let row = self.0.get(i)?;
        (Table::key(row) == key).then(|| row.split_once('\n').map_or("", |x| x.1))
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

/// `md5sums` of a package: absolute path -> hex digest.
pub fn md5sums(base: &Path) -> Result<Table> {
    let mut rows = Vec::new();
    for l in lines(&info_file(base, "md5sums"))? {
        if let Some((sum, path)) = l.split_once("  ").or_else(|| l.split_once(' ')) {
            let path = path.trim_start_matches(['*', '/']);
            rows.push(format!("/{path}\n{}", sum.trim().to_ascii_lowercase()));
        }
    }
    Ok(Table::new(rows))
}

/// Diversions of paths *away from* `pkg`: original path -> where the package's file really is
/// (diversions by other packages or local ones, `dpkg-divert` without --package).
pub fn diversions(root: &Path, pkg: &str) -> Result<Table> {
    let l = lines(&admindir(root).join("diversions"))?;
    let mut rows = Vec::new();
    for t in l.chunks(3) {
        if let [from, to, by] = t {
            if by != pkg {
                rows.push(format!("{from}\n{to}"));
            }
        }
    }
    Ok(Table::new(rows))
}

/// Conffiles field: (path, md5, flag) where flag is "", "obsolete" or "remove-on-upgrade".
pub fn conffiles(s: &Stanza) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    for l in s.get("Conffiles").unwrap_or_default().lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            [p, sum] => v.push((p.to_string(), sum.to_string(), String::new())),
            [p, sum, flag, ..] => v.push((p.to_string(), sum.to_string(), flag.to_string())),
            _ => {}
        }
    }
    v
}

/// The conffiles of installed `name` whose text on disk is not what the package shipped (the
/// admin edited them): purging the package would delete that work.
pub fn edited_conffiles(root: &Path, name: &str) -> Vec<String> {
    let Ok(s) = find(root, name, None) else {
        return Vec::new();
    };
    conffiles(&s)
        .into_iter()
        .filter(|(_, _, flag)| flag.is_empty())
        .filter(|(path, sum, _)| {
            let Ok(p) = resolve(root, path, true) else {
                return false;
            };
            file_md5(&p).is_ok_and(|got| got != *sum)
        })
        .map(|(path, _, _)| path)
        .collect()
}

fn file_md5(path: &Path) -> std::io::Result<String> {
    use md5::Digest;
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut h = md5::Md5::new();
    let mut buf = [0u8; 8192];
    loop {
        match f.read(&mut buf)? {
            0 => return Ok(super::hex(&h.finalize())),
            n => h.update(&buf[..n]),
        }
    }
}

/// Put recorded conffile md5s back into `name`'s Conffiles field in the status file.
///
/// Installing a repacked package records the admin's edited text as what the package shipped,
/// so the next upgrade would think the file untouched and replace it silently. Writing the
/// pre-patch md5s back keeps dpkg's "modified by the admin" judgement as it was. Runs under
/// dpkg's own lock, only when no dpkg journal (`updates/`) is pending; returns how many lines
/// changed.
pub fn set_conffile_md5s(
    root: &Path,
    name: &str,
    arch: &str,
    sums: &[(String, String)],
) -> Result<usize> {
    let dir = admindir(root);
    let lock_path = dir.join("lock");
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| ioerr(&lock_path, e))?;
    // SAFETY: `flock` is plain old data and all zeroes is a valid value (offset 0, length 0:
    // the whole file), as dpkg itself locks it.
    let mut fl: nix::libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = nix::libc::F_WRLCK as _;
    fl.l_whence = nix::libc::SEEK_SET as _;
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&lock),
        nix::fcntl::FcntlArg::F_SETLK(&fl),
    )
    .map_err(|e| {
        err(format!(
            "dpkg database is locked ({e}); conffile records not updated"
        ))
    })?;
    let updates = dir.join("updates");
    if std::fs::read_dir(&updates)
        .into_iter()
        .flatten()
        .flatten()
        .next()
        .is_some()
    {
        return Err(err(
            "dpkg journal (updates/) is pending; conffile records not updated",
        ));
    }
    let path = dir.join("status");
    let text =
        crate::support::fsutil::read_capped(&path, 256 << 20).map_err(|e| ioerr(&path, e))?;
    let text = String::from_utf8(text).map_err(|_| err("dpkg status is not UTF-8"))?;
    let (out, changed) = rewrite_conffiles(&text, name, arch, sums);
    if changed > 0 {
        crate::support::fsutil::write_atomic(&path, out.as_bytes(), false)
            .map_err(|e| ioerr(&path, e))?;
    }
    drop(lock);
    Ok(changed)
}

/// The status text with `name`:`arch`'s Conffiles md5s replaced by `sums` (path, md5).
fn rewrite_conffiles(
    text: &str,
    name: &str,
    arch: &str,
    sums: &[(String, String)],
) -> (String, usize) {
    let mut out = String::with_capacity(text.len());
    let mut changed = 0;
    for stanza in text.split_inclusive("\n\n") {
        let is_it = stanza.lines().any(|l| l == format!("Package: {name}"))
            && stanza.lines().any(|l| l == format!("Architecture: {arch}"));
        if !is_it {
            out.push_str(stanza);
            continue;
        }
        let mut in_conffiles = false;
        for line in stanza.split_inclusive('\n') {
            if !line.starts_with([' ', '\t']) {
                in_conffiles = line.starts_with("Conffiles:");
            } else if in_conffiles {
                let mut w: Vec<&str> = line.split_whitespace().collect();
                if let Some((_, md5)) = sums.iter().find(|(p, _)| w.first() == Some(&p.as_str())) {
                    if w.len() >= 2 && w[1] != md5 {
                        w[1] = md5;
                        out.push(' ');
                        out.push_str(&w.join(" "));
                        out.push('\n');
                        changed += 1;
                        continue;
                    }
                }
            }
            out.push_str(line);
        }
    }
    (out, changed)
}

/// `path` (absolute, as in a .list) inside `root`: symlinks in directory components are
/// followed and kept inside the root; the last component is followed only with `follow_last`.
pub fn resolve(root: &Path, path: &str, follow_last: bool) -> std::io::Result<PathBuf> {
    let mut todo: Vec<String> = path.split('/').rev().map(str::to_string).collect();
    let mut done: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        if todo.iter().all(|t| t.is_empty() || t == ".") && !follow_last {
            done.push(c);
            break;
        }
        let mut p = root.to_path_buf();
        p.extend(&done);
        p.push(&c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(std::io::Error::other(format!("{path}: too many symlinks")));
                }
                let t = std::fs::read_link(&p)?;
                let t = t.to_string_lossy();
                if t.starts_with('/') {
                    done.clear();
                }
                todo.extend(t.split('/').rev().map(str::to_string));
            }
            _ => done.push(c),
        }
    }
    let mut p = root.to_path_buf();
    p.extend(&done);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_stays_in_root() {
        let d = std::env::temp_dir().join(format!("ep-preserve-db-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", d.join("bin")).unwrap();
        std::os::unix::fs::symlink("/usr", d.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../..", d.join("usr/up")).unwrap();
        assert_eq!(resolve(&d, "/bin/ls", false).unwrap(), d.join("usr/bin/ls"));
        assert_eq!(resolve(&d, "/abs/bin", true).unwrap(), d.join("usr/bin"));
        assert_eq!(resolve(&d, "/bin", false).unwrap(), d.join("bin"));
        assert_eq!(resolve(&d, "/usr/up/etc", false).unwrap(), d.join("etc"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn table_lookups() {
        let t = Table::new(vec![
            "/b\n2".into(),
            "/a-x\n3".into(),
            "/a\n1".into(),
            "/c".into(),
        ]);
        assert_eq!(t.get("/a"), Some("1"));
        assert_eq!(t.get("/a-x"), Some("3"));
        assert_eq!(t.get("/b"), Some("2"));
        assert_eq!(t.get("/c"), Some(""));
        assert_eq!(t.get("/"), None);
        assert!(!t.contains("/a/"));
    }

    #[test]
    fn conffile_md5s_are_rewritten_only_in_the_named_stanza() {
        let text = "Package: a\nArchitecture: all\nConffiles:\n /etc/a new1\n /etc/b old2 obsolete\nDescription: x\n\n\
                    Package: b\nArchitecture: all\nConffiles:\n /etc/a new1\n\n";
        let sums = vec![
            ("/etc/a".to_string(), "old1".to_string()),
            ("/etc/b".to_string(), "old2".to_string()),
        ];
        let (out, n) = rewrite_conffiles(text, "a", "all", &sums);
        assert_eq!(n, 1);
        assert!(out.starts_with("Package: a\nArchitecture: all\nConffiles:\n /etc/a old1\n /etc/b old2 obsolete\nDescription: x\n\n"), "{out}");
        assert!(
            out.ends_with("Package: b\nArchitecture: all\nConffiles:\n /etc/a new1\n\n"),
            "{out}"
        );
        assert_eq!(
            rewrite_conffiles(text, "a", "amd64", &sums),
            (text.to_string(), 0)
        );
    }

    #[test]
    fn stanza_fields_and_conffiles() {
        let lines: Vec<String> = [
            "Package: a",
            "Status: install ok installed",
            "Conffiles:",
            " /etc/a 0123 ",
            " /etc/b 4567 obsolete",
            "Description: x",
            " more",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let s = Stanza::parse(&lines);
        assert!(s.installed());
        assert_eq!(s.get("description"), Some("x\n more"));
        let c = conffiles(&s);
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].2, "obsolete");
    }
}
