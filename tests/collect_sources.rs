//! `collect --sources FILE` (issue 15 item 6): apt picks the parser by the file's name (`.sources`:
//! deb822 stanzas; any other name, `.list` included: one-line entries), and when it cannot read
//! the file the builder names it and says what its name told apt and what to do, instead of
//! apt's bare "The list of sources could not be read". And one builder collects for every
//! architecture: `--variant debian-12-arm64` on this (amd64) machine picks the arm64 build.
//!
//! No network: the repository is a local `copy:` one, apt fails on parsing before it fetches
//! anything, and as root the builder runs in a network namespace with no interfaces.

use edgepatch_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A .deb of `arch` whose only file says which build it is.
fn deb(out: &Path, name: &str, arch: &str) -> PathBuf {
    let work = out.join(format!(".w-{name}-{arch}"));
    std::fs::create_dir_all(work.join("DEBIAN")).unwrap();
    std::fs::write(
        work.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: 1.0\nArchitecture: {arch}\n\
             Maintainer: t <t@example.invalid>\nDescription: collect test\n"
        ),
    )
    .unwrap();
    std::fs::create_dir_all(work.join("usr/share/ep")).unwrap();
    std::fs::write(work.join(format!("usr/share/ep/{name}")), arch).unwrap();
    let deb = out.join(format!("{name}_1.0_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&work)
        .arg(&deb))
    .expect(0);
    std::fs::remove_dir_all(&work).unwrap();
    deb
}

struct Repo {
    dir: Scratch,
    repo: PathBuf,
    baseline: PathBuf,
}

impl Repo {
    /// A flat local repository: ep-tool for amd64 and arm64, ep-data (all) it depends on.
    fn new(tag: &str) -> Repo {
        let dir = Scratch::new(tag);
        let repo = dir.join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        deb(&repo, "ep-tool", "amd64");
        deb(&repo, "ep-tool", "arm64");
        deb(&repo, "ep-data", "all");
        let scan = run(Command::new("dpkg-scanpackages")
            .args(["-m", "."])
            .current_dir(&repo))
        .expect(0);
        // ep-tool depends on ep-data (added here: the helper above writes no Depends).
        let packages = scan
            .stdout
            .replace("Package: ep-tool\n", "Package: ep-tool\nDepends: ep-data\n");
        assert_eq!(packages.matches("Depends: ep-data").count(), 2);
        std::fs::write(repo.join("Packages"), packages).unwrap();
        // A node with nothing installed yet (a status file with no packages).
        let baseline = dir.join("baseline.status");
        std::fs::write(&baseline, "").unwrap();
        Repo {
            dir,
            repo,
            baseline,
        }
    }

    fn one_line(&self) -> String {
        format!("deb [trusted=yes] copy:{} ./\n", self.repo.display())
    }

    fn deb822(&self) -> String {
        format!(
            "Types: deb\nURIs: copy:{}\nSuites: ./\nTrusted: yes\n",
            self.repo.display()
        )
    }

    fn sources(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn collect(&self, variant: &str, sources: &Path, out: &str) -> Run {
        let mut cmd = if as_root() && have("unshare") {
            let mut c = Command::new("unshare");
            c.arg("--net").arg(builder_bin());
            c
        } else {
            Command::new(builder_bin())
        };
        run(cmd
            .args(["collect", "--variant", variant, "--baseline"])
            .arg(&self.baseline)
            .arg("--sources")
            .arg(sources)
            .arg("--out")
            .arg(self.dir.join(out))
            .arg("ep-tool"))
    }

    fn collected(&self, out: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.join(out))
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn tools() -> bool {
    if have("apt-get") && have("dpkg-scanpackages") {
        return true;
    }
    eprintln!("\n*** SKIPPED: collect tests need apt-get and dpkg-scanpackages (dpkg-dev)\n");
    assert!(
        std::env::var_os("CI").is_none(),
        "SKIPPED under CI: apt-get or dpkg-scanpackages missing (scripts/test-deps.sh)"
    );
    false
}

#[test]
fn deb822_stanzas_in_a_list_file_name_the_file_and_the_rename() {
    if !tools() {
        return;
    }
    let r = Repo::new("collect-deb822-list");
    let list = r.sources("local.list", &r.deb822());
    let run = r.collect("debian-12-amd64", &list, "out-bad");
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let err = run.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("apt could not read --sources {}", list.display())),
        "{err}"
    );
    assert!(
        err.contains("its name does not end in .sources, so apt reads one-line entries"),
        "{err}"
    );
    assert!(err.contains("but it holds deb822 stanzas"), "{err}");
    assert!(
        err.contains("rename it to local.sources, or rewrite it as one-line entries"),
        "{err}"
    );
    // apt's own reason, not only its last line.
    assert!(
        err.contains("Type 'Types:' is not known on line 1"),
        "{err}"
    );
    assert!(r.collected("out-bad").is_empty());

    // Renamed as the message says, the same text collects.
    let sources = r.sources("local.sources", &r.deb822());
    let ok = r.collect("debian-12-amd64", &sources, "out").expect(0);
    assert_eq!(
        r.collected("out"),
        ["ep-data_1.0_all.deb", "ep-tool_1.0_amd64.deb"],
        "{}",
        ok.stdout
    );
}

#[test]
fn one_line_entries_in_a_sources_file_name_the_file_and_the_rename() {
    if !tools() {
        return;
    }
    let r = Repo::new("collect-oneline-sources");
    let sources = r.sources("local.sources", &r.one_line());
    let run = r.collect("debian-12-amd64", &sources, "out-bad");
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let err = run.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "apt could not read --sources {}",
            sources.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("its name ends in .sources, so apt reads deb822 stanzas"),
        "{err}"
    );
    assert!(err.contains("but it holds one-line entries"), "{err}");
    assert!(
        err.contains("rename it to local.list, or rewrite it as deb822 stanzas"),
        "{err}"
    );
    assert!(err.contains("Malformed stanza 1"), "{err}");
    assert!(r.collected("out-bad").is_empty());

    let list = r.sources("local.list", &r.one_line());
    let ok = r.collect("debian-12-amd64", &list, "out").expect(0);
    assert_eq!(
        r.collected("out"),
        ["ep-data_1.0_all.deb", "ep-tool_1.0_amd64.deb"],
        "{}",
        ok.stdout
    );
}

/// Every architecture from one builder: the variant's architecture is apt's, whatever this
/// machine is.
#[test]
fn collect_for_arm64_and_armhf_picks_their_builds_on_this_builder() {
    if !tools() {
        return;
    }
    let r = Repo::new("collect-arm64");
    let list = r.sources("local.list", &r.one_line());
    let ok = r.collect("debian-12-arm64", &list, "arm64").expect(0);
    assert_eq!(
        r.collected("arm64"),
        ["ep-data_1.0_all.deb", "ep-tool_1.0_arm64.deb"],
        "{}",
        ok.stdout
    );
    assert!(
        ok.stdout.contains("collected 2 package(s)"),
        "{}",
        ok.stdout
    );
    // No armhf build of ep-tool in the repository: apt says so, nothing is collected.
    let no = r.collect("debian-12-armhf", &list, "armhf");
    assert_ne!(no.code, 0, "{}", no.stdout);
    assert!(no.stderr.contains("ep-tool"), "{}", no.stderr);
    assert!(r.collected("armhf").is_empty());
}
