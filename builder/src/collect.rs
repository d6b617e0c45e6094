//! `collect`: download the packages a variant needs, relative to what its nodes already have.
//!
//! Debian family: apt runs with its own `APT_CONFIG` whose `Dir::State::status` is the baseline
//! (a dpkg status file from a golden image, or `edgepatch packages` on a node), so apt resolves
//! exactly as it would on such a node: `apt-get install --download-only` fetches the listed
//! packages and every dependency the baseline does not satisfy, at the versions the sources offer,
//! into OUT. Sources: the machine's configured ones (with its package lists, refreshed by the
//! operator's usual `apt-get update`), or `--sources FILE` (a sources.list; then collect runs
//! `apt-get update` into a private lists dir first). Nothing on the machine itself changes.
//!
//! RHEL family: `dnf download --resolve` with `--installroot BASELINE` (a directory holding the
//! baseline rpmdb under var/lib/rpm), so dependencies installed there are not downloaded; repos
//! are the machine's, or `--repo NAME=URL` (repeatable) instead.

use anyhow::{bail, Context, Result};
use edgepatch::support::cmd::Cmd;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct CollectArgs {
    /// OS variant, e.g. debian-12-amd64 or rhel-9-x86_64 (family, release and architecture)
    #[arg(long)]
    pub variant: String,
    /// Debian: a dpkg status file. RHEL: an installroot directory with the baseline rpmdb
    #[arg(long, value_name = "STATUS")]
    pub baseline: PathBuf,
    /// Where the packages go (created if missing)
    #[arg(long)]
    pub out: PathBuf,
    /// Debian: a sources.list to use instead of the machine's (runs apt-get update privately)
    #[arg(long, value_name = "FILE")]
    pub sources: Option<PathBuf>,
    /// RHEL: NAME=URL of a repository to use instead of the machine's; repeatable
    #[arg(long = "repo", value_name = "NAME=URL")]
    pub repos: Vec<String>,
    /// Packages to bring (with every dependency the baseline lacks)
    #[arg(required = true)]
    pub packages: Vec<String>,
}

fn is_rhel(variant: &str) -> bool {
    ["rhel", "rocky", "alma", "centos", "fedora", "ol-"]
        .iter()
        .any(|p| variant.starts_with(p))
}

/// The architecture at the end of a variant name, e.g. `debian-12-amd64` -> `amd64`.
fn variant_arch(variant: &str) -> Option<&str> {
    let last = variant.rsplit('-').next()?;
    [
        "amd64", "arm64", "armhf", "i386", "x86_64", "aarch64", "armv7hl", "noarch",
    ]
    .contains(&last)
    .then_some(last)
}

fn list_packages(dir: &Path, ext: &str) -> Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|d| d.ok())
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(ext))
        .collect();
    v.sort();
    Ok(v)
}

pub fn run(args: &CollectArgs) -> Result<()> {
    if !args.baseline.exists() {
        bail!("baseline {} does not exist", args.baseline.display());
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let out = std::fs::canonicalize(&args.out)?;
    let (ext, before) = if is_rhel(&args.variant) {
        (".rpm", list_packages(&out, ".rpm")?)
    } else {
        (".deb", list_packages(&out, ".deb")?)
    };
    if ext == ".rpm" {
        collect_dnf(args, &out)?;
    } else {
        collect_apt(args, &out)?;
    }
    let after = list_packages(&out, ext)?;
    let new: Vec<&String> = after.iter().filter(|n| !before.contains(n)).collect();
    for n in &new {
        println!("{n}");
    }
    println!(
        "collected {} package(s) into {} ({} there in all)",
        new.len(),
        out.display(),
        after.len()
    );
    Ok(())
}

fn collect_apt(args: &CollectArgs, out: &Path) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    for d in ["state/lists/partial", "cache", "etc/sources.list.d"] {
        std::fs::create_dir_all(t.join(d))?;
    }
    std::fs::create_dir_all(out.join("partial"))?;
    let baseline = std::fs::canonicalize(&args.baseline)?;
    let q = |p: &Path| p.display().to_string().replace('"', "");
    let mut conf = String::new();
    conf += &format!("Dir::State \"{}\";\n", q(&t.join("state")));
    conf += &format!("Dir::State::status \"{}\";\n", q(&baseline));
    conf += &format!("Dir::Cache \"{}\";\n", q(&t.join("cache")));
    conf += &format!("Dir::Cache::archives \"{}\";\n", q(out));
    match &args.sources {
        Some(src) => {
            let src =
                std::fs::canonicalize(src).with_context(|| format!("sources {}", src.display()))?;
            conf += &format!("Dir::Etc::SourceList \"{}\";\n", q(&src));
            conf += &format!(
                "Dir::Etc::SourceParts \"{}\";\n",
                q(&t.join("etc/sources.list.d"))
            );
        }
        // The machine's sources and the lists its own `apt-get update` keeps fresh.
        None => conf += "Dir::State::Lists \"/var/lib/apt/lists\";\n",
    }
    if let Some(arch) = variant_arch(&args.variant) {
        conf += &format!("APT::Architecture \"{arch}\";\nAPT::Architectures {{ \"{arch}\"; }};\n");
    }
    conf += "Debug::NoLocking \"true\";\nAPT::Sandbox::User \"root\";\n";
    conf += "APT::Install-Recommends \"false\";\nAPT::Get::Assume-Yes \"true\";\n";
    let conf_path = t.join("apt.conf");
    std::fs::write(&conf_path, conf)?;
    let apt = |a: &[&str]| {
        Cmd::new("apt-get")
            .env("APT_CONFIG", &conf_path)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(a)
    };
    if args.sources.is_some() {
        apt(&["-q", "update"])
            .run()
            .map_err(anyhow::Error::msg)
            .context("apt-get update with the given sources")?;
    }
    let mut a = vec!["-q", "--download-only", "install"];
    a.extend(args.packages.iter().map(String::as_str));
    apt(&a)
        .run()
        .map_err(anyhow::Error::msg)
        .context("apt-get --download-only install against the baseline")?;
    let _ = std::fs::remove_dir(out.join("partial"));
    let _ = std::fs::remove_file(out.join("lock"));
    Ok(())
}

fn collect_dnf(args: &CollectArgs, out: &Path) -> Result<()> {
    let root: PathBuf = std::fs::canonicalize(&args.baseline)?;
    if !root.join("var/lib/rpm").is_dir() && !root.join("usr/lib/sysimage/rpm").is_dir() {
        bail!(
            "baseline {} is not an installroot with an rpmdb (var/lib/rpm)",
            root.display()
        );
    }
    let release = args
        .variant
        .split('-')
        .nth(1)
        .filter(|r| r.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .unwrap_or("9");
    let mut cmd = Cmd::new("dnf")
        .arg("download")
        .arg("--resolve")
        .arg("-q")
        .arg("-y")
        .arg(format!("--installroot={}", root.display()))
        .arg(format!("--releasever={release}"))
        .arg(format!("--destdir={}", out.display()))
        .arg("--setopt=install_weak_deps=False");
    if let Some(arch) = variant_arch(&args.variant) {
        cmd = cmd.arg(format!("--forcearch={arch}"));
    }
    if args.repos.is_empty() {
        cmd = cmd.arg("--setopt=reposdir=/etc/yum.repos.d");
    } else {
        cmd = cmd.arg("--disablerepo=*");
        for r in &args.repos {
            let (name, url) = r
                .split_once('=')
                .with_context(|| format!("--repo {r:?}: want NAME=URL"))?;
            cmd = cmd
                .arg(format!("--repofrompath={name},{url}"))
                .arg(format!("--enablerepo={name}"))
                .arg(format!("--setopt={name}.gpgcheck=0"));
        }
    }
    cmd.args(&args.packages)
        .run()
        .map_err(anyhow::Error::msg)
        .context("dnf download --resolve against the baseline")?;
    Ok(())
}
