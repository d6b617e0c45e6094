//! End-to-end `apply` with real dnf and rpm into scratch install roots (the RHEL family), with the
//! builder's createrepo_c metadata: install, upgrade, idempotence, replay, a failing %pre scriptlet,
//! and SIGKILL during the install step.

use edgepatch_e2e::*;
use std::path::Path;

const VARIANT: &str = "rhel-9-x86_64";

fn fleet(tag: &str) -> Option<Fleet> {
    if !(have("dnf") && have("rpmbuild") && have("createrepo_c")) {
        eprintln!("SKIP: dnf, rpmbuild or createrepo_c missing; run scripts/test-deps.sh");
        return None;
    }
    Some(Fleet::new(tag, VARIANT, "dnf"))
}

fn apply(node: &Node, bundle: &Path) -> Run {
    node.agent(&["apply", bundle.to_str().unwrap()])
}

#[test]
fn dnf_install_upgrade_replay_and_failed_scriptlet() {
    let Some(f) = fleet("dnf-basic") else {
        return;
    };
    let node = f.node("n");
    let c1 = f.rpms(
        "c1",
        1,
        &[
            Rpm::new("ep-lib", "1.0"),
            Rpm::new("ep-app", "1.0").requires("ep-lib >= 1.0"),
        ],
        &["ep-app"],
    );
    let c2 = f.rpms(
        "c2",
        2,
        &[
            Rpm::new("ep-lib", "2.0"),
            Rpm::new("ep-app", "2.0").requires("ep-lib >= 2.0"),
        ],
        &[],
    );
    let c3 = f.rpms(
        "c3",
        3,
        &[
            Rpm::new("ep-lib", "3.0").pre("echo 'ep-lib: refusing' >&2; exit 1"),
            Rpm::new("ep-app", "3.0").requires("ep-lib >= 3.0"),
        ],
        &[],
    );
    apply(&node, &c1).expect(0);
    assert_eq!(rpm_version(&node.root, "ep-app").as_deref(), Some("1.0-1"));
    assert_eq!(rpm_version(&node.root, "ep-lib").as_deref(), Some("1.0-1"));
    let r = apply(&node, &c1).expect(0);
    assert!(r.stdout.contains("already applied"), "{}", r.stdout);

    apply(&node, &c2).expect(0);
    assert_eq!(rpm_version(&node.root, "ep-app").as_deref(), Some("2.0-1"));
    assert_eq!(rpm_version(&node.root, "ep-lib").as_deref(), Some("2.0-1"));
    apply(&node, &c1).expect(4);

    // %pre of the new ep-lib fails: the transaction fails and the node stays at 2.0.
    let r = apply(&node, &c3).expect(6);
    assert!(r.stderr.contains("install-failed"), "{}", r.stderr);
    assert_eq!(rpm_version(&node.root, "ep-app").as_deref(), Some("2.0-1"));
    assert_eq!(rpm_version(&node.root, "ep-lib").as_deref(), Some("2.0-1"));
    let st = node.agent(&["status", "--json"]).expect(0).stdout;
    assert!(st.contains("\"installed_sequence\":2"), "{st}");
}

#[test]
fn dnf_sigkill_during_install_is_finished_on_next_run() {
    let Some(f) = fleet("dnf-kill") else {
        return;
    };
    let c1 = f.rpms("c1", 1, &[Rpm::new("ep-lib", "1.0")], &["ep-lib"]);
    let c2 = f.rpms("c2", 2, &[Rpm::new("ep-lib", "2.0")], &[]);
    for point in ["staging", "installing", "commit-recorded"] {
        let node = f.node(point);
        apply(&node, &c1).expect(0);
        let marker = f.dir.join(format!("paused-{point}"));
        let mut cmd = node.command(&["apply", c2.to_str().unwrap()]);
        cmd.env("EDGEPATCH_PAUSE_AT", point)
            .env("EDGEPATCH_PAUSE_FILE", &marker);
        let mut child = spawn_group(cmd);
        assert!(wait_for_file(&marker, 60), "{point}");
        kill_group(&mut child);
        apply(&node, &c2).expect(0);
        assert_eq!(
            rpm_version(&node.root, "ep-lib").as_deref(),
            Some("2.0-1"),
            "{point}"
        );
        assert!(!node.state_dir.join("journal").exists(), "{point}");
    }
}
