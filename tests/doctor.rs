//! `edgepatch doctor` end to end: a good node passes every check (mirror included, served by the
//! tests' HTTP server), a broken keys path fails with the line and its hint, a dead RTC battery
//! warns, and output piped to a file is plain text within 80 columns.

use edgepatch_e2e::faulty_http::FaultyServer;
use edgepatch_e2e::*;
use std::path::Path;

const VARIANT: &str = "debian-12-amd64";

/// A Debian scratch node with keys, `package_manager = "apt"`, `snapshot = "packages"` and
/// `extra` config lines.
fn node(dir: &Scratch, keys: &Path, extra: &str) -> Node {
    let node = Node::new(
        &dir.join("node"),
        VARIANT,
        keys,
        &format!("package_manager = \"apt\"\nsnapshot = \"packages\"\n{extra}"),
    );
    deb_root(&node.root);
    std::fs::create_dir_all(&node.state_dir).unwrap();
    node
}

fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.get(5..)
                .is_some_and(|r| r.starts_with(&format!("{name} ")))
        })
        .unwrap_or_else(|| panic!("no {name} line in:\n{out}"))
}

fn assert_plain(out: &str) {
    assert!(
        !out.contains('\x1b'),
        "escape codes in piped output:\n{out}"
    );
    for l in out.lines() {
        assert!(l.chars().count() <= 80, "line over 80 columns: {l:?}");
    }
}

#[test]
fn good_node_passes_every_check() {
    let dir = Scratch::new("doctor-good");
    let (_, public) = keygen(&dir.join("keys"));
    let mirror = dir.join("mirror");
    std::fs::create_dir_all(mirror.join(VARIANT)).unwrap();
    std::fs::write(mirror.join(VARIANT).join("index"), "index\n").unwrap();
    let server = FaultyServer::start(&mirror);
    let node = node(&dir, &public, &format!("mirror = \"{}\"\n", server.url()));

    let run = node.agent(&["doctor"]).expect(0);
    let out = &run.stdout;
    assert_plain(out);
    for name in [
        "config", "keys", "clock", "space", "pkgmgr", "snapshot", "tz", "mirror", "report",
    ] {
        assert!(line(out, name).starts_with("ok   "), "{name}:\n{out}");
    }
    // A node that has never verified a bundle has no trusted time yet and no floor: a warning.
    assert!(line(out, "floor").starts_with("warn "), "{out}");
    assert_eq!(
        out.lines().filter(|l| !l.starts_with(' ')).count(),
        10,
        "one line per check:\n{out}"
    );
    assert!(line(out, "mirror").contains("HTTP 200"), "{out}");
    assert!(line(out, "pkgmgr").contains("apt"), "{out}");
    // Colour is for terminals only, whatever NO_COLOR says.
    let run = run_env(
        &node,
        &[("NO_COLOR", None), ("TERM", Some("xterm-256color"))],
    );
    assert_plain(&run.stdout);
}

fn run_env(node: &Node, env: &[(&str, Option<&str>)]) -> Run {
    let mut c = node.command(&["doctor"]);
    for (k, v) in env {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    run(&mut c)
}

#[test]
fn broken_keys_path_fails_with_a_hint() {
    let dir = Scratch::new("doctor-keys");
    let empty = dir.join("keys-empty");
    std::fs::create_dir_all(&empty).unwrap();
    let node = node(&dir, &empty, "");
    let run = node.agent(&["doctor"]).expect(1);
    assert_plain(&run.stdout);
    let text = run.stdout.replace("\n              ", " ");
    let keys = line(&text, "keys");
    assert!(keys.starts_with("FAIL keys"), "{}", run.stdout);
    assert!(
        keys.contains("no *.pub key found - copy the release key there"),
        "{}",
        run.stdout
    );
    assert!(line(&text, "config").starts_with("ok   "), "{}", run.stdout);

    // A path that does not exist at all.
    let node = Node::new(
        &dir.join("node2"),
        VARIANT,
        &dir.join("no-such-keys"),
        "package_manager = \"apt\"\n",
    );
    let run = node.agent(&["doctor"]).expect(1);
    let text = run.stdout.replace("\n              ", " ");
    assert!(
        line(&text, "keys").contains("missing - copy the release key there"),
        "{}",
        run.stdout
    );
}

#[test]
fn clock_behind_trusted_time_warns_and_bad_config_skips() {
    let dir = Scratch::new("doctor-clock");
    let (_, public) = keygen(&dir.join("keys"));
    let node = node(&dir, &public, "");
    // Trusted time a day ahead of the (fixed) system clock: the RTC battery died.
    let now: u64 = 1_795_000_000;
    std::fs::write(
        node.state_dir.join("trusted-time"),
        format!("{}\n", now + 86_400),
    )
    .unwrap();
    let mut c = node.command(&["doctor"]);
    c.env("EDGEPATCH_TEST_NOW", now.to_string());
    let run = run(&mut c).expect(0);
    let text = run.stdout.replace("\n              ", " ");
    let clock = line(&text, "clock");
    assert!(
        clock
            .starts_with("warn clock    system 2026-11-18T11:06:40Z, trusted 2026-11-19T11:06:40Z"),
        "{}",
        run.stdout
    );
    assert!(clock.contains("set the clock"), "{}", run.stdout);

    std::fs::write(&node.config, "node_id = \"x\"\ncolour = \"red\"\n").unwrap();
    let run = node.agent(&["doctor"]).expect(1);
    assert_plain(&run.stdout);
    assert!(
        line(&run.stdout, "config").starts_with("FAIL config"),
        "{}",
        run.stdout
    );
    assert!(
        line(&run.stdout, "keys").starts_with("skip keys"),
        "{}",
        run.stdout
    );
}

/// `edgepatch keys` on the serial console: a trusted-keys path longer than a line wraps within
/// 80 columns instead of running off the screen.
#[test]
fn keys_output_fits_80_columns_with_a_long_keys_path() {
    let dir = Scratch::new("keys-80");
    let deep = dir
        .join("a-rather-long-directory-name-for-the-release-keys-of-this-fleet/and-another-level");
    let (_, public) = keygen(&deep);
    let node = node(&dir, &public, "");
    let out = node.agent(&["keys"]).expect(0).stdout;
    for l in out.lines() {
        assert!(
            l.chars().count() <= 80,
            "{} columns: {l}",
            l.chars().count()
        );
    }
    assert!(out.contains("source: trusted_keys"), "{out}");
    assert!(out.contains("and-another-level"), "{out}");
}
