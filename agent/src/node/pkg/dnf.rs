//! RHEL family: dnf with `--installroot`, `reposdir=/dev/null` and the staged repository as the
//! only repo (its repodata was made by the builder with createrepo_c); rpm underneath.

use super::{PackageManager, RepoPackage};
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
        let mut c = Cmd::new("dnf").args([
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

    fn spec_args(specs: &[(String, String)]) -> Vec<String> {
        specs.iter().map(|(n, v)| format!("{n}-{v}")).collect()
    }
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
            .args(["-q", "--qf", "%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\n"])
            .args(names)
            .output()
            .map_err(|e| e.to_string())?;
        Ok(names
            .iter()
            .map(|n| {
                out.stdout.lines().find_map(|l| {
                    let (name, evr) = l.split_once('\t')?;
                    (name == n).then(|| evr.trim_start_matches("0:").to_string())
                })
            })
            .collect())
    }

    fn newer(&self, a: &str, b: &str) -> R<bool> {
        let expr = format!("%{{lua: print(rpm.vercmp(\"{a}\", \"{b}\"))}}");
        if a.contains(['"', '\\']) || b.contains(['"', '\\']) {
            return Err(format!("odd version string {a:?} or {b:?}"));
        }
        let out = Cmd::new("rpm").arg("--eval").arg(expr).run()?;
        Ok(out.stdout.trim() == "1")
    }

    fn simulate(&self, repo: &Path, specs: &[(String, String)]) -> R<Vec<super::Change>> {
        // tsflags=test runs the whole rpm transaction check without changing anything.
        self.dnf(repo)
            .arg("--setopt=tsflags=test")
            .arg("install")
            .args(Self::spec_args(specs))
            .run()
            .map(|_| Vec::new())
    }

    fn install(&self, repo: &Path, specs: &[(String, String)]) -> R<()> {
        self.dnf(repo)
            .arg("install")
            .args(Self::spec_args(specs))
            .run()
            .map(|_| ())
    }

    fn repair(&self) -> R<()> {
        // rpm transactions do not leave packages half-configured the way dpkg can; a killed
        // transaction can leave duplicates, which `rpm --verifydb` does not fix, so audit finds them.
        Ok(())
    }

    fn restore(&self, files: &[PathBuf], remove: &[String]) -> R<()> {
        if !files.is_empty() {
            self.rpm()
                .args(["-U", "--oldpackage", "--replacepkgs", "--nosignature"])
                .args(files)
                .run()?;
        }
        if !remove.is_empty() {
            self.rpm().arg("-e").args(remove).run()?;
        }
        Ok(())
    }

    fn audit(&self) -> R<()> {
        // Two versions of one package installed at once means an interrupted transaction.
        let out = self.rpm().args(["-qa", "--qf", "%{NAME}\n"]).run()?;
        let mut names: Vec<&str> = out
            .stdout
            .lines()
            .filter(|n| !n.starts_with("gpg-pubkey"))
            .collect();
        names.sort_unstable();
        match names.windows(2).find(|w| w[0] == w[1]) {
            Some(w) => Err(format!("rpmdb holds two versions of {}", w[0])),
            None => Ok(()),
        }
    }
}
