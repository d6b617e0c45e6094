//! Debian family: apt-get with its own APT_CONFIG, whose only source is the staged flat
//! repository (`deb [trusted=yes] file:DIR ./`: the bundle signature was already checked), and
//! dpkg with `--root`/`--admindir` when the root is not `/`.

use super::{control_stanzas, Change, PackageManager, RepoPackage};
use crate::support::cmd::Cmd;
use std::path::{Path, PathBuf};

pub struct Apt {
    root: PathBuf,
    work: PathBuf,
}

type R<T> = std::result::Result<T, String>;

impl Apt {
    pub fn new(root: &Path, work: &Path) -> Apt {
        Apt {
            root: root.to_path_buf(),
            work: work.join("apt"),
        }
    }

    fn scratch_root(&self) -> bool {
        self.root != Path::new("/")
    }

    fn admindir(&self) -> PathBuf {
        self.root.join("var/lib/dpkg")
    }

    /// dpkg options that point it at `root`.
    fn dpkg_opts(&self) -> Vec<String> {
        if !self.scratch_root() {
            return vec!["--force-confdef".into(), "--force-confold".into()];
        }
        vec![
            format!("--root={}", self.root.display()),
            format!("--admindir={}", self.admindir().display()),
            "--force-script-chrootless".into(),
            "--force-confdef".into(),
            "--force-confold".into(),
        ]
    }

    fn dpkg(&self) -> Cmd {
        Cmd::new("dpkg")
            .args(self.dpkg_opts())
            .env("DEBIAN_FRONTEND", "noninteractive")
    }

    /// Write an APT_CONFIG whose only source is `repo`, and fresh state dirs for it.
    fn configure(&self, repo: &Path) -> R<PathBuf> {
        let w = &self.work;
        let _ = std::fs::remove_dir_all(w);
        for d in [
            "lists/partial",
            "cache/archives/partial",
            "etc/sources.list.d",
            "etc/preferences.d",
            "etc/apt.conf.d",
            "log",
        ] {
            std::fs::create_dir_all(w.join(d))
                .map_err(|e| format!("{}: {e}", w.join(d).display()))?;
        }
        let sources = w.join("etc/sources.list");
        std::fs::write(
            &sources,
            format!("deb [trusted=yes] file:{} ./\n", repo.display()),
        )
        .map_err(|e| format!("{}: {e}", sources.display()))?;
        let mut conf = format!(
            "Dir::Etc::SourceList \"{w}/etc/sources.list\";\n\
             Dir::Etc::SourceParts \"{w}/etc/sources.list.d\";\n\
             Dir::Etc::Preferences \"{w}/etc/preferences\";\n\
             Dir::Etc::PreferencesParts \"{w}/etc/preferences.d\";\n\
             Dir::Etc::Parts \"{w}/etc/apt.conf.d\";\n\
             Dir::State::Lists \"{w}/lists\";\n\
             Dir::State::status \"{admin}/status\";\n\
             Dir::Cache \"{w}/cache\";\n\
             Dir::Cache::pkgcache \"\";\n\
             Dir::Cache::srcpkgcache \"\";\n\
             Dir::Log \"{w}/log\";\n\
             APT::Install-Recommends \"false\";\n\
             APT::Sandbox::User \"root\";\n\
             Acquire::Languages \"none\";\n\
             Acquire::http::Proxy \"DIRECT\";\n\
             Dpkg::Use-Pty \"false\";\n",
            w = w.display(),
            admin = self.admindir().display()
        );
        conf += "DPkg::Options {";
        for o in self.dpkg_opts() {
            conf += &format!(" \"{o}\";");
        }
        conf += " };\n";
        let path = w.join("apt.conf");
        std::fs::write(&path, conf).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    fn apt_get(&self, conf: &Path) -> Cmd {
        Cmd::new("apt-get")
            .env("APT_CONFIG", conf)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-q", "-y"])
    }

    fn update(&self, repo: &Path) -> R<PathBuf> {
        let conf = self.configure(repo)?;
        self.apt_get(&conf).arg("update").run()?;
        Ok(conf)
    }

    fn spec_args(specs: &[(String, String)]) -> Vec<String> {
        specs.iter().map(|(n, v)| format!("{n}={v}")).collect()
    }
}

/// The changes in `apt-get -s` output: `Inst NAME [OLD] (NEW ...)` is an upgrade or downgrade,
/// `Inst NAME (NEW ...)` a new install, `Remv NAME [OLD]` a removal.
pub fn parse_simulation(out: &str) -> Vec<Change> {
    let mut v = Vec::new();
    for l in out.lines() {
        let mut w = l.split(' ');
        let (kind, Some(name)) = (w.next(), w.next()) else {
            continue;
        };
        let rest: Vec<&str> = w.collect();
        let old = rest
            .first()
            .and_then(|t| t.strip_prefix('[')?.strip_suffix(']'));
        let new = rest
            .iter()
            .find_map(|t| t.strip_prefix('('))
            .map(|t| t.trim_end_matches(')'));
        let (old, new) = match kind {
            Some("Inst") if new.is_some() => (old, new),
            Some("Remv") => (old, None),
            _ => continue,
        };
        v.push(Change {
            name: name.to_string(),
            old: old.map(str::to_string),
            new: new.map(str::to_string),
        });
    }
    v
}

impl PackageManager for Apt {
    fn name(&self) -> &'static str {
        "apt"
    }

    fn repo_packages(&self, repo: &Path) -> R<Vec<RepoPackage>> {
        let path = repo.join("Packages");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut out = Vec::new();
        for stanza in control_stanzas(&text) {
            let get = |k: &str| {
                stanza
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
            };
            match (get("Package"), get("Version"), get("Filename")) {
                (Some(name), Some(version), Some(file)) => out.push(RepoPackage {
                    name,
                    version,
                    file: PathBuf::from(file),
                }),
                _ => {
                    return Err(format!(
                        "{}: stanza without Package/Version/Filename",
                        path.display()
                    ))
                }
            }
        }
        Ok(out)
    }

    fn installed(&self, names: &[String]) -> R<Vec<Option<String>>> {
        let out = Cmd::new("dpkg-query")
            .arg(format!("--admindir={}", self.admindir().display()))
            .args(["-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n"])
            .args(names)
            .output()
            .map_err(|e| e.to_string())?;
        // dpkg-query exits 1 when a name is unknown; that just means "not installed". A package
        // counts as present in any state but not-installed (n) and config-files (c), so that a
        // half-configured new version is seen and can be undone.
        Ok(names
            .iter()
            .map(|n| {
                out.stdout.lines().find_map(|l| {
                    let f: Vec<&str> = l.split('\t').collect();
                    let present = f.len() == 3
                        && f[0] == n
                        && !matches!(f[2].as_bytes().get(1), Some(b'n' | b'c') | None);
                    present.then(|| f[1].to_string())
                })
            })
            .collect())
    }

    fn newer(&self, a: &str, b: &str) -> R<bool> {
        let out = Cmd::new("dpkg")
            .args(["--compare-versions", a, "gt", b])
            .output()
            .map_err(|e| e.to_string())?;
        match out.status {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(format!(
                "dpkg --compare-versions {a} {b}: {}",
                out.last_line()
            )),
        }
    }

    fn simulate(&self, repo: &Path, specs: &[(String, String)]) -> R<Vec<Change>> {
        let conf = self.update(repo)?;
        self.apt_get(&conf)
            .arg("-s")
            .arg("install")
            .args(Self::spec_args(specs))
            .run()
            .map(|o| parse_simulation(&o.stdout))
    }

    fn install(&self, repo: &Path, specs: &[(String, String)]) -> R<()> {
        let conf = self.update(repo)?;
        let cmd = self
            .apt_get(&conf)
            .arg("install")
            .args(Self::spec_args(specs));
        let out = cmd.output().map_err(|e| e.to_string())?;
        if out.ok() {
            return Ok(());
        }
        // apt's last line only says "dpkg returned an error"; dpkg's own line names the package.
        let dpkg_line = out
            .stderr
            .lines()
            .chain(out.stdout.lines())
            .find(|l| l.contains("error processing"));
        Err(format!(
            "apt-get exited {}: {}",
            out.status
                .map_or("by signal".to_string(), |c| c.to_string()),
            dpkg_line.map_or_else(|| out.last_line(), |l| l.trim().to_string())
        ))
    }

    fn repair(&self) -> R<()> {
        self.dpkg().args(["--configure", "-a"]).run().map(|_| ())
    }

    fn restore(&self, files: &[PathBuf], remove: &[String]) -> R<()> {
        // Packages the patch added go first: one that Conflicts/Replaces a package the patch
        // removed would stop dpkg from putting that one back. Their dependents are about to be
        // downgraded to versions that never needed them, hence --force-depends.
        // A package whose conffiles the admin edited is removed, not purged: its configuration
        // stays (dpkg state config-files), as `apt-get remove` would leave it.
        let edited: Vec<String> = self
            .edited_config(remove)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let (keep, purge): (Vec<&String>, Vec<&String>) =
            remove.iter().partition(|n| edited.contains(n));
        for (how, names) in [("--purge", purge), ("--remove", keep)] {
            if !names.is_empty() {
                self.dpkg()
                    .args(["--force-depends", how])
                    .args(names)
                    .run()?;
            }
        }
        crate::support::testhook::pause_point("restore-purged");
        // A failed postinst leaves the new version half-configured; installing the old .deb over
        // it runs dpkg's own upgrade/downgrade path, then configuration is finished.
        if !files.is_empty() {
            self.dpkg().arg("--install").args(files).run()?;
        }
        self.repair()
    }

    fn edited_config(&self, names: &[String]) -> Vec<(String, Vec<String>)> {
        names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    crate::node::preserve::db::edited_conffiles(&self.root, n),
                )
            })
            .filter(|(_, paths)| !paths.is_empty())
            .collect()
    }

    fn repack(
        &self,
        name: &str,
        arch: Option<&str>,
        pool: &Path,
    ) -> crate::support::error::Result<crate::node::preserve::Repacked> {
        crate::node::preserve::repack_deb_cached(&self.root, name, arch, pool)
    }

    fn audit(&self) -> R<()> {
        // Any package unpacked but not configured, half-installed, awaiting triggers, or marked
        // reinst-required means dpkg was interrupted or a maintainer script failed.
        let out = Cmd::new("dpkg-query")
            .arg(format!("--admindir={}", self.admindir().display()))
            .args(["-W", "-f", "${Package}\t${db:Status-Abbrev}\n"])
            .run()?;
        let broken: Vec<&str> = out
            .stdout
            .lines()
            .filter_map(|l| {
                let (name, abbrev) = l.split_once('\t')?;
                let b = abbrev.as_bytes();
                let bad = matches!(b.get(1), Some(b'U' | b'F' | b'H' | b'W' | b't'))
                    || b.get(2) == Some(&b'R');
                bad.then_some(name)
            })
            .collect();
        if broken.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "dpkg left {} not fully installed",
                broken.join(" ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulation_lines_become_changes() {
        let out = "NOTE: simulation\nInst hostname [3.23+nmu1] (3.23+nmu1+ep1 localhost [amd64])\n\
                   Inst ep-new (1.0 localhost [all])\nRemv ep-old [0.9]\nConf hostname (3.23+nmu1+ep1 localhost [amd64])\n";
        let c = parse_simulation(out);
        let ch = |n: &str, o: Option<&str>, v: Option<&str>| Change {
            name: n.into(),
            old: o.map(Into::into),
            new: v.map(Into::into),
        };
        assert_eq!(
            c,
            vec![
                ch("hostname", Some("3.23+nmu1"), Some("3.23+nmu1+ep1")),
                ch("ep-new", None, Some("1.0")),
                ch("ep-old", Some("0.9"), None),
            ]
        );
    }
}
