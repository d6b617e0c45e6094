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
    let r = apt_download(args, out);
    // apt's download scratch in OUT, left by a failed run as well as by a good one.
    let _ = std::fs::remove_dir(out.join("partial"));
    let _ = std::fs::remove_file(out.join("lock"));
    r
}

fn apt_download(args: &CollectArgs, out: &Path) -> Result<()> {
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
        None => {
            let lists = Path::new(MACHINE_LISTS);
            if let Some(arch) = variant_arch(&args.variant) {
                lists_hold_arch(lists, arch)?;
            }
            conf += &format!("Dir::State::Lists \"{}\";\n", q(lists));
        }
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
    if let Some(src) = &args.sources {
        let update = apt(&["-q", "update"]);
        let r = update
            .output()
            .context("apt-get update with the given sources")?;
        if !r.ok() {
            if let Some(msg) = unreadable_sources(src, &r.stderr) {
                bail!(msg);
            }
            bail!(
                "apt-get update with the given sources: apt-get exited {}: {}",
                r.status.map_or("by signal".to_string(), |c| c.to_string()),
                r.last_line()
            );
        }
    }
    let mut a = vec!["-q", "--download-only", "install"];
    a.extend(args.packages.iter().map(String::as_str));
    apt(&a)
        .run()
        .map_err(anyhow::Error::msg)
        .context("apt-get --download-only install against the baseline")?;
    Ok(())
}

const MACHINE_LISTS: &str = "/var/lib/apt/lists";

/// Without `--sources`, apt resolves from the machine's package lists; for an architecture they
/// have no index of (arm64 on an amd64 builder, say) it would find nothing newer than the
/// baseline and collect nothing, quietly. Say so instead.
fn lists_hold_arch(lists: &Path, arch: &str) -> Result<()> {
    let want = format!("_binary-{arch}_Packages");
    let found = std::fs::read_dir(lists)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().contains(&want))
        })
        .unwrap_or(false);
    if found {
        return Ok(());
    }
    bail!(
        "the machine's package lists ({}) hold no {arch} index (*{want}*), so apt would \
         find no {arch} packages: pass --sources FILE (collect then fetches the {arch} lists \
         privately), or run dpkg --add-architecture {arch} && apt-get update here",
        lists.display()
    )
}

/// When apt could not read the `--sources` file, the message that says why it most likely could
/// not: apt picks the parser by the file's name alone. A name ending in `.sources` holds deb822
/// stanzas (Debian 12's /etc/apt/sources.list.d/debian.sources is one); any other name, `.list`
/// included, holds one-line entries. apt itself only says "The list of sources could not be read"
/// on its last line. None when apt failed for another reason (network, signatures, ...).
fn unreadable_sources(src: &Path, apt_stderr: &str) -> Option<String> {
    let shown = src.display().to_string();
    let about_sources = apt_stderr.contains("The list of sources could not be read")
        || apt_stderr.contains(&format!("source list {shown}"))
        || std::fs::canonicalize(src)
            .map(|c| apt_stderr.contains(&format!("source list {}", c.display())))
            .unwrap_or(false);
    if !about_sources {
        return None;
    }
    let text = std::fs::read_to_string(src).unwrap_or_default();
    let (one_line, deb822) = sources_shape(&text);
    let deb822_name = src.extension().is_some_and(|e| e == "sources");
    let stem = src
        .file_stem()
        .map_or("debian".into(), |s| s.to_string_lossy().into_owned());
    let said: Vec<&str> = apt_stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("E: ") && !l.contains("The list of sources could not be read"))
        .map(|l| &l[3..])
        .collect();
    let said = if said.is_empty() {
        String::new()
    } else {
        format!(" (apt: {})", said.join("; "))
    };
    const ONE: &str = "one-line entries (deb URI SUITE COMPONENT...)";
    const DEB822: &str = "deb822 stanzas (Types:, URIs:, Suites:, Components: lines)";
    let why = match (deb822_name, one_line, deb822) {
        (true, true, false) => format!(
            "its name ends in .sources, so apt reads {DEB822}, but it holds {ONE}: \
             rename it to {stem}.list, or rewrite it as deb822 stanzas"
        ),
        (false, false, true) => format!(
            "its name does not end in .sources, so apt reads {ONE}, but it holds {DEB822}: \
             rename it to {stem}.sources, or rewrite it as one-line entries"
        ),
        (true, _, _) => format!(
            "its name ends in .sources, so apt reads {DEB822}: fix the stanza apt names, \
             or rename it to {stem}.list if it holds {ONE}"
        ),
        (false, _, _) => format!(
            "its name does not end in .sources, so apt reads {ONE}: fix the line apt names, \
             or rename it to {stem}.sources if it holds {DEB822}"
        ),
    };
    Some(format!("apt could not read --sources {shown}: {why}{said}"))
}

/// (has one-line entries, has deb822 stanzas): `deb`/`deb-src` lines, and `Types:`/`URIs:` fields.
fn sources_shape(text: &str) -> (bool, bool) {
    let lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let (mut one, mut stanza) = (false, false);
    for l in lines {
        let word = l.split_whitespace().next().unwrap_or("");
        one |= word == "deb" || word == "deb-src";
        let field = l.split(':').next().unwrap_or("").to_ascii_lowercase();
        stanza |= l.contains(':') && (field == "types" || field == "uris");
    }
    (one, stanza)
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

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\
                          Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";
    const ONE: &str = "# a comment\ndeb http://deb.debian.org/debian bookworm main\n";

    #[test]
    fn sources_shape_tells_one_line_entries_from_deb822_stanzas() {
        assert_eq!(sources_shape(DEB822), (false, true));
        assert_eq!(sources_shape(ONE), (true, false));
        assert_eq!(
            sources_shape("# deb http://x bookworm main\n"),
            (false, false)
        );
        assert_eq!(
            sources_shape("deb [arch=arm64] http://x bookworm main\n"),
            (true, false)
        );
    }

    fn hint(name: &str, text: &str, stderr: &str) -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        unreadable_sources(&p, &stderr.replace("FILE", &p.display().to_string()))
    }

    #[test]
    fn a_deb822_list_file_is_named_and_the_rename_said() {
        let m = hint(
            "debian.list",
            DEB822,
            "E: Type 'Types:' is not known on line 1 in source list FILE\n\
             E: The list of sources could not be read.\n",
        )
        .unwrap();
        assert!(
            m.contains("debian.list: its name does not end in .sources"),
            "{m}"
        );
        assert!(m.contains("but it holds deb822 stanzas"), "{m}");
        assert!(m.contains("rename it to debian.sources"), "{m}");
        assert!(
            m.contains("(apt: Type 'Types:' is not known on line 1"),
            "{m}"
        );
        assert!(!m.contains("could not be read."), "{m}");
    }

    #[test]
    fn a_one_line_sources_file_is_named_and_the_rename_said() {
        let m = hint(
            "bookworm.sources",
            ONE,
            "E: Malformed stanza 1 in source list FILE (type)\n\
             E: The list of sources could not be read.\n",
        )
        .unwrap();
        assert!(
            m.contains("bookworm.sources: its name ends in .sources"),
            "{m}"
        );
        assert!(m.contains("but it holds one-line entries"), "{m}");
        assert!(m.contains("rename it to bookworm.list"), "{m}");
    }

    #[test]
    fn a_broken_file_of_the_right_shape_still_gets_the_rule() {
        let m = hint(
            "x.list",
            "deb http://x\n",
            "E: Malformed entry 1 in list file FILE (Suite)\n\
             E: The list of sources could not be read.\n",
        )
        .unwrap();
        assert!(m.contains("fix the line apt names"), "{m}");
    }

    #[test]
    fn lists_without_the_variants_architecture_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let l = dir.path();
        std::fs::write(
            l.join("deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4"),
            "",
        )
        .unwrap();
        std::fs::write(l.join("deb.debian.org_debian_dists_bookworm_InRelease"), "").unwrap();
        assert!(lists_hold_arch(l, "amd64").is_ok());
        let e = lists_hold_arch(l, "arm64").unwrap_err().to_string();
        assert!(e.contains("hold no arm64 index"), "{e}");
        assert!(e.contains("pass --sources FILE"), "{e}");
        let e = lists_hold_arch(&l.join("missing"), "amd64").unwrap_err();
        assert!(e.to_string().contains("hold no amd64 index"), "{e}");
    }

    #[test]
    fn other_apt_failures_get_no_sources_hint() {
        let stderr =
            "E: Failed to fetch http://x/dists/bookworm/InRelease  Could not resolve 'x'\n";
        assert_eq!(hint("x.list", ONE, stderr), None);
    }
}
