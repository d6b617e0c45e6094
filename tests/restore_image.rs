//! Issue 15 on a real Debian 12 image: the agent runs inside the image (chroot, no network,
//! root "/"), bundles upgrade packages that came with the image, and failed installs and
//! rollbacks put back the image's exact versions from the rollback sets (packages repacked
//! before the install), the admin's conffile included.

mod imagebox;

use edgepatch_e2e::Deb;
use imagebox::*;
use std::path::PathBuf;

#[test]
fn apply_then_rollback_brings_back_the_image_versions_and_the_admins_conffile() {
    let Some(img) = image("restore-image-rb") else {
        return;
    };
    cases::apply_then_rollback(&img);
}

#[test]
fn a_failing_postinst_leaves_every_package_at_the_image_versions() {
    let Some(img) = image("restore-image-fail") else {
        return;
    };
    cases::failing_postinst(&img);
}

#[test]
fn two_cycles_then_two_rollbacks_step_back_to_the_image() {
    let Some(img) = image("restore-image-two") else {
        return;
    };
    cases::two_cycles_two_rollbacks(&img);
}

#[test]
fn rollback_writes_back_dpkgs_record_of_the_admins_conffile_edit() {
    let Some(img) = image("restore-image-md5") else {
        return;
    };
    let record = img.conffiles_record("libsemanage-common");
    assert!(record.contains("semanage.conf"), "{record}");
    let conf = img.edit_conffile();
    let c1 = img.bundle("c1", 1, &[img.bump("libsemanage-common", 1, false)]);
    img.agent(&format!("apply {c1}")).expect(0);
    img.agent("rollback").expect(0);
    assert_eq!(img.conffile(), conf);
    // Installing the repacked package made dpkg record the admin's text as shipped; the agent
    // put the original md5 back, so the next upgrade still sees the edit and keeps it.
    assert_eq!(img.conffiles_record("libsemanage-common"), record);
    img.audit_clean();
}

/// c1 upgrades an image package and installs kiosk-old; c2 upgrades another image package and
/// installs kiosk-new, which Conflicts/Replaces kiosk-old (apt removes it); c3 upgrades hostname
/// again. Three rollbacks step back through each state: kiosk-old comes back with c2's, and
/// leaves again with c1's, and the image's exact versions end it.
#[test]
fn three_cycles_then_three_rollbacks_bring_back_a_removed_package_and_the_image() {
    let Some(img) = image("restore-image-three") else {
        return;
    };
    let state = |img: &Image| {
        let mut v = img.versions();
        v.push(img.version("kiosk-old"));
        v.push(img.version("kiosk-new"));
        v
    };
    img.set_config("rollback_keep", "3");
    let image_state = state(&img);
    let conf = img.edit_conffile();
    let debs = img.dir.join("kiosk");
    let old = Deb::new("kiosk-old", "1.0").build(&debs);
    let new = Deb::new("kiosk-new", "2.0")
        .control("Conflicts: kiosk-old\nReplaces: kiosk-old\nProvides: kiosk-old\n")
        .build(&debs);

    let c1 = img.bundle_with(
        "c1",
        1,
        &[img.bump("hostname", 1, false), old],
        &["--install", "kiosk-old"],
    );
    img.agent(&format!("apply {c1}")).expect(0);
    let c1_state = state(&img);
    assert!(c1_state[2].starts_with("1.0 ii"), "{c1_state:?}");

    let c2 = img.bundle_with(
        "c2",
        2,
        &[img.bump("libsemanage-common", 2, false), new],
        &["--install", "kiosk-new"],
    );
    let r = img.agent(&format!("apply {c2}")).expect(0);
    assert!(r.stdout.contains("3 package(s) changed"), "{}", r.stdout);
    let c2_state = state(&img);
    assert!(c2_state[3].starts_with("2.0 ii"), "{c2_state:?}");
    assert!(
        !c2_state[2].contains(" ii"),
        "kiosk-old removed: {c2_state:?}"
    );

    let c3 = img.bundle("c3", 3, &[img.bump("hostname", 3, false)]);
    img.agent(&format!("apply {c3}")).expect(0);
    assert!(img.version("hostname").contains("+ep1+ep3 ii"));

    let st = img.agent("status").expect(0).stdout;
    assert!(st.contains("c3"), "{st}");
    for (cycle, want) in [("c3", &c2_state), ("c2", &c1_state), ("c1", &image_state)] {
        let r = img.agent("rollback").expect(0);
        assert!(
            r.stdout.contains(&format!("cycle {cycle} rolled back")),
            "{}",
            r.stdout
        );
        assert_eq!(&state(&img), want, "after rolling back {cycle}");
        img.audit_clean();
    }
    assert_eq!(img.conffile(), conf);
    let st = img.agent("status").expect(0).stdout;
    assert!(!st.contains("restored restored"), "{st}");
}

/// rollback_keep = 1: the second rollback cannot step back further, and says why (exit 4).
#[test]
fn rolling_back_past_the_kept_sets_says_so_and_changes_nothing() {
    let Some(img) = image("restore-image-keep") else {
        return;
    };
    img.set_config("rollback_keep", "1");
    let c1 = img.bundle("c1", 1, &[img.bump("hostname", 1, false)]);
    img.agent(&format!("apply {c1}")).expect(0);
    let c2 = img.bundle("c2", 2, &[img.bump("libsemanage-common", 2, false)]);
    img.agent(&format!("apply {c2}")).expect(0);
    img.agent("rollback").expect(0);
    let before = img.versions();
    let r = img.agent("rollback").expect(4);
    assert!(
        r.stderr
            .contains("cycle c1 is installed, but its rollback set is gone (rollback_keep = 1"),
        "{}",
        r.stderr
    );
    assert_eq!(img.versions(), before);
}

/// Power cut in the middle of the preserve step (one package repacked, one not): nothing was
/// installed, the next command clears the interrupted run, and the same bundle then applies
/// and rolls back cleanly with no stray file left in the pool.
#[test]
fn kill_during_preserve_leaves_the_image_and_the_next_apply_works() {
    let Some(img) = image("restore-image-kill-preserve") else {
        return;
    };
    let before = img.versions();
    let debs: Vec<PathBuf> = PKGS.iter().map(|p| img.bump(p, 1, false)).collect();
    let c1 = img.bundle("c1", 1, &debs);
    img.kill_at("preserved-one", &format!("apply {c1}"));
    assert_eq!(img.versions(), before);
    // What the boot-time recovery unit runs.
    img.agent("status").expect(0);
    assert_eq!(img.versions(), before);
    img.audit_clean();
    let st = img.agent("status --json").expect(0).stdout;
    assert!(st.contains("\"next_rollback\":null"), "{st}");

    img.agent(&format!("apply {c1}")).expect(0);
    let pool = img.root.join("var/lib/edgepatch/rollback/pool");
    let stray: Vec<String> = std::fs::read_dir(&pool)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".deb"))
        .collect();
    assert!(stray.is_empty(), "stray files in the pool: {stray:?}");
    img.agent("rollback").expect(0);
    assert_eq!(img.versions(), before);
    img.audit_clean();
}

/// Power cut in the middle of a restore (the added package purged, the upgraded one not yet
/// put back): the next `rollback` finishes that same rollback, not a second one.
#[test]
fn kill_during_restore_then_rollback_again_ends_at_the_image() {
    let Some(img) = image("restore-image-kill-restore") else {
        return;
    };
    let before = img.versions();
    let kiosk = Deb::new("kiosk-app", "1.0").build(&img.dir.join("kiosk"));
    let c1 = img.bundle_with(
        "c1",
        1,
        &[img.bump("hostname", 1, false), kiosk],
        &["--install", "kiosk-app"],
    );
    img.agent(&format!("apply {c1}")).expect(0);
    img.kill_at("restore-purged", "rollback");
    assert!(img.version("hostname").contains("+ep1"), "not restored yet");
    assert!(!img.version("kiosk-app").contains(" ii"), "already purged");
    let r = img.agent("rollback").expect(0);
    assert!(r.stdout.contains("cycle c1 rolled back"), "{}", r.stdout);
    assert_eq!(img.versions(), before);
    assert!(!img.version("kiosk-app").contains(" ii"));
    img.audit_clean();
    let st = img.agent("status --json").expect(0).stdout;
    assert!(!st.contains("installed_cycle\":\"c"), "{st}");
    assert!(st.contains("\"needs_attention\":null"), "{st}");
}

/// dpkg needs a Pre-Depends configured before it unpacks the dependent package, and a restore
/// hands it every file at once: libpam-modules (Pre-Depends: libpam-modules-bin (= exact)) in
/// the image's real security set failed that way. The restore goes again with what is not back.
#[test]
fn a_pre_depends_pinned_to_the_exact_version_is_restored_in_a_second_pass() {
    let Some(img) = image("restore-image-predepends") else {
        return;
    };
    let d = img.dir.join("kiosk");
    let one = vec![
        Deb::new("kiosk-bin", "1.0").build(&d),
        Deb::new("kiosk-mod", "1.0")
            .control("Pre-Depends: kiosk-bin (= 1.0)\n")
            .build(&d),
    ];
    let c1 = img.bundle_with(
        "c1",
        1,
        &one,
        &["--install", "kiosk-bin", "--install", "kiosk-mod"],
    );
    let r = img.agent(&format!("apply {c1}"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let two = vec![
        Deb::new("kiosk-bin", "2.0").build(&d),
        Deb::new("kiosk-mod", "2.0")
            .control("Pre-Depends: kiosk-bin (= 2.0)\n")
            .build(&d),
    ];
    let c2 = img.bundle("c2", 2, &two);
    img.agent(&format!("apply {c2}")).expect(0);
    assert!(img.version("kiosk-mod").starts_with("2.0 ii"));
    let r = img.agent("rollback");
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(img.version("kiosk-bin").starts_with("1.0 ii"));
    assert!(img.version("kiosk-mod").starts_with("1.0 ii"));
    img.audit_clean();
}

/// What a rollback must not lose or trust blindly: a package the cycle installed whose conffile
/// the admin then edited is removed but keeps that file (not purged, and the message says so);
/// the `.dpkg-dist` an upgrade left beside an admin-edited conffile goes with the upgrade; and a
/// preserved copy whose bytes changed since it was written is not installed (exit 6, named).
#[test]
fn rollback_keeps_admin_edits_removes_dpkg_dist_and_refuses_a_changed_copy() {
    let Some(img) = image("restore-image-edits") else {
        return;
    };
    let image_state = img.versions();
    let conf = img.edit_conffile();
    let debs = img.dir.join("kiosk");
    let kiosk = Deb::new("kiosk-conf", "1.0")
        .conffile("/etc/kiosk.conf", "url=http://localhost/\n")
        .build(&debs);
    let semanage = img.bump_tree("libsemanage-common", 1, false, |tree| {
        let p = tree.join(CONF);
        let text = std::fs::read_to_string(&p).unwrap() + "# new default of +ep1\n";
        std::fs::write(p, text).unwrap();
    });
    let c1 = img.bundle_with("c1", 1, &[semanage, kiosk], &["--install", "kiosk-conf"]);
    img.agent(&format!("apply {c1}")).expect(0);
    let dist = img.root.join(format!("{CONF}.dpkg-dist"));
    assert!(
        dist.exists(),
        "dpkg kept the admin's file and left the new default beside it"
    );
    assert_eq!(img.conffile(), conf);
    let kiosk_conf = img.root.join("etc/kiosk.conf");
    std::fs::write(&kiosk_conf, "url=http://till-7.local/\n").unwrap();

    let r = img.agent("rollback").expect(0);
    assert!(
        r.stdout.contains("kept the admin's /etc/kiosk.conf"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("deleted /{CONF}.dpkg-dist")),
        "{}",
        r.stdout
    );
    assert_eq!(img.versions(), image_state);
    assert!(
        img.version("kiosk-conf").ends_with(" rc"),
        "{}",
        img.version("kiosk-conf")
    );
    assert_eq!(
        std::fs::read_to_string(&kiosk_conf).unwrap(),
        "url=http://till-7.local/\n"
    );
    assert!(!dist.exists());
    assert_eq!(img.conffile(), conf);
    img.audit_clean();

    // A copy in the rollback pool swapped for other bytes with the same name is not installed.
    let c2 = img.bundle("c2", 2, &[img.bump("hostname", 2, false)]);
    img.agent(&format!("apply {c2}")).expect(0);
    let pool = img.root.join("var/lib/edgepatch/rollback/pool");
    let copy = std::fs::read_dir(&pool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("hostname_")
        })
        .expect("hostname preserved");
    std::fs::copy(img.dir.join("kiosk/kiosk-conf_1.0_all.deb"), &copy).unwrap();
    let r = img.agent("rollback").expect(6);
    let all = r.stdout.clone() + &r.stderr;
    assert!(all.contains("restore incomplete: hostname"), "{all}");
    assert!(all.contains("changed since it was preserved"), "{all}");
    assert!(
        img.version("hostname").contains("+ep2 ii"),
        "{}",
        img.version("hostname")
    );
    assert!(img.version("kiosk-conf").ends_with(" rc"));
    img.audit_clean();
}

/// The boot-time recovery (edgepatch-recover.service sets EDGEPATCH_BOOT=1) finishes an install
/// cut short by a power loss before the kiosk app starts. The app's postinst restarts the app's
/// unit, which waits for the recovery: a temporary policy-rc.d answering 101 makes
/// deb-systemd-invoke skip that, and is gone afterwards. An admin's own policy-rc.d is kept.
#[test]
fn boot_recovery_denies_service_restarts_of_maintainer_scripts_while_it_runs() {
    let Some(img) = image("restore-image-boot-guard") else {
        return;
    };
    let script =
        "if [ -x /usr/sbin/policy-rc.d ]; then /usr/sbin/policy-rc.d kiosk.service restart; \
                  echo $? >>/var/tmp/policy; else echo none >>/var/tmp/policy; fi";
    let debs = img.dir.join("kiosk");
    let v1 = Deb::new("kiosk-app", "1.0").postinst(script).build(&debs);
    let v2 = Deb::new("kiosk-app", "1.1").postinst(script).build(&debs);
    let c1 = img.bundle_with("c1", 1, &[v1], &["--install", "kiosk-app"]);
    let c2 = img.bundle("c2", 2, &[v2]);
    img.agent(&format!("apply {c1}")).expect(0);
    img.kill_at("installing", &format!("apply {c2}"));
    let policy = img.root.join("usr/sbin/policy-rc.d");
    assert!(!policy.exists());
    img.sh("EDGEPATCH_BOOT=1 edgepatch --config /etc/edgepatch/agent.conf status")
        .expect(0);
    assert!(
        img.version("kiosk-app").starts_with("1.1 ii"),
        "{}",
        img.version("kiosk-app")
    );
    let seen = std::fs::read_to_string(img.root.join("var/tmp/policy")).unwrap();
    assert_eq!(
        seen, "none\n101\n",
        "c1 at run time, c2 during boot recovery"
    );
    assert!(!policy.exists(), "the temporary policy-rc.d is removed");
    img.audit_clean();
}
