//! Native dpkg-repack: an installed package of a root, rebuilt as an installable .deb from the
//! dpkg database and the files on disk. What is carried follows dpkg-repack: control fields from
//! the status stanza (install-only fields dropped), the maintainer scripts and other control
//! files from `info/`, conffiles from the Conffiles field (obsolete and remove-on-upgrade ones
//! left out), and every listed path as it is now (a diverted file from where it really is).

use super::db::{self, Stanza, Table};
use super::tar::{self, Kind};
use super::{ar, check_space, err, hex, ioerr, Repacked, TempOut};
use crate::support::error::Result;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Status fields that describe the installation, not the package (dpkg-repack drops them too).
const DROP: &[&str] = &[
    "Status",
    "Config-Version",
    "Conffiles",
    "Triggers-Awaited",
    "Triggers-Pending",
];

/// Control files copied from `info/<pkg>.<name>` when present (not `list`, `conffiles`: those
/// are rebuilt). Sorted, the order they take in control.tar.
const INFO: &[&str] = &[
    "config",
    "md5sums",
    "postinst",
    "postrm",
    "preinst",
    "prerm",
    "shlibs",
    "symbols",
    "templates",
    "triggers",
];

const SCRIPTS: &[&str] = &["config", "postinst", "postrm", "preinst", "prerm"];

/// Bumped whenever the bytes written for the same inputs change: part of the identity.
const FORMAT: &str = "edgepatch-preserve-deb-1";

#[derive(Debug, Clone)]
struct Item {
    /// Archive name: `./usr/bin/x`, directories with a trailing `/`.
    name: String,
    src: PathBuf,
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    /// dpkg's recorded md5 (md5sums or Conffiles), if any.
    md5: Option<String>,
    conffile: bool,
}

/// Everything a repack of one package will write, read from the database and lstat.
#[derive(Debug, Clone)]
pub struct DebPlan {
    pub package: String,
    pub version: String,
    pub arch: String,
    control: String,
    conffiles: String,
    /// (control member name, file in info/)
    info: Vec<(&'static str, PathBuf)>,
    items: Vec<Item>,
    /// Active conffiles: (path, recorded md5).
    pub conffiles_md5: Vec<(String, String)>,
    /// Listed paths not on disk, or of a kind a .deb cannot carry (left out, with a warning).
    pub missing: Vec<String>,
    identity: [u8; 32],
}

/// The installed packages of a root: (name, architecture, version), in status-file order.
pub fn installed_debs(root: &Path) -> Result<Vec<(String, String, String)>> {
    let mut v = Vec::new();
    db::for_each_stanza(root, |s| {
        if s.installed() {
            let f = |k| s.get(k).unwrap_or_default().to_string();
            v.push((f("Package"), f("Architecture"), f("Version")));
        }
        false
    })?;
    Ok(v)
}

/// Read what a repack of `name` (`arch` when several are installed) on `root` would carry.
/// Reads only the database and file metadata: cheap enough to run before every install.
pub fn plan_deb(root: &Path, name: &str, arch: Option<&str>) -> Result<DebPlan> {
    let stanza = db::find(root, name, arch)?;
    let base = db::info_base(root, &stanza)?;
    let field = |k| stanza.get(k).unwrap_or_default().to_string();
    let (package, version, arch) = (field("Package"), field("Version"), field("Architecture"));

    let mut info = Vec::new();
    for n in INFO {
        let p = db::info_file(&base, n);
        if p.exists() {
            info.push((*n, p));
        }
    }

    let mut conf_md5 = Vec::new();
    let mut skip = Vec::new();
    let mut conffiles = String::new();
    let mut conffiles_md5 = Vec::new();
    for (p, sum, flag) in db::conffiles(&stanza) {
        if flag.is_empty() {
            conffiles += &format!("{p}\n");
            conffiles_md5.push((p.clone(), sum.clone()));
            conf_md5.push(format!("{p}\n{sum}"));
        } else {
            log::warn!("{package}: leaving out {flag} conffile {p}");
            skip.push(p);
        }
    }
    let md5 = db::md5sums(&base)?;
    let div = db::diversions(root, &package)?;

    let mut list = db::lines(&db::info_file(&base, "list"))?;
    list.retain(|p| p.starts_with('/'));
    list.sort_unstable();
    list.dedup();
    let conf_md5 = Table::new(conf_md5);
    let mut parents = Vec::new();
    for p in &list {
        if let Some(i) = p.rfind('/') {
            parents.push(p[..i].to_string());
        }
    }
    // Every listed directory's parent is listed too, so direct parents are enough.
    let parents = Table::new(parents);

    let mut items = vec![Item {
        name: "./".into(),
        src: root.to_path_buf(),
        kind: Kind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        md5: None,
        conffile: false,
    }];
    let mut missing = Vec::new();
    for p in &list {
        if p == "/." || p == "/" {
            continue;
        }
        if skip.contains(p) {
            continue;
        }
        let conffile = conf_md5.contains(p);
        let real = div.get(p).unwrap_or(p);
        let src = db::resolve(root, real, false).map_err(|e| ioerr(&root.join(&real[1..]), e))?;
        let meta = match std::fs::symlink_metadata(&src) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !conffile {
                    log::warn!("{package}: {p} is listed but not on disk; left out");
                }
                missing.push(p.clone());
                continue;
            }
            Err(e) => return Err(ioerr(&src, e)),
        };
        let ft = meta.file_type();
        let (kind, meta) = if ft.is_symlink() && parents.contains(p) {
            // A directory of the package that is a symlink on disk (merged /usr): carry the
            // directory it points to, as dpkg-repack does.
            let dir = db::resolve(root, real, true).map_err(|e| ioerr(&src, e))?;
            match std::fs::metadata(&dir) {
                Ok(m) if m.is_dir() => (Kind::Dir, m),
                _ => (symlink(&src)?, meta),
            }
        } else if ft.is_symlink() {
            (symlink(&src)?, meta)
        } else if ft.is_dir() {
            (Kind::Dir, meta)
        } else if ft.is_file() {
            (Kind::File(meta.len()), meta)
        } else {
            log::warn!("{package}: {p} is not a file, directory or symlink; left out");
            missing.push(p.clone());
            continue;
        };
        let name = match kind {
            Kind::Dir => format!(".{p}/"),
            _ => format!(".{p}"),
        };
        items.push(Item {
            md5: conf_md5.get(p).or_else(|| md5.get(p)).map(str::to_string),
            name,
            src,
            kind,
            mode: meta.mode(),
            uid: u64::from(meta.uid()),
            gid: u64::from(meta.gid()),
            mtime: meta.mtime(),
            conffile,
        });
    }

    let mut control = String::new();
    for (k, v) in &stanza.fields {
        if DROP.iter().any(|d| d.eq_ignore_ascii_case(k)) {
            continue;
        }
        let sep = if v.starts_with('\n') { "" } else { " " };
        control += &format!("{k}:{sep}{v}\n");
    }
    let mut plan = DebPlan {
        package,
        version,
        arch,
        control,
        conffiles,
        info,
        items,
        conffiles_md5,
        missing,
        identity: [0; 32],
    };
    plan.identity = plan.compute_identity(&stanza)?;
    Ok(plan)
}

fn symlink(src: &Path) -> Result<Kind> {
    let t = std::fs::read_link(src).map_err(|e| ioerr(src, e))?;
    let t = t
        .to_str()
        .ok_or_else(|| err(format!("{}: link target is not UTF-8", src.display())))?;
    Ok(Kind::Symlink(t.to_string()))
}

/// control.tar members: root-owned, mtime 0, scripts 0755 and data 0644 whatever info/ has.
fn control_header<'a>(name: &'a str, kind: &'a Kind) -> tar::Header<'a> {
    let script = SCRIPTS.iter().any(|s| name.strip_prefix("./") == Some(s));
    tar::Header {
        name,
        kind,
        mode: if script || *kind == Kind::Dir {
            0o755
        } else {
            0o644
        },
        uid: 0,
        gid: 0,
        mtime: 0,
    }
}

impl DebPlan {
    /// sha256 over everything the repacked bytes depend on (control text, control files, every
    /// item's name, kind, owner, mode, size, mtime and ctime, recorded md5). Equal identities
    /// mean an earlier repack can be reused as it is.
    pub fn identity(&self) -> [u8; 32] {
        self.identity
    }

    /// `pkg_version_arch.deb`, the epoch left out as dpkg-deb names files.
    pub fn file_name(&self) -> String {
        format!("{}.deb", self.stem())
    }

    fn stem(&self) -> String {
        let v = self.version.split_once(':').map_or(&*self.version, |x| x.1);
        format!("{}_{v}_{}", self.package, self.arch)
    }

    /// Upper bound of the .deb's size, for the free-space check.
    pub fn estimated_bytes(&self) -> u64 {
        let mut n = 8 + 3 * 60 + 4 + 4 * tar::BLOCK;
        n += tar::padded(self.control.len() as u64) + tar::padded(self.conffiles.len() as u64);
        for (_, p) in &self.info {
            n += tar::BLOCK + tar::padded(std::fs::metadata(p).map_or(0, |m| m.len()));
        }
        n + self
            .items
            .iter()
            .map(|i| tar::member_len(&i.name, &i.kind))
            .sum::<u64>()
    }

    fn compute_identity(&self, stanza: &Stanza) -> Result<[u8; 32]> {
        let mut h = Sha256::new();
        let mut put = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        put(FORMAT.as_bytes());
        put(self.control.as_bytes());
        put(self.conffiles.as_bytes());
        put(stanza.get("Conffiles").unwrap_or_default().as_bytes());
        for (name, p) in &self.info {
            put(name.as_bytes());
            put(&std::fs::read(p).map_err(|e| ioerr(p, e))?);
        }
        for i in &self.items {
            put(i.name.as_bytes());
            put(i.src.as_os_str().as_encoded_bytes());
            match &i.kind {
                Kind::Dir => put(b"d"),
                Kind::File(n) => put(&n.to_le_bytes()),
                Kind::Symlink(t) => put(t.as_bytes()),
            }
            let m = [u64::from(i.mode), i.uid, i.gid, i.mtime as u64];
            for v in m {
                put(&v.to_le_bytes());
            }
            put(i.md5.as_deref().unwrap_or("-").as_bytes());
            if i.name != "./" {
                if let Ok(m) = std::fs::symlink_metadata(&i.src) {
                    let t = format!(
                        "{} {} {} {}",
                        m.mtime_nsec(),
                        m.ctime(),
                        m.ctime_nsec(),
                        m.ino()
                    );
                    put(t.as_bytes());
                }
            }
        }
        Ok(h.finalize().into())
    }

    /// Stream the .deb to `out` (temp file beside it, then fsync + rename). Files whose bytes
    /// differ from dpkg's md5sums are carried as they are, with a warning, and listed.
    pub fn write(&self, out: &Path) -> Result<Repacked> {
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        check_space(dir, self.estimated_bytes())?;
        let mut t = TempOut::create(out)?;
        let tmp_err = |e| ioerr(out, e);
        t.w.write_all(ar::MAGIC).map_err(tmp_err)?;
        ar::member(&mut t.w, "debian-binary", b"2.0\n").map_err(tmp_err)?;

        let at = ar::begin(&mut t.w, "control.tar").map_err(tmp_err)?;
        self.write_control(&mut t.w).map_err(tmp_err)?;
        ar::end(&mut t.w, "control.tar", at).map_err(tmp_err)?;

        let at = ar::begin(&mut t.w, "data.tar").map_err(tmp_err)?;
        let mut changed = Vec::new();
        for i in &self.items {
            self.write_item(&mut t.w, i, &mut changed)?;
        }
        tar::finish(&mut t.w).map_err(tmp_err)?;
        ar::end(&mut t.w, "data.tar", at).map_err(tmp_err)?;
        let bytes = t.commit()?;
        Ok(Repacked {
            path: out.to_path_buf(),
            package: self.package.clone(),
            version: self.version.clone(),
            arch: self.arch.clone(),
            identity: self.identity,
            bytes,
            changed,
            missing: self.missing.clone(),
            conffiles: self.conffiles_md5.clone(),
            whole: Vec::new(),
            reused: false,
        })
    }

    fn write_control<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        let dir = Kind::Dir;
        tar::write_header(w, &control_header("./", &dir))?;
        // Sorted order: the info/ names around "conffiles" and "control" (no sort in the binary).
        let mut members: Vec<(&'static str, Option<&Path>)> = Vec::new();
        let info = |n: &str| {
            self.info
                .iter()
                .find(|(m, _)| *m == n)
                .map(|(m, p)| (*m, p.as_path()))
        };
        for n in ["conffiles", "config", "control"] {
            match n {
                "control" => members.push(("control", None)),
                "conffiles" if !self.conffiles.is_empty() => members.push(("conffiles", None)),
                _ => members.extend(info(n).map(|(m, p)| (m, Some(p)))),
            }
        }
        for (n, p) in &self.info {
            if *n > "control" {
                members.push((n, Some(p.as_path())));
            }
        }
        for (name, path) in members {
            let full = format!("./{name}");
            match path {
                None => {
                    let text = if name == "control" {
                        &self.control
                    } else {
                        &self.conffiles
                    };
                    let kind = Kind::File(text.len() as u64);
                    tar::write_header(w, &control_header(&full, &kind))?;
                    w.write_all(text.as_bytes())?;
                    tar::pad(w, text.len() as u64)?;
                }
                Some(p) => {
                    let mut f = File::open(p)?;
                    let n = f.metadata()?.len();
                    let kind = Kind::File(n);
                    tar::write_header(w, &control_header(&full, &kind))?;
                    tar::copy_data(&mut f, w, n, |_| {})?;
                }
            }
        }
        tar::finish(w)
    }

    fn write_item<W: Write>(&self, w: &mut W, i: &Item, changed: &mut Vec<String>) -> Result<()> {
        let h = tar::Header {
            name: &i.name,
            kind: &i.kind,
            mode: i.mode,
            uid: i.uid,
            gid: i.gid,
            mtime: i.mtime,
        };
        let Kind::File(size) = i.kind else {
            return tar::write_header(w, &h).map_err(|e| ioerr(&i.src, e));
        };
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&i.src)
            .map_err(|e| ioerr(&i.src, e))?;
        let now = f.metadata().map_err(|e| ioerr(&i.src, e))?.len();
        if now != size {
            return Err(err(format!(
                "{}: changed while preserving ({size} -> {now} bytes); run again",
                i.src.display()
            )));
        }
        tar::write_header(w, &h).map_err(|e| ioerr(&i.src, e))?;
        let mut md5 = i.md5.as_ref().map(|_| md5::Md5::new());
        tar::copy_data(&mut f, w, size, |b| {
            if let Some(m) = md5.as_mut() {
                m.update(b);
            }
        })
        .map_err(|e| ioerr(&i.src, e))?;
        if f.read(&mut [0u8; 1]).map_err(|e| ioerr(&i.src, e))? != 0 {
            return Err(err(format!(
                "{}: grew while preserving; run again",
                i.src.display()
            )));
        }
        if let (Some(m), Some(want)) = (md5, &i.md5) {
            let got = hex(&m.finalize());
            if &got != want {
                let path = &i.name[1..];
                if i.conffile {
                    log::info!("{}: keeping the admin's version of {path}", self.package);
                } else {
                    log::warn!(
                        "{}: {path} changed since install (md5 {got}, dpkg has {want}); carried as it is now",
                        self.package
                    );
                    changed.push(path.to_string());
                }
            }
        }
        Ok(())
    }
}

/// Repack `name` from `root` into `dir/pkg_version_arch.deb`.
pub fn repack_deb(root: &Path, name: &str, arch: Option<&str>, dir: &Path) -> Result<Repacked> {
    let plan = plan_deb(root, name, arch)?;
    plan.write(&dir.join(plan.file_name()))
}

/// Like [`repack_deb`], into `dir/pkg_version_arch.<identity>.deb` (first 16 hex digits); an
/// existing file of that name is the same package and is reused without packing again
/// (`reused`; `changed` is then empty, the warnings were given when it was packed).
pub fn repack_deb_cached(
    root: &Path,
    name: &str,
    arch: Option<&str>,
    dir: &Path,
) -> Result<Repacked> {
    let plan = plan_deb(root, name, arch)?;
    let id = hex(&plan.identity);
    let out = dir.join(format!("{}.{}.deb", plan.stem(), &id[..16]));
    if let Ok(m) = std::fs::metadata(&out) {
        if m.is_file() && m.len() > 0 {
            return Ok(Repacked {
                path: out,
                package: plan.package,
                version: plan.version,
                arch: plan.arch,
                identity: plan.identity,
                bytes: m.len(),
                changed: Vec::new(),
                missing: plan.missing,
                conffiles: plan.conffiles_md5,
                whole: Vec::new(),
                reused: true,
            });
        }
    }
    plan.write(&out)
}
