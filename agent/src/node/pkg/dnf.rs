//! RHEL family: dnf with `--installroot`, `reposdir=/dev/null` and the staged repository as the
//! only repo (its repodata was made by the builder with createrepo_c); rpm underneath.

use super::{Change, PackageManager, RepoPackage};
use crate::support::cmd::Cmd;
use std::path::{Path, PathBuf};

pub struct Dnf {
    root: PathBuf,
    work: PathBuf,
}

type R<T> = std::result::Result<T, String>;

impl Dnf {
    pub fn new(root: &Path, work: &Path) -> Dnf {
        Dnf {
            root: root.to_path_buf(),
            work: work.join("dnf"),
        }
    }

    fn scratch_root(&self) -> bool {
        self.root != Path::new("/")
    }

    fn rpm(&self) -> Cmd {
        let c = Cmd::new("rpm");
        if self.scratch_root() {
            c.arg("--root").arg(&self.root)
        } else {
            c
        }
    }

    fn dnf(&self, repo: &Path) -> Cmd {
        let mut c = Cmd::new("dnf").env("LC_ALL", "C").args([
            "-y",
            "-q",
            "--setopt=reposdir=/dev/null",
            "--setopt=install_weak_deps=False",
            "--setopt=edgepatch.gpgcheck=0",
            "--disableplugin=*",
            "--repo=edgepatch",
        ]);
        c = c.arg(format!(
            "--setopt=cachedir={}",
            self.work.join("cache").display()
        ));
        c = c.arg(format!("--repofrompath=edgepatch,{}", repo.display()));
        if self.scratch_root() {
            // A scratch root has no release package to detect $releasever from; nothing uses it.
            c = c
                .arg(format!("--installroot={}", self.root.display()))
                .arg("--releasever=edgepatch");
        }
        c
    }

    /// `NAME-VERSION` per target; `NAME-VERSION.ARCH` per installed arch for a name installed
    /// for two arches (multilib), or installed and offered for two (for `NAME-VERSION` dnf
    /// upgrades the best arch only, or installs the other arch new to match it).
    fn spec_args(&self, repo: &Path, specs: &[(String, String)]) -> R<Vec<String>> {
        let names: Vec<&String> = specs.iter().map(|(n, _)| n).collect();
        let installed = self.installed_arches(&names)?;
        let offered = self.offered_arches(repo);
        let mut args = Vec::new();
        for (n, v) in specs {
            let archs = |rows: &[(String, String)]| {
                let mut a: Vec<String> = rows
                    .iter()
                    .filter(|(m, _)| m == n)
                    .map(|(_, a)| a.split(' ').next().unwrap_or(a).to_string())
                    .collect();
                a.sort_unstable();
                a.dedup();
                a
            };
            let (have, offer) = (archs(&installed), archs(&offered));
            // rpm -U of one arch erases the other arch's package of the same version (rpm
            // #2837): one arch already at the target cannot have the other brought up to it.
            let mut versions: Vec<&str> = installed
                .iter()
                .filter(|(m, _)| m == n)
                .filter_map(|(_, a)| a.split_once(' ').map(|(_, v)| v))
                .collect();
            versions.sort_unstable();
            versions.dedup();
            if versions.len() > 1 && versions.iter().any(|x| x.trim_start_matches("0:") == v) {
                return Err(format!(
                    "{n} is installed at different versions for its arches ({}); rpm cannot \
                     upgrade one to the version of the other: bring them to one version first",
                    installed
                        .iter()
                        .filter(|(m, _)| m == n)
                        .map(|(_, a)| a.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if have.len() > 1 || (!have.is_empty() && offer.len() > 1) {
                args.extend(have.iter().map(|a| format!("{n}-{v}.{a}")));
            } else {
                args.push(format!("{n}-{v}"));
            }
        }
        Ok(args)
    }

    /// (name, "ARCH EVR") of each installed package of `names`.
    fn installed_arches(&self, names: &[&String]) -> R<Vec<(String, String)>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let out = self
            .rpm()
            .args([
                "-q",
                "--qf",
                "%{NAME}\t%{ARCH} %{EPOCHNUM}:%{VERSION}-%{RELEASE}\n",
            ])
            .args(names)
            .output()
            .map_err(|e| e.to_string())?;
        Ok(arch_rows(&out.stdout))
    }

    /// (name, arch) of each package in the staged repository.
    fn offered_arches(&self, repo: &Path) -> Vec<(String, String)> {
        let pool = repo.join("pool");
        let files: Vec<PathBuf> = std::fs::read_dir(&pool)
            .into_iter()
            .flatten()
            .filter_map(|d| d.ok().map(|d| d.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rpm"))
            .collect();
        if files.is_empty() {
            return Vec::new();
        }
        Cmd::new("rpm")
            .args([
                "-qp",
                "--nosignature",
                "--nodigest",
                "--qf",
                "%{NAME}\t%{ARCH}\n",
            ])
            .args(&files)
            .output()
            .map(|o| arch_rows(&o.stdout))
            .unwrap_or_default()
    }
}

/// `NAME\tARCH` lines as rows (other lines, such as "package X is not installed", skipped).
fn arch_rows(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, a)| !a.is_empty() && !a.contains('\t'))
        .map(|(n, a)| (n.to_string(), a.to_string()))
        .collect()
}

impl PackageManager for Dnf {
    fn name(&self) -> &'static str {
        "dnf"
    }

    fn repo_packages(&self, repo: &Path) -> R<Vec<RepoPackage>> {
        let pool = repo.join("pool");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&pool)
            .map_err(|e| format!("{}: {e}", pool.display()))?
            .filter_map(|d| d.ok().map(|d| d.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rpm"))
            .collect();
        files.sort_unstable();
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let out = Cmd::new("rpm")
            .args([
                "-qp",
                "--nosignature",
                "--nodigest",
                "--qf",
                "%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\n",
            ])
            .args(&files)
            .run()?;
        let lines: Vec<&str> = out.stdout.lines().collect();
        if lines.len() != files.len() {
            return Err(format!(
                "rpm -qp returned {} lines for {} packages",
                lines.len(),
                files.len()
            ));
        }
        lines
            .iter()
            .zip(files)
            .map(|(l, f)| {
                let (name, evr) = l
                    .split_once('\t')
                    .ok_or_else(|| format!("rpm -qp: {l:?}"))?;
                Ok(RepoPackage {
                    name: name.to_string(),
                    version: evr.trim_start_matches("0:").to_string(),
                    file: f.strip_prefix(repo).unwrap_or(&f).to_path_buf(),
                })
            })
            .collect()
    }

    fn installed(&self, names: &[String]) -> R<Vec<Option<String>>> {
        let out = self
            .rpm()
            .args([
                "-q",
                "--qf",
                "%{NAME}\t%{NAME}.%{ARCH}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\n",
            ])
            .args(names)
            .output()
            .map_err(|e| e.to_string())?;
        // `names` are NAME, or NAME.ARCH for a multilib package. A plain name installed for two
        // arches at two versions reads as the lower one (so an offered upgrade still counts).
        let mut v = Vec::new();
        for n in names {
            let mut found: Option<String> = None;
            for l in out.stdout.lines() {
                let w: Vec<&str> = l.split('\t').collect();
                if let [name, arched, evr] = w[..] {
                    if name == n || arched == n {
                        let evr = evr.trim_start_matches("0:").to_string();
                        found = match found {
                            Some(f) if !self.newer(&f, &evr)? => Some(f),
                            _ => Some(evr),
                        };
                    }
                }
            }
            v.push(found);
        }
        Ok(v)
    }

    fn newer(&self, a: &str, b: &str) -> R<bool> {
        let expr = format!("%{{lua: print(rpm.vercmp(\"{a}\", \"{b}\"))}}");
        if a.contains(['"', '\\']) || b.contains(['"', '\\']) {
            return Err(format!("odd version string {a:?} or {b:?}"));
        }
        let out = Cmd::new("rpm").arg("--eval").arg(expr).run()?;
        Ok(out.stdout.trim() == "1")
    }

    fn simulate(&self, repo: &Path, specs: &[(String, String)]) -> R<Vec<Change>> {
        // tsflags=test runs the whole rpm transaction check without changing anything; -v
        // makes dnf 4 log its resolved plan, one `---> Package` line per package (the summary
        // table wraps long names and shows no old versions).
        let o = self
            .dnf(repo)
            .args(["-v", "--setopt=tsflags=test", "install"])
            .args(self.spec_args(repo, specs)?)
            .run()?;
        // The plan's names (dependencies too) installed for an arch the plan does not name
        // change per arch: a new i686 beside an installed x86_64 is not an install of the name.
        let names: Vec<String> = parse_plan(&o.stdout, &[])
            .into_iter()
            .map(|c| c.name)
            .collect();
        let installed: Vec<(String, String)> = self
            .installed_arches(&names.iter().collect::<Vec<_>>())?
            .into_iter()
            .map(|(n, a)| (n, a.split(' ').next().unwrap_or_default().to_string()))
            .collect();
        Ok(parse_plan(&o.stdout, &installed))
    }

    fn install(&self, repo: &Path, specs: &[(String, String)]) -> R<()> {
        let names: Vec<&String> = specs.iter().map(|(n, _)| n).collect();
        let arch_of = |rows: Vec<(String, String)>| -> Vec<String> {
            rows.into_iter()
                .map(|(n, a)| format!("{n}.{}", a.split(' ').next().unwrap_or_default()))
                .collect()
        };
        let before = arch_of(self.installed_arches(&names)?);
        let out = self
            .dnf(repo)
            .arg("install")
            .args(self.spec_args(repo, specs)?)
            .run()?;
        scriptlet_failure(&out)?;
        // Every arch of a target that was installed still is (rpm can erase a multilib
        // package's other arch, rpm #2837).
        let after = arch_of(self.installed_arches(&names)?);
        match before.iter().find(|b| !after.contains(b)) {
            Some(gone) => Err(format!("the install removed {gone}")),
            None => Ok(()),
        }
    }

    fn repair(&self) -> R<()> {
        // rpm transactions do not leave packages half-configured the way dpkg can; a killed
        // transaction can leave duplicates, which `rpm --verifydb` does not fix, so audit finds them.
        Ok(())
    }

    fn drop_extra_entries(
        &self,
        pre: &[(String, Option<String>)],
        has_copy: &dyn Fn(&str, &str) -> bool,
    ) -> Vec<String> {
        // Entries of the undone versions go with their files (the ones no other entry owns),
        // without their scriptlets (one of those failed); the pre-patch entry goes from the
        // database only: its files stay until the restore writes them again. Not for multilib
        // (one name, several arches: that is no duplicate).
        // (NAME.ARCH keys are queried by their NAME too: another arch's entries show there.)
        let mut names: Vec<&str> = pre
            .iter()
            .filter(|(_, w)| w.is_some())
            .map(|(n, _)| n.as_str())
            .collect();
        let bases: Vec<&str> = names
            .iter()
            .filter_map(|n| n.rsplit_once('.').map(|(b, _)| b))
            .collect();
        names.extend(bases);
        if names.is_empty() {
            return Vec::new();
        }
        let Ok(out) = self
            .rpm()
            .args([
                "-q",
                "--qf",
                "%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\t%{ARCH}\t%{NVRA}\n",
            ])
            .args(&names)
            .output()
        else {
            return Vec::new();
        };
        let mut fixed = Vec::new();
        for (name, want) in pre {
            let Some(want) = want else { continue };
            let mut all: Vec<Vec<&str>> = out
                .stdout
                .lines()
                .map(|l| l.split('\t').collect::<Vec<_>>())
                .filter(|w| w.len() == 4)
                .collect();
            all.sort_unstable();
            all.dedup();
            let rows: Vec<&Vec<&str>> = all
                .iter()
                .filter(|w| w[0] == name || format!("{}.{}", w[0], w[2]) == *name)
                .collect();
            // Multilib: rpm -U of one arch's copy erases the other arch's same version (rpm
            // #2837), so no repair here; the restore says what is not back.
            if rows
                .first()
                .is_some_and(|r| all.iter().any(|w| w[0] == r[0] && w[2] != r[2]))
            {
                continue;
            }
            let is_want = |w: &Vec<&str>| w[1].trim_start_matches("0:") == want;
            if rows.len() < 2
                || rows.iter().any(|w| w[2] != rows[0][2])
                || !rows.iter().any(|w| is_want(w))
                || rows.iter().all(|w| is_want(w))
                || !has_copy(name, want)
            {
                continue;
            }
            let (keep, other): (Vec<&Vec<&str>>, Vec<_>) =
                rows.iter().copied().partition(|w| is_want(w));
            let erase = |extra: &[&str], which: &[&Vec<&str>]| {
                self.rpm()
                    .args(["-e", "--nodeps", "--noscripts", "--notriggers"])
                    .args(extra)
                    .args(which.iter().map(|w| w[3]))
                    .run()
            };
            match erase(&[], &other).and_then(|_| erase(&["--justdb"], &keep)) {
                Ok(_) => {
                    log::warn!(
                        "{name}: the database held {} entries (a scriptlet failed); kept {want} \
                         to be installed again",
                        rows.len()
                    );
                    fixed.push(name.clone());
                }
                Err(e) => log::warn!("{name}: cannot drop the extra database entries: {e}"),
            }
        }
        fixed
    }

    fn restore(&self, files: &[PathBuf], remove: &[String]) -> R<()> {
        // Packages the patch added go first (one may obsolete a package put back), without
        // dependency checks: the packages needing them are the ones being put back. The
        // pre-patch set was consistent, so the reinstall skips them too. Repacked copies
        // carry re-encoded payloads and files as they were (admin edits): no digest checks
        // (the rollback set's sha256 guards the file).
        // Both steps run even when the first fails (what can be put back is), and a scriptlet
        // that failed in either makes the restore incomplete, as it does an install.
        let mut first = Ok(());
        if !remove.is_empty() {
            first = self
                .rpm()
                .args(["-e", "--nodeps"])
                .args(remove)
                .run()
                .and_then(|o| scriptlet_failure(&o));
        }
        if !files.is_empty() {
            let out = self
                .rpm()
                .args([
                    "-U",
                    "--oldpackage",
                    "--replacepkgs",
                    "--nodeps",
                    "--nosignature",
                ])
                .args(["--nodigest", "--nofiledigest"])
                .args(files)
                .run()?;
            scriptlet_failure(&out)?;
        }
        first
    }

    fn repack(
        &self,
        name: &str,
        _arch: Option<&str>,
        pool: &Path,
    ) -> crate::support::error::Result<crate::node::preserve::Repacked> {
        crate::node::preserve::rpm::repack(self.rpm(), &self.root, name, pool)
    }

    fn verify(&self, names: &[String], own: &[String]) -> R<()> {
        // Metadata only (cheap): a file missing, or of another type, mode, owner, device or link
        // target than its package says. Not checked, as they are expected: %config files (the
        // admin's edits stay), sizes, digests and mtimes (files carried as they were changed
        // before the patch), dependencies and %verify scripts.
        if names.is_empty() {
            return Ok(());
        }
        let out = self
            .rpm()
            .args([
                "-V",
                "--nodeps",
                "--noscripts",
                "--noconfig",
                "--nofiledigest",
            ])
            .args(["--nosize", "--nomtime"])
            .args(names)
            .output()
            .map_err(|e| e.to_string())?;
        // `missing     /path`, `S.5....T.  c /path`: the path starts at the first " /".
        let ours = |l: &&str| {
            l.find(" /")
                .is_some_and(|i| own.iter().any(|p| *p == l[i + 1..]))
        };
        match out.stdout.lines().find(|l| !ours(l)) {
            Some(l) => Err(format!("rpm -V: {}", l.trim())),
            None if !out.ok() && out.stdout.trim().is_empty() => {
                Err(format!("rpm -V: {}", out.last_line()))
            }
            None => Ok(()),
        }
    }

    fn audit(&self) -> R<()> {
        // Two versions of one package installed at once means an interrupted transaction.
        // (Per NAME.ARCH: one name for two arches is multilib, not a duplicate.)
        let out = self
            .rpm()
            .args(["-qa", "--qf", "%{NAME}.%{ARCH}\n"])
            .run()?;
        let mut names: Vec<&str> = out
            .stdout
            .lines()
            .filter(|n| !n.starts_with("gpg-pubkey"))
            .collect();
        names.sort_unstable();
        match names.windows(2).find(|w| w[0] == w[1]) {
            Some(w) => Err(format!(
                "rpmdb holds two versions of {}",
                w[0].rsplit_once('.').map_or(w[0], |(n, _)| n)
            )),
            None => Ok(()),
        }
    }
}

/// rpm and dnf exit 0 when a %post (or %preun, %postun, trigger) scriptlet fails; the package
/// is then half set up. dnf -q says `Error in POSTIN scriptlet in rpm package NAME`, rpm
/// `%post(NEVRA) scriptlet failed, exit status N`.
fn scriptlet_failure(out: &crate::support::cmd::Output) -> R<()> {
    match (out.stdout.lines().chain(out.stderr.lines()))
        .find(|l| l.contains("scriptlet") && (l.contains("Error") || l.contains("failed")))
    {
        Some(l) => Err(l.trim().to_string()),
        None => Ok(()),
    }
}

/// The changes in dnf 4's `-v` plan: `---> Package NAME.ARCH EVR will be WHAT`, where WHAT is
/// `upgraded`, `downgraded`, `obsoleted`, `erased` (the installed version) or `installed`,
/// `an upgrade`, `a downgrade` (the new one). One Change per name; per `NAME.ARCH` for a name
/// that the plan and `installed` (name, arch) rows have for two arches together (multilib:
/// rpm takes `NAME.ARCH` wherever it takes a name).
pub fn parse_plan(out: &str, installed: &[(String, String)]) -> Vec<Change> {
    let mut rows = Vec::new();
    for l in out.lines() {
        let Some((na, rest)) = l
            .trim()
            .strip_prefix("---> Package ")
            .and_then(|r| r.split_once(' '))
        else {
            continue;
        };
        let (Some((name, arch)), Some((evr, what))) =
            (na.rsplit_once('.'), rest.split_once(" will be "))
        else {
            continue;
        };
        let old = matches!(what, "upgraded" | "downgraded" | "obsoleted" | "erased");
        if old || matches!(what, "installed" | "an upgrade" | "a downgrade") {
            rows.push((name, arch, evr, old));
        }
    }
    let mut v: Vec<Change> = Vec::new();
    for &(name, arch, evr, old) in &rows {
        let two = rows.iter().any(|r| r.0 == name && r.1 != arch)
            || installed.iter().any(|(n, a)| n == name && a != arch);
        let key = if two {
            format!("{name}.{arch}")
        } else {
            name.to_string()
        };
        if !v.iter().any(|c| c.name == key) {
            v.push(Change {
                name: key.clone(),
                old: None,
                new: None,
            });
        }
        if let Some(c) = v.iter_mut().find(|c| c.name == key) {
            *(if old { &mut c.old } else { &mut c.new }) = Some(evr.to_string());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_lines_become_changes() {
        let out = "---> Package ep-dep.noarch 1.0-1 will be installed\n\
                   ---> Package ep-new.x86_64 1:2.0-1 will be installed\n\
                   ---> Package ep-old.noarch 1.0-1 will be obsoleted\n\
                   ---> Package ep-a.noarch 1.0-1 will be upgraded\n\
                   ---> Package ep-a.noarch 2.0-1 will be an upgrade\n\
                   ---> Package ep-b.noarch 3.0-1 will be reinstalled\n";
        let ch = |n: &str, o: Option<&str>, v: Option<&str>| Change {
            name: n.into(),
            old: o.map(Into::into),
            new: v.map(Into::into),
        };
        assert_eq!(
            parse_plan(out, &[]),
            vec![
                ch("ep-dep", None, Some("1.0-1")),
                ch("ep-new", None, Some("1:2.0-1")),
                ch("ep-old", Some("1.0-1"), None),
                ch("ep-a", Some("1.0-1"), Some("2.0-1")),
            ]
        );
        // Multilib: a name the plan has for two arches, or that is installed for two, changes
        // per NAME.ARCH.
        let out = "---> Package ml.i686 1.0-1 will be upgraded\n\
                   ---> Package ml.i686 2.0-1 will be an upgrade\n\
                   ---> Package ml.x86_64 1.0-1 will be upgraded\n\
                   ---> Package ml.x86_64 2.0-1 will be an upgrade\n\
                   ---> Package lib.x86_64 1.0-1 will be upgraded\n\
                   ---> Package lib.x86_64 2.0-1 will be an upgrade\n";
        assert_eq!(
            parse_plan(out, &[("lib".into(), "i686".into())]),
            vec![
                ch("ml.i686", Some("1.0-1"), Some("2.0-1")),
                ch("ml.x86_64", Some("1.0-1"), Some("2.0-1")),
                ch("lib.x86_64", Some("1.0-1"), Some("2.0-1")),
            ]
        );
        // A new i686 beside an installed x86_64 is a change of ml.i686, not an install of ml.
        let out = "---> Package ml.i686 1.0-1 will be installed\n";
        assert_eq!(
            parse_plan(out, &[("ml".into(), "x86_64".into())]),
            vec![ch("ml.i686", None, Some("1.0-1"))]
        );
        assert_eq!(
            arch_rows("a\tx86_64\npackage b is not installed\n"),
            [("a".to_string(), "x86_64".to_string())]
        );
    }
}
