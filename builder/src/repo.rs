//! Repository metadata, written at build time so nodes never have to generate it ("move
//! complexity to the center"): an apt flat repository `Packages` file for .deb, `repodata/` from
//! createrepo_c for .rpm. Packages live under `pool/` in both.

use anyhow::{bail, Context, Result};
use edgepatch::bundle::format::hex;
use edgepatch::support::cmd::Cmd;
use std::path::{Path, PathBuf};

pub struct Package {
    /// Entry name inside the bundle, `pool/<file name>`.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: [u8; 32],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Deb,
    Rpm,
}

/// A generated metadata file: entry name and contents.
pub struct MetaFile {
    pub name: String,
    pub data: Vec<u8>,
}

pub fn family_of(path: &Path) -> Option<Family> {
    match path.extension()?.to_str()? {
        "deb" => Some(Family::Deb),
        "rpm" => Some(Family::Rpm),
        _ => None,
    }
}

pub fn metadata(family: Family, packages: &[Package]) -> Result<Vec<MetaFile>> {
    match family {
        Family::Deb => Ok(vec![MetaFile {
            name: "Packages".into(),
            data: apt_packages(packages)?,
        }]),
        Family::Rpm => rpm_repodata(packages),
    }
}

/// `Packages` stanzas: the control fields from `dpkg-deb -f`, plus Filename, Size and SHA256.
fn apt_packages(packages: &[Package]) -> Result<Vec<u8>> {
    let mut out = String::new();
    for p in packages {
        let control = Cmd::new("dpkg-deb")
            .arg("-f")
            .arg(&p.path)
            .run()
            .map_err(anyhow::Error::msg)
            .with_context(|| {
                format!(
                    "reading control fields of {} (is dpkg-dev installed?)",
                    p.path.display()
                )
            })?;
        let fields = control.stdout.trim_end();
        if !fields.starts_with("Package:") {
            bail!(
                "{}: control data does not start with Package:",
                p.path.display()
            );
        }
        out += fields;
        out += &format!(
            "\nFilename: {}\nSize: {}\nSHA256: {}\n\n",
            p.name,
            p.size,
            hex(&p.sha256)
        );
    }
    Ok(out.into_bytes())
}

fn rpm_repodata(packages: &[Package]) -> Result<Vec<MetaFile>> {
    let dir = tempfile::tempdir()?;
    let pool = dir.path().join("pool");
    std::fs::create_dir(&pool)?;
    for p in packages {
        let file = p.name.strip_prefix("pool/").unwrap_or(&p.name);
        std::os::unix::fs::symlink(std::fs::canonicalize(&p.path)?, pool.join(file))?;
    }
    // --simple-md-filenames keeps names stable; --no-database avoids sqlite files nodes don't need.
    Cmd::new("createrepo_c")
        .args(["--quiet", "--simple-md-filenames", "--no-database"])
        .arg(dir.path())
        .run()
        .map_err(anyhow::Error::msg)
        .context("generating rpm repodata (is createrepo-c installed?)")?;
    let mut files = Vec::new();
    let repodata = dir.path().join("repodata");
    let mut names: Vec<_> = std::fs::read_dir(&repodata)?.collect::<std::io::Result<Vec<_>>>()?;
    names.sort_by_key(|d| d.file_name());
    for d in names {
        let name = d.file_name().to_string_lossy().into_owned();
        files.push(MetaFile {
            name: format!("repodata/{name}"),
            data: std::fs::read(d.path())?,
        });
    }
    Ok(files)
}
