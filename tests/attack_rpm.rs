//! Attacks on the RHEL-family rollback (a fresh-context attack on the kept-whole files and the
//! %preun repair, 2026-12-03), kept as regression tests: each asserts what the README promises
//! (exit 0 only with the pre-patch files back; nothing the admin wrote lost; no write outside
//! the root). Synthetic rpms in scratch rpm roots, as tests/restore_rpm.rs.
use edgepatch_e2e::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use edgepatch_e2e::rpm_attack::*;

/// A1: a 0600 %config (secret) edited after the cycle is kept as .edgepatch-saved with 0644.
#[test]
fn a1_saved_copy_of_a_secret_config_is_world_readable() {
    let f = fleet("a1");
    let node = f.node("n");
    let sec = |v: &'static str| {
        Rpm::new("ep-secret", v).files(
            leak(format!("mkdir -p $RPM_BUILD_ROOT/etc; echo 'token={v}' > $RPM_BUILD_ROOT/etc/ep-secret.conf\n")),
            "%attr(0600,root,root) %config(noreplace) /etc/ep-secret.conf\n",
        )
    };
    image(&f, &node, &[sec("1.0")]);
    let conf = node.root.join("etc/ep-secret.conf");
    std::fs::write(&conf, "password=hunter2-before\n").unwrap();
    let c1 = f.rpms("c1", 1, &[sec("2.0")], &[]);
    apply(&node, &c1).expect(0);
    std::fs::write(&conf, "password=hunter3-after-the-cycle\n").unwrap();
    eprintln!(
        "mode of live conf: {:o}",
        std::fs::metadata(&conf).unwrap().mode() & 0o7777
    );
    rollback(&node).expect(0);
    let saved = node.root.join("etc/ep-secret.conf.edgepatch-saved");
    let m = std::fs::metadata(&saved).unwrap().mode() & 0o7777;
    eprintln!(
        "saved: {:?} mode {m:o}; live {:?} mode {:o}",
        read(&saved),
        read(&conf),
        std::fs::metadata(&conf).unwrap().mode() & 0o7777
    );
    assert_eq!(m, 0o600, "the secret's saved copy is mode {m:o}");
}

/// A2: the new version no longer ships a %config; the admin writes that path again after the
/// cycle; rollback writes the pre-patch text over it without keeping the later edit.
#[test]
fn a2_config_dropped_by_the_new_version_then_rewritten_by_admin_is_lost() {
    let f = fleet("a2");
    let node = f.node("n");
    image(
        &f,
        &node,
        &[Rpm::new("ep-drop", "1.0").config("/etc/ep-drop.conf", "default 1.0", true)],
    );
    let conf = node.root.join("etc/ep-drop.conf");
    std::fs::write(&conf, "admin text before the cycle\n").unwrap();
    let c1 = f.rpms("c1", 1, &[Rpm::new("ep-drop", "2.0")], &[]);
    apply(&node, &c1).expect(0);
    eprintln!(
        "after apply, etc: {:?}; conf {:?}",
        ls(&node.root.join("etc")),
        read(&conf)
    );
    std::fs::write(&conf, "IMPORTANT admin text written after the cycle\n").unwrap();
    let r = rollback(&node);
    let etc = ls(&node.root.join("etc"));
    eprintln!("after rollback, etc: {etc:?}; conf {:?}", read(&conf));
    let mut found = false;
    for n in &etc {
        if read(&node.root.join("etc").join(n)).contains("IMPORTANT") {
            found = true;
        }
    }
    assert!(
        found || r.code != 0,
        "the admin's post-cycle text is gone and rollback exit {}",
        r.code
    );
}

/// A3: a packaged file with a non-UTF-8 name (Latin-1 é).
#[test]
fn a3_non_utf8_file_name() {
    let f = fleet("a3");
    let node = f.node("n");
    let lat = |v: &'static str| {
        Rpm::new("ep-latin", v).files(
            leak(format!("d=$RPM_BUILD_ROOT/usr/share/ep-latin; mkdir -p $d; echo 'latin {v}' > \"$d/caf$(printf '\\351')\"\n")),
            "/usr/share/ep-latin\n",
        )
    };
    image(&f, &node, &[lat("1.0")]);
    let dir = node.root.join("usr/share/ep-latin");
    use std::os::unix::ffi::OsStrExt;
    let file = dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    assert_eq!(read(&file), "latin 1.0\n");
    let c1 = f.rpms("c1", 1, &[lat("2.0")], &[]);
    // Refused before anything changed: a copy rpm prints lossily would not install.
    let r = apply(&node, &c1);
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(r.stderr.contains("not UTF-8"), "{}", r.stderr);
    assert_eq!(read(&file), "latin 1.0\n");
    assert_eq!(rpmq(&node.root, "ep-latin"), "ep-latin-1.0-1.noarch\n");
}

/// A4: the admin replaced a %config with a symlink (config on a data partition): preserve.
#[test]
fn a4_config_replaced_by_symlink() {
    let f = fleet("a4");
    let node = f.node("n");
    image(
        &f,
        &node,
        &[Rpm::new("ep-ln", "1.0").config("/etc/ep-ln.conf", "default 1.0", true)],
    );
    std::fs::create_dir_all(node.root.join("data")).unwrap();
    std::fs::write(node.root.join("data/ep-ln.conf"), "admin on /data\n").unwrap();
    let conf = node.root.join("etc/ep-ln.conf");
    std::fs::remove_file(&conf).unwrap();
    std::os::unix::fs::symlink("/data/ep-ln.conf", &conf).unwrap();
    let c1 = f.rpms(
        "c1",
        1,
        &[Rpm::new("ep-ln", "2.0").config("/etc/ep-ln.conf", "default 2.0", true)],
        &[],
    );
    apply(&node, &c1).expect(0);
    rollback(&node).expect(0);
    assert_eq!(
        std::fs::read_link(&conf).ok(),
        Some(PathBuf::from("/data/ep-ln.conf"))
    );
    assert_eq!(read(&node.root.join("data/ep-ln.conf")), "admin on /data\n");
}

/// A5: a %config that is a symlink in the package, re-pointed by the admin.
#[test]
fn a5_packaged_config_symlink_repointed_by_admin() {
    let f = fleet("a5");
    let node = f.node("n");
    let pk = |v: &'static str| {
        Rpm::new("ep-cl", v).files(
            leak(format!("mkdir -p $RPM_BUILD_ROOT/etc; echo 'd {v}' > $RPM_BUILD_ROOT/etc/ep-cl.default; ln -s ep-cl.default $RPM_BUILD_ROOT/etc/ep-cl.conf\n")),
            "/etc/ep-cl.default\n%config /etc/ep-cl.conf\n",
        )
    };
    image(&f, &node, &[pk("1.0")]);
    let conf = node.root.join("etc/ep-cl.conf");
    std::fs::write(node.root.join("etc/ep-cl.admin"), "admin\n").unwrap();
    std::fs::remove_file(&conf).unwrap();
    std::os::unix::fs::symlink("ep-cl.admin", &conf).unwrap();
    let c1 = f.rpms("c1", 1, &[pk("2.0")], &[]);
    apply(&node, &c1).expect(0);
    let r = rollback(&node);
    let etc = ls(&node.root.join("etc"));
    eprintln!(
        "after rollback exit {}: link {:?}, etc {etc:?}",
        r.code,
        std::fs::read_link(&conf)
    );
    assert!(
        r.code != 0 || std::fs::read_link(&conf).ok() == Some(PathBuf::from("ep-cl.admin")),
        "rollback exit 0 but the admin's link target is {:?}; etc {etc:?}",
        std::fs::read_link(&conf)
    );
}

/// A6: failing %preun of an image package, rollback_keep = 0: the repair forgets the pre-patch
/// entry, and nothing can install it again.
#[test]
fn a6_preun_repair_without_a_copy() {
    let f = fleet("a6");
    let node = f.node_with("n", "rollback_keep = 0\n");
    let stuck = |v: &'static str| Rpm::new("ep-stuck", v).head("%preun\nexit 1\n");
    image(&f, &node, &[rpm_shell(), stuck("1.0")]);
    let c1 = f.rpms("c1", 1, &[stuck("2.0")], &[]);
    let r = apply(&node, &c1);
    eprintln!("rpm -q: {}", rpmq(&node.root, "ep-stuck"));
    eprintln!(
        "file: {:?}",
        read(&node.root.join("usr/share/edgepatch-test/ep-stuck"))
    );
    let st = node.agent(&["status"]);
    eprintln!("status:\n{}", st.stdout);
    assert!(
        rpmq(&node.root, "ep-stuck").contains("ep-stuck-"),
        "package no longer in the rpmdb; apply exit {}",
        r.code
    );
    assert_eq!(r.code, 6, "no copy: the restore cannot be complete");
}

/// A7: the %preun repair during rollback with a plain %config the admin edited.
#[test]
fn a7_preun_repair_with_an_edited_config() {
    let f = fleet("a7");
    let node = f.node("n");
    let pk = |v: &'static str, h: &'static str| {
        Rpm::new("ep-pc", v)
            .config("/etc/ep-pc.conf", leak(format!("default {v}")), false)
            .head(h)
    };
    image(&f, &node, &[rpm_shell(), pk("1.0", "")]);
    let conf = node.root.join("etc/ep-pc.conf");
    std::fs::write(&conf, "admin edit, longer than the default\n").unwrap();
    let c1 = f.rpms("c1", 1, &[pk("2.0", "%preun\nexit 1\n")], &[]);
    apply(&node, &c1).expect(0);
    eprintln!("after apply etc {:?}", ls(&node.root.join("etc")));
    let r = rollback(&node);
    let etc = ls(&node.root.join("etc"));
    eprintln!(
        "after rollback etc {etc:?}, conf {:?}, rpm -q {}",
        read(&conf),
        rpmq(&node.root, "ep-pc")
    );
    assert_eq!(r.code, 0);
    assert_eq!(read(&conf), "admin edit, longer than the default\n");
    assert!(etc.iter().all(|n| !n.contains(".rpm")), "left: {etc:?}");
}

/// A8: the admin's chmod of a packaged non-%config file (hardening) is not kept.
#[test]
fn a8_mode_of_a_plain_file() {
    let f = fleet("a8");
    let node = f.node("n");
    image(&f, &node, &[Rpm::new("ep-mode", "1.0")]);
    let p = node.root.join("usr/share/edgepatch-test/ep-mode");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c1 = f.rpms("c1", 1, &[Rpm::new("ep-mode", "2.0")], &[]);
    apply(&node, &c1).expect(0);
    let r = rollback(&node);
    let m = std::fs::metadata(&p).unwrap().mode() & 0o7777;
    eprintln!("exit {} mode {m:o}", r.code);
    assert!(
        r.code != 0 || m == 0o600,
        "rollback exit 0, mode {m:o} (was 600)"
    );
}

/// A9: a .rpmsave edited by the admin after the cycle (merging) is deleted by the rollback.
#[test]
fn a9_rpmsave_edited_after_cycle() {
    let f = fleet("a9");
    let node = f.node("n");
    image(
        &f,
        &node,
        &[Rpm::new("ep-sv", "1.0").config("/etc/ep-sv.conf", "plain 1.0", false)],
    );
    let conf = node.root.join("etc/ep-sv.conf");
    std::fs::write(&conf, "admin before\n").unwrap();
    let c1 = f.rpms(
        "c1",
        1,
        &[Rpm::new("ep-sv", "2.0").config("/etc/ep-sv.conf", "plain 2.0", false)],
        &[],
    );
    apply(&node, &c1).expect(0);
    let save = node.root.join("etc/ep-sv.conf.rpmsave");
    eprintln!("rpmsave: {:?}", read(&save));
    std::fs::write(
        &save,
        "admin before\nNEW NOTES written into the .rpmsave after the cycle\n",
    )
    .unwrap();
    let r = rollback(&node);
    let etc = ls(&node.root.join("etc"));
    let kept = etc
        .iter()
        .any(|n| read(&node.root.join("etc").join(n)).contains("NEW NOTES"));
    eprintln!("etc {etc:?} kept={kept}");
    assert!(
        kept,
        "the .rpmsave edit is gone; rollback exit {}: {}",
        r.code, r.stdout
    );
}

/// A10: kept pool copy deleted / modified before rollback.
#[test]
fn a10_kept_copy_deleted() {
    let f = fleet("a10");
    let node = f.node("n");
    image(
        &f,
        &node,
        &[Rpm::new("ep-k", "1.0").config("/etc/ep-k.conf", "default 1.0", true)],
    );
    let conf = node.root.join("etc/ep-k.conf");
    std::fs::write(&conf, "admin edit, longer than the default\n").unwrap();
    let c1 = f.rpms(
        "c1",
        1,
        &[Rpm::new("ep-k", "2.0").config("/etc/ep-k.conf", "default 2.0", true)],
        &[],
    );
    apply(&node, &c1).expect(0);
    let pool = node.state_dir.join("rollback/pool");
    for n in ls(&pool) {
        if n.starts_with("file-") {
            std::fs::remove_file(pool.join(n)).unwrap();
        }
    }
    let r = rollback(&node);
    eprintln!(
        "conf {:?} etc {:?}",
        read(&conf),
        ls(&node.root.join("etc"))
    );
    assert_eq!(r.code, 6);
}

/// A11: failing %preun of the image version: failed install, restore, then apply again (x3).
#[test]
fn a11_preun_failed_install_then_apply_again() {
    let f = fleet("a11");
    let node = f.node("n");
    let stuck = |v: &'static str| {
        Rpm::new("ep-stuck", v).head("%preun\nexit 1\n").config(
            "/etc/ep-stuck.conf",
            leak(format!("d {v}")),
            true,
        )
    };
    image(&f, &node, &[rpm_shell(), stuck("1.0")]);
    let conf = node.root.join("etc/ep-stuck.conf");
    std::fs::write(&conf, "admin text, longer than default\n").unwrap();
    let c1 = f.rpms("c1", 1, &[stuck("2.0")], &[]);
    for i in 1..=4 {
        let r = apply(&node, &c1);
        let q = rpmq(&node.root, "ep-stuck");
        eprintln!(
            "try {i}: exit {} rpm -q {q:?} etc {:?} conf {:?}",
            r.code,
            ls(&node.root.join("etc")),
            read(&conf)
        );
        assert_eq!(q, "ep-stuck-1.0-1.noarch\n", "try {i}");
        assert_eq!(read(&conf), "admin text, longer than default\n", "try {i}");
        assert!(
            !(r.stdout.clone() + &r.stderr).contains("restore incomplete"),
            "try {i}"
        );
    }
}

/// A12: three cycles, admin edits between, rollback_keep = 2 (prune), then rollbacks.
#[test]
fn a12_three_cycles_edits_and_pruning() {
    let f = fleet("a12");
    let node = f.node("n");
    let pk = |v: &'static str| {
        Rpm::new("ep-3", v).config("/etc/ep-3.conf", leak(format!("default {v}")), true)
    };
    let pk2 = |v: &'static str| {
        Rpm::new("ep-3b", v).config("/etc/ep-3b.conf", leak(format!("default {v}")), false)
    };
    image(&f, &node, &[pk("1.0"), pk2("1.0")]);
    let etc = node.root.join("etc");
    std::fs::write(etc.join("ep-3.conf"), "A\n").unwrap();
    std::fs::write(etc.join("ep-3b.conf"), "A\n").unwrap();
    let mut states = vec![];
    for (seq, v, edit) in [(1u64, "2.0", "B\n"), (2, "3.0", "C\n"), (3, "4.0", "D\n")] {
        states.push((
            ls(&etc),
            read(&etc.join("ep-3.conf")),
            read(&etc.join("ep-3b.conf")),
        ));
        let c = f.rpms(&format!("c{seq}"), seq, &[pk(v), pk2(v)], &[]);
        apply(&node, &c).expect(0);
        std::fs::write(etc.join("ep-3.conf"), edit).unwrap();
        std::fs::write(etc.join("ep-3b.conf"), edit).unwrap();
    }
    eprintln!("pool {:?}", ls(&node.state_dir.join("rollback/pool")));
    for want in states.iter().rev().take(2) {
        let r = rollback(&node);
        assert_eq!(r.code, 0);
        let now = (
            ls(&etc),
            read(&etc.join("ep-3.conf")),
            read(&etc.join("ep-3b.conf")),
        );
        eprintln!("now {now:?}\nwant {want:?}");
        assert_eq!(now.1, want.1);
        assert_eq!(now.2, want.2);
        let extra: Vec<_> = now
            .0
            .iter()
            .filter(|n| !want.0.contains(n) && !n.contains("edgepatch-saved"))
            .collect();
        assert!(extra.is_empty(), "{extra:?}");
    }
    let r = rollback(&node);
    assert_eq!(r.code, 4);
}

/// A13: the same %config owned by two packages (identical default).
#[test]
fn a13_same_config_in_two_packages() {
    let f = fleet("a13");
    let node = f.node("n");
    let a = |n: &'static str, v: &'static str| {
        Rpm::new(n, v).config("/etc/ep-shared.conf", "shared default", false)
    };
    image(&f, &node, &[a("ep-sa", "1.0"), a("ep-sb", "1.0")]);
    let conf = node.root.join("etc/ep-shared.conf");
    std::fs::write(&conf, "admin shared edit\n").unwrap();
    let c1 = f.rpms("c1", 1, &[a("ep-sa", "2.0")], &[]);
    apply(&node, &c1).expect(0);
    eprintln!(
        "after apply etc {:?} conf {:?}",
        ls(&node.root.join("etc")),
        read(&conf)
    );
    let r = rollback(&node);
    eprintln!(
        "after rollback etc {:?} conf {:?}",
        ls(&node.root.join("etc")),
        read(&conf)
    );
    assert_eq!(r.code, 0);
    assert_eq!(read(&conf), "admin shared edit\n");
}

/// A14: a pre-existing .rpmsave that is a symlink pointing outside the root.
#[test]
fn a14_rpmsave_symlink_outside_root() {
    let f = fleet("a14");
    let node = f.node("n");
    let outside = f.dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), "victim\n").unwrap();
    image(
        &f,
        &node,
        &[Rpm::new("ep-sl", "1.0").config("/etc/ep-sl.conf", "plain 1.0", false)],
    );
    let conf = node.root.join("etc/ep-sl.conf");
    std::fs::write(&conf, "admin\n").unwrap();
    std::os::unix::fs::symlink(
        outside.join("victim"),
        node.root.join("etc/ep-sl.conf.rpmsave"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        outside.join("victim"),
        node.root.join("etc/ep-sl.conf.rpmnew"),
    )
    .unwrap();
    let c1 = f.rpms(
        "c1",
        1,
        &[Rpm::new("ep-sl", "2.0").config("/etc/ep-sl.conf", "plain 2.0", false)],
        &[],
    );
    apply(&node, &c1).expect(0);
    {
        let r = rollback(&node);
        eprintln!(
            "after rollback exit {} etc {:?} rpmsave link {:?} victim {:?} conf {:?}",
            r.code,
            ls(&node.root.join("etc")),
            std::fs::read_link(node.root.join("etc/ep-sl.conf.rpmsave")),
            read(&outside.join("victim")),
            read(&conf)
        );
        assert_eq!(read(&outside.join("victim")), "victim\n");
        assert_eq!(r.code, 0);
        assert_eq!(
            std::fs::read_link(node.root.join("etc/ep-sl.conf.rpmsave")).ok(),
            Some(outside.join("victim"))
        );
    }
}

/// A15: epoch versions with a failing %preun in the cycle's version.
#[test]
fn a15_preun_repair_with_epoch() {
    let f = fleet("a15");
    let node = f.node("n");
    image(
        &f,
        &node,
        &[rpm_shell(), Rpm::new("ep-ep", "1.0").head("Epoch: 2\n")],
    );
    let c1 = f.rpms(
        "c1",
        1,
        &[Rpm::new("ep-ep", "1.0.1").head("Epoch: 2\n%preun\nexit 1\n")],
        &[],
    );
    apply(&node, &c1).expect(0);
    let r = rollback(&node);
    eprintln!("rpm -q {}", rpmq(&node.root, "ep-ep"));
    assert_eq!(r.code, 0);
    assert_eq!(rpmq(&node.root, "ep-ep"), "ep-ep-1.0-1.noarch\n");
}

/// A16: kill -9 during rollback after the later edit was saved (packages-restored), twice.
#[test]
fn a16_kill_after_save_then_rerun() {
    let f = fleet("a16");
    let node = f.node("n");
    image(
        &f,
        &node,
        &[Rpm::new("ep-kl", "1.0").config("/etc/ep-kl.conf", "default 1.0", true)],
    );
    let conf = node.root.join("etc/ep-kl.conf");
    std::fs::write(&conf, "admin before, longer than default\n").unwrap();
    let c1 = f.rpms(
        "c1",
        1,
        &[Rpm::new("ep-kl", "2.0").config("/etc/ep-kl.conf", "default 2.0", true)],
        &[],
    );
    apply(&node, &c1).expect(0);
    std::fs::write(&conf, "admin after the cycle\n").unwrap();
    for point in ["rollback", "packages-restored"] {
        let marker = f.dir.join(format!("paused-{point}"));
        let mut cmd = node.command(&["rollback"]);
        cmd.env("EDGEPATCH_PAUSE_AT", point)
            .env("EDGEPATCH_PAUSE_FILE", &marker);
        let mut child = spawn_group(cmd);
        assert!(wait_for_file(&marker, 60), "{point}");
        kill_group(&mut child);
        eprintln!(
            "killed at {point}: etc {:?} conf {:?}",
            ls(&node.root.join("etc")),
            read(&conf)
        );
    }
    node.agent(&["status"]).expect(0);
    let r = rollback(&node);
    let etc = ls(&node.root.join("etc"));
    eprintln!(
        "etc {etc:?} conf {:?} saved {:?}",
        read(&conf),
        read(&node.root.join("etc/ep-kl.conf.edgepatch-saved"))
    );
    assert_eq!(r.code, 0);
    assert_eq!(read(&conf), "admin before, longer than default\n");
    assert!(etc
        .iter()
        .any(|n| read(&node.root.join("etc").join(n)) == "admin after the cycle\n"));
    assert!(etc.iter().all(|n| !n.contains(".tmp-")), "{etc:?}");
}
