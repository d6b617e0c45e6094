//! Issue 15, phase 1: installed packages repacked natively (agent `preserve`) are installable,
//! match the original package, keep the admin's conffiles and come back byte-identical. Real
//! dpkg in scratch roots, and a real Debian 12 minbase image (tests/image/build-image.sh)
//! compared with dpkg-repack.

use edgepatch::node::preserve::{self, Repacked};
use edgepatch_e2e::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const LONG: &str = "a-directory-name-long-enough-that-the-whole-archive-path-needs-a-gnu-long-name-record-in-tar-0123456789";

/// Build ep-keep VERSION: a conffile, an executable, a 0640 file, a symlink, a long path,
/// postinst and prerm that log to $DPKG_ROOT/var/log/ep-keep.log.
fn ep_keep(out: &Path, version: &str) -> PathBuf {
    let w = out.join(format!("build-{version}"));
    let _ = std::fs::remove_dir_all(&w);
    let mk = |p: &str, body: &str, mode: u32| {
        let p = w.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    mk(
        "DEBIAN/control",
        &format!(
            "Package: ep-keep\nVersion: {version}\nArchitecture: all\nSection: misc\nPriority: optional\nMaintainer: edgepatch tests <t@example.invalid>\nHomepage: https://example.invalid/ep-keep\nDescription: edgepatch preserve test package\n A second line.\n .\n And a paragraph.\n"
        ),
        0o644,
    );
    mk("DEBIAN/conffiles", "/etc/ep-keep.conf\n", 0o644);
    for s in ["postinst", "prerm"] {
        mk(
            &format!("DEBIAN/{s}"),
            &format!("#!/bin/sh\nset -e\necho \"{s} $1 {version}\" >> \"$DPKG_ROOT/var/log/ep-keep.log\"\n"),
            0o755,
        );
    }
    mk("etc/ep-keep.conf", &format!("setting={version}\n"), 0o644);
    mk(
        "usr/bin/ep-keep",
        &format!("#!/bin/sh\necho {version}\n"),
        0o755,
    );
    mk("usr/share/ep-keep/secret", "not for everyone\n", 0o640);
    mk(&format!("usr/share/ep-keep/{LONG}/file"), version, 0o644);
    std::os::unix::fs::symlink("../../bin/ep-keep", w.join("usr/share/ep-keep/link")).unwrap();
    std::fs::create_dir_all(w.join("var/log")).unwrap();
    let deb = out.join(format!("ep-keep_{version}_all.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&w)
        .arg(&deb))
    .expect(0);
    deb
}

fn dpkg(root: &Path, args: &[&str]) -> Run {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args([
            "--force-script-chrootless",
            "--force-confdef",
            "--force-confold",
        ])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn install(root: &Path, deb: &Path) {
    dpkg(root, &["-i", deb.to_str().unwrap()]).expect(0);
}

fn scratch_root(s: &Scratch) -> PathBuf {
    let root = s.join("root");
    deb_root(&root);
    std::fs::create_dir_all(root.join("var/log")).unwrap();
    root
}

fn repack(root: &Path, name: &str, out: &Path) -> Repacked {
    std::fs::create_dir_all(out).unwrap();
    preserve::repack_deb(root, name, None, out).unwrap_or_else(|e| panic!("repack {name}: {e}"))
}

fn out_of(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Control fields as sorted lines (field order differs: the status file has its own).
fn fields(deb: &Path) -> Vec<String> {
    let mut v: Vec<String> = out_of(Command::new("dpkg-deb").arg("-f").arg(deb))
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// data.tar as "mode owner size name [-> target]" lines, sorted; times left out (dpkg does not
/// keep directory mtimes, dpkg-repack does not keep any directory's).
fn files(deb: &Path) -> Vec<String> {
    let list = out_of(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -tv --numeric-owner",
        deb.display()
    )));
    let mut v: Vec<String> = list
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {} {}", w[0], w[1], w[2], w[5..].join(" "))
        })
        .collect();
    v.sort();
    v
}

fn control_member(deb: &Path, name: &str) -> String {
    out_of(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --ctrl-tarfile '{}' | tar -xO ./{name}",
        deb.display()
    )))
}

fn data_member(deb: &Path, name: &str) -> String {
    out_of(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -xO .{name}",
        deb.display()
    )))
}

fn md5_hex(s: &str) -> String {
    let out = out_of(
        Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s '{s}' | md5sum")),
    );
    out.split_whitespace().next().unwrap().to_string()
}

fn need_dpkg() -> bool {
    if have("dpkg-deb") && have("dpkg") {
        return true;
    }
    eprintln!("SKIPPED: dpkg/dpkg-deb not installed (scripts/test-deps.sh)");
    false
}

#[test]
fn repacked_deb_matches_the_original() {
    if !need_dpkg() {
        return;
    }
    let s = Scratch::new("preserve-match");
    let root = scratch_root(&s);
    let orig = ep_keep(&s.path, "1.0");
    install(&root, &orig);
    let r = repack(&root, "ep-keep", &s.join("out"));
    assert_eq!((r.version.as_str(), r.arch.as_str()), ("1.0", "all"));
    assert!(r.changed.is_empty() && r.missing.is_empty(), "{r:?}");
    assert_eq!(fields(&r.path), fields(&orig));
    assert_eq!(files(&r.path), files(&orig));
    for m in ["postinst", "prerm", "conffiles"] {
        assert_eq!(control_member(&r.path, m), control_member(&orig, m), "{m}");
    }
    let info = out_of(Command::new("dpkg-deb").arg("--info").arg(&r.path));
    assert!(
        info.contains("*  postinst"),
        "postinst not executable:\n{info}"
    );
}

#[test]
fn repacked_old_version_comes_back_over_an_upgrade_with_the_admins_conffile() {
    if !need_dpkg() {
        return;
    }
    let s = Scratch::new("preserve-restore");
    let root = scratch_root(&s);
    install(&root, &ep_keep(&s.path, "1.0"));
    std::fs::write(root.join("etc/ep-keep.conf"), "setting=admin\n").unwrap();
    let r = repack(&root, "ep-keep", &s.join("out"));
    assert!(
        r.changed.is_empty(),
        "a conffile edit is not a change: {r:?}"
    );
    assert_eq!(data_member(&r.path, "/etc/ep-keep.conf"), "setting=admin\n");

    install(&root, &ep_keep(&s.path, "2.0"));
    assert!(deb_version(&root, "ep-keep").unwrap().starts_with("2.0 "));
    // A newer version is installed: putting the repacked one back is a downgrade.
    install(&root, &r.path);
    assert_eq!(deb_version(&root, "ep-keep").unwrap(), "1.0 ii");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    assert_eq!(read("etc/ep-keep.conf"), "setting=admin\n");
    assert_eq!(read("usr/bin/ep-keep"), "#!/bin/sh\necho 1.0\n");
    assert_eq!(read(&format!("usr/share/ep-keep/{LONG}/file")), "1.0");
    let mode = std::fs::metadata(root.join("usr/share/ep-keep/secret")).unwrap();
    assert_eq!(mode.permissions().mode() & 0o7777, 0o640);
    assert!(read("var/log/ep-keep.log").ends_with("postinst configure 1.0\n"));
    // dpkg now records the admin's text as the shipped one (it has no other copy); the
    // pre-patch record is in `conffiles` for the rollback to put back into the status file.
    assert_eq!(
        r.conffiles,
        vec![("/etc/ep-keep.conf".to_string(), md5_hex("setting=1.0\n"))]
    );
    let audit = dpkg(&root, &["--audit", "ep-keep"]).expect(0);
    assert!(
        audit.stdout.trim().is_empty(),
        "dpkg --audit: {}",
        audit.stdout
    );
}

#[test]
fn repacking_twice_gives_identical_bytes_and_the_cache_is_reused() {
    if !need_dpkg() {
        return;
    }
    let s = Scratch::new("preserve-twice");
    let root = scratch_root(&s);
    install(&root, &ep_keep(&s.path, "1.0"));
    let a = repack(&root, "ep-keep", &s.join("a"));
    let b = repack(&root, "ep-keep", &s.join("b"));
    assert_eq!(
        std::fs::read(&a.path).unwrap(),
        std::fs::read(&b.path).unwrap()
    );
    assert_eq!(a.identity, b.identity);

    let cache = s.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let c1 = preserve::repack_deb_cached(&root, "ep-keep", None, &cache).unwrap();
    let c2 = preserve::repack_deb_cached(&root, "ep-keep", None, &cache).unwrap();
    assert!(!c1.reused && c2.reused);
    assert_eq!(c1.path, c2.path);
    assert_eq!(
        std::fs::read(&c1.path).unwrap(),
        std::fs::read(&a.path).unwrap()
    );
    // Any change to the installed files gives a new identity, so a stale copy is never reused.
    std::fs::write(root.join("usr/share/ep-keep/secret"), "changed!!!!!!!!!\n").unwrap();
    let c3 = preserve::repack_deb_cached(&root, "ep-keep", None, &cache).unwrap();
    assert!(!c3.reused && c3.identity != c1.identity);
    // No temp files left beside the packages.
    let names: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn a_file_changed_since_install_is_carried_as_it_is_with_a_warning() {
    if !need_dpkg() {
        return;
    }
    let s = Scratch::new("preserve-changed");
    let root = scratch_root(&s);
    install(&root, &ep_keep(&s.path, "1.0"));
    std::fs::write(root.join("usr/bin/ep-keep"), "#!/bin/sh\necho hotfix\n").unwrap();
    std::fs::remove_file(root.join("usr/share/ep-keep/secret")).unwrap();
    let r = repack(&root, "ep-keep", &s.join("out"));
    assert_eq!(r.changed, vec!["/usr/bin/ep-keep".to_string()]);
    assert_eq!(r.missing, vec!["/usr/share/ep-keep/secret".to_string()]);
    assert_eq!(
        data_member(&r.path, "/usr/bin/ep-keep"),
        "#!/bin/sh\necho hotfix\n"
    );
    // dpkg's own record is carried unchanged, so dpkg --verify still reports the hotfix.
    install(&root, &r.path);
    let v = dpkg(&root, &["--verify", "ep-keep"]);
    assert!(v.stdout.contains("/usr/bin/ep-keep"), "{}", v.stdout);
}

#[test]
fn a_diverted_file_is_taken_from_where_it_really_is() {
    if !need_dpkg() || !have("dpkg-divert") {
        return;
    }
    let s = Scratch::new("preserve-divert");
    let root = scratch_root(&s);
    install(&root, &ep_keep(&s.path, "1.0"));
    run(Command::new("dpkg-divert")
        .arg(format!("--root={}", root.display()))
        .args([
            "--local",
            "--rename",
            "--divert",
            "/usr/bin/ep-keep.real",
            "--add",
        ])
        .arg("/usr/bin/ep-keep"))
    .expect(0);
    std::fs::write(root.join("usr/bin/ep-keep"), "local wrapper\n").unwrap();
    let r = repack(&root, "ep-keep", &s.join("out"));
    assert!(r.changed.is_empty(), "{r:?}");
    assert_eq!(
        data_member(&r.path, "/usr/bin/ep-keep"),
        "#!/bin/sh\necho 1.0\n"
    );
}

/// The cached Debian 12 minbase image tarball, built on first use; None (and a loud message)
/// when it cannot be built here (no root, no debootstrap, no archive).
fn image() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/image/build-image.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("amd64")
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && Path::new(&path).is_file() {
        return Some(PathBuf::from(path));
    }
    eprintln!(
        "\n*** SKIPPED: no Debian 12 image ({}): {}\n",
        script.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    None
}

fn query(root: &Path, pkg: &str) -> String {
    out_of(
        Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f", "${Version} ${db:Status-Abbrev}", pkg]),
    )
}

#[test]
fn real_image_packages_repack_and_reinstall_inside_the_image() {
    if !need_dpkg() || cfg!(not(target_arch = "x86_64")) {
        return;
    }
    if !(have("unshare") && have("chroot")) || out_of(Command::new("id").arg("-u")).trim() != "0" {
        eprintln!("\n*** SKIPPED: the real-image test needs root, unshare and chroot\n");
        return;
    }
    let Some(tarball) = image() else { return };
    let s = Scratch::new("preserve-image");
    let root = s.join("root");
    std::fs::create_dir_all(&root).unwrap();
    run(Command::new("tar")
        .args(["--numeric-owner", "-xf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&root))
    .expect(0);
    // An admin's edit of a conffile must survive the round trip.
    let pam = root.join("etc/pam.conf");
    let mut conf = std::fs::read_to_string(&pam).unwrap();
    conf += "# edited by the admin\n";
    std::fs::write(&pam, &conf).unwrap();

    let pkgs = [
        "zlib1g",
        "libpam-runtime",
        "tzdata",
        "base-files",
        "coreutils",
    ];
    let out = root.join("tmp/preserve");
    let before: Vec<String> = pkgs.iter().map(|p| query(&root, p)).collect();
    let debs: Vec<Repacked> = pkgs.iter().map(|p| repack(&root, p, &out)).collect();

    if have("dpkg-repack") {
        let theirs = s.join("dpkg-repack");
        std::fs::create_dir_all(&theirs).unwrap();
        run(Command::new("dpkg-repack")
            .arg(format!("--root={}", root.display()))
            .arg("--tag=none")
            .args(pkgs)
            .current_dir(&theirs))
        .expect(0);
        for r in &debs {
            let name = r.path.file_name().unwrap();
            let t = theirs.join(name);
            assert_eq!(fields(&r.path), fields(&t), "control of {name:?}");
            assert_eq!(files(&r.path), files(&t), "files of {name:?}");
        }
    } else {
        eprintln!("\n*** not compared with dpkg-repack: not installed (scripts/test-deps.sh)\n");
    }

    let install = "mount -t proc proc /proc && DEBIAN_FRONTEND=noninteractive dpkg -i /tmp/preserve/*.deb && dpkg --audit";
    let r = run(Command::new("unshare")
        .args(["--mount", "--net", "--fork", "chroot"])
        .arg(&root)
        .args(["/bin/sh", "-c", install])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
    .expect(0);
    assert!(!r.stdout.contains("dpkg --audit"), "{}", r.stdout);
    let audit = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg("--audit"))
    .expect(0);
    assert!(
        audit.stdout.trim().is_empty(),
        "dpkg --audit: {}",
        audit.stdout
    );
    let after: Vec<String> = pkgs.iter().map(|p| query(&root, p)).collect();
    assert_eq!(before, after);
    assert_eq!(std::fs::read_to_string(&pam).unwrap(), conf);
}
