//! Issue 15 item 5, the RHEL family: packages installed with plain `rpm -i` before any bundle
//! (so no bundle cache ever had them) are repacked natively from the rpm database and the files
//! on disk before an install, and come back on a failed install or a `rollback`: exact
//! versions, packages removed by Obsoletes, new ones removed again, the admin's %config edits.
//! Also: the repack is deterministic and its payload round-trips through `rpm -U` with each
//! of gzip, xz and zstd; a damaged rollback copy; kill -9 during the preserve step.

use edgepatch::node::preserve::rpm::repack;
use edgepatch::support::cmd::Cmd;
use edgepatch_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const VARIANT: &str = "rhel-9-x86_64";

fn fleet(tag: &str) -> Option<Fleet> {
    if !(have("dnf") && have("rpmbuild") && have("createrepo_c")) {
        eprintln!("SKIP: dnf, rpmbuild or createrepo_c missing; run scripts/test-deps.sh");
        return None;
    }
    Some(Fleet::new(tag, VARIANT, "dnf"))
}

/// Build `rpms` into `dir/image` and `rpm -i` them into the node's root: the "image".
fn image(f: &Fleet, node: &Node, rpms: &[Rpm]) {
    let dir = f.dir.join("image");
    let files: Vec<PathBuf> = rpms.iter().map(|r| r.build(&dir)).collect();
    rpm_install(&node.root, &files);
}

fn versions(root: &Path, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|n| format!("{n}={}", rpm_version(root, n).unwrap_or("-".into())))
        .collect()
}

fn apply(node: &Node, bundle: &Path) -> Run {
    node.agent(&["apply", bundle.to_str().unwrap()])
}

fn pool_files(node: &Node) -> Vec<String> {
    std::fs::read_dir(node.state_dir.join("rollback/pool"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

const NAMES: &[&str] = &["ep-lib", "ep-app", "ep-old", "ep-dep", "ep-new"];

#[test]
fn rpm_apply_then_rollback_brings_back_image_versions_removed_and_new_packages() {
    let Some(f) = fleet("rpm-rollback") else {
        return;
    };
    let node = f.node("n");
    image(
        &f,
        &node,
        &[
            Rpm::new("ep-lib", "1.0"),
            Rpm::new("ep-app", "1.0").requires("ep-lib >= 1.0"),
            Rpm::new("ep-old", "1.0"),
        ],
    );
    let before = versions(&node.root, NAMES);
    // ep-app 2.0 pulls in a new dependency; ep-new (named for install) obsoletes ep-old.
    let c1 = f.rpms(
        "c1",
        1,
        &[
            Rpm::new("ep-lib", "2.0"),
            Rpm::new("ep-app", "2.0").requires("ep-lib >= 2.0, ep-dep"),
            Rpm::new("ep-dep", "1.0"),
            Rpm::new("ep-new", "1.0").head("Obsoletes: ep-old < 2\n"),
        ],
        &["ep-new"],
    );
    let r = apply(&node, &c1).expect(0);
    assert!(r.stdout.contains("5 package(s) changed"), "{}", r.stdout);
    assert_eq!(
        versions(&node.root, NAMES),
        [
            "ep-lib=2.0-1",
            "ep-app=2.0-1",
            "ep-old=-",
            "ep-dep=1.0-1",
            "ep-new=1.0-1"
        ]
    );
    // The rollback set holds the three replaced packages, rebuilt from the rpm database.
    let pool = pool_files(&node);
    assert_eq!(pool.len(), 3, "{pool:?}");
    for p in [
        "ep-lib-1.0-1.noarch.",
        "ep-app-1.0-1.noarch.",
        "ep-old-1.0-1.noarch.",
    ] {
        assert!(pool.iter().any(|f| f.starts_with(p)), "{p}: {pool:?}");
    }
    let st = node.agent(&["status", "--json"]).expect(0).stdout;
    assert!(st.contains("\"next_rollback\":{\"cycle\":\"c1\""), "{st}");

    let r = node.agent(&["rollback"]).expect(0);
    assert!(r.stdout.contains("cycle c1 rolled back"), "{}", r.stdout);
    assert!(r.stdout.contains("removed"), "{}", r.stdout);
    assert_eq!(versions(&node.root, NAMES), before);
    assert_eq!(
        std::fs::read_to_string(node.root.join("usr/share/edgepatch-test/ep-lib")).unwrap(),
        "ep-lib 1.0\n"
    );
    // rpm itself is content: the restored packages verify (files, modes, digests).
    let v = run(Command::new("rpm")
        .arg("--root")
        .arg(&node.root)
        .args(["-V", "--nodeps", "ep-lib", "ep-app", "ep-old"]));
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
    node.agent(&["rollback"]).expect(0);
}

#[test]
fn rpm_failing_post_in_the_first_cycle_leaves_the_image_versions() {
    let Some(f) = fleet("rpm-post") else {
        return;
    };
    let node = f.node("n");
    image(
        &f,
        &node,
        &[
            rpm_shell(),
            Rpm::new("ep-lib", "1.0"),
            Rpm::new("ep-app", "1.0").requires("ep-lib >= 1.0"),
        ],
    );
    let before = versions(&node.root, NAMES);
    let c1 = f.rpms(
        "c1",
        1,
        &[
            Rpm::new("ep-lib", "2.0").post("echo 'ep-lib: post fails' >&2; exit 1"),
            Rpm::new("ep-app", "2.0").requires("ep-lib >= 2.0"),
        ],
        &[],
    );
    // rpm and dnf exit 0 here: the agent reads the scriptlet warning.
    let r = apply(&node, &c1).expect(6);
    assert!(r.stderr.contains("install failed"), "{}", r.stderr);
    assert!(
        r.stderr.contains("Error in POSTIN scriptlet"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("restored ep-"), "{}", r.stderr);
    assert!(!r.stderr.contains("restore incomplete"), "{}", r.stderr);
    assert_eq!(versions(&node.root, NAMES), before);
    let st = node.agent(&["status"]).expect(0).stdout;
    assert!(!st.contains("ATTENTION"), "{st}");
}

#[test]
fn rpm_three_cycles_then_three_rollbacks_end_at_the_image() {
    let Some(f) = fleet("rpm-three") else {
        return;
    };
    let node = f.node_with("n", "rollback_keep = 3\n");
    image(
        &f,
        &node,
        &[
            Rpm::new("ep-lib", "1.0"),
            Rpm::new("ep-app", "1.0").requires("ep-lib"),
        ],
    );
    let names = &["ep-lib", "ep-app"];
    let at = |v: &str| vec![format!("ep-lib={v}-1"), format!("ep-app={v}-1")];
    for (seq, v) in [(1, "2.0"), (2, "3.0"), (3, "4.0")] {
        let c = f.rpms(
            &format!("c{seq}"),
            seq,
            &[Rpm::new("ep-lib", v), Rpm::new("ep-app", v)],
            &[],
        );
        apply(&node, &c).expect(0);
        assert_eq!(versions(&node.root, names), at(v));
    }
    for (cycle, v) in [("c3", "3.0"), ("c2", "2.0"), ("c1", "1.0")] {
        let r = node.agent(&["rollback"]).expect(0);
        assert!(
            r.stdout.contains(&format!("cycle {cycle} rolled back")),
            "{}",
            r.stdout
        );
        assert_eq!(
            versions(&node.root, names),
            at(v),
            "after rolling back {cycle}"
        );
    }
    let r = node.agent(&["rollback"]).expect(0);
    assert!(r.stdout.contains("already rolled back"), "{}", r.stdout);
}

#[test]
fn rpm_edited_config_keeps_the_admins_text_through_apply_and_rollback() {
    let Some(f) = fleet("rpm-config") else {
        return;
    };
    let node = f.node("n");
    image(
        &f,
        &node,
        &[
            Rpm::new("ep-conf", "1.0").config("/etc/ep-conf.conf", "default 1.0", true),
            Rpm::new("ep-plain", "1.0").config("/etc/ep-plain.conf", "plain 1.0", false),
        ],
    );
    let (keep, plain) = (
        node.root.join("etc/ep-conf.conf"),
        node.root.join("etc/ep-plain.conf"),
    );
    let admin = "edited by the admin, longer than the default\n";
    std::fs::write(&keep, admin).unwrap();
    std::fs::write(&plain, admin).unwrap();
    let c1 = f.rpms(
        "c1",
        1,
        &[
            Rpm::new("ep-conf", "2.0").config("/etc/ep-conf.conf", "default 2.0", true),
            Rpm::new("ep-plain", "2.0").config("/etc/ep-plain.conf", "plain 2.0", false),
        ],
        &[],
    );
    apply(&node, &c1).expect(0);
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), admin);
    // rpm's own behaviour for a plain %config: the edit moved aside, the new default in place.
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), "plain 2.0\n");

    node.agent(&["rollback"]).expect(0);
    let names = &["ep-conf", "ep-plain"];
    assert_eq!(
        versions(&node.root, names),
        ["ep-conf=1.0-1", "ep-plain=1.0-1"]
    );
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), admin);
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), admin);
    let left: Vec<String> = std::fs::read_dir(node.root.join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".rpm"))
        .collect();
    assert!(left.is_empty(), "left beside the configs: {left:?}");
    // rpm still sees the edits as edits (the database holds the original header).
    let v = run(Command::new("rpm")
        .arg("--root")
        .arg(&node.root)
        .args(["-V", "ep-conf", "ep-plain"]));
    assert!(v.stdout.contains("c /etc/ep-conf.conf"), "{}", v.stdout);
    assert!(v.stdout.contains("c /etc/ep-plain.conf"), "{}", v.stdout);
}

/// A package with a directory, a symlink, a hardlink pair, an empty file and a %ghost.
fn rich(version: &str, payload: &str) -> Rpm<'static> {
    Rpm::new("ep-rich", Box::leak(version.to_string().into_boxed_str()))
        .payload(Box::leak(payload.to_string().into_boxed_str()))
        .files(
            "d=$RPM_BUILD_ROOT/usr/share/ep-rich; mkdir -p $d/sub\n\
             head -c 200000 /dev/urandom > $d/big; echo hl > $d/h1; ln $d/h1 $d/h2\n\
             ln -s big $d/link; : > $d/empty\n",
            "/usr/share/ep-rich\n%ghost /var/log/ep-rich.log\n",
        )
}

fn rpm(root: &Path) -> Cmd {
    Cmd::new("rpm").arg("--root").arg(root)
}

#[test]
fn rpm_repack_is_deterministic_and_each_payload_compressor_round_trips() {
    if !(have("rpmbuild") && have("rpm")) {
        eprintln!("SKIP: rpm or rpmbuild missing");
        return;
    }
    let s = Scratch::new("rpm-repack");
    let mut kinds = vec![("w9.gzdio", &b"\x1f\x8b"[..]), ("w6.xzdio", b"\xfd7zXZ")];
    let rc = run(Command::new("rpm").arg("--showrc"));
    if rc.stdout.contains("PayloadIsZstd") {
        kinds.push(("w19.zstdio", b"\x28\xb5\x2f\xfd"));
    } else {
        eprintln!("this rpm has no zstd payloads: gzip and xz only");
    }
    for (payload, magic) in kinds {
        let dir = s.join(payload);
        let pkg = rich("1.0", payload).build(&dir);
        let root = dir.join("root");
        rpm_install(&root, &[pkg]);
        // An edited %config would be cut; here: a changed file of the same size is carried.
        let big = root.join("usr/share/ep-rich/big");
        let mut bytes = std::fs::read(&big).unwrap();
        bytes[7] ^= 1;
        std::fs::write(&big, &bytes).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d).unwrap();
        }
        let ra = repack(rpm(&root), &root, "ep-rich", &a).unwrap();
        let rb = repack(rpm(&root), &root, "ep-rich", &b).unwrap();
        assert_eq!(ra.changed, ["/usr/share/ep-rich/big"], "{payload}");
        assert_eq!(ra.version, "1.0-1");
        let (fa, fb) = (
            std::fs::read(&ra.path).unwrap(),
            std::fs::read(&rb.path).unwrap(),
        );
        assert_eq!(fa, fb, "{payload}: two repacks, same bytes");
        let again = repack(rpm(&root), &root, "ep-rich", &a).unwrap();
        assert!(again.reused, "{payload}: an identical copy is reused");
        // Lead, signature (8-byte aligned), header, then the payload in the header's format.
        let hl = 200
            + 16
            + 16 * u32::from_be_bytes(fa[208..212].try_into().unwrap()) as usize
            + u32::from_be_bytes(fa[212..216].try_into().unwrap()) as usize;
        assert!(fa[hl..].starts_with(magic), "{payload}");
        let q = run(Command::new("rpm")
            .args(["-qp", "--nosignature", "--nodigest"])
            .arg(&ra.path));
        assert_eq!(q.stdout.trim(), "ep-rich-1.0-1.noarch", "{}", q.stderr);
        let k = run(Command::new("rpm").args(["-Kv"]).arg(&ra.path));
        assert!(
            k.stdout.contains("Header SHA256 digest: OK"),
            "{}",
            k.stdout
        );

        // Into a fresh root, as a restore installs it.
        let fresh = dir.join("fresh");
        std::fs::create_dir_all(&fresh).unwrap();
        let u = run(Command::new("rpm")
            .arg("--root")
            .arg(&fresh)
            .args([
                "-U",
                "--nodeps",
                "--nosignature",
                "--nodigest",
                "--nofiledigest",
            ])
            .arg(&ra.path));
        assert_eq!(u.code, 0, "{payload}: {}", u.stderr);
        let d = fresh.join("usr/share/ep-rich");
        assert_eq!(std::fs::read(d.join("big")).unwrap(), bytes, "{payload}");
        assert_eq!(std::fs::read_to_string(d.join("h2")).unwrap(), "hl\n");
        assert_eq!(
            std::fs::read_link(d.join("link")).unwrap(),
            Path::new("big")
        );
        assert!(d.join("sub").is_dir() && d.join("empty").is_file());
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &str| std::fs::metadata(d.join(p)).unwrap().ino();
        assert_eq!(ino("h1"), ino("h2"), "{payload}: hardlinks stay linked");
        let v = run(Command::new("rpm")
            .arg("--root")
            .arg(&fresh)
            .args(["-V", "--nodeps", "ep-rich"]));
        // Only the changed file differs from the header (its digest, and rpm's own view of mtime).
        assert_eq!(v.stdout.lines().count(), 1, "{}", v.stdout);
        assert!(v.stdout.contains("5") && v.stdout.ends_with("/usr/share/ep-rich/big\n"));

        // A listed file missing on disk is carried as zeros of its packaged size (rpm wants
        // every listed file in the payload) and named for the set to delete after a restore.
        std::fs::remove_file(root.join("usr/share/ep-rich/big")).unwrap();
        let g = repack(rpm(&root), &root, "ep-rich", &b).unwrap();
        assert_eq!(g.missing, ["/usr/share/ep-rich/big"], "{payload}");
        assert_eq!(g.whole, [("/usr/share/ep-rich/big".to_string(), false)]);
        let again = fresh.with_extension("gone");
        std::fs::create_dir_all(&again).unwrap();
        let u = run(Command::new("rpm")
            .arg("--root")
            .arg(&again)
            .args(["-U", "--nodeps", "--nosignature", "--nodigest"])
            .arg("--nofiledigest")
            .arg(&g.path));
        assert_eq!(u.code, 0, "{payload}: {}", u.stderr);
        let big = std::fs::read(again.join("usr/share/ep-rich/big")).unwrap();
        assert!(big.len() == bytes.len() && big.iter().all(|b| *b == 0));
    }
}

#[test]
fn rpm_damaged_rollback_copy_makes_rollback_exit_6_naming_the_package() {
    let Some(f) = fleet("rpm-damaged") else {
        return;
    };
    let node = f.node("n");
    image(
        &f,
        &node,
        &[Rpm::new("ep-lib", "1.0"), Rpm::new("ep-app", "1.0")],
    );
    let c1 = f.rpms(
        "c1",
        1,
        &[Rpm::new("ep-lib", "2.0"), Rpm::new("ep-app", "2.0")],
        &[],
    );
    apply(&node, &c1).expect(0);
    let pool = node.state_dir.join("rollback/pool");
    let copy = pool_files(&node)
        .into_iter()
        .find(|f| f.starts_with("ep-lib-1.0-1"))
        .unwrap();
    let len = std::fs::metadata(pool.join(&copy)).unwrap().len();
    flip_byte(&pool.join(&copy), len as i64 - 100);
    let r = node.agent(&["rollback"]).expect(6);
    assert!(
        r.stderr
            .contains("restore incomplete: ep-lib (at 2.0-1, want 1.0-1)"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("ep-app (at"), "{}", r.stderr);
    assert_eq!(rpm_version(&node.root, "ep-app").as_deref(), Some("1.0-1"));
}

#[test]
fn rpm_kill_during_preserve_leaves_the_image_and_the_next_apply_works() {
    let Some(f) = fleet("rpm-kill") else {
        return;
    };
    let node = f.node("n");
    image(
        &f,
        &node,
        &[Rpm::new("ep-lib", "1.0"), Rpm::new("ep-app", "1.0")],
    );
    let names = &["ep-lib", "ep-app"];
    let before = versions(&node.root, names);
    let c1 = f.rpms(
        "c1",
        1,
        &[Rpm::new("ep-lib", "2.0"), Rpm::new("ep-app", "2.0")],
        &[],
    );
    for point in ["preserving", "preserved-one"] {
        let marker = f.dir.join(format!("paused-{point}"));
        let mut cmd = node.command(&["apply", c1.to_str().unwrap()]);
        cmd.env("EDGEPATCH_PAUSE_AT", point)
            .env("EDGEPATCH_PAUSE_FILE", &marker);
        let mut child = spawn_group(cmd);
        assert!(wait_for_file(&marker, 60), "{point}");
        kill_group(&mut child);
        assert_eq!(versions(&node.root, names), before, "{point}");
        // What the boot-time recovery unit runs.
        node.agent(&["status"]).expect(0);
        assert!(!node.state_dir.join("journal").exists(), "{point}");
        assert_eq!(versions(&node.root, names), before, "{point}");
    }
    apply(&node, &c1).expect(0);
    let stray: Vec<String> = pool_files(&node)
        .into_iter()
        .filter(|n| !n.ends_with(".rpm"))
        .collect();
    assert!(stray.is_empty(), "stray files in the pool: {stray:?}");
    node.agent(&["rollback"]).expect(0);
    assert_eq!(versions(&node.root, names), before);
}

/// rpm exits 0 when a scriptlet fails, in the restore as in the install: the image package's
/// %post failing while it is put back makes the rollback exit 6 naming the scriptlet, not "ok".
#[test]
fn rpm_a_scriptlet_failing_during_the_restore_makes_rollback_exit_6() {
    let Some(f) = fleet("rpm-restore-post") else {
        return;
    };
    let node = f.node("n");
    image(
        &f,
        &node,
        &[
            rpm_shell(),
            Rpm::new("ep-lib", "1.0").post("[ -e /post-fails ] && exit 1; exit 0"),
        ],
    );
    let c1 = f.rpms("c1", 1, &[Rpm::new("ep-lib", "2.0")], &[]);
    apply(&node, &c1).expect(0);
    std::fs::write(node.root.join("post-fails"), "").unwrap();
    let r = node.agent(&["rollback"]).expect(6);
    let all = r.stdout.clone() + &r.stderr;
    assert!(all.contains("restore incomplete"), "{all}");
    assert!(all.contains("scriptlet"), "{all}");
    let st = node.agent(&["status"]).expect(0).stdout;
    assert!(st.contains("ATTENTION"), "{st}");
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| format!("<{}: {e}>", p.display()))
}

/// Files rpm cannot carry in a repack exactly come back exactly, whatever rpm did with them:
/// the admin adopts a `.rpmnew` after the cycle, a `.rpmsave` was there before it, a %config
/// path has a space, a packaged file grew or was deleted before the patch (the preserve used to
/// refuse both), an edit made after the cycle is kept beside, and a mode is kept.
#[test]
fn rpm_kept_files_come_back_exactly_whatever_rpm_did_with_them() {
    let Some(f) = fleet("rpm-whole") else {
        return;
    };
    let node = f.node("n");
    let data = |v: &'static str| {
        Rpm::new("ep-data", v).files(
            Box::leak(
                format!(
                    "d=$RPM_BUILD_ROOT/usr/share/ep-data; mkdir -p $d\n\
                     echo 'grown {v}' > $d/grown; echo 'gone {v}' > $d/gone\n"
                )
                .into_boxed_str(),
            ),
            "/usr/share/ep-data\n",
        )
    };
    let space = |v: &'static str| {
        Rpm::new("ep-space", v).files(
            Box::leak(
                format!("mkdir -p $RPM_BUILD_ROOT/etc\necho 'space {v}' > \"$RPM_BUILD_ROOT/etc/ep space.conf\"\n")
                    .into_boxed_str(),
            ),
            "%config(noreplace) \"/etc/ep space.conf\"\n",
        )
    };
    image(
        &f,
        &node,
        &[
            Rpm::new("ep-conf", "1.0").config("/etc/ep-conf.conf", "default 1.0", true),
            Rpm::new("ep-plain", "1.0").config("/etc/ep-plain.conf", "plain 1.0", false),
            Rpm::new("ep-later", "1.0").config("/etc/ep-later.conf", "later 1.0", true),
            space("1.0"),
            data("1.0"),
        ],
    );
    let etc = node.root.join("etc");
    let admin = "edited by the admin, longer than the default\n";
    for c in [
        "ep-conf.conf",
        "ep-plain.conf",
        "ep-later.conf",
        "ep space.conf",
    ] {
        std::fs::write(etc.join(c), admin).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        etc.join("ep-conf.conf"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(etc.join("ep-plain.conf.rpmsave"), "an older save\n").unwrap();
    let share = node.root.join("usr/share/ep-data");
    let grown = "grown 1.0, and a line the admin added\n";
    std::fs::write(share.join("grown"), grown).unwrap();
    std::fs::remove_file(share.join("gone")).unwrap();

    let c1 = f.rpms(
        "c1",
        1,
        &[
            Rpm::new("ep-conf", "2.0").config("/etc/ep-conf.conf", "default 2.0", true),
            Rpm::new("ep-plain", "2.0").config("/etc/ep-plain.conf", "plain 2.0", false),
            Rpm::new("ep-later", "2.0").config("/etc/ep-later.conf", "later 2.0", true),
            space("2.0"),
            data("2.0"),
        ],
        &[],
    );
    let r = apply(&node, &c1).expect(0);
    assert!(r.stdout.contains("5 package(s) changed"), "{}", r.stdout);
    assert_eq!(read(&share.join("gone")), "gone 2.0\n");
    // After the cycle: the admin adopts the new default of one, edits another again.
    std::fs::rename(etc.join("ep-conf.conf.rpmnew"), etc.join("ep-conf.conf")).unwrap();
    std::fs::write(etc.join("ep-later.conf"), "edited after the cycle\n").unwrap();

    let r = node.agent(&["rollback"]).expect(0);
    assert!(
        r.stdout
            .contains("kept the edit made since the cycle as /etc/ep-later.conf.edgepatch-saved"),
        "{}",
        r.stdout
    );
    let names = &["ep-conf", "ep-plain", "ep-later", "ep-space", "ep-data"];
    assert!(
        versions(&node.root, names)
            .iter()
            .all(|v| v.ends_with("=1.0-1")),
        "{:?}",
        versions(&node.root, names)
    );
    for c in [
        "ep-conf.conf",
        "ep-plain.conf",
        "ep-later.conf",
        "ep space.conf",
    ] {
        assert_eq!(read(&etc.join(c)), admin, "{c}");
    }
    let mode = std::fs::metadata(etc.join("ep-conf.conf"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(read(&etc.join("ep-plain.conf.rpmsave")), "an older save\n");
    assert_eq!(
        read(&etc.join("ep-later.conf.edgepatch-saved")),
        "edited after the cycle\n"
    );
    // The adopted default was no one's edit but the admin's choice: kept beside too.
    assert_eq!(
        read(&etc.join("ep-conf.conf.edgepatch-saved")),
        "default 2.0\n"
    );
    let mut left: Vec<String> = std::fs::read_dir(&etc)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".rpm"))
        .collect();
    left.sort();
    assert_eq!(left, ["ep-plain.conf.rpmsave"]);
    assert_eq!(read(&share.join("grown")), grown);
    assert!(!share.join("gone").exists(), "gone came back");
    // A second rollback has nothing left to do; the kept files stay as they are.
    node.agent(&["rollback"]).expect(0);
    assert_eq!(read(&etc.join("ep space.conf")), admin);
}

/// kill -9 after rpm put the packages back but before the kept files were written: the next
/// `rollback` writes them (the packages are already back) and the node ends as before.
#[test]
fn rpm_kill_during_the_restore_then_rollback_again_ends_at_the_admins_files() {
    let Some(f) = fleet("rpm-kill-restore") else {
        return;
    };
    let node = f.node("n");
    image(
        &f,
        &node,
        &[Rpm::new("ep-plain", "1.0").config("/etc/ep-plain.conf", "plain 1.0", false)],
    );
    let conf = node.root.join("etc/ep-plain.conf");
    let admin = "edited by the admin, longer than the default\n";
    std::fs::write(&conf, admin).unwrap();
    let c1 = f.rpms(
        "c1",
        1,
        &[Rpm::new("ep-plain", "2.0").config("/etc/ep-plain.conf", "plain 2.0", false)],
        &[],
    );
    apply(&node, &c1).expect(0);
    let marker = f.dir.join("paused");
    let mut cmd = node.command(&["rollback"]);
    cmd.env("EDGEPATCH_PAUSE_AT", "packages-restored")
        .env("EDGEPATCH_PAUSE_FILE", &marker);
    let mut child = spawn_group(cmd);
    assert!(wait_for_file(&marker, 60));
    kill_group(&mut child);
    assert_eq!(
        rpm_version(&node.root, "ep-plain").as_deref(),
        Some("1.0-1")
    );
    // The boot-time recovery, then the operator's second try.
    node.agent(&["status"]).expect(0);
    let r = node.agent(&["rollback"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(read(&conf), admin);
    assert!(!node.root.join("etc/ep-plain.conf.rpmsave").exists());
    assert!(!node.root.join("etc/ep-plain.conf.rpmnew").exists());
    assert_eq!(
        rpm_version(&node.root, "ep-plain").as_deref(),
        Some("1.0-1")
    );
}

/// The image's package has a %preun that fails: upgrading it leaves both versions in the rpm
/// database (rpm exits 0). The install counts as failed, and the restore leaves exactly the
/// image's entry, with the undone version's files gone.
#[test]
fn rpm_failing_preun_of_an_image_package_leaves_one_entry_after_the_restore() {
    let Some(f) = fleet("rpm-preun") else {
        return;
    };
    let node = f.node("n");
    let stuck = |v: &'static str, extra: &'static str| {
        Rpm::new("ep-stuck", v).head("%preun\nexit 1\n").files(
            extra,
            if extra.is_empty() {
                ""
            } else {
                "/usr/share/ep-only-new\n"
            },
        )
    };
    image(&f, &node, &[rpm_shell(), stuck("1.0", "")]);
    let c1 = f.rpms(
        "c1",
        1,
        &[stuck(
            "2.0",
            "echo new > $RPM_BUILD_ROOT/usr/share/ep-only-new\n",
        )],
        &[],
    );
    let r = apply(&node, &c1);
    eprintln!("{}\n{}", r.stdout, r.stderr);
    let q = run(Command::new("rpm")
        .arg("--root")
        .arg(&node.root)
        .args(["-q", "ep-stuck"]));
    assert_eq!(q.stdout, "ep-stuck-1.0-1.noarch\n", "{}", r.stderr);
    assert!(!node.root.join("usr/share/ep-only-new").exists());
    assert_eq!(r.code, 6, "{}", r.stderr);
}

/// The cycle's version has a %preun that fails: the rollback's `rpm -U` of the image's copy
/// cannot erase it (both entries stay, rpm exits 0). The rollback drops the undone entry without
/// its scriptlets, installs the image's version once more, says so, and exits 0.
#[test]
fn rpm_rollback_over_a_failing_preun_ends_with_the_image_entry_alone() {
    let Some(f) = fleet("rpm-preun-rollback") else {
        return;
    };
    let node = f.node("n");
    image(&f, &node, &[rpm_shell(), Rpm::new("ep-stuck", "1.0")]);
    let c1 = f.rpms(
        "c1",
        1,
        &[Rpm::new("ep-stuck", "2.0").head("%preun\nexit 1\n").files(
            "echo new > $RPM_BUILD_ROOT/usr/share/ep-only-new\n",
            "/usr/share/ep-only-new\n",
        )],
        &[],
    );
    apply(&node, &c1).expect(0);
    let r = node.agent(&["rollback"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("dropped the undone"), "{}", r.stdout);
    let q = run(Command::new("rpm")
        .arg("--root")
        .arg(&node.root)
        .args(["-q", "ep-stuck"]));
    assert_eq!(q.stdout, "ep-stuck-1.0-1.noarch\n");
    assert!(!node.root.join("usr/share/ep-only-new").exists());
    assert_eq!(
        read(&node.root.join("usr/share/edgepatch-test/ep-stuck")),
        "ep-stuck 1.0\n"
    );
}

/// Multilib: one name installed for two architectures (a 32-bit till application's libraries
/// beside the 64-bit ones). Both are repacked, upgraded together, and come back together.
#[test]
fn rpm_multilib_package_comes_back_for_both_arches() {
    let Some(f) = fleet("rpm-multilib") else {
        return;
    };
    let node = f.node("n");
    // rpm tells the two apart by the ELF class of their files ("colors"): without ELF files one
    // arch's upgrade replaces the other. So each carries an ELF file of its class (the host's
    // /usr/bin/true, or a bare 32-bit i386 ELF header), as glibc.i686 and glibc.x86_64 do.
    let ml = |v: &'static str, arch: &'static str| {
        let elf = if arch == "x86_64" {
            "cp /usr/bin/true $d/elf".to_string()
        } else {
            // A bare ELF header: ELF 32-bit LSB executable, Intel 80386 (52 bytes).
            concat!(
                "printf '\\177\\105\\114\\106\\001\\001\\001\\000\\000\\000\\000\\000\\000\\000\\000\\000\\002\\000\\003\\000\\001\\000\\000\\000\\000\\200'",
                " > $d/elf; printf '\\004\\010\\000\\000\\000\\000\\000\\000\\000\\000\\000\\000\\000\\000\\064\\000\\040\\000\\000\\000\\050\\000\\000\\000\\000\\000' >> $d/elf; chmod 755 $d/elf"
            )
            .to_string()
        };
        Rpm::new("ep-ml", v)
            .arch(arch)
            .head("AutoReqProv: no\n")
            .files(
                Box::leak(
                    format!(
                        "d=$RPM_BUILD_ROOT/opt/ep-ml/{arch}; mkdir -p $d; echo '{v} {arch}' > $d/lib\n{elf}\n"
                    )
                    .into_boxed_str(),
                ),
                Box::leak(format!("/opt/ep-ml/{arch}\n").into_boxed_str()),
            )
    };
    image(&f, &node, &[ml("1.0", "x86_64"), ml("1.0", "i686")]);
    let q = |root: &Path| {
        let mut v: Vec<String> = run(Command::new("rpm")
            .arg("--root")
            .arg(root)
            .args(["-q", "ep-ml"]))
        .stdout
        .lines()
        .map(str::to_string)
        .collect();
        v.sort();
        v
    };
    assert_eq!(q(&node.root), ["ep-ml-1.0-1.i686", "ep-ml-1.0-1.x86_64"]);
    let c1 = f.rpms("c1", 1, &[ml("2.0", "x86_64"), ml("2.0", "i686")], &[]);
    let r = apply(&node, &c1).expect(0);
    assert!(r.stdout.contains("2 package(s) changed"), "{}", r.stdout);
    assert_eq!(q(&node.root), ["ep-ml-2.0-1.i686", "ep-ml-2.0-1.x86_64"]);
    let r = node.agent(&["rollback"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(q(&node.root), ["ep-ml-1.0-1.i686", "ep-ml-1.0-1.x86_64"]);
    for arch in ["x86_64", "i686"] {
        let lib = node.root.join(format!("opt/ep-ml/{arch}/lib"));
        assert_eq!(
            std::fs::read_to_string(lib).unwrap(),
            format!("1.0 {arch}\n")
        );
    }
}
