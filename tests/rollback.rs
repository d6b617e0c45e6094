//! End-to-end safety net: snapshots before install, health checks after, automatic rollback
//! (exit 7), manual `edgepatch rollback`, signed remote rollback and halt orders, and a kill in
//! the middle of a rollback. Real apt/dpkg into scratch roots; btrfs on a loop-mounted image file;
//! lvm-thin and timeshift through stand-ins on PATH that record their command lines.

use edgepatch_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const VARIANT: &str = "debian-12-amd64";

fn fleet(tag: &str) -> Fleet {
    Fleet::new(tag, VARIANT, "apt")
}

trait Cycles {
    fn c1(&self) -> PathBuf;
    fn c2(&self) -> PathBuf;
    fn order(&self, key: &Path, kind: &str, variant: &str, cycle: &str) -> PathBuf;
    fn node_at(&self, dir: &Path, extra: &str) -> Node;
}

impl Cycles for Fleet {
    /// A node in `dir` (the health-check flag file lives beside it).
    fn node_at(&self, dir: &Path, extra: &str) -> Node {
        let conf = format!("package_manager = \"apt\"\n{extra}");
        let node = Node::new(dir, VARIANT, &self.public, &conf);
        deb_root(&node.root);
        node
    }

    fn c1(&self) -> PathBuf {
        self.debs("c1", 1, &[Deb::new("ep-app", "1.0")], &["ep-app"])
    }

    fn c2(&self) -> PathBuf {
        self.debs(
            "c2",
            2,
            &[Deb::new("ep-app", "2.0"), Deb::new("ep-dep", "1.0")],
            &["ep-dep"],
        )
    }

    fn order(&self, key: &Path, kind: &str, variant: &str, cycle: &str) -> PathBuf {
        let out = self.dir.join(format!("{kind}-{variant}-{cycle}.order"));
        builder(&[
            "order",
            "--key",
            key.to_str().unwrap(),
            "--kind",
            kind,
            "--variant",
            variant,
            "--cycle",
            cycle,
            "--out",
            out.to_str().unwrap(),
        ])
        .expect(0);
        out
    }
}

fn apply(node: &Node, bundle: &Path) -> Run {
    node.agent(&["apply", bundle.to_str().unwrap()])
}

fn app_version(node: &Node) -> Option<String> {
    deb_version(&node.root, "ep-app")
}

/// Make the node's health command fail from now on.
fn break_health(node: &Node) {
    std::fs::write(node.root.with_file_name("unhealthy"), "").unwrap();
}

fn health_conf(node_dir: &Path) -> String {
    let flag = node_dir.join("unhealthy");
    format!(
        "health_command = \"test ! -e {}\"\nhealth_timeout = 2\n",
        flag.display()
    )
}

#[test]
fn failed_health_check_rolls_back_packages_and_refuses_the_cycle() {
    let f = fleet("rb-health");
    let dir = f.dir.join("n");
    let node = f.node_at(
        &dir,
        &format!("snapshot = \"packages\"\n{}", health_conf(&dir)),
    );
    apply(&node, &f.c1()).expect(0);
    let c2 = f.c2();
    break_health(&node);
    let r = apply(&node, &c2).expect(7);
    assert!(
        r.stderr.contains("health check failed") && r.stderr.contains("restored ep-app=1.0"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("removed ep-dep"), "{}", r.stderr);
    assert_eq!(app_version(&node).as_deref(), Some("1.0 ii"));
    assert_eq!(deb_version(&node.root, "ep-dep"), None);
    let st = node.agent(&["status", "--json"]).expect(0).stdout;
    assert!(
        st.contains("\"result\":\"health-failed\"") && st.contains("\"installed_sequence\":1"),
        "{st}"
    );
    // The technician sees which cycle this node will not take again.
    assert!(st.contains("\"refused\":[\"c2\"]"), "{st}");
    let text = node.agent(&["status"]).expect(0).stdout;
    assert!(
        text.contains("refused   c2 (never applied again here"),
        "{text}"
    );
    // The same cycle is never tried again on this node, even once health would pass.
    std::fs::remove_file(node.root.with_file_name("unhealthy")).unwrap();
    let r = apply(&node, &c2).expect(4);
    assert!(r.stderr.contains("was rolled back"), "{}", r.stderr);
}

#[test]
fn health_url_must_answer_2xx() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        // Answer every probe with 503 until the agent gives up (bounded: 50 connections).
        listener.set_nonblocking(false).unwrap();
        for stream in listener.incoming().take(50) {
            let Ok(mut s) = stream else { break };
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap_or(0);
            if n == 0 || buf.starts_with(b"QUIT") {
                break;
            }
            let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    let f = fleet("rb-url");
    let node = f.node_at(
        &f.dir.join("n"),
        &format!("snapshot = \"packages\"\nhealth_url = \"http://127.0.0.1:{port}/health\"\nhealth_timeout = 2\n"),
    );
    apply(&node, &f.c1()).expect(7);
    assert_eq!(app_version(&node), None, "fresh install undone");
    let st = node.agent(&["status"]).expect(0).stdout;
    assert!(st.contains("503"), "{st}");
    let _ =
        std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| s.write_all(b"QUIT"));
    server.join().unwrap();
}

#[test]
fn manual_rollback_is_idempotent_and_survives_a_kill() {
    let f = fleet("rb-manual");
    let node = f.node_at(&f.dir.join("n"), "snapshot = \"packages\"\n");
    let c2 = f.c2();
    apply(&node, &f.c1()).expect(0);
    apply(&node, &c2).expect(0);
    assert_eq!(app_version(&node).as_deref(), Some("2.0 ii"));

    // Killed in the middle of the rollback: the rerun completes it.
    let marker = f.dir.join("paused-rollback");
    let mut cmd = node.command(&["rollback"]);
    cmd.env("EDGEPATCH_PAUSE_AT", "rollback")
        .env("EDGEPATCH_PAUSE_FILE", &marker);
    let mut child = spawn_group(cmd);
    assert!(wait_for_file(&marker, 60));
    kill_group(&mut child);
    let r = node.agent(&["rollback"]).expect(0);
    assert!(r.stdout.contains("rolled back"), "{}", r.stdout);
    assert_eq!(app_version(&node).as_deref(), Some("1.0 ii"));
    assert_eq!(deb_version(&node.root, "ep-dep"), None);
    let st = node.agent(&["status", "--json"]).expect(0).stdout;
    assert!(st.contains("\"installed_cycle\":\"c1\""), "{st}");

    // The next rollback steps back one more cycle (its rollback set), then there is no more.
    let r = node.agent(&["rollback"]).expect(0);
    assert!(r.stdout.contains("cycle c1 rolled back"), "{}", r.stdout);
    assert_eq!(app_version(&node), None);
    let r = node.agent(&["rollback"]).expect(0);
    assert!(r.stdout.contains("already rolled back"), "{}", r.stdout);
    apply(&node, &c2).expect(4);
}

#[test]
fn signed_orders_roll_back_refuse_and_halt() {
    let f = fleet("rb-order");
    let c1 = f.c1();
    let c2 = f.c2();
    let node = f.node_at(&f.dir.join("n"), "snapshot = \"packages\"\n");
    apply(&node, &c1).expect(0);
    apply(&node, &c2).expect(0);

    // Signed by a key the node does not trust, or for another variant: refused.
    let (rogue, _) = keygen(&f.dir.join("rogue"));
    let bad = f.order(&rogue, "rollback", VARIANT, "c2");
    node.agent(&["rollback", "--order", bad.to_str().unwrap()])
        .expect(3);
    let other = f.order(&f.key, "rollback", "rhel-9-x86_64", "c2");
    node.agent(&["rollback", "--order", other.to_str().unwrap()])
        .expect(4);
    let mut tampered = std::fs::read_to_string(&bad).unwrap();
    tampered = tampered.replace("c2", "c1");
    std::fs::write(&bad, tampered).unwrap();
    node.agent(&["rollback", "--order", bad.to_str().unwrap()])
        .expect(3);
    assert_eq!(app_version(&node).as_deref(), Some("2.0 ii"));

    // The real order: this node has c2, so it rolls back; again is a no-op.
    let order = f.order(&f.key, "rollback", VARIANT, "c2");
    let r = node
        .agent(&["rollback", "--order", order.to_str().unwrap()])
        .expect(0);
    assert!(r.stdout.contains("rolled back"), "{}", r.stdout);
    assert_eq!(app_version(&node).as_deref(), Some("1.0 ii"));
    node.agent(&["rollback", "--order", order.to_str().unwrap()])
        .expect(0);

    // A node that never had c2 refuses to install it after the order.
    let fresh = f.node_at(&f.dir.join("fresh"), "");
    apply(&fresh, &c1).expect(0);
    let r = fresh
        .agent(&["rollback", "--order", order.to_str().unwrap()])
        .expect(0);
    assert!(r.stdout.contains("will be refused"), "{}", r.stdout);
    apply(&fresh, &c2).expect(4);

    // A halt order stops nodes that have not started the cycle.
    let c3 = f.debs("c3", 3, &[Deb::new("ep-app", "3.0")], &[]);
    let halt = f.order(&f.key, "halt", VARIANT, "c3");
    fresh
        .agent(&["rollback", "--order", halt.to_str().unwrap()])
        .expect(0);
    let r = apply(&fresh, &c3).expect(5);
    assert!(r.stderr.contains("halted"), "{}", r.stderr);
}

/// A directory of stand-ins for lvm and timeshift tools that log their arguments.
fn fake_tools(dir: &Path, log: &Path) -> PathBuf {
    let bin = dir.join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let scripts = [
        ("findmnt", "echo /dev/mapper/vg0-root".to_string()),
        ("lvs", "echo '  vg0 root thin'".to_string()),
        ("lvcreate", String::new()),
        ("lvconvert", String::new()),
        ("lvremove", String::new()),
        ("timeshift", "case \"$1\" in --create) echo \"Tagged snapshot '2026-11-26_04-30-00': ondemand\";; --version) echo 'Timeshift v22';; esac".to_string()),
        ("btrfs", "exit 1".to_string()),
    ];
    for (name, body) in scripts {
        let p = bin.join(name);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\necho \"{name} $*\" >> {}\n{body}\n",
                log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

fn with_path(node: &Node, bin: &Path, args: &[&str]) -> Run {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    run(node.command(args).env("PATH", path))
}

#[test]
fn lvm_thin_and_timeshift_command_lines() {
    let f = fleet("rb-lvm");
    let c1 = f.c1();
    for backend in ["lvm-thin", "timeshift"] {
        let dir = f.dir.join(backend);
        let log = dir.join("tools.log");
        let bin = fake_tools(&f.dir.join(format!("tools-{backend}")), &log);
        let node = f.node_at(
            &dir,
            &format!("snapshot = \"{backend}\"\n{}", health_conf(&dir)),
        );
        break_health(&node);
        let r = with_path(&node, &bin, &["apply", c1.to_str().unwrap()]).expect(7);
        assert!(
            r.stderr.contains("REBOOT REQUIRED"),
            "{backend}: {}",
            r.stderr
        );
        // Until the reboot, nothing is installed on the root about to be replaced.
        let again = with_path(&node, &bin, &["apply", c1.to_str().unwrap()]).expect(5);
        assert!(
            again.stderr.contains("restores at next boot: reboot first"),
            "{backend}: {}",
            again.stderr
        );
        let calls = std::fs::read_to_string(&log).unwrap();
        if backend == "lvm-thin" {
            assert!(calls.contains("lvcreate -s -n edgepatch-1-"), "{calls}");
            assert!(calls.contains(" vg0/root"), "{calls}");
            assert!(
                calls.contains("lvconvert --merge vg0/edgepatch-1-"),
                "{calls}"
            );
        } else {
            assert!(
                calls.contains("timeshift --create --scripted --comments edgepatch-1-"),
                "{calls}"
            );
            assert!(
                calls.contains(
                    "timeshift --restore --snapshot 2026-11-26_04-30-00 --scripted --yes"
                ),
                "{calls}"
            );
        }
    }
}

fn loop_btrfs(dir: &Path) -> Option<PathBuf> {
    let img = dir.join("btrfs.img");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
    if !ok(Command::new("truncate").args(["-s", "300M"]).arg(&img))
        || !ok(Command::new("mkfs.btrfs").arg("-q").arg(&img))
        || !ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt))
    {
        eprintln!("SKIP: cannot mount a loop btrfs image here (needs root, loop devices, btrfs)");
        return None;
    }
    Some(mnt)
}

#[test]
fn btrfs_snapshot_restores_the_old_root() {
    let f = fleet("rb-btrfs");
    let Some(mnt) = loop_btrfs(&f.dir.path) else {
        return;
    };
    let result = std::panic::catch_unwind(|| {
        let dir = f.dir.join("n");
        let root = mnt.join("root");
        assert!(Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(&root)
            .status()
            .unwrap()
            .success());
        deb_root(&root);
        let conf = format!("snapshot = \"btrfs\"\n{}", health_conf(&dir));
        let node = Node::new(
            &dir,
            VARIANT,
            &f.public,
            &format!("package_manager = \"apt\"\n{conf}"),
        );
        std::fs::write(
            &node.config,
            std::fs::read_to_string(&node.config).unwrap().replace(
                &format!("root = \"{}\"", node.root.display()),
                &format!("root = \"{}\"", root.display()),
            ),
        )
        .unwrap();
        apply(&node, &f.c1()).expect(0);
        break_health(&node);
        let r = apply(&node, &f.c2()).expect(7);
        assert!(
            r.stderr.contains("snapshot btrfs:edgepatch-2-") && r.stderr.contains("restored"),
            "{}",
            r.stderr
        );
        assert_eq!(deb_version(&root, "ep-app").as_deref(), Some("1.0 ii"));
        assert_eq!(deb_version(&root, "ep-dep"), None);
        assert_eq!(
            std::fs::read_to_string(root.join("usr/share/edgepatch-test/ep-app")).unwrap(),
            "ep-app 1.0\n"
        );
        assert!(
            !root.join("usr/share/edgepatch-test/ep-dep").exists(),
            "new version's files are gone"
        );
    });
    let _ = Command::new("umount").arg(&mnt).status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// A cycle that changes no package still counts: rolling it back refuses it (it does not come
/// back on the next run) and leaves the packages alone; the next rollback undoes the cycle
/// before it.
#[test]
fn rolling_back_a_cycle_that_changed_nothing_refuses_it_not_the_one_before() {
    let f = fleet("rb-noop");
    let node = f.node_at(&f.dir.join("n"), "");
    let c1 = f.c1();
    let c2 = f.debs("c2", 2, &[Deb::new("ep-app", "1.1")], &[]);
    let c3 = f.debs("c3", 3, &[Deb::new("ep-app", "1.1")], &[]);
    apply(&node, &c1).expect(0);
    apply(&node, &c2).expect(0);
    let r = apply(&node, &c3).expect(0);
    assert!(r.stdout.contains("0 package(s) changed"), "{}", r.stdout);

    let r = node.agent(&["rollback"]).expect(0);
    assert!(r.stdout.contains("cycle c3 rolled back"), "{}", r.stdout);
    assert_eq!(app_version(&node).as_deref(), Some("1.1 ii"));
    apply(&node, &c3).expect(4);
    assert_eq!(app_version(&node).as_deref(), Some("1.1 ii"));

    let r = node.agent(&["rollback"]).expect(0);
    assert!(r.stdout.contains("cycle c2 rolled back"), "{}", r.stdout);
    assert_eq!(app_version(&node).as_deref(), Some("1.0 ii"));
}

/// A bundle whose install fails (the node restored each time) is tried INSTALL_ATTEMPTS (3)
/// times, then refused: the timer's run stops failing on it, and a fixed cycle still installs.
#[test]
fn a_cycle_that_fails_to_install_three_times_is_refused() {
    let f = fleet("rb-fail3");
    let node = f.node_at(&f.dir.join("n"), "");
    apply(&node, &f.c1()).expect(0);
    let bad = f.debs(
        "c9",
        9,
        &[Deb::new("ep-app", "1.3").postinst("echo broken >&2; exit 1")],
        &[],
    );
    for n in 1..=2 {
        let r = apply(&node, &bad).expect(6);
        assert!(
            r.stderr.contains(&format!("attempt {n} of 3")),
            "{}",
            r.stderr
        );
        assert_eq!(app_version(&node).as_deref(), Some("1.0 ii"));
    }
    let r = apply(&node, &bad).expect(6);
    assert!(
        r.stderr.contains("failed 3 times here: cycle c9 refused"),
        "{}",
        r.stderr
    );
    apply(&node, &bad).expect(4);
    assert_eq!(app_version(&node).as_deref(), Some("1.0 ii"));
    let fixed = f.debs("c10", 10, &[Deb::new("ep-app", "1.4")], &[]);
    apply(&node, &fixed).expect(0);
    assert_eq!(app_version(&node).as_deref(), Some("1.4 ii"));
}

/// A cached copy in the rollback pool is reused only when a kept set recorded its bytes: a
/// copy swapped since (same name, other contents) is packed again, not carried into the next set.
#[test]
fn a_swapped_pool_copy_is_packed_again_not_reused() {
    let f = fleet("rb-reuse");
    let node = f.node_at(&f.dir.join("n"), "");
    apply(&node, &f.c1()).expect(0);
    // c2's preinst fails: dpkg leaves ep-app 1.0 alone, and the copy preserved for it stays in
    // the pool with no set naming it.
    let c2 = f.debs("c2", 2, &[Deb::new("ep-app", "1.1").preinst("exit 1")], &[]);
    apply(&node, &c2).expect(6);
    let pool = node.state_dir.join("rollback/pool");
    let copy = std::fs::read_dir(&pool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ep-app_1.0")
        })
        .expect("ep-app 1.0 preserved");
    let mut evil = Deb::new("ep-app", "1.0");
    evil.files = vec![(
        "/usr/share/edgepatch-test/ep-app".into(),
        "EVIL swapped content\n".into(),
    )];
    std::fs::copy(evil.build(&f.dir.join("evil")), &copy).unwrap();
    let c3 = f.debs("c3", 3, &[Deb::new("ep-app", "1.2")], &[]);
    apply(&node, &c3).expect(0);
    node.agent(&["rollback"]).expect(0);
    assert_eq!(app_version(&node).as_deref(), Some("1.0 ii"));
    let text = std::fs::read_to_string(node.root.join("usr/share/edgepatch-test/ep-app")).unwrap();
    assert_eq!(text, "ep-app 1.0\n");
}
