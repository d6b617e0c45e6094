//! The center end to end (issue 8): the real `edgepatch-builder serve` on a loopback port with a
//! real SQLite file, agents' reports spooled while it is down and flushed when it is up, USB
//! exports (and a one-byte tamper), hostile input, the mirror, and the dashboard in headless
//! Chromium.
//!
//! Run: `cargo test --test center` (builds edgepatch-builder first if needed).
//! `EDGEPATCH_UPDATE_DOCS=1` also copies the dashboard screenshot to docs/dashboard.png.

use ed25519_compact::KeyPair;
use edgepatch::transport::report::{self, Report};
use edgepatch_e2e::{build_bundle, builder_bin, deb_root, keygen, Deb, Node, Scratch};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Build the builder binary once per test process (cargo test does not build other packages'
/// binaries).
fn ensure_builder() -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "edgepatch-builder",
                "--bin",
                "edgepatch-builder",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(st.success(), "cargo build -p edgepatch-builder failed");
    });
    let bin = builder_bin();
    assert!(bin.is_file(), "{} missing", bin.display());
    bin
}

/// `edgepatch-builder serve` on 127.0.0.1:0; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(db: &Path, extra: &[&str]) -> Server {
        Server::start_env(db, extra, &[])
    }

    fn start_env(db: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(ensure_builder())
            .envs(env.iter().copied())
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(db)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .parse()
            .unwrap();
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = err.read_to_string(&mut sink);
        });
        Server { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Resp {
    status: u16,
    headers: String,
    body: String,
}

/// A minimal HTTP/1.1 client (one request per connection).
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req += h;
        req += "\r\n";
    }
    req += "\r\n";
    // The server may answer (413) and close before the whole body is sent: keep what it said.
    let _ = s.write_all(req.as_bytes()).and_then(|_| s.write_all(body));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Resp {
        status,
        headers: head.to_string(),
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out += &rest[..n];
        s = &rest[n + 2..];
    }
    out
}

fn get(srv: &Server, path: &str) -> Resp {
    http(srv.addr, "GET", path, &[], b"")
}

fn post(srv: &Server, body: &str) -> Resp {
    http(
        srv.addr,
        "POST",
        "/api/v1/reports",
        &["Content-Type: application/json"],
        body.as_bytes(),
    )
}

/// POST a signed envelope (what the agent sends) holding `reports`.
fn post_env(srv: &Server, kp: &KeyPair, reports: &[String]) -> Resp {
    let (body, sig) = report::envelope(kp, reports, None);
    post_signed(srv, &body, &sig)
}

fn post_signed(srv: &Server, body: &str, sig: &str) -> Resp {
    let h = format!("{}: {}", report::SIGNATURE_HEADER, sig.trim());
    http(
        srv.addr,
        "POST",
        "/api/v1/reports",
        &["Content-Type: application/json", &h],
        body.as_bytes(),
    )
}

/// A deterministic node key.
fn keypair(seed: u64) -> KeyPair {
    let mut s = [7u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    KeyPair::from_seed(ed25519_compact::Seed::new(s))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn fleet_cmd(db: &Path, args: &[&str]) -> edgepatch_e2e::Run {
    let mut a = vec!["fleet", "--db", db.to_str().unwrap()];
    a.extend_from_slice(args);
    edgepatch_e2e::builder(&a)
}

/// Accept every waiting new node (the tests' fleets are all ours: no 20-at-once limit).
fn accept_all(db: &Path) {
    fleet_cmd(db, &["accept", "--all-pending", "--max", "100000"]).expect(0);
}

/// A number after `"key":` in JSON text.
fn json_num(text: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let i = text.find(&pat)? + pat.len();
    let digits: String = text[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn rep(node: &str, cycle: Option<&str>, command: &str, code: i32, t: u64) -> Report {
    let labels = if node.contains("kiosk") {
        vec![
            ("role".into(), "kiosk".into()),
            ("region".into(), "north".into()),
        ]
    } else {
        vec![
            ("role".into(), "till".into()),
            ("region".into(), "south".into()),
        ]
    };
    Report {
        id: report::new_id(node),
        node_id: node.into(),
        variant: if node.contains("rhel") {
            "rhel-9-x86_64"
        } else {
            "debian-12-amd64"
        }
        .into(),
        labels,
        command: command.into(),
        cycle: cycle.map(String::from),
        sequence: cycle.map(|_| 7),
        exit_code: code,
        result: match code {
            0 => "ok",
            5 => "deferred",
            6 => "install-failed",
            7 => "health-failed",
            2 => "integrity",
            3 => "authenticity",
            4 => "not-applicable",
            _ => "usage",
        }
        .into(),
        reason: match code {
            0 => "installed 12 packages".into(),
            5 => "outside maintenance window 02:00-04:00".into(),
            6 => "apt-get exited 100: E: Sub-process /usr/bin/dpkg returned an error".into(),
            7 => "health http://127.0.0.1/health: timed out after 30s; rolled back".into(),
            2 => "payload pkgs/libssl3.deb: sha256 mismatch".into(),
            _ => format!("exit {code}"),
        },
        timings_ms: vec![("verify".into(), 850), ("install".into(), 42_000)],
        snapshot_id: (code == 0 || code == 7).then(|| format!("btrfs-{t}")),
        installed_cycle: (code == 0).then(|| cycle.unwrap_or("").to_string()),
        installed_sequence: (code == 0).then_some(7),
        agent_version: "0.1.0".into(),
        time: t,
        trusted_time: t,
    }
}

#[test]
fn reports_spooled_offline_drain_once_when_the_center_is_up() {
    let s = Scratch::new("center-spool");
    let db = s.join("center.db");
    let t = now();
    // Three nodes run for days with the center unreachable.
    let nodes = ["store-1-till-1", "store-2-kiosk-1", "store-3-rhel-till-1"];
    let mut spooled = 0;
    for (i, n) in nodes.iter().enumerate() {
        let st = s.join(n);
        report::spool(&st, &rep(n, None, "apply", 5, t - 3000)).unwrap();
        report::spool(&st, &rep(n, Some("2025-w10"), "fetch", 0, t - 2000)).unwrap();
        report::spool(
            &st,
            &rep(n, Some("2025-w10"), "apply", [0, 6, 7][i], t - 1000),
        )
        .unwrap();
        spooled += 3;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/v1/reports", closed.local_addr().unwrap());
        drop(closed);
        let e = report::flush(&st, &url, Duration::from_secs(2)).unwrap_err();
        assert!(e.contains("3 report(s) stay in the spool"), "{e}");
        assert_eq!(report::pending(&st).unwrap(), 3);
    }
    // One node also hands a USB export to a technician before the WAN comes back.
    let usb = s.join("usb");
    std::fs::create_dir_all(&usb).unwrap();
    report::export_status(&s.join(nodes[0]), &usb).unwrap();

    let srv = Server::start(&db, &[]);
    edgepatch_e2e::builder(&[
        "ingest",
        "--db",
        db.to_str().unwrap(),
        usb.to_str().unwrap(),
    ])
    .expect(0);
    let url = srv.url("/api/v1/reports");
    // The probe `doctor` uses: the report URL answers GET.
    assert!(report::probe(&url, Duration::from_secs(5)).is_ok());
    for n in nodes {
        let st = s.join(n);
        let stats = report::flush(&st, &url, Duration::from_secs(10)).unwrap();
        assert_eq!((stats.delivered, stats.remaining), (3, 0), "{n}");
        assert_eq!(report::pending(&st).unwrap(), 0);
        // A second flush has nothing to send.
        let stats = report::flush(&st, &url, Duration::from_secs(10)).unwrap();
        assert_eq!(stats.delivered, 0);
    }
    // New node keys wait; nothing counts until the operator accepts them.
    let c = get(&srv, "/api/v1/cycles/2025-w10");
    assert_eq!(c.status, 404, "{}", c.body);
    accept_all(&db);
    // Nothing lost, nothing doubled (the USB copy of node 1's reports counted once).
    let m = get(&srv, "/metrics");
    assert_eq!(m.status, 200);
    assert!(
        m.body
            .contains(&format!("edgepatch_center_reports_stored {spooled}\n")),
        "{}",
        m.body
    );
    assert!(m
        .body
        .contains("edgepatch_center_reports_total{outcome=\"duplicate\"} 3\n"));
    let c = get(&srv, "/api/v1/cycles/2025-w10");
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(json_num(&c.body, "nodes"), Some(3), "{}", c.body);
    assert_eq!(json_num(&c.body, "done"), Some(1), "{}", c.body);
    assert_eq!(json_num(&c.body, "failed"), Some(1), "{}", c.body);
    assert_eq!(json_num(&c.body, "rolled-back"), Some(1), "{}", c.body);
    let n = get(&srv, "/api/v1/nodes");
    assert_eq!(json_num(&n.body, "total"), Some(3));
    assert!(n.body.contains("\"node_id\":\"store-1-till-1\""));
    assert!(n.body.contains("\"installed_cycle\":\"2025-w10\""));
    assert!(n
        .body
        .contains("\"labels\":{\"region\":\"south\",\"role\":\"till\"}"));
    // Filters work on the API too.
    let n = get(&srv, "/api/v1/nodes?variant=rhel-9-x86_64");
    assert_eq!(json_num(&n.body, "total"), Some(1), "{}", n.body);
    // No API hands out node keys.
    assert!(!n.body.contains("pubkey"), "{}", n.body);
    // A replayed POST is accepted as a no-op.
    let kp = keypair(9);
    let r9 = rep("store-9", Some("2025-w10"), "apply", 0, t).to_json(&hex(kp.pk.as_ref()), 0);
    let first = post_env(&srv, &kp, std::slice::from_ref(&r9));
    assert!(first.body.contains("\"accepted\":1"), "{}", first.body);
    assert!(
        first.body.contains("\"node\":\"unaccepted\""),
        "{}",
        first.body
    );
    let again = post_env(&srv, &kp, &[r9]);
    assert_eq!(again.status, 200);
    assert!(
        again.body.contains("\"accepted\":0") && again.body.contains("\"duplicates\":1"),
        "{}",
        again.body
    );
    fleet_cmd(&db, &["accept", "store-9"]).expect(0);
    // The terminal summary agrees.
    let out = edgepatch_e2e::builder(&["fleet", "--db", db.to_str().unwrap()]).expect(0);
    assert!(out.stdout.contains("fleet: 4 nodes"), "{}", out.stdout);
    assert!(
        out.stdout.lines().any(|l| l.starts_with("2025-w10")),
        "{}",
        out.stdout
    );
}

#[test]
fn usb_export_tampered_by_one_byte_is_rejected() {
    let s = Scratch::new("center-usb");
    let db = s.join("center.db");
    let db_arg = db.to_str().unwrap();
    let st = s.join("node");
    let t = now();
    report::spool(
        &st,
        &rep("store-7-till-2", Some("2025-w11"), "apply", 6, t - 100),
    )
    .unwrap();
    std::fs::write(
        st.join(report::STATUS_FILE),
        "{\"node_id\":\"store-7-till-2\",\"state\":\"failed\"}\n",
    )
    .unwrap();
    let usb = s.join("usb");
    std::fs::create_dir_all(&usb).unwrap();
    let export = report::export_status(&st, &usb).unwrap();

    // Flip one byte of a copy: "exit_code":6 -> "exit_code":0.
    let bad = s.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for f in [
        report::EXPORT_JSON,
        report::EXPORT_SIG,
        report::NODE_PUB_FILE,
    ] {
        std::fs::copy(export.join(f), bad.join(f)).unwrap();
    }
    let mut bytes = std::fs::read(bad.join(report::EXPORT_JSON)).unwrap();
    let pos = String::from_utf8_lossy(&bytes)
        .find("\"exit_code\":6")
        .unwrap()
        + 12;
    bytes[pos] = b'0';
    std::fs::write(bad.join(report::EXPORT_JSON), &bytes).unwrap();
    let r = edgepatch_e2e::builder(&["ingest", "--db", db_arg, bad.to_str().unwrap()]).expect(3);
    assert!(r.stderr.contains("REJECTED"), "{}", r.stderr);
    assert!(
        r.stderr.contains("does not match the bytes of export.json"),
        "{}",
        r.stderr
    );
    // Nothing was stored.
    let f = edgepatch_e2e::builder(&["fleet", "--db", db_arg]).expect(0);
    assert!(f.stdout.contains("fleet: 0 nodes"), "{}", f.stdout);

    // The genuine export is stored, and pins the node key.
    let r = edgepatch_e2e::builder(&["ingest", "--db", db_arg, usb.to_str().unwrap()]).expect(0);
    assert!(
        r.stdout.contains("signature ok, 1 report(s): 1 new"),
        "{}",
        r.stdout
    );

    // Same node id, another key (a cloned SD card, an impostor, or the node reimaged): stored,
    // waiting, never counted, never a dead end.
    let other = s.join("other");
    report::spool(
        &other,
        &rep("store-7-till-2", Some("2025-w11"), "apply", 0, t),
    )
    .unwrap();
    let usb2 = s.join("usb2");
    std::fs::create_dir_all(&usb2).unwrap();
    report::export_status(&other, &usb2).unwrap();
    let r = edgepatch_e2e::builder(&["ingest", "--db", db_arg, usb2.to_str().unwrap()]).expect(0);
    assert!(r.stdout.contains("is not accepted"), "{}", r.stdout);
    // ... also over HTTP: delivered (the center has it), not rejected.
    let srv = Server::start(&db, &[]);
    let e = report::flush(&other, &srv.url("/api/v1/reports"), Duration::from_secs(5)).unwrap();
    assert_eq!((e.delivered, e.rejected), (1, 0));
    // Two keys wait for one id: accept refuses to guess.
    let r = fleet_cmd(&db, &["accept", "store-7-till-2"]).expect(1);
    assert!(r.stderr.contains("2 different keys wait"), "{}", r.stderr);
    // The inventory says which key is the node's.
    let pubkey = std::fs::read_to_string(st.join(report::NODE_PUB_FILE)).unwrap();
    let inv = s.join("inventory.txt");
    std::fs::write(&inv, format!("# site 7\nstore-7-till-2 {pubkey}")).unwrap();
    let r = fleet_cmd(&db, &["preauthorize", inv.to_str().unwrap()]).expect(0);
    assert!(r.stdout.contains("1 waiting now accepted"), "{}", r.stdout);
    let f = fleet_cmd(&db, &["list", "--cycle", "2025-w11", "--json"]).expect(0);
    assert!(f.stdout.contains("\"state\": \"failed\""), "{}", f.stdout);
    // Ingesting the genuine export again stores its status.json for the node page.
    edgepatch_e2e::builder(&["ingest", "--db", db_arg, usb.to_str().unwrap()]).expect(0);
    let page = get(&srv, "/nodes/store-7-till-2");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("status.json"), "{}", page.body);
    // The node is reimaged: its new key (the other one) is accepted; the old one retires.
    fleet_cmd(&db, &["accept", "store-7-till-2"]).expect(0);
    let f = fleet_cmd(
        &db,
        &["list", "--cycle", "2025-w11", "--state", "done", "--json"],
    )
    .expect(0);
    assert!(f.stdout.contains("store-7-till-2"), "{}", f.stdout);
    let f = fleet_cmd(&db, &["node", "store-7-till-2"]).expect(0);
    assert!(
        f.stdout.contains("retired") && f.stdout.contains("accepted"),
        "{}",
        f.stdout
    );
}

#[test]
fn ingest_rejects_a_whole_usb_export_when_one_report_in_it_is_refused() {
    let s = Scratch::new("center-usb-partial");
    let db = s.join("center.db");
    let db_arg = db.to_str().unwrap();
    let st = s.join("node");
    let t = now();
    report::spool(&st, &rep("n-part", Some("c1"), "apply", 6, t - 100)).unwrap();
    // A clock three days ahead: this one report is refused, not the export.
    report::spool(&st, &rep("n-part", Some("c1"), "apply", 0, t + 3 * 86_400)).unwrap();
    report::spool(&st, &rep("n-part", Some("c1"), "verify", 0, t - 50)).unwrap();
    let usb = s.join("usb");
    std::fs::create_dir_all(&usb).unwrap();
    report::export_status(&st, &usb).unwrap();
    let r = edgepatch_e2e::builder(&["ingest", "--db", db_arg, usb.to_str().unwrap()]).expect(0);
    assert!(
        r.stdout
            .contains("3 report(s): 2 new, 0 already known, 1 refused"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("REFUSED") && r.stderr.contains("more than a day ahead"),
        "{}",
        r.stderr
    );
    accept_all(&db);
    let f = fleet_cmd(&db, &["node", "n-part"]).expect(0);
    assert!(f.stdout.contains("verify"), "{}", f.stdout);
    // The spool still holds the bad one: the next export is stored too.
    report::spool(&st, &rep("n-part", Some("c2"), "apply", 0, t)).unwrap();
    let usb2 = s.join("usb2");
    std::fs::create_dir_all(&usb2).unwrap();
    report::export_status(&st, &usb2).unwrap();
    let r = edgepatch_e2e::builder(&["ingest", "--db", db_arg, usb2.to_str().unwrap()]).expect(0);
    assert!(r.stdout.contains("1 new"), "{}", r.stdout);
}

#[test]
fn ingest_reads_export_json_whole_with_no_size_cap() {
    let s = Scratch::new("center-usb-huge");
    let db = s.join("center.db");
    let usb = s.join("usb");
    std::fs::create_dir_all(&usb).unwrap();
    // 300 MB (sparse): refused from its size, before reading.
    let f = std::fs::File::create(usb.join(report::EXPORT_JSON)).unwrap();
    f.set_len(300 << 20).unwrap();
    std::fs::write(usb.join(report::EXPORT_SIG), "x").unwrap();
    std::fs::write(usb.join(report::NODE_PUB_FILE), "x").unwrap();
    let started = Instant::now();
    let r = edgepatch_e2e::builder(&[
        "ingest",
        "--db",
        db.to_str().unwrap(),
        usb.to_str().unwrap(),
    ])
    .expect(1);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        r.stderr.contains("314572800 bytes, at most 4194304"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr
            .lines()
            .filter(|l| l.contains("314572800 bytes"))
            .count(),
        1,
        "{}",
        r.stderr
    );
}

#[test]
fn fleet_piped_into_head_panics_with_broken_pipe() {
    let s = Scratch::new("center-epipe");
    let db = s.join("center.db");
    let st = s.join("node");
    for i in 0..40 {
        report::spool(
            &st,
            &rep("n-pipe", Some(&format!("c{i}")), "apply", 0, now() - 100),
        )
        .unwrap();
    }
    let usb = s.join("usb");
    std::fs::create_dir_all(&usb).unwrap();
    report::export_status(&st, &usb).unwrap();
    let db_arg = db.to_str().unwrap();
    edgepatch_e2e::builder(&["ingest", "--db", db_arg, usb.to_str().unwrap()]).expect(0);
    accept_all(&db);
    for args in [
        &["fleet", "--db", db_arg][..],
        &["fleet", "--db", db_arg, "node", "n-pipe"],
    ] {
        let mut child = Command::new(ensure_builder())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // `| head -0`: the reader is gone before the first line.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
    }
}

/// GET, read the head and Content-Length bytes of body, close. 0 when the connection failed.
fn quick_get(addr: SocketAddr, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return 0;
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut r = BufReader::new(s);
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return 0;
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 {
            return 0;
        }
        if h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    if r.read_exact(&mut body).is_err() {
        return 0;
    }
    status
}

#[test]
fn per_client_connection_counter_releases_the_slot_late() {
    let s = Scratch::new("center-per-client");
    let srv = Server::start(&s.join("c.db"), &[]);
    let addr = srv.addr;
    // 20 well-behaved clients from one address (under the cap of 32), 20 requests each, a new
    // connection per request: every one is answered.
    let workers: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                let mut bad = Vec::new();
                for _ in 0..20 {
                    // Like Python's http.client: read the answer's Content-Length bytes and
                    // hang up, without waiting for the server to close first.
                    let status = quick_get(addr, "/api/v1/reports");
                    if status != 200 {
                        bad.push(status);
                    }
                }
                bad
            })
        })
        .collect();
    let bad: Vec<u16> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(bad.is_empty(), "{} of 400 failed: {bad:?}", bad.len());
}

#[test]
fn unaccepted_keys_can_fill_the_disk_and_bury_a_nodes_history() {
    let s = Scratch::new("center-bury");
    let db = s.join("c.db");
    let srv = Server::start(&db, &[]);
    let t = now();
    let node = "store-9-till-1";
    let kp = keypair(10);
    let pk = hex(kp.pk.as_ref());
    let mine = rep(node, Some("c1"), "apply", 0, t - 500).to_json(&pk, 1);
    assert_eq!(post_env(&srv, &kp, &[mine]).status, 200);
    accept_all(&db);
    // Ten made-up keys under the same id, 150 reports each.
    for k in 0..10 {
        let kp = keypair(100 + k);
        let pk = hex(kp.pk.as_ref());
        let reps: Vec<String> = (0..150)
            .map(|i| rep(node, Some("c1"), "apply", 6, t - 100).to_json(&pk, i + 1))
            .collect();
        let r = post_env(&srv, &kp, &reps);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let m = get(&srv, "/metrics");
    assert!(
        m.body.contains("edgepatch_center_reports_stored 801\n"),
        "{}",
        m.body
    );
    let f = fleet_cmd(&db, &["node", node]).expect(0);
    let pending: Vec<&str> = f
        .stdout
        .lines()
        .filter(|l| l.contains(" unaccepted "))
        .collect();
    assert_eq!(pending.len(), 8, "{}", f.stdout);
    assert!(
        pending.iter().all(|l| l.ends_with("(100 reports)")),
        "{}",
        f.stdout
    );
    // The accepted key's history comes first; the others follow, capped, in their own section.
    let lines: Vec<&str> = f.stdout.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.contains("received (UTC)"))
        .unwrap();
    assert!(lines[head + 1].contains("c1") && !lines[head + 1].contains("not counted"));
    let sep = lines
        .iter()
        .position(|l| l.contains("NOT accepted"))
        .expect(&f.stdout);
    assert_eq!(sep, head + 2, "{}", f.stdout);
    let shown = lines[sep..]
        .iter()
        .filter(|l| l.contains("(not counted)"))
        .count();
    assert_eq!(shown, 50, "{}", f.stdout);
    let page = get(&srv, &format!("/nodes/{node}"));
    assert_eq!(page.status, 200);
    let h = page.body.find("id=history").unwrap();
    let u = page.body.find("id=unaccepted").expect(&page.body);
    assert!(h < u);
    assert!(!page.body[h..u].contains("(not counted)"));
    assert_eq!(page.body[u..].matches("(not counted)").count(), 50);
}

#[test]
fn per_key_report_counts_count_attempts() {
    let s = Scratch::new("center-replays");
    let db = s.join("c.db");
    let srv = Server::start(&db, &[]);
    let t = now();
    let kp = keypair(20);
    let pk = hex(kp.pk.as_ref());
    let reps = [
        rep("n-replay", Some("c1"), "verify", 0, t - 100).to_json(&pk, 1),
        rep("n-replay", Some("c1"), "apply", 0, t - 50).to_json(&pk, 2),
    ];
    for _ in 0..3 {
        assert_eq!(post_env(&srv, &kp, &reps).status, 200);
    }
    let f = fleet_cmd(&db, &["node", "n-replay"]).expect(0);
    assert!(f.stdout.contains("unaccepted (2 reports)"), "{}", f.stdout);
    let l = fleet_cmd(&db, &["list", "--state", "unaccepted"]).expect(0);
    assert!(l.stdout.contains("reports 2 "), "{}", l.stdout);
    accept_all(&db);
    assert_eq!(post_env(&srv, &kp, &reps).status, 200);
    let f = fleet_cmd(&db, &["node", "n-replay"]).expect(0);
    assert!(f.stdout.contains("accepted (2 reports)"), "{}", f.stdout);
}

#[test]
fn fingerprints_the_same_node_key_is_shown_three_different_ways() {
    let s = Scratch::new("center-fingerprint");
    let db = s.join("c.db");
    let db_arg = db.to_str().unwrap();
    let st = s.join("node");
    report::spool(&st, &rep("n-fp", Some("c1"), "apply", 0, now() - 100)).unwrap();
    let usb = s.join("usb");
    std::fs::create_dir_all(&usb).unwrap();
    let export = report::export_status(&st, &usb).unwrap();
    let pub_text = std::fs::read_to_string(export.join(report::NODE_PUB_FILE)).unwrap();
    let raw: [u8; 32] =
        edgepatch::bundle::format::parse_hex(pub_text.split_whitespace().last().unwrap()).unwrap();
    // First 16 hex digits of sha256 of the raw 32-byte key.
    let fp = hex(&edgepatch::bundle::format::sha256(&raw)[..8]);
    assert_eq!(edgepatch::bundle::report::key_fingerprint(&raw), fp);

    let r = edgepatch_e2e::builder(&["ingest", "--db", db_arg, usb.to_str().unwrap()]).expect(0);
    assert!(
        r.stdout.contains(&format!("node key {fp} ")),
        "{fp}: {}",
        r.stdout
    );
    let l = fleet_cmd(&db, &["list", "--state", "unaccepted"]).expect(0);
    assert!(
        l.stdout.contains(&format!("key {fp} ")),
        "{fp}: {}",
        l.stdout
    );
    let n = fleet_cmd(&db, &["node", "n-fp"]).expect(0);
    assert!(
        n.stdout.contains(&format!("key {fp} ")),
        "{fp}: {}",
        n.stdout
    );
    let srv = Server::start(&db, &[]);
    let d = get(&srv, "/?state=unaccepted");
    assert!(
        d.body.contains(&format!("<code>{fp}</code>")),
        "{fp}: {}",
        d.body
    );
    // A signature over other bytes under that key: the 401 names the same fingerprint.
    let body = std::fs::read_to_string(export.join(report::EXPORT_JSON)).unwrap();
    let sig = std::fs::read_to_string(export.join(report::EXPORT_SIG)).unwrap();
    let r = post_signed(&srv, &body.replacen('{', "{ ", 1), &sig);
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains(&fp), "{fp}: {}", r.body);
}

#[test]
fn accept_all_pending_plus_halt_over_lets_an_outsider_sign_a_halt() {
    let s = Scratch::new("center-bulk-accept");
    let db = s.join("c.db");
    let srv = Server::start(&db, &[]);
    let t = now();
    // 25 made-up nodes, all failing the cycle.
    for i in 0..25u64 {
        let kp = keypair(300 + i);
        let pk = hex(kp.pk.as_ref());
        let node = format!("made-up-{i}");
        let r = rep(&node, Some("c1"), "apply", 6, t - 10).to_json(&pk, 1);
        assert_eq!(post_env(&srv, &kp, &[r]).status, 200);
    }
    // A routine bulk accept refuses more than 20 at once, whole.
    let r = fleet_cmd(&db, &["accept", "--all-pending"]).expect(1);
    assert!(
        r.stderr
            .contains("25 new nodes wait, more than 20 at once: nothing accepted"),
        "{}",
        r.stderr
    );
    let l = fleet_cmd(&db, &["list", "--state", "unaccepted"]).expect(0);
    assert!(l.stdout.contains("25 key(s) wait"), "{}", l.stdout);
    let f = fleet_cmd(&db, &["--json"]).expect(0);
    assert!(f.stdout.contains("\"nodes\": 0,"), "{}", f.stdout);
    // Deliberately: every id is printed with its key's fingerprint.
    let r = fleet_cmd(&db, &["accept", "--all-pending", "--max", "25"]).expect(0);
    let kp = keypair(300);
    let fp = edgepatch::bundle::report::key_fingerprint(&kp.pk);
    assert!(
        r.stdout
            .contains(&format!("node made-up-0: key {fp} accepted")),
        "{}",
        r.stdout
    );
    assert_eq!(r.stdout.matches(" accepted, ").count(), 25, "{}", r.stdout);
    // --max without --all-pending is a usage error.
    let r = fleet_cmd(&db, &["accept", "--max", "3", "made-up-1"]);
    assert!(r.stderr.contains("--max"), "{}", r.stderr);
}

#[test]
fn bad_input_gets_a_clear_4xx_and_slow_clients_do_not_stall_others() {
    let s = Scratch::new("center-bad");
    let srv = Server::start(&s.join("c.db"), &[]);
    // A client that sends half a request line and then nothing.
    let mut slow = TcpStream::connect(srv.addr).unwrap();
    slow.write_all(b"POST /api/v1/reports HTTP/1.1\r\nContent-Length: 100000\r\n\r\n{\"rep")
        .unwrap();

    let started = Instant::now();
    let kp = keypair(1);
    let pk = hex(kp.pk.as_ref());
    let good = rep("n1", Some("c1"), "apply", 0, now()).to_json(&pk, 0);
    // Unsigned (an old agent, or anyone): 401, naming what to do.
    let r = post(&srv, &format!("{{\"reports\":[{good}]}}"));
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("upgrade the agent"), "{}", r.body);
    // Signed garbage, a bad field, SQL in a field: 400 with the field named.
    let (body, _) = report::envelope(&kp, &[], None);
    let sig = |b: &str| {
        let sg = kp.sk.sign(b.as_bytes(), None);
        format!("{} {}", report::SIGNATURE_TAG, hex(sg.as_ref()))
    };
    let r = post_signed(&srv, "this is not json", &sig("this is not json"));
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("not a signed report envelope"),
        "{}",
        r.body
    );
    let bad_key = good.replace(&pk, "not-hex");
    let r = post_env(&srv, &kp, &[good.clone(), bad_key]);
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("reports[1]") && r.body.contains("node_pubkey"),
        "{}",
        r.body
    );
    let r = post_env(
        &srv,
        &kp,
        &[good.replace("\"apply\"", "\"'; DROP TABLE reports; --\"")],
    );
    assert_eq!(r.status, 400);
    // Signature over other bytes: 401.
    let r = post_signed(&srv, &body.replace("[]", "[ ]"), &sig(&body));
    assert_eq!(r.status, 401, "{}", r.body);
    let huge = format!("{{\"reports\":[{}]}}", "x".repeat(5 << 20));
    let r = post_signed(&srv, &huge, &sig("x"));
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(get(&srv, "/api/v1/cycles/nope").status, 404);
    let r = get(&srv, "/?label=novalue");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("key=value"));
    assert_eq!(get(&srv, "/?state=bogus").status, 400);
    // Nothing bad got in; a good report still does, while the slow client still hangs.
    let r = post_env(&srv, &kp, &[good]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(started.elapsed() < Duration::from_secs(10));
    let m = get(&srv, "/metrics");
    assert!(
        m.body.contains("edgepatch_center_reports_stored 1\n"),
        "{}",
        m.body
    );
    assert!(
        m.body
            .contains("edgepatch_center_requests_refused_total 5\n"),
        "{}",
        m.body
    );
    drop(slow);
}

#[test]
fn mirror_is_served_with_ranges() {
    let s = Scratch::new("center-mirror");
    let mirror = s.join("mirror");
    std::fs::create_dir_all(mirror.join("debian-12")).unwrap();
    std::fs::write(mirror.join("debian-12/b.epb"), b"0123456789").unwrap();
    std::fs::write(s.join("secret"), b"no").unwrap();
    let srv = Server::start(&s.join("c.db"), &["--mirror", mirror.to_str().unwrap()]);
    let r = get(&srv, "/mirror/debian-12/b.epb");
    assert_eq!((r.status, r.body.as_str()), (200, "0123456789"));
    let r = http(
        srv.addr,
        "GET",
        "/mirror/debian-12/b.epb",
        &["Range: bytes=2-5"],
        b"",
    );
    assert_eq!((r.status, r.body.as_str()), (206, "2345"), "{}", r.headers);
    let r = get(&srv, "/mirror/../secret");
    assert!(r.status == 404 || r.status == 400, "{}", r.status);
    assert_ne!(r.body, "no");
}

#[test]
fn mirror_follows_symlinks_out_of_the_tree() {
    let s = Scratch::new("center-mirror-links");
    let mirror = s.join("mirror");
    let outside = s.join("outside");
    std::fs::create_dir_all(mirror.join("debian-12")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(mirror.join("debian-12/b.epb"), b"0123456789").unwrap();
    std::fs::write(s.join("secret"), b"top-secret").unwrap();
    std::fs::write(outside.join("x.key"), b"top-secret").unwrap();
    std::os::unix::fs::symlink(s.join("secret"), mirror.join("link.key")).unwrap();
    std::os::unix::fs::symlink(&outside, mirror.join("dirlink")).unwrap();
    std::os::unix::fs::symlink("../secret", mirror.join("rel.key")).unwrap();
    std::os::unix::fs::symlink("nowhere", mirror.join("dangling")).unwrap();
    // A link that stays inside the tree is fine.
    std::os::unix::fs::symlink("debian-12/b.epb", mirror.join("latest.epb")).unwrap();
    let srv = Server::start(&s.join("c.db"), &["--mirror", mirror.to_str().unwrap()]);
    for p in [
        "/mirror/link.key",
        "/mirror/dirlink/x.key",
        "/mirror/dirlink/",
        "/mirror/rel.key",
        "/mirror/%6cink.key",
        "/mirror/dangling",
    ] {
        let r = get(&srv, p);
        assert_eq!(r.status, 404, "{p}: {} {}", r.status, r.body);
        assert!(!r.body.contains("top-secret"), "{p}: {}", r.body);
    }
    let r = get(&srv, "/mirror/latest.epb");
    assert_eq!((r.status, r.body.as_str()), (200, "0123456789"));
    let r = get(&srv, "/mirror/debian-12/b.epb");
    assert_eq!((r.status, r.body.as_str()), (200, "0123456789"));
}

/// Seed a fleet: 30 nodes over HTTP with three cycles, 3 silent ones from old USB exports.
fn seed_fleet(srv: &Server, s: &Scratch, db: &Path) -> Vec<(&'static str, u64)> {
    let t = now();
    let h = 3600;
    let outcome = |i: usize| match i {
        0..=14 => 0,
        15..=18 => 5,
        19..=21 => 6,
        22..=23 => 7,
        24..=25 => 2,
        26 => 4,
        _ => -1, // 27..=29: no report for the newest cycle yet (pending)
    };
    for i in 0..30 {
        let name = match i % 3 {
            0 => format!("store-{:03}-kiosk-1", i),
            1 => format!("store-{:03}-rhel-till-1", i),
            _ => format!("store-{:03}-till-2", i),
        };
        let kp = keypair(100 + i as u64);
        let key = hex(kp.pk.as_ref());
        let mut batch = Vec::new();
        let push = |b: &mut Vec<String>, r: Report| b.push(r.to_json(&key, 0));
        push(
            &mut batch,
            rep(
                &name,
                Some("2025-w10"),
                "apply",
                0,
                t - 14 * 24 * h + i as u64 * 1500,
            ),
        );
        push(
            &mut batch,
            rep(
                &name,
                Some("2025-w11"),
                "apply",
                0,
                t - 7 * 24 * h + i as u64 * 3000,
            ),
        );
        let code = outcome(i);
        if code >= 0 {
            let when = t - 44 * h + (i as u64 * 37 % 30) * h;
            let mut r = rep(&name, Some("2025-w12"), "apply", code, when);
            if code != 0 {
                r.installed_cycle = Some("2025-w11".into());
                r.installed_sequence = Some(6);
            }
            push(&mut batch, r);
        } else {
            push(&mut batch, rep(&name, None, "apply", 5, t - h));
        }
        let r = post_env(srv, &kp, &batch);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // Three nodes last heard of four days ago, via USB exports written back then.
    for i in 0..3 {
        let st = s.join(format!("silent-{i}"));
        let name = format!("store-{:03}-till-9", 40 + i);
        let old = t - 4 * 24 * h;
        let kp = report::node_key(&st).unwrap();
        let pk: String = kp.pk.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let reps = [
            rep(&name, Some("2025-w10"), "apply", 0, t - 13 * 24 * h),
            rep(&name, Some("2025-w11"), "apply", 0, t - 6 * 24 * h),
            rep(&name, None, "apply", 5, old),
        ];
        let body = format!(
            "{{\"format\":\"{}\",\"node_pubkey\":\"{pk}\",\"exported_at\":{old},\"status\":null,\"reports\":[{}]}}",
            report::EXPORT_FORMAT,
            reps.iter().map(|r| r.to_json(&pk, 0)).collect::<Vec<_>>().join(",")
        );
        let sig: String = kp
            .sk
            .sign(body.as_bytes(), None)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let dir = s.join(format!("usb/export-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(report::EXPORT_JSON), &body).unwrap();
        std::fs::write(
            dir.join(report::EXPORT_SIG),
            format!("{} {sig}\n", report::SIGNATURE_TAG),
        )
        .unwrap();
        std::fs::copy(
            st.join(report::NODE_PUB_FILE),
            dir.join(report::NODE_PUB_FILE),
        )
        .unwrap();
    }
    edgepatch_e2e::builder(&[
        "ingest",
        "--db",
        db.to_str().unwrap(),
        s.join("usb").to_str().unwrap(),
    ])
    .expect(0);
    accept_all(db);
    vec![
        ("done", 15),
        ("deferred", 4),
        ("failed", 3),
        ("rolled-back", 2),
        ("quarantined", 2),
        ("not-applicable", 1),
        ("pending", 3),
        ("silent", 3),
    ]
}

/// The number in a summary cell of the dashboard's DOM.
fn cell(dom: &str, cycle: &str, state: &str) -> Option<u64> {
    let pat = format!("data-cycle=\"{cycle}\" data-state=\"{state}\">");
    let i = dom.find(&pat)? + pat.len();
    let end = dom[i..].find("</td>")? + i;
    let mut text = String::new();
    let mut in_tag = false;
    for c in dom[i..end].chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.trim().parse().ok()
}

fn chromium(args: &[&str], profile: &Path) -> std::process::Output {
    let mut child = Command::new("/usr/bin/chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let out_reader = {
        let mut so = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = so.read_to_end(&mut v);
            v
        })
    };
    let err_reader = {
        let mut se = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = se.read_to_end(&mut v);
            v
        })
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    std::process::Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

#[test]
fn dashboard_in_headless_chromium() {
    let s = Scratch::new("center-ui");
    let db = s.join("c.db");
    let srv = Server::start(&db, &[]);
    let expected = seed_fleet(&srv, &s, &db);

    // Server-side checks that need no browser: filters and the node page.
    let html = get(&srv, "/?variant=rhel-9-x86_64").body;
    assert_eq!(cell(&html, "2025-w12", "done"), Some(5), "rhel nodes done");
    let html = get(&srv, "/?label=role%3Dkiosk&cycle=2025-w12&state=failed").body;
    assert!(html.contains("only failed"), "{html}");
    let node = get(&srv, "/nodes/store-021-kiosk-1");
    assert_eq!(node.status, 200);
    assert!(node.body.contains("install-failed") && node.body.contains("2025-w11"));
    assert!(get(&srv, "/")
        .headers
        .to_ascii_lowercase()
        .contains("server-timing: summary;dur="));

    if !Path::new("/usr/bin/chromium").exists() {
        eprintln!(
            "SKIPPED dashboard_in_headless_chromium browser part: /usr/bin/chromium is absent \
             (apt-get install chromium, or scripts/test-deps.sh)"
        );
        return;
    }
    let url = srv.url("/");
    let out = chromium(&["--dump-dom", &url], &s.join("profile1"));
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("edgepatch fleet"),
        "chromium rendered nothing: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for (state, n) in &expected {
        assert_eq!(cell(&dom, "2025-w12", state), Some(*n), "2025-w12 {state}");
    }
    assert_eq!(cell(&dom, "2025-w11", "done"), Some(33));
    assert!(dom.contains("<svg id=\"plot\""), "completion plot present");
    assert!(dom.contains("15 of 33 done"));
    assert!(
        dom.contains("/nodes/store-021-kiosk-1"),
        "node history links"
    );

    // The lists behind the counts are the lists the command line prints.
    for state in ["failed", "pending", "silent", "deferred"] {
        let page = srv.url(&format!("/?cycle=2025-w12&state={state}"));
        let out = chromium(&["--dump-dom", &page], &s.join(format!("profile-{state}")));
        let dom = String::from_utf8_lossy(&out.stdout).into_owned();
        let table = &dom[dom.find("id=\"nodes\"").expect("node table")..];
        let mut in_page: Vec<String> = table
            .split("href=\"/nodes/")
            .skip(1)
            .map(|x| x.split('"').next().unwrap().to_string())
            .collect();
        let cli = fleet_cmd(
            &db,
            &["list", "--cycle", "2025-w12", "--state", state, "--json"],
        )
        .expect(0);
        let v: serde_json::Value = serde_json::from_str(&cli.stdout).unwrap();
        let mut in_cli: Vec<String> = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node_id"].as_str().unwrap().to_string())
            .collect();
        in_page.sort();
        in_cli.sort();
        assert_eq!(in_page, in_cli, "{state}");
        assert_eq!(
            in_cli.len() as u64,
            expected.iter().find(|e| e.0 == state).unwrap().1
        );
        assert!(
            dom.contains(&format!("--state {state} --json")),
            "CLI hint for {state}"
        );
    }

    let png = s.join("dashboard.png");
    let out = chromium(
        &[&format!("--screenshot={}", png.display()), &url],
        &s.join("profile2"),
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((w, h), (1280, 900));
    assert!(
        bytes.len() > 20_000,
        "screenshot looks blank ({} bytes)",
        bytes.len()
    );
    if std::env::var_os("EDGEPATCH_UPDATE_DOCS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::copy(&png, docs.join("dashboard.png")).unwrap();
    }
}

/// The real agent reports every `apply` outcome on its own: delivered at once when the center is
/// up, spooled when it is down and delivered by `edgepatch report` later.
#[test]
fn agent_apply_outcomes_reach_the_center() {
    let dir = Scratch::new("center-agent");
    let db = dir.join("center.db");
    let (key, public) = keygen(&dir.join("keys"));
    let pkgs = dir.join("pkgs");
    Deb::new("ep-report", "1.0").build(&pkgs);
    let bundle = dir.join("c1.epb");
    build_bundle(
        &key,
        "debian-12-amd64",
        "rep-c1",
        1,
        &bundle,
        &[&pkgs],
        &["--install", "ep-report"],
    );

    // Center down: port 9 on loopback refuses connections.
    let node = Node::new(
        &dir.join("n"),
        "debian-12-amd64",
        &public,
        "package_manager = \"apt\"\nreport_url = \"http://127.0.0.1:9/api/v1/reports\"\n",
    );
    deb_root(&node.root);
    node.agent(&["apply", bundle.to_str().unwrap()]).expect(0);
    node.agent(&["apply", "/nonexistent.epb"]).expect(5);
    let spooled = std::fs::read_dir(node.state_dir.join("spool"))
        .unwrap()
        .count();
    assert_eq!(spooled, 2, "both outcomes spooled while the center is down");

    let server = Server::start(&db, &[]);
    let conf = std::fs::read_to_string(&node.config).unwrap();
    std::fs::write(
        &node.config,
        conf.replace("127.0.0.1:9", &server.addr.to_string()),
    )
    .unwrap();
    let r = node.agent(&["report"]).expect(0);
    assert!(r.stdout.contains("delivered 2"), "{}", r.stdout);
    // The next outcome goes out immediately.
    node.agent(&["apply", bundle.to_str().unwrap()]).expect(0);
    assert_eq!(
        std::fs::read_dir(node.state_dir.join("spool"))
            .unwrap()
            .count(),
        0
    );

    accept_all(&db);
    let nodes = http(server.addr, "GET", "/api/v1/nodes", &[], b"");
    assert_eq!(nodes.status, 200);
    assert!(
        nodes.body.contains("test-node") && nodes.body.contains("rep-c1"),
        "{}",
        nodes.body
    );
}

/// When the failed + rolled-back share of a cycle's finished nodes reaches the policy's
/// threshold, `fleet --halt-over` writes a signed halt order for that cycle and variant.
#[test]
fn failure_threshold_issues_a_signed_halt_order() {
    let s = Scratch::new("center-halt");
    let db = s.join("center.db");
    let srv = Server::start(&db, &[]);
    let url = srv.url("/api/v1/reports");
    let t = now();
    for i in 0..10 {
        let node = format!("kiosk-{i:02}");
        let code = if i < 3 { 6 } else { 0 };
        let sd = s.join(format!("node-{i}"));
        report::spool(&sd, &rep(&node, Some("2025-w20"), "apply", code, t)).unwrap();
        report::flush(&sd, &url, Duration::from_secs(10)).unwrap();
    }
    accept_all(&db);
    let (key, public) = keygen(&s.join("keys"));
    let orders = s.join("orders");
    let fleet = |percent: &str| {
        Command::new(ensure_builder())
            .args(["fleet", "--db"])
            .arg(&db)
            .args([
                "--halt-over",
                percent,
                "--halt-min-finished",
                "5",
                "--halt-key",
            ])
            .arg(&key)
            .arg("--orders-dir")
            .arg(&orders)
            .output()
            .unwrap()
    };
    // 3 of 10 failed = 30%: a 50% threshold does nothing, 25% halts.
    assert!(fleet("50").status.success());
    assert!(!orders.join("halt-debian-12-amd64-2025-w20.order").exists());
    let out = fleet("25");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("HALT debian-12-amd64 2025-w20"));
    let order = std::fs::read(orders.join("halt-debian-12-amd64-2025-w20.order")).unwrap();
    let trusted = edgepatch::bundle::keys::load_trusted(&public).unwrap();
    let rec = edgepatch::bundle::signed::open(&order, "edgepatch-order", &trusted, 1).unwrap();
    assert_eq!(
        (rec.get("kind"), rec.get("cycle")),
        (Some("halt"), Some("2025-w20"))
    );
}

/// `order --kind resume` lifts a halt: written into the orders dir it keeps the rule from
/// halting the same cycle again.
#[test]
fn resume_order_stops_the_automatic_halt() {
    let s = Scratch::new("center-resume");
    let db = s.join("center.db");
    let srv = Server::start(&db, &[]);
    let t = now();
    for i in 0..6 {
        let kp = keypair(500 + i);
        let pk = hex(kp.pk.as_ref());
        let code = if i < 3 { 7 } else { 0 };
        let r = rep(&format!("k-{i}"), Some("c9"), "apply", code, t).to_json(&pk, 0);
        assert_eq!(post_env(&srv, &kp, &[r]).status, 200);
    }
    accept_all(&db);
    let (key, _) = keygen(&s.join("keys"));
    let orders = s.join("orders");
    let halt = |expect_halt: bool| {
        let out = fleet_cmd(
            &db,
            &[
                "--halt-over",
                "30",
                "--halt-min-finished",
                "3",
                "--halt-key",
                key.to_str().unwrap(),
                "--orders-dir",
                orders.to_str().unwrap(),
            ],
        )
        .expect(0);
        assert_eq!(
            out.stdout.contains("HALT debian-12-amd64 c9"),
            expect_halt,
            "{}",
            out.stdout
        );
    };
    halt(true);
    std::fs::remove_file(orders.join("halt-debian-12-amd64-c9.order")).unwrap();
    edgepatch_e2e::builder(&[
        "order",
        "--key",
        key.to_str().unwrap(),
        "--kind",
        "resume",
        "--variant",
        "debian-12-amd64",
        "--cycle",
        "c9",
        "--out",
        orders
            .join("resume-debian-12-amd64-c9.order")
            .to_str()
            .unwrap(),
    ])
    .expect(0);
    halt(false);
}

/// The attacks from issue 17, each against a real center on loopback.
#[test]
fn forged_reports_never_count_squatting_is_no_dead_end_and_no_halt_is_forged() {
    let s = Scratch::new("center-forge");
    let db = s.join("center.db");
    let srv = Server::start(&db, &[]);
    let url = srv.url("/api/v1/reports");
    let t = now();
    // A real node, accepted, quarantines c2 (exit 2).
    let real = s.join("real");
    report::spool(&real, &rep("till-1", Some("c1"), "apply", 0, t)).unwrap();
    report::flush(&real, &url, Duration::from_secs(5)).unwrap();
    accept_all(&db);
    // The attacker knows the id but not the key: "done, c2 installed" with time 2^63-1 is
    // refused outright (the clock bound), and with a plausible time it waits, uncounted.
    let evil = keypair(666);
    let epk = hex(evil.pk.as_ref());
    let forged = rep("till-1", Some("c2"), "apply", 0, t).to_json(&epk, 0);
    let far = forged.replace(&format!("\"time\":{t}"), "\"time\":9223372036854775807");
    let r = post_env(&srv, &evil, &[far]);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("more than a day ahead"), "{}", r.body);
    let r = post_env(&srv, &evil, &[forged]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"counted\":0"), "{}", r.body);
    // The dashboard still renders (nothing in the store can break the arithmetic).
    assert_eq!(get(&srv, "/").status, 200);
    report::spool(&real, &rep("till-1", Some("c2"), "apply", 2, t)).unwrap();
    let st = report::flush(&real, &url, Duration::from_secs(5)).unwrap();
    assert_eq!((st.delivered, st.rejected), (1, 0));
    let f = fleet_cmd(
        &db,
        &["list", "--cycle", "c2", "--state", "quarantined", "--json"],
    )
    .expect(0);
    assert!(
        f.stdout.contains("till-1"),
        "the real report counts: {}",
        f.stdout
    );
    let f = fleet_cmd(&db, &["list", "--cycle", "c2", "--state", "done", "--json"]).expect(0);
    assert!(
        f.stdout.contains("\"total\": 0"),
        "the forged one does not: {}",
        f.stdout
    );
    // Squatting a new id first: both wait; the real node is never refused (no 409).
    let squat = rep("till-new", Some("c2"), "apply", 6, t).to_json(&epk, 0);
    assert_eq!(post_env(&srv, &evil, &[squat]).status, 200);
    let newnode = s.join("new");
    report::spool(&newnode, &rep("till-new", Some("c2"), "apply", 0, t)).unwrap();
    let st = report::flush(&newnode, &url, Duration::from_secs(5)).unwrap();
    assert_eq!((st.delivered, st.rejected), (1, 0));
    let r = fleet_cmd(&db, &["accept", "--all-pending"]).expect(0);
    assert!(
        r.stderr.contains("till-new: 2 different keys"),
        "{}",
        r.stderr
    );
    let list = fleet_cmd(&db, &["list", "--state", "unaccepted"]).expect(0);
    assert!(list.stdout.contains("3 key(s) wait"), "{}", list.stdout);
    let page = get(&srv, "/?state=unaccepted");
    assert_eq!(
        page.body.matches("<td class=l>till-new</td>").count(),
        2,
        "{}",
        page.body
    );
    let api = get(&srv, "/api/v1/nodes?state=unaccepted");
    assert_eq!(json_num(&api.body, "total"), Some(3), "{}", api.body);
    assert!(!api.body.contains(&epk), "no API returns keys");
    // 20 forged failures under 20 made-up ids: no halt.
    for i in 0..20 {
        let kp = keypair(700 + i);
        let r =
            rep(&format!("ghost-{i}"), Some("c2"), "apply", 6, t).to_json(&hex(kp.pk.as_ref()), 0);
        assert_eq!(post_env(&srv, &kp, &[r]).status, 200);
    }
    let (key, _) = keygen(&s.join("keys"));
    let orders = s.join("orders");
    let out = fleet_cmd(
        &db,
        &[
            "--halt-over",
            "30",
            "--halt-min-finished",
            "1",
            "--halt-key",
            key.to_str().unwrap(),
            "--orders-dir",
            orders.to_str().unwrap(),
        ],
    )
    .expect(0);
    assert!(!out.stdout.contains("HALT"), "{}", out.stdout);
    assert!(out.stdout.contains("22 unaccepted"), "{}", out.stdout);
}

/// A bug hit by one request (a panic) answers 500 and ends nothing: the center keeps serving.
#[test]
fn a_panic_in_one_request_does_not_end_the_center() {
    let s = Scratch::new("center-panic");
    let srv = Server::start_env(
        &s.join("c.db"),
        &[],
        &[("EDGEPATCH_CENTER_TEST_PANIC", "1")],
    );
    for _ in 0..3 {
        let r = get(&srv, "/test/panic");
        assert_eq!(r.status, 500, "{}", r.body);
        assert!(r.body.contains("the center runs on"), "{}", r.body);
    }
    assert_eq!(get(&srv, "/").status, 200);
}

/// 1,100 connections that send one request line and then nothing: the center closes them after
/// the header timeout, caps them per client, and keeps serving.
#[test]
fn idle_connections_do_not_starve_the_center() {
    let s = Scratch::new("center-loris");
    let srv = Server::start(
        &s.join("c.db"),
        &[
            "--header-timeout",
            "2",
            "--max-per-client",
            "64",
            "--max-connections",
            "256",
        ],
    );
    let mut idle = Vec::new();
    for _ in 0..1100 {
        match TcpStream::connect(srv.addr) {
            Ok(mut c) => {
                let _ = c.write_all(b"GET / HTTP/1.1\r\n");
                idle.push(c);
            }
            Err(_) => break,
        }
    }
    assert!(idle.len() >= 1000, "only {} connections", idle.len());
    // Within a few header timeouts a normal request is served again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let served = loop {
        let r = http(srv.addr, "GET", "/api/v1/reports", &[], b"");
        if r.status == 200 {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(served, "center did not recover from idle connections");
    // The idle ones were closed by the center.
    let mut buf = [0u8; 256];
    idle[0]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = idle[0].read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    drop(idle);
    let r = http(srv.addr, "GET", "/", &[], b"");
    assert_eq!(r.status, 200);
}

/// Three cycles with rollbacks and halts: counts right at every step. A node's state in a cycle
/// comes from its reports about that cycle; later reports never erase an outcome.
#[test]
fn three_cycles_with_rollbacks_count_right_at_every_step() {
    let s = Scratch::new("center-cycles");
    let db = s.join("center.db");
    let srv = Server::start(&db, &[]);
    let url = srv.url("/api/v1/reports");
    let t = now();
    let send = |i: usize, cycle: &str, seq: u64, code: i32, installed: Option<(&str, u64)>| {
        let sd = s.join(format!("n{i}"));
        let mut r = rep(&format!("till-{i:02}"), Some(cycle), "apply", code, t);
        r.sequence = Some(seq);
        r.installed_cycle = installed.map(|(c, _)| c.to_string());
        r.installed_sequence = installed.map(|(_, q)| q);
        report::spool(&sd, &r).unwrap();
        let st = report::flush(&sd, &url, Duration::from_secs(5)).unwrap();
        assert_eq!(st.rejected, 0);
    };
    let counts = |cycle: &str| -> serde_json::Value {
        let out = fleet_cmd(&db, &["--json"]).expect(0);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        v["cycles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cycle"] == cycle)
            .cloned()
            .unwrap_or_else(|| panic!("no {cycle} in {}", out.stdout))
    };
    let n = |v: &serde_json::Value, st: &str| v["counts"][st].as_u64().unwrap_or(0);
    // c1: ten nodes done.
    for i in 0..10 {
        send(i, "c1", 1, 0, Some(("c1", 1)));
    }
    accept_all(&db);
    assert_eq!(n(&counts("c1"), "done"), 10);
    // c2: six roll back after a failed health check, then report "not newer" twice.
    for i in 0..10 {
        let code = if i < 6 { 7 } else { 0 };
        let inst = if i < 6 { ("c1", 1) } else { ("c2", 2) };
        send(i, "c2", 2, code, Some(inst));
    }
    for i in 0..6 {
        send(i, "c2", 2, 4, Some(("c1", 1)));
        send(i, "c2", 2, 4, Some(("c1", 1)));
    }
    let c2 = counts("c2");
    assert_eq!((n(&c2, "rolled-back"), n(&c2, "done")), (6, 4), "{c2}");
    let (key, _) = keygen(&s.join("keys"));
    let orders = s.join("orders");
    let halt = fleet_cmd(
        &db,
        &[
            "--halt-over",
            "30",
            "--halt-min-finished",
            "5",
            "--halt-key",
            key.to_str().unwrap(),
            "--orders-dir",
            orders.to_str().unwrap(),
        ],
    )
    .expect(0);
    assert!(
        halt.stdout.contains("HALT debian-12-amd64 c2: 6 of 10"),
        "{}",
        halt.stdout
    );
    // c3: everyone moves on; one node fails once, then succeeds on its own (self-healed).
    send(0, "c3", 3, 6, Some(("c1", 1)));
    for i in 0..10 {
        send(i, "c3", 3, 0, Some(("c3", 3)));
    }
    // A new node that starts at c3 and a node of another variant.
    send(10, "c3", 3, 0, Some(("c3", 3)));
    let other = s.join("rhel");
    report::spool(&other, &rep("rhel-till-1", Some("r1"), "apply", 0, t)).unwrap();
    report::flush(&other, &url, Duration::from_secs(5)).unwrap();
    accept_all(&db);
    let (c1, c2, c3) = (counts("c1"), counts("c2"), counts("c3"));
    assert_eq!(
        (n(&c1, "done"), n(&c1, "superseded"), c1["nodes"].as_u64()),
        (10, 1, Some(11)),
        "{c1}"
    );
    assert_eq!(
        (n(&c2, "rolled-back"), n(&c2, "done"), n(&c2, "superseded")),
        (6, 4, 1),
        "{c2}"
    );
    assert_eq!(n(&c2, "pending"), 0, "{c2}");
    assert_eq!(
        (n(&c3, "done"), c3["nodes"].as_u64()),
        (11, Some(11)),
        "{c3}"
    );
    assert_eq!(
        (c3["hit_failure"].as_u64(), c3["self_healed"].as_u64()),
        (Some(1), Some(1)),
        "{c3}"
    );
    // The list behind a count is the same on the command line and the API.
    let l = fleet_cmd(
        &db,
        &["list", "--cycle", "c2", "--state", "rolled-back", "--json"],
    )
    .expect(0);
    assert!(l.stdout.contains("\"total\": 6"), "{}", l.stdout);
    let api = get(&srv, "/api/v1/nodes?cycle=c2&state=rolled-back");
    assert_eq!(json_num(&api.body, "total"), Some(6), "{}", api.body);
    let node = fleet_cmd(&db, &["node", "till-00", "--json"]).expect(0);
    assert!(node.stdout.contains("\"report_seq\": 5"), "{}", node.stdout);
}

/// A USB-only site: the export carries import (one tampered bundle found on the stick), apply
/// and rollback reports; the node was preauthorized from the inventory.
#[test]
fn usb_only_site_with_import_apply_and_rollback_reports() {
    let s = Scratch::new("center-usbsite");
    let db = s.join("center.db");
    let st = s.join("node");
    let t = now();
    let node = "branch-4-gw";
    let mut reps = vec![
        rep(node, Some("u1"), "import", 2, t - 500),
        rep(node, Some("u1"), "import", 0, t - 400),
        rep(node, Some("u1"), "apply", 0, t - 300),
        rep(node, Some("u1"), "rollback", 0, t - 200),
        rep(node, None, "recover", 0, t - 100),
    ];
    reps[0].reason = "bundle u1.epb: sha256 mismatch; quarantined".into();
    reps[4].installed_cycle = None;
    for r in &reps {
        report::spool(&st, r).unwrap();
    }
    let usb = s.join("usb");
    std::fs::create_dir_all(&usb).unwrap();
    report::export_status(&st, &usb).unwrap();
    let pubkey = std::fs::read_to_string(st.join(report::NODE_PUB_FILE)).unwrap();
    let inv = s.join("inventory");
    std::fs::write(&inv, format!("{node} {pubkey}")).unwrap();
    // Preauthorizing needs a database: ingest creates it (an empty dir of exports is an error,
    // so preauthorize after a first ingest, or run serve once).
    let srv = Server::start(&db, &[]);
    fleet_cmd(&db, &["preauthorize", inv.to_str().unwrap()]).expect(0);
    let r = edgepatch_e2e::builder(&[
        "ingest",
        "--db",
        db.to_str().unwrap(),
        usb.to_str().unwrap(),
    ])
    .expect(0);
    assert!(r.stdout.contains("5 report(s): 5 new"), "{}", r.stdout);
    assert!(!r.stdout.contains("not accepted"), "{}", r.stdout);
    let l = fleet_cmd(&db, &["list", "--cycle", "u1", "--json"]).expect(0);
    assert!(
        l.stdout.contains("\"state\": \"rolled-back\""),
        "{}",
        l.stdout
    );
    let h = fleet_cmd(&db, &["node", node]).expect(0);
    for cmd in ["import", "apply", "rollback", "recover"] {
        assert!(h.stdout.contains(cmd), "{cmd}: {}", h.stdout);
    }
    assert!(get(&srv, &format!("/nodes/{node}"))
        .body
        .contains("sha256 mismatch"));
}
