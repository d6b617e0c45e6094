//! Second attack on the RHEL-family preserve/rollback (a fresh-context tester, 2026-12-03:
//! kept-whole files, put_back, later edits, the %preun repair), kept as regression tests. Each
//! asserts the README's promise; the findings (hardlinks, xattrs and capabilities, FIFOs at kept
//! paths and in the pool) are fixed.
use edgepatch_e2e::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use edgepatch_e2e::rpm_attack::*;

fn sh(cmd: &str) -> Run {
    let r = run(Command::new("sh").args(["-c", cmd]));
    eprintln!("$ {cmd}\n{}{}", r.stdout, r.stderr);
    r
}
fn meta(p: &Path) -> String {
    match std::fs::symlink_metadata(p) {
        Ok(m) => format!(
            "mode {:o} uid {} gid {} nlink {} ino {} size {}",
            m.mode() & 0o7777,
            m.uid(),
            m.gid(),
            m.nlink(),
            m.ino(),
            m.len()
        ),
        Err(e) => format!("<{e}>"),
    }
}

/// B1: a hardlink set {a, b}; the admin deleted b (the set's last link, which carries the data
/// in the repack). After the rollback, a must still hold its packaged text.
#[test]
fn b1_hardlink_last_link_deleted_zeroes_the_other() {
    let f = fleet("b1");
    let node = f.node("n");
    let pk = |v: &'static str| {
        Rpm::new("ep-hl", v).files(
            leak(format!("d=$RPM_BUILD_ROOT/usr/share/ep-hl; mkdir -p $d; echo 'hardlinked {v}' > $d/a; ln $d/a $d/b\n")),
            "/usr/share/ep-hl/a\n/usr/share/ep-hl/b\n",
        )
    };
    image(&f, &node, &[pk("1.0")]);
    let d = node.root.join("usr/share/ep-hl");
    eprintln!("a: {} / b: {}", meta(&d.join("a")), meta(&d.join("b")));
    std::fs::remove_file(d.join("b")).unwrap();
    let c1 = f.rpms("c1", 1, &[pk("2.0")], &[]);
    apply(&node, &c1).expect(0);
    let r = rollback(&node);
    let a = std::fs::read(d.join("a")).unwrap_or_default();
    eprintln!(
        "after rollback exit {}: a = {:?} ({}), b exists {}",
        r.code,
        String::from_utf8_lossy(&a),
        meta(&d.join("a")),
        d.join("b").exists()
    );
    assert!(
        r.code != 0 || a == b"hardlinked 1.0\n",
        "rollback exit 0 but a is {:?}",
        String::from_utf8_lossy(&a)
    );
}

/// B2: a hardlink set {a, b}; the admin replaced a (not the last link) with a same-size edit.
/// README: "A file changed with its size kept is carried as it is, with a warning."
#[test]
fn b2_hardlink_first_link_same_size_edit_lost() {
    let f = fleet("b2");
    let node = f.node("n");
    let pk = |v: &'static str| {
        Rpm::new("ep-hl2", v).files(
            leak(format!("d=$RPM_BUILD_ROOT/usr/share/ep-hl2; mkdir -p $d; echo 'hardlinked {v}' > $d/a; ln $d/a $d/b\n")),
            "/usr/share/ep-hl2/a\n/usr/share/ep-hl2/b\n",
        )
    };
    image(&f, &node, &[pk("1.0")]);
    let d = node.root.join("usr/share/ep-hl2");
    std::fs::remove_file(d.join("a")).unwrap();
    std::fs::write(d.join("a"), "ADMINEDIT 1.0\n").unwrap(); // same size as "hardlinked 1.0\n"? pad
    let want = "ADMIN-EDITED 1\n";
    assert_eq!(want.len(), "hardlinked 1.0\n".len());
    std::fs::write(d.join("a"), want).unwrap();
    let c1 = f.rpms("c1", 1, &[pk("2.0")], &[]);
    let ap = apply(&node, &c1);
    ap.code.eq(&0).then_some(()).expect("apply");
    let r = rollback(&node);
    eprintln!(
        "after rollback exit {}: a = {:?} b = {:?}",
        r.code,
        read(&d.join("a")),
        read(&d.join("b"))
    );
    let warned = (ap.stdout.clone() + &ap.stderr).contains("differs");
    assert!(
        r.code != 0 || read(&d.join("a")) == want,
        "rollback exit 0 but a = {:?} (warned at apply: {warned})",
        read(&d.join("a"))
    );
}

/// B3: extended attributes: a user xattr on an edited %config(noreplace) (rpm's cycle leaves
/// the file alone) and a file capability on a packaged binary whose mode the admin changed.
#[test]
fn b3_xattrs_and_capabilities_of_kept_files() {
    let f = fleet("b3");
    let node = f.node("n");
    let pk = |v: &'static str| {
        Rpm::new("ep-xa", v).files(
            leak(format!("mkdir -p $RPM_BUILD_ROOT/etc $RPM_BUILD_ROOT/usr/bin; echo 'default {v}' > $RPM_BUILD_ROOT/etc/ep-xa.conf; echo 'bin {v}' > $RPM_BUILD_ROOT/usr/bin/ep-cap\n")),
            "%config(noreplace) /etc/ep-xa.conf\n%caps(cap_net_raw=ep) %attr(0755,root,root) /usr/bin/ep-cap\n",
        )
    };
    image(&f, &node, &[pk("1.0")]);
    let conf = node.root.join("etc/ep-xa.conf");
    let bin = node.root.join("usr/bin/ep-cap");
    std::fs::write(&conf, "admin edit, longer than the default\n").unwrap();
    let py = format!(
        "import os; os.setxattr('{}', 'user.note', b'admin-note')",
        conf.display()
    );
    sh(&format!("python3 -c \"{py}\""));
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o750)).unwrap();
    let caps_before = sh(&format!("getcap {}", bin.display())).stdout;
    let x = |p: &Path| {
        sh(&format!(
            "python3 -c \"import os; print(os.listxattr('{}'))\"",
            p.display()
        ))
        .stdout
    };
    let xa_before = x(&conf);
    let c1 = f.rpms("c1", 1, &[pk("2.0")], &[]);
    apply(&node, &c1).expect(0);
    eprintln!("after apply: xattrs {}", x(&conf));
    let r = rollback(&node);
    let caps_after = sh(&format!("getcap {}", bin.display())).stdout;
    let xa_after = x(&conf);
    eprintln!("caps before {caps_before:?} after {caps_after:?}; xattrs before {xa_before:?} after {xa_after:?}; mode {}", meta(&bin));
    assert!(
        r.code != 0 || (caps_before == caps_after && xa_before == xa_after),
        "rollback exit 0 but attributes lost"
    );
}

/// B4: a failed install (%post of the new version fails) where files were kept whole.
#[test]
fn b4_failed_install_puts_kept_files_back() {
    let f = fleet("b4");
    let node = f.node("n");
    let pk = |v: &'static str| {
        Rpm::new("ep-fi", v).config("/etc/ep-fi.conf", leak(format!("default {v}")), false)
    };
    image(&f, &node, &[rpm_shell(), pk("1.0")]);
    let conf = node.root.join("etc/ep-fi.conf");
    std::fs::write(&conf, "admin text, longer than the default\n").unwrap();
    let p = node.root.join("usr/share/edgepatch-test/ep-fi");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let etc_before = ls(&node.root.join("etc"));
    let c1 = f.rpms("c1", 1, &[pk("2.0").post("exit 1")], &[]);
    let r = apply(&node, &c1);
    let etc: Vec<String> = ls(&node.root.join("etc"))
        .into_iter()
        .filter(|n| n != "dnf")
        .collect();
    eprintln!(
        "exit {} etc {etc:?} conf {:?} mode {} q {}",
        r.code,
        read(&conf),
        meta(&p),
        rpmq(&node.root, "ep-fi")
    );
    assert_ne!(r.code, 0);
    assert_eq!(rpmq(&node.root, "ep-fi"), "ep-fi-1.0-1.noarch\n");
    assert_eq!(read(&conf), "admin text, longer than the default\n");
    assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(etc, etc_before);
}

/// B5: 2000 files whose modes the admin changed: time and pool size.
#[test]
fn b5_many_kept_files() {
    let f = fleet("b5");
    let node = f.node("n");
    let pk = |v: &'static str| {
        Rpm::new("ep-many", v).files(
            leak(format!("d=$RPM_BUILD_ROOT/usr/share/ep-many; mkdir -p $d; for i in $(seq 1 2000); do echo \"f$i {v}\" > $d/f$i; done\n")),
            "/usr/share/ep-many\n",
        )
    };
    image(&f, &node, &[pk("1.0")]);
    sh(&format!(
        "chmod 0600 {}/usr/share/ep-many/*",
        node.root.display()
    ));
    let c1 = f.rpms("c1", 1, &[pk("2.0")], &[]);
    let t = std::time::Instant::now();
    apply(&node, &c1).expect(0);
    let ta = t.elapsed();
    let pool = node.state_dir.join("rollback/pool");
    let n = ls(&pool).len();
    sh(&format!(
        "du -sh {}; wc -c {}/*.set",
        pool.display(),
        node.state_dir.join("rollback").display()
    ));
    let t = std::time::Instant::now();
    let r = rollback(&node);
    let tr = t.elapsed();
    let bad = sh(&format!(
        "find {}/usr/share/ep-many -type f ! -perm 0600 | wc -l",
        node.root.display()
    ))
    .stdout;
    eprintln!("apply {ta:?} rollback {tr:?} pool entries {n} not-0600 {bad}");
    assert_eq!(r.code, 0);
    assert_eq!(bad.trim(), "0");
}

/// B6: a pool copy replaced by a FIFO; a second cycle keeps the same content again.
#[test]
fn b6_pool_fifo_hangs_the_next_preserve() {
    let f = fleet("b6");
    let node = f.node("n");
    let pk = |v: &'static str| {
        Rpm::new("ep-ff", v).config("/etc/ep-ff.conf", leak(format!("default {v}")), true)
    };
    image(&f, &node, &[pk("1.0")]);
    std::fs::write(
        node.root.join("etc/ep-ff.conf"),
        "admin text, longer than the default\n",
    )
    .unwrap();
    let c1 = f.rpms("c1", 1, &[pk("2.0")], &[]);
    apply(&node, &c1).expect(0);
    let pool = node.state_dir.join("rollback/pool");
    let mut fifos = vec![];
    for n in ls(&pool) {
        if n.starts_with("file-") {
            std::fs::remove_file(pool.join(&n)).unwrap();
            sh(&format!("mkfifo {}", pool.join(&n).display()));
            fifos.push(n);
        }
    }
    let c2 = f.rpms("c2", 2, &[pk("3.0")], &[]);
    let marker = f.dir.join("never");
    let mut cmd = node.command(&["apply", c2.to_str().unwrap()]);
    cmd.env("EDGEPATCH_PAUSE_FILE", &marker);
    let mut child = spawn_group(cmd);
    let t = std::time::Instant::now();
    let mut code = None;
    while t.elapsed().as_secs() < 60 {
        if let Some(s) = child.try_wait().unwrap() {
            code = s.code();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    if code.is_none() {
        kill_group(&mut child);
    }
    let _ = child.wait();
    eprintln!(
        "apply c2 with FIFO pool files {fifos:?}: {code:?} after {:?}",
        t.elapsed()
    );
    assert!(code.is_some(), "apply hung for 60 s on a FIFO in the pool");
}

/// B7: owners: a file chowned by the admin to a uid of the root's passwd; packaged files owned
/// by a user of the root's passwd and by a name missing there.
#[test]
fn b7_owners() {
    let f = fleet("b7");
    let node = f.node("n");
    let etc = node.root.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0::/root:/bin/sh\nepuser:x:1234:1234::/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(etc.join("group"), "root:x:0:\nepuser:x:1234:\n").unwrap();
    let pk = |v: &'static str| {
        Rpm::new("ep-own", v).files(
            leak(format!("d=$RPM_BUILD_ROOT/usr/share/ep-own; mkdir -p $d; echo 'u {v}' > $d/user; echo 'g {v}' > $d/ghost; echo 'c {v}' > $d/chowned\n")),
            "%attr(0640,epuser,epuser) /usr/share/ep-own/user\n%attr(0640,nosuchuser,nosuchgroup) /usr/share/ep-own/ghost\n/usr/share/ep-own/chowned\n",
        )
    };
    image(&f, &node, &[pk("1.0")]);
    let d = node.root.join("usr/share/ep-own");
    std::os::unix::fs::chown(d.join("chowned"), Some(1234), Some(1234)).unwrap();
    std::os::unix::fs::chown(d.join("ghost"), Some(4321), Some(4321)).unwrap();
    let before: Vec<String> = ["user", "ghost", "chowned"]
        .iter()
        .map(|n| meta(&d.join(n)))
        .collect();
    let c1 = f.rpms("c1", 1, &[pk("2.0")], &[]);
    apply(&node, &c1).expect(0);
    let mid: Vec<String> = ["user", "ghost", "chowned"]
        .iter()
        .map(|n| meta(&d.join(n)))
        .collect();
    let r = rollback(&node);
    let after: Vec<String> = ["user", "ghost", "chowned"]
        .iter()
        .map(|n| meta(&d.join(n)))
        .collect();
    let strip = |v: &Vec<String>| {
        v.iter()
            .map(|s| s.split(" nlink").next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    eprintln!("before {before:#?}\nmid {mid:#?}\nafter {after:#?}");
    assert!(r.code != 0 || strip(&before) == strip(&after));
}

/// B8: the set file edited by hand: whole items pointing outside the root with `..`, bogus
/// states; must not panic, must not touch anything outside the root.
#[test]
fn b8_malformed_whole_lines() {
    let f = fleet("b8");
    let node = f.node("n");
    let outside = PathBuf::from(format!("/tmp/attack2-b8-{}", std::process::id()));
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), "victim\n").unwrap();
    let pk = |v: &'static str| {
        Rpm::new("ep-mw", v).config("/etc/ep-mw.conf", leak(format!("default {v}")), true)
    };
    image(&f, &node, &[pk("1.0")]);
    std::fs::write(
        node.root.join("etc/ep-mw.conf"),
        "admin text, longer than the default\n",
    )
    .unwrap();
    let c1 = f.rpms("c1", 1, &[pk("2.0")], &[]);
    apply(&node, &c1).expect(0);
    let rb = node.state_dir.join("rollback");
    let set = ls(&rb).into_iter().find(|n| n.ends_with(".set")).unwrap();
    let text = read(&rb.join(&set));
    eprintln!("set:\n{text}");
    let up = "/..".repeat(30);
    let rel = format!("{up}{}/victim", outside.display());
    let extra = format!(
        "\tep-mw {rel} -\tep-mw {rel}2 @{}\tep-mw {rel}3 0000:zz:1:1:1\tep-mw {rel}4 - - - \tep-mw /etc/ep-mw.conf%00x - - - -\tep-mw",
        outside.join("victim").display()
    );
    let new: String = text
        .lines()
        .map(|l| {
            if l.starts_with("whole ") {
                format!("{l}{extra}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(rb.join(&set), new).unwrap();
    let r = rollback(&node);
    eprintln!(
        "outside: {:?} {:?}",
        ls(&outside),
        read(&outside.join("victim"))
    );
    assert!(!r.stderr.contains("panicked"), "panic");
    assert_eq!(read(&outside.join("victim")), "victim\n");
    assert_eq!(ls(&outside), vec!["victim".to_string()]);
    let _ = std::fs::remove_dir_all(&outside);
}

/// B9: three cycles, the last version's %preun fails: rollback (repair), then the earlier
/// cycles, with an edited %config throughout.
#[test]
fn b9_preun_repair_then_earlier_rollbacks() {
    let f = fleet("b9");
    let node = f.node("n");
    let pk = |v: &'static str, h: &'static str| {
        Rpm::new("ep-pr", v)
            .config("/etc/ep-pr.conf", leak(format!("default {v}")), false)
            .head(h)
    };
    image(&f, &node, &[rpm_shell(), pk("1.0", "")]);
    let conf = node.root.join("etc/ep-pr.conf");
    let etc = node.root.join("etc");
    std::fs::write(&conf, "A admin text, longer than the default\n").unwrap();
    let mut states = vec![];
    for (seq, v, h, edit) in [
        (1u64, "2.0", "", "B\n"),
        (2, "3.0", "%preun\nexit 1\n", "C\n"),
    ] {
        states.push((ls(&etc), read(&conf), rpmq(&node.root, "ep-pr")));
        let c = f.rpms(&format!("c{seq}"), seq, &[pk(v, h)], &[]);
        apply(&node, &c).expect(0);
        std::fs::write(&conf, edit).unwrap();
    }
    for want in states.iter().rev() {
        let r = rollback(&node);
        let now = (ls(&etc), read(&conf), rpmq(&node.root, "ep-pr"));
        eprintln!("now {now:?}\nwant {want:?}");
        assert_eq!(r.code, 0);
        assert_eq!(now.1, want.1);
        assert_eq!(now.2, want.2);
        let extra: Vec<_> = now
            .0
            .iter()
            .filter(|n| !want.0.contains(n) && !n.contains("edgepatch-saved") && *n != "dnf")
            .collect();
        assert!(extra.is_empty(), "{extra:?}");
    }
    eprintln!(
        "saved: {:?} / {:?}",
        read(&etc.join("ep-pr.conf.edgepatch-saved")),
        read(&etc.join("ep-pr.conf.edgepatch-saved.2"))
    );
}

/// B10: a %config's directory replaced (after the cycle) by symlinks leading outside the root.
#[test]
fn b10_config_dir_symlinked_outside_root() {
    for (k, absolute) in [(0, true), (1, false)] {
        let f = fleet(&format!("b10-{k}"));
        let node = f.node("n");
        let outside = PathBuf::from(format!("/tmp/attack2-b10-{}-{k}", std::process::id()));
        std::fs::create_dir_all(outside.join("app")).unwrap();
        std::fs::write(outside.join("app/ep-sd.conf"), "OUTSIDE\n").unwrap();
        let pk = |v: &'static str| {
            Rpm::new("ep-sd", v).config("/etc/app/ep-sd.conf", leak(format!("default {v}")), true)
        };
        image(&f, &node, &[pk("1.0")]);
        let conf = node.root.join("etc/app/ep-sd.conf");
        std::fs::write(&conf, "admin text, longer than the default\n").unwrap();
        let c1 = f.rpms("c1", 1, &[pk("2.0")], &[]);
        apply(&node, &c1).expect(0);
        // Admin moves /etc/app away and links it.
        std::fs::rename(node.root.join("etc/app"), node.root.join("etc/app.moved")).unwrap();
        let t = if absolute {
            outside.join("app")
        } else {
            PathBuf::from(format!("{}{}/app", "../".repeat(30), outside.display()))
        };
        std::os::unix::fs::symlink(&t, node.root.join("etc/app")).unwrap();
        let r = rollback(&node);
        eprintln!(
            "outside after: {:?} {:?}",
            ls(&outside.join("app")),
            read(&outside.join("app/ep-sd.conf"))
        );
        assert_eq!(
            ls(&outside.join("app")),
            vec!["ep-sd.conf".to_string()],
            "written outside the root (exit {})",
            r.code
        );
        assert_eq!(read(&outside.join("app/ep-sd.conf")), "OUTSIDE\n");
        let _ = std::fs::remove_dir_all(&outside);
    }
}

/// B11: kill -9 at each point of apply (two packages, edited configs), then the next run,
/// then rollback: the configs and the .rpm* variants as before.
#[test]
fn b11_kill_during_apply_then_rollback() {
    for point in [
        "preserving",
        "preserved-one",
        "installing",
        "committing",
        "commit-recorded",
    ] {
        let f = fleet(&format!("b11-{point}"));
        let node = f.node("n");
        let a = |v: &'static str| {
            Rpm::new("ep-ka", v).config("/etc/ep-ka.conf", leak(format!("default {v}")), false)
        };
        let b = |v: &'static str| {
            Rpm::new("ep-kb", v).config("/etc/ep-kb.conf", leak(format!("default {v}")), true)
        };
        image(&f, &node, &[a("1.0"), b("1.0")]);
        let etc = node.root.join("etc");
        std::fs::write(etc.join("ep-ka.conf"), "admin A, longer than default\n").unwrap();
        std::fs::write(etc.join("ep-kb.conf"), "admin B, longer than default\n").unwrap();
        let before = ls(&etc);
        let c1 = f.rpms("c1", 1, &[a("2.0"), b("2.0")], &[]);
        let marker = f.dir.join(format!("paused-{point}"));
        let mut cmd = node.command(&["apply", c1.to_str().unwrap()]);
        cmd.env("EDGEPATCH_PAUSE_AT", point)
            .env("EDGEPATCH_PAUSE_FILE", &marker);
        let mut child = spawn_group(cmd);
        assert!(wait_for_file(&marker, 120), "{point}");
        kill_group(&mut child);
        let st = node.agent(&["status"]);
        eprintln!(
            "[{point}] killed; status {} {}; etc {:?}; q {} {}",
            st.code,
            st.stdout,
            ls(&etc),
            rpmq(&node.root, "ep-ka"),
            rpmq(&node.root, "ep-kb")
        );
        let r = apply(&node, &c1);
        eprintln!(
            "[{point}] apply again exit {}; q {}",
            r.code,
            rpmq(&node.root, "ep-ka")
        );
        let r = rollback(&node);
        let now: Vec<String> = ls(&etc).into_iter().filter(|n| n != "dnf").collect();
        eprintln!("[{point}] rollback exit {} etc {now:?}", r.code);
        assert_eq!(r.code, 0, "[{point}]");
        assert_eq!(
            read(&etc.join("ep-ka.conf")),
            "admin A, longer than default\n",
            "[{point}]"
        );
        assert_eq!(
            read(&etc.join("ep-kb.conf")),
            "admin B, longer than default\n",
            "[{point}]"
        );
        assert_eq!(now, before, "[{point}]");
        assert_eq!(
            rpmq(&node.root, "ep-ka"),
            "ep-ka-1.0-1.noarch\n",
            "[{point}]"
        );
    }
}

/// B12: a FIFO (or device) at a variant (.rpmnew) before the cycle: kept as `*`, "left alone".
#[test]
fn b12_fifo_at_rpmnew_before_the_cycle() {
    let f = fleet("b12");
    let node = f.node("n");
    let pk = |v: &'static str| {
        Rpm::new("ep-fv", v).config("/etc/ep-fv.conf", leak(format!("default {v}")), true)
    };
    image(&f, &node, &[pk("1.0")]);
    let conf = node.root.join("etc/ep-fv.conf");
    std::fs::write(&conf, "admin text, longer than the default\n").unwrap();
    sh(&format!("mkfifo {}.rpmnew", conf.display()));
    let c1 = f.rpms("c1", 1, &[pk("2.0")], &[]);
    // A FIFO where rpm may write cannot be kept: the preserve refuses, nothing changes.
    let r = apply(&node, &c1);
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(r.stderr.contains("FIFO"), "{}", r.stderr);
    assert_eq!(read(&conf), "admin text, longer than the default\n");
    use std::os::unix::fs::FileTypeExt;
    let m = std::fs::symlink_metadata(node.root.join("etc/ep-fv.conf.rpmnew")).unwrap();
    assert!(m.file_type().is_fifo());
    assert_eq!(rpmq(&node.root, "ep-fv"), "ep-fv-1.0-1.noarch\n");
}

/// B13: a kept file (mode changed) that the new version turns into a directory.
#[test]
fn b13_kept_file_becomes_directory() {
    let f = fleet("b13");
    let node = f.node("n");
    let v1 = Rpm::new("ep-fd", "1.0").files(
        "mkdir -p $RPM_BUILD_ROOT/usr/share/ep-fd; echo file > $RPM_BUILD_ROOT/usr/share/ep-fd/x\n",
        "/usr/share/ep-fd/x\n",
    );
    let v2 = Rpm::new("ep-fd", "2.0").files("mkdir -p $RPM_BUILD_ROOT/usr/share/ep-fd/x; echo inner > $RPM_BUILD_ROOT/usr/share/ep-fd/x/inner\n", "/usr/share/ep-fd/x\n");
    image(&f, &node, &[v1]);
    let x = node.root.join("usr/share/ep-fd/x");
    std::fs::set_permissions(&x, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c1 = f.rpms("c1", 1, &[v2], &[]);
    let r = apply(&node, &c1);
    if r.code != 0 {
        return;
    }
    let r = rollback(&node);
    eprintln!(
        "after rollback exit {}: x {} q {}",
        r.code,
        meta(&x),
        rpmq(&node.root, "ep-fd")
    );
    assert!(!r.stderr.contains("panicked"));
    assert!(
        r.code != 0
            || (std::fs::symlink_metadata(&x).unwrap().is_file()
                && read(&x) == "file\n"
                && std::fs::metadata(&x).unwrap().mode() & 0o7777 == 0o600)
    );
}

/// B14: a %config whose name has a space and a %, edited after the cycle.
#[test]
fn b14_config_name_with_space_and_percent() {
    let f = fleet("b14");
    let node = f.node("n");
    let pk = |v: &'static str| {
        Rpm::new("ep-sp", v).files(
            leak(format!("mkdir -p $RPM_BUILD_ROOT/etc; echo 'default {v}' > \"$RPM_BUILD_ROOT/etc/ep sp%41.conf\"\n")),
            "%config \"/etc/ep sp%%41.conf\"\n",
        )
    };
    image(&f, &node, &[pk("1.0")]);
    let etc = node.root.join("etc");
    eprintln!("etc {:?}", ls(&etc));
    let conf = etc.join("ep sp%41.conf");
    std::fs::write(&conf, "admin before, longer than default\n").unwrap();
    let c1 = f.rpms("c1", 1, &[pk("2.0")], &[]);
    apply(&node, &c1).expect(0);
    eprintln!("after apply etc {:?}", ls(&etc));
    std::fs::write(&conf, "admin AFTER the cycle\n").unwrap();
    let r = rollback(&node);
    let now = ls(&etc);
    eprintln!("after rollback etc {now:?}");
    assert_eq!(r.code, 0);
    assert_eq!(read(&conf), "admin before, longer than default\n");
    assert!(now
        .iter()
        .any(|n| read(&etc.join(n)) == "admin AFTER the cycle\n"));
    assert!(now.iter().all(|n| !n.contains(".rpm")), "{now:?}");
}

/// B15: failing %postun of the cycle's version during the rollback, then rollback again.
#[test]
fn b15_failing_postun_in_rollback_then_again() {
    let f = fleet("b15");
    let node = f.node("n");
    let pk = |v: &'static str, h: &'static str| {
        Rpm::new("ep-pu", v)
            .config("/etc/ep-pu.conf", leak(format!("default {v}")), true)
            .head(h)
    };
    image(&f, &node, &[rpm_shell(), pk("1.0", "")]);
    let conf = node.root.join("etc/ep-pu.conf");
    std::fs::write(&conf, "admin text, longer than the default\n").unwrap();
    let c1 = f.rpms("c1", 1, &[pk("2.0", "%postun\nexit 1\n")], &[]);
    apply(&node, &c1).expect(0);
    std::fs::write(&conf, "edit after the cycle\n").unwrap();
    let r1 = rollback(&node);
    let etc: Vec<String> = ls(&node.root.join("etc"))
        .into_iter()
        .filter(|n| n != "dnf")
        .collect();
    eprintln!(
        "first: exit {} etc {etc:?} conf {:?} q {}",
        r1.code,
        read(&conf),
        rpmq(&node.root, "ep-pu")
    );
    let st = node.agent(&["status"]);
    eprintln!("status {}", st.stdout);
    let r2 = rollback(&node);
    let etc2: Vec<String> = ls(&node.root.join("etc"))
        .into_iter()
        .filter(|n| n != "dnf")
        .collect();
    eprintln!("second: exit {} etc {etc2:?}", r2.code);
    assert_eq!(r1.code, 6);
    assert_eq!(read(&conf), "admin text, longer than the default\n");
    assert!(etc
        .iter()
        .any(|n| read(&node.root.join("etc").join(n)) == "edit after the cycle\n"));
}

/// B16: rollback_keep = 1 with a kept copy shared by two sets (config unchanged by cycle 1).
#[test]
fn b16_prune_with_shared_kept_copy() {
    let f = fleet("b16");
    let node = f.node_with("n", "rollback_keep = 1\n");
    let pk = |v: &'static str| {
        Rpm::new("ep-sh2", v).config("/etc/ep-sh2.conf", leak(format!("default {v}")), true)
    };
    image(&f, &node, &[pk("1.0")]);
    let conf = node.root.join("etc/ep-sh2.conf");
    std::fs::write(&conf, "admin text, longer than the default\n").unwrap();
    apply(&node, &f.rpms("c1", 1, &[pk("2.0")], &[])).expect(0);
    std::fs::remove_file(node.root.join("etc/ep-sh2.conf.rpmnew")).unwrap();
    apply(&node, &f.rpms("c2", 2, &[pk("3.0")], &[])).expect(0);
    eprintln!(
        "sets {:?} pool {:?}",
        ls(&node.state_dir.join("rollback")),
        ls(&node.state_dir.join("rollback/pool"))
    );
    let r = rollback(&node);
    let etc: Vec<String> = ls(&node.root.join("etc"))
        .into_iter()
        .filter(|n| n != "dnf")
        .collect();
    eprintln!("etc {etc:?} q {}", rpmq(&node.root, "ep-sh2"));
    assert_eq!(r.code, 0);
    assert_eq!(read(&conf), "admin text, longer than the default\n");
    assert_eq!(etc, vec!["ep-sh2.conf".to_string()]);
    assert_eq!(rollback(&node).code, 4);
}

/// B1b: hardlink set {a, b}; the admin broke the link and rewrote b (the last link) with
/// another size; a is untouched. After the rollback a must still hold its packaged text.
#[test]
fn b1b_hardlink_last_link_resized_corrupts_the_other() {
    let f = fleet("b1b");
    let node = f.node("n");
    let pk = |v: &'static str| {
        Rpm::new("ep-hl3", v).files(
            leak(format!("d=$RPM_BUILD_ROOT/usr/share/ep-hl3; mkdir -p $d; echo 'hardlinked {v}' > $d/a; ln $d/a $d/b\n")),
            "/usr/share/ep-hl3/a\n/usr/share/ep-hl3/b\n",
        )
    };
    image(&f, &node, &[pk("1.0")]);
    let d = node.root.join("usr/share/ep-hl3");
    std::fs::remove_file(d.join("b")).unwrap();
    std::fs::write(d.join("b"), "admin's much longer replacement of b\n").unwrap();
    apply(&node, &f.rpms("c1", 1, &[pk("2.0")], &[])).expect(0);
    let r = rollback(&node);
    eprintln!(
        "exit {} a = {:?} b = {:?}",
        r.code,
        read(&d.join("a")),
        read(&d.join("b"))
    );
    assert!(
        r.code != 0 || read(&d.join("a")) == "hardlinked 1.0\n",
        "rollback exit 0 but a = {:?}",
        read(&d.join("a"))
    );
}
