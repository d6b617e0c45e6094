//! Package managers behind one small trait: apt/dpkg for the Debian family, dnf/rpm for the RHEL
//! family. Every call goes through `cmd::Cmd`, against `root`, with only the staged local
//! repository enabled: no other repository and no network is ever consulted.

mod apt;
mod boot_guard;
mod dnf;

use crate::support::config::PackageManagerChoice;
use crate::support::error::{Error, Result};
use std::path::{Path, PathBuf};

pub use apt::{parse_simulation, Apt};
pub use boot_guard::DenyServiceActions;
pub use dnf::Dnf;

/// One package offered by the staged repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPackage {
    pub name: String,
    pub version: String,
    /// Path of the package file inside the repository directory.
    pub file: PathBuf,
}

/// One package a transaction would change, from the simulation: `old` None is a new install,
/// `new` None a removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

pub trait PackageManager {
    fn name(&self) -> &'static str;
    /// The packages the staged repository offers (from its metadata or package headers).
    fn repo_packages(&self, repo: &Path) -> std::result::Result<Vec<RepoPackage>, String>;
    /// Installed version of each name (None: not installed).
    fn installed(&self, names: &[String]) -> std::result::Result<Vec<Option<String>>, String>;
    /// Is version `a` newer than `b` by this family's rules?
    fn newer(&self, a: &str, b: &str) -> std::result::Result<bool, String>;
    /// Resolve and dry-run the install of `specs` (name + exact version); touches nothing.
    /// Returns the planned changes (empty when the family cannot tell).
    fn simulate(
        &self,
        repo: &Path,
        specs: &[(String, String)],
    ) -> std::result::Result<Vec<Change>, String>;
    fn install(&self, repo: &Path, specs: &[(String, String)]) -> std::result::Result<(), String>;
    /// Finish whatever an interrupted run left half done (dpkg --configure -a).
    fn repair(&self) -> std::result::Result<(), String>;
    /// Put back the given package files (older versions) and remove packages the patch added.
    fn restore(&self, files: &[PathBuf], remove: &[String]) -> std::result::Result<(), String>;
    /// Of the installed packages `names`, those with configuration the admin changed, and the
    /// changed paths: `restore` removes them keeping that configuration instead of purging.
    fn edited_config(&self, _names: &[String]) -> Vec<(String, Vec<String>)> {
        Vec::new()
    }
    /// Of `pre` (name, pre-patch version), the packages the database holds more than once (a
    /// failed scriptlet stopped the erase of one) and for which `has_copy` says a copy of the
    /// pre-patch version is at hand: the other versions' entries are dropped and the pre-patch
    /// one forgotten, so the restore installs that version afresh. Returns the names so treated.
    fn drop_extra_entries(
        &self,
        _pre: &[(String, Option<String>)],
        _has_copy: &dyn Fn(&str, &str) -> bool,
    ) -> Vec<String> {
        Vec::new()
    }
    /// No package half-installed or half-configured.
    fn audit(&self) -> std::result::Result<(), String>;
    /// Rebuild the installed `name` (`arch` when several) from the root into `pool`, for the
    /// rollback set (`preserve`).
    fn repack(
        &self,
        name: &str,
        _arch: Option<&str>,
        _pool: &Path,
    ) -> Result<crate::node::preserve::Repacked> {
        Err(crate::node::preserve::err(format!(
            "{name}: cannot preserve packages with {}",
            self.name()
        )))
    }
    /// After a restore: the files of the installed `names` are what their packages put there
    /// (beyond the differences the family expects, such as edited configuration). Files in
    /// `own` are left out: the rollback set put them back itself, as they were before.
    fn verify(&self, _names: &[String], _own: &[String]) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// Pick the package manager from the config; `auto` looks at what the root has.
pub fn select(
    choice: PackageManagerChoice,
    root: &Path,
    work: &Path,
) -> Result<Box<dyn PackageManager>> {
    let apt = || Box::new(Apt::new(root, work)) as Box<dyn PackageManager>;
    let dnf = || Box::new(Dnf::new(root, work)) as Box<dyn PackageManager>;
    match choice {
        PackageManagerChoice::Apt => Ok(apt()),
        PackageManagerChoice::Dnf => Ok(dnf()),
        PackageManagerChoice::Auto => {
            if root.join("var/lib/dpkg/status").exists() {
                Ok(apt())
            } else if root.join("var/lib/rpm").exists()
                || root.join("usr/lib/sysimage/rpm").exists()
            {
                Ok(dnf())
            } else {
                Err(Error::usage(format!(
                    "cannot tell the package manager of root {}: no dpkg status, no rpmdb; set package_manager",
                    root.display()
                )))
            }
        }
    }
}

/// Parse `Key: value` stanzas (Debian control format), as in a `Packages` file.
pub fn control_stanzas(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = cur.last_mut() {
                last.1.push('\n');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.push((k.to_string(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `edgepatch packages`: copy `root`'s dpkg status file to stdout, the baseline
/// `edgepatch-builder collect --baseline` resolves against.
pub fn print_dpkg_status(root: &Path) -> crate::support::error::Result<()> {
    use crate::support::error::Exit;
    use std::io;
    let p = root.join("var/lib/dpkg/status");
    let mut f = std::fs::File::open(&p).map_err(|e| {
        Error::new(
            Exit::Usage,
            format!(
                "{}: {e}; packages works on Debian-family roots only",
                p.display()
            ),
        )
    })?;
    io::copy(&mut f, &mut io::stdout().lock())
        .map(|_| ())
        .map_err(|e| Error::io(Exit::Usage, &p, e))
}
