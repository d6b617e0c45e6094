//! End-to-end `apply` with real apt-get and dpkg into scratch roots: install, upgrade, idempotence,
//! replay, deferral, locking, quarantine, a failing maintainer script, SIGKILL at every step, and
//! the offline path in a network namespace with no interfaces.

use edgepatch_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const VARIANT: &str = "debian-12-amd64";

fn fleet(tag: &str) -> Fleet {
    Fleet::new(tag, VARIANT, "apt")
}

/// The two cycles most tests use: ep-app depends on ep-lib; c2 adds a new dependency.
trait Cycles {
    fn c1(&self) -> PathBuf;
    fn c2(&self) -> PathBuf;
}

impl Cycles for Fleet {
    fn c1(&self) -> PathBuf {
        self.debs(
            "c1",
            1,
            &[
                Deb::new("ep-lib", "1.0"),
                Deb::new("ep-app", "1.0").depends("ep-lib (>= 1.0)"),
            ],
            &["ep-app"],
        )
    }

    fn c2(&self) -> PathBuf {
        self.debs(
            "c2",
            2,
            &[
                Deb::new("ep-lib", "2.0"),
                Deb::new("ep-app", "2.0").depends("ep-lib (>= 2.0), ep-extra"),
                Deb::new("ep-extra", "1.0"),
            ],
            &["ep-app"],
        )
    }
}

fn apply(node: &Node, bundle: &Path) -> Run {
    node.agent(&["apply", bundle.to_str().unwrap()])
}

fn status_json(node: &Node) -> String {
    node.agent(&["status", "--json"]).expect(0).stdout
}

fn ver(node: &Node, name: &str) -> Option<String> {
    deb_version(&node.root, name)
}

#[test]
fn install_upgrade_idempotent_replay() {
    let f = fleet("apt-basic");
    let node = f.node("n");
    let (c1, c2) = (f.c1(), f.c2());
    let r = apply(&node, &c1).expect(0);
    assert!(
        r.stdout.contains("cycle c1 sequence 1 applied"),
        "{}",
        r.stdout
    );
    assert_eq!(ver(&node, "ep-app").as_deref(), Some("1.0 ii"));
    assert_eq!(ver(&node, "ep-lib").as_deref(), Some("1.0 ii"));
    let file = node.root.join("usr/share/edgepatch-test/ep-app");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "ep-app 1.0\n");

    // Idempotent: the same bundle again does not run the package manager.
    let r = apply(&node, &c1).expect(0);
    assert!(r.stdout.contains("already applied"), "{}", r.stdout);
    assert!(!r.stderr.contains("run: apt-get"), "{}", r.stderr);

    // Upgrade, with a new dependency pulled in from the bundle only.
    apply(&node, &c2).expect(0);
    assert_eq!(ver(&node, "ep-app").as_deref(), Some("2.0 ii"));
    assert_eq!(ver(&node, "ep-lib").as_deref(), Some("2.0 ii"));
    assert_eq!(ver(&node, "ep-extra").as_deref(), Some("1.0 ii"));
    assert!(status_json(&node).contains("\"installed_sequence\":2"));

    // Replay of the older, validly signed bundle is refused and changes nothing.
    let r = apply(&node, &c1).expect(4);
    assert!(
        r.stderr.contains("not newer than installed 2"),
        "{}",
        r.stderr
    );
    assert_eq!(ver(&node, "ep-app").as_deref(), Some("2.0 ii"));
    assert!(status_json(&node).contains("\"result\":\"not-applicable\""));
}

#[test]
fn no_bundle_defers_and_newest_incoming_wins() {
    let f = fleet("apt-incoming");
    let node = f.node("n");
    let r = node.agent(&["apply"]).expect(5);
    assert!(r.stderr.contains("no complete bundle"), "{}", r.stderr);
    assert!(status_json(&node).contains("\"result\":\"deferred\""));

    let incoming = node.state_dir.join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    std::fs::copy(f.c1(), incoming.join("c1.epb")).unwrap();
    std::fs::copy(f.c2(), incoming.join("c2.epb")).unwrap();
    // A download still in progress is never looked at.
    std::fs::write(incoming.join("c9.epb.partial"), b"EDGEPTCH half").unwrap();
    node.agent(&["apply"]).expect(0);
    assert_eq!(ver(&node, "ep-app").as_deref(), Some("2.0 ii"));
}

#[test]
fn tampered_bundle_is_quarantined_and_does_not_block_the_next() {
    let f = fleet("apt-quarantine");
    let node = f.node("n");
    let c1 = f.c1();
    let incoming = node.state_dir.join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    let bad = incoming.join("c1.epb");
    std::fs::copy(&c1, &bad).unwrap();
    flip_byte(&bad, -10);
    let r = node.agent(&["apply"]).expect(2);
    assert!(r.stderr.contains("quarantined"), "{}", r.stderr);
    assert!(!bad.exists(), "bad bundle must leave incoming/");
    let q: Vec<_> = std::fs::read_dir(node.state_dir.join("quarantine"))
        .unwrap()
        .collect();
    assert_eq!(q.len(), 2, "bundle and its .reason");
    let st = status_json(&node);
    assert!(
        st.contains("\"alert\":true") && st.contains("c1.epb"),
        "{st}"
    );
    assert_eq!(ver(&node, "ep-app"), None, "nothing installed");

    std::fs::copy(&c1, incoming.join("c1-good.epb")).unwrap();
    node.agent(&["apply"]).expect(0);
    assert!(status_json(&node).contains("\"alert\":false"));
}

#[test]
fn failing_postinst_restores_previous_versions() {
    let f = fleet("apt-postinst");
    let node = f.node("n");
    apply(&node, &f.c1()).expect(0);
    let c3 = f.debs(
        "c3",
        3,
        &[
            Deb::new("ep-lib", "3.0").postinst("echo 'ep-lib: cannot migrate' >&2; exit 1"),
            Deb::new("ep-app", "3.0").depends("ep-lib (>= 3.0)"),
            Deb::new("ep-new", "1.0"),
        ],
        &["ep-new"],
    );
    let r = apply(&node, &c3).expect(6);
    assert!(
        r.stderr.contains("ep-lib"),
        "names the package: {}",
        r.stderr
    );
    assert!(r.stderr.contains("restored"), "{}", r.stderr);
    assert_eq!(ver(&node, "ep-lib").as_deref(), Some("1.0 ii"));
    assert_eq!(ver(&node, "ep-app").as_deref(), Some("1.0 ii"));
    assert_eq!(ver(&node, "ep-new"), None);
    let file = node.root.join("usr/share/edgepatch-test/ep-lib");
    assert_eq!(std::fs::read_to_string(file).unwrap(), "ep-lib 1.0\n");
    let st = status_json(&node);
    assert!(
        st.contains("\"installed_sequence\":1") && st.contains("\"restored\""),
        "{st}"
    );
}

#[test]
fn unsatisfiable_bundle_is_refused_before_touching_anything() {
    let f = fleet("apt-simulate");
    let node = f.node("n");
    apply(&node, &f.c1()).expect(0);
    let bad = f.debs(
        "c4",
        4,
        &[Deb::new("ep-app", "4.0").depends("ep-missing-dependency")],
        &[],
    );
    let r = apply(&node, &bad).expect(6);
    assert!(r.stderr.contains("nothing changed"), "{}", r.stderr);
    assert_eq!(ver(&node, "ep-app").as_deref(), Some("1.0 ii"));
}

/// Start `apply` paused at `point`, kill it (and all its children) with SIGKILL.
fn kill_at(node: &Node, bundle: &Path, point: &str) {
    let marker = node.state_dir.with_file_name(format!("paused-{point}"));
    let mut cmd = node.command(&["apply", bundle.to_str().unwrap()]);
    cmd.env("EDGEPATCH_PAUSE_AT", point)
        .env("EDGEPATCH_PAUSE_FILE", &marker);
    let mut child = spawn_group(cmd);
    assert!(wait_for_file(&marker, 60), "agent never reached {point}");
    kill_group(&mut child);
}

#[test]
fn sigkill_at_every_step_ends_pre_patch_or_fully_patched() {
    let f = fleet("apt-kill");
    let (c1, c2) = (f.c1(), f.c2());
    // (pause point, version after the next status/apply resolves the journal)
    let cases = [
        ("staging", "1.0"),
        ("staged", "1.0"),
        ("installing", "2.0"),
        ("committing", "2.0"),
        ("commit-recorded", "2.0"),
    ];
    for (point, after_recovery) in cases {
        let node = f.node(point);
        apply(&node, &c1).expect(0);
        kill_at(&node, &c2, point);
        // `status` resolves the interrupted run.
        let st = status_json(&node);
        assert!(st.contains("\"step\":\"idle\""), "{point}: {st}");
        let v = ver(&node, "ep-app").unwrap();
        assert_eq!(v, format!("{after_recovery} ii"), "{point}");
        assert_eq!(
            ver(&node, "ep-lib").unwrap(),
            format!("{after_recovery} ii"),
            "{point}"
        );
        // And applying again always ends fully patched.
        apply(&node, &c2).expect(0);
        assert_eq!(ver(&node, "ep-app").as_deref(), Some("2.0 ii"), "{point}");
        assert!(
            status_json(&node).contains("\"installed_sequence\":2"),
            "{point}"
        );
        assert!(!node.state_dir.join("journal").exists(), "{point}");
    }
}

#[test]
fn sigkill_inside_a_slow_postinst_is_finished_on_next_run() {
    let f = fleet("apt-slow");
    let node = f.node("n");
    apply(&node, &f.c1()).expect(0);
    let marker = f.dir.join("postinst-started");
    let script = format!("touch {}; sleep 3", marker.display());
    let c2 = f.debs(
        "c2slow",
        2,
        &[
            Deb::new("ep-lib", "2.0").postinst(&script),
            Deb::new("ep-app", "2.0").depends("ep-lib (>= 2.0)"),
        ],
        &[],
    );
    let mut child = spawn_group(node.command(&["apply", c2.to_str().unwrap()]));
    assert!(wait_for_file(&marker, 60), "postinst never ran");
    kill_group(&mut child);
    // dpkg was killed mid-configure: ep-lib is half-configured right now.
    assert!(
        ver(&node, "ep-lib").unwrap().starts_with("2.0 iF"),
        "{:?}",
        ver(&node, "ep-lib")
    );
    let r = apply(&node, &c2).expect(0);
    assert!(
        r.stdout.contains("already applied") || r.stdout.contains("applied"),
        "{}",
        r.stdout
    );
    assert_eq!(ver(&node, "ep-lib").as_deref(), Some("2.0 ii"));
    assert_eq!(ver(&node, "ep-app").as_deref(), Some("2.0 ii"));
}

#[test]
fn concurrent_run_gets_exit_8() {
    let f = fleet("apt-lock");
    let node = f.node("n");
    let c1 = f.c1();
    let marker = f.dir.join("paused");
    let mut cmd = node.command(&["apply", c1.to_str().unwrap()]);
    cmd.env("EDGEPATCH_PAUSE_AT", "installing")
        .env("EDGEPATCH_PAUSE_FILE", &marker);
    let mut first = spawn_group(cmd);
    assert!(wait_for_file(&marker, 60));
    let r = apply(&node, &c1).expect(8);
    assert!(r.stderr.contains("another edgepatch run"), "{}", r.stderr);
    kill_group(&mut first);
    apply(&node, &c1).expect(0);
    assert_eq!(ver(&node, "ep-app").as_deref(), Some("1.0 ii"));
}

#[test]
fn apply_works_with_no_network_at_all() {
    if !Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("SKIP: unshare --net is not permitted here (needs root and user namespaces)");
        return;
    }
    let f = fleet("apt-offline");
    let node = f.node("n");
    let c1 = f.c1();
    let r = run(Command::new("unshare")
        .arg("--net")
        .arg(agent_bin())
        .arg("--config")
        .arg(&node.config)
        .args(["apply", c1.to_str().unwrap()]))
    .expect(0);
    assert!(r.stdout.contains("applied"), "{}", r.stdout);
    assert_eq!(ver(&node, "ep-app").as_deref(), Some("1.0 ii"));
}
