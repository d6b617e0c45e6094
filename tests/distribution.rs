//! Distribution end to end: `edgepatch-builder publish` lays out a mirror; `edgepatch fetch`
//! downloads from it through a fault-injecting HTTP server (and a real nginx); `import` takes
//! bundles from a read-only drop dir; `run` ties it together with the WAN down. Every fault ends
//! with the right bundle complete in incoming/ (byte for byte what was published) or a clean,
//! recorded refusal with nothing half-done left for apply.

use edgepatch_e2e::faulty_http::FaultyServer;
use edgepatch_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const VARIANT: &str = "debian-12-amd64";
const KB: u64 = 1024;

struct Fleet {
    dir: Scratch,
    key: PathBuf,
    public: PathBuf,
    mirror: PathBuf,
}

/// A .deb carrying `size` bytes of incompressible data, so bundle sizes are predictable.
fn big_deb(out: &Path, name: &str, version: &str, size: usize, seed: u64) -> PathBuf {
    let work = out.join(format!(".w-{name}-{version}"));
    std::fs::create_dir_all(work.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(work.join("usr/share/edgepatch-test")).unwrap();
    std::fs::write(
        work.join("DEBIAN/control"),
        format!("Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@example.invalid>\nDescription: test\n"),
    )
    .unwrap();
    let mut x = seed | 1;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(
        work.join(format!("usr/share/edgepatch-test/{name}.bin")),
        data,
    )
    .unwrap();
    let deb = out.join(format!("{name}_{version}_all.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Znone", "--build"])
        .arg(&work)
        .arg(&deb))
    .expect(0);
    std::fs::remove_dir_all(&work).unwrap();
    deb
}

impl Fleet {
    fn new(tag: &str) -> Fleet {
        let dir = Scratch::new(tag);
        let (key, public) = keygen(&dir.join("keys"));
        let mirror = dir.join("mirror");
        Fleet {
            dir,
            key,
            public,
            mirror,
        }
    }

    /// A bundle of about `size` bytes installing ep-big at version SEQ.0.
    fn bundle_for(&self, variant: &str, cycle: &str, seq: u64, size: usize) -> PathBuf {
        let pkgs = self.dir.join(format!("pkgs-{variant}-{cycle}"));
        big_deb(
            &pkgs,
            "ep-big",
            &format!("{seq}.0"),
            size,
            seq * 7919 + size as u64,
        );
        let out = self.dir.join(format!("{variant}-{cycle}.epb"));
        build_bundle(
            &self.key,
            variant,
            cycle,
            seq,
            &out,
            &[&pkgs],
            &["--install", "ep-big"],
        );
        out
    }

    fn bundle(&self, cycle: &str, seq: u64, size: usize) -> PathBuf {
        self.bundle_for(VARIANT, cycle, seq, size)
    }

    fn publish(&self, bundles: &[&Path], extra: &[&str]) -> Run {
        let mut args = vec![
            "publish",
            "--key",
            self.key.to_str().unwrap(),
            "--out",
            self.mirror.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        for b in bundles {
            args.push(b.to_str().unwrap());
        }
        builder(&args).expect(0)
    }

    fn index(&self) -> PathBuf {
        self.mirror.join(VARIANT).join("index")
    }

    /// The published file of a sequence.
    fn published(&self, seq: u64) -> PathBuf {
        let dir = self.mirror.join(VARIANT).join("bundles");
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with(&format!("{seq}-"))
            })
            .unwrap_or_else(|| panic!("sequence {seq} not in {}", dir.display()))
    }

    fn node(&self, name: &str, url: &str, extra: &str) -> Node {
        let node = Node::new(
            &self.dir.join(name),
            VARIANT,
            &self.public,
            &format!("package_manager = \"apt\"\nmirror = \"{url}\"\n{extra}"),
        );
        deb_root(&node.root);
        node
    }
}

fn incoming(node: &Node) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(node.state_dir.join("incoming"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The one complete bundle in incoming/ equals the published file byte for byte.
fn assert_complete(node: &Node, published: &Path) {
    let name = published.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        incoming(node)
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .collect::<Vec<_>>(),
        vec![name.to_string()],
        "incoming/ should hold exactly the finished bundle"
    );
    let got = std::fs::read(node.state_dir.join("incoming").join(name)).unwrap();
    assert!(
        got == std::fs::read(published).unwrap(),
        "incoming/{name} differs from the published file"
    );
}

fn last_result(node: &Node) -> String {
    std::fs::read_to_string(node.state_dir.join("last-result")).unwrap_or_default()
}

fn fetch(node: &Node, env: &[(&str, &str)]) -> Run {
    let mut c = node.command(&["-v", "fetch"]);
    for (k, v) in env {
        c.env(k, v);
    }
    run(&mut c)
}

fn bundle_requests(server: &FaultyServer) -> Vec<edgepatch_e2e::faulty_http::Logged> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/bundles/"))
        .collect()
}

#[test]
fn publish_lays_out_signed_index_and_prunes() {
    let f = Fleet::new("dist-publish");
    let b1 = f.bundle("c1", 1, 20_000);
    let b2 = f.bundle("c2", 2, 20_000);
    let b3 = f.bundle("c3", 3, 20_000);
    let order = f.dir.join("halt-c3.order");
    std::fs::write(&order, "edgepatch-order 1\nkind halt\n--- signatures\n").unwrap();
    let out = f.publish(&[&b1, &b2], &[]).stdout;
    // Dates an operator can read, not epoch seconds.
    assert!(
        out.contains(" published 20") && out.contains("Z expires 20"),
        "{out}"
    );
    let first = std::fs::read_to_string(f.index()).unwrap();
    assert!(
        first.starts_with("edgepatch-index 1\nvariant debian-12-amd64\n"),
        "{first}"
    );
    assert!(
        first.contains("\nbundle sequence=1 cycle=c1 file=1-c1.epb size="),
        "{first}"
    );
    assert!(first.contains(" delta_base=-\n"), "{first}");
    assert!(first.contains("\n--- signatures\nsig "), "{first}");

    let r = f.publish(&[&b3], &["--keep", "2", "--order", order.to_str().unwrap()]);
    assert!(
        r.stdout.contains("pruned debian-12-amd64/bundles/1-c1.epb"),
        "{}",
        r.stdout
    );
    let second = std::fs::read_to_string(f.index()).unwrap();
    assert!(!second.contains("file=1-c1.epb"), "{second}");
    assert!(second.contains("file=2-c2.epb") && second.contains("file=3-c3.epb"));
    assert!(second.contains("\norder halt-c3.order "), "{second}");
    assert!(f
        .mirror
        .join(VARIANT)
        .join("orders/halt-c3.order")
        .is_file());
    assert!(!f.mirror.join(VARIANT).join("bundles/1-c1.epb").exists());
    let published = |t: &str| -> u64 {
        t.lines()
            .find_map(|l| l.strip_prefix("published "))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        published(&second) > published(&first),
        "published must strictly increase"
    );
    // Bundle files are byte-identical copies; no temp files are left behind.
    assert_eq!(
        std::fs::read(f.published(3)).unwrap(),
        std::fs::read(&b3).unwrap()
    );
    for e in std::fs::read_dir(f.mirror.join(VARIANT).join("bundles")).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.starts_with('.'), "temp file {n} left in the mirror");
    }
    // A different bundle under an already published sequence is refused.
    let other = f.bundle_for(VARIANT, "c3-rebuilt", 3, 20_000);
    let r = run(Command::new(builder_bin()).args([
        "publish",
        "--key",
        f.key.to_str().unwrap(),
        "--out",
        f.mirror.to_str().unwrap(),
        other.to_str().unwrap(),
    ]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("sequence 3 is already published"),
        "{}",
        r.stderr
    );
    // Re-signing without bundles refreshes the index.
    let r = f.publish(&[], &[]);
    assert!(r.stdout.contains("2 bundle(s), 1 order(s)"), "{}", r.stdout);
}

#[test]
fn fetch_then_apply_then_nothing_due() {
    let f = Fleet::new("dist-basic");
    let b1 = f.bundle("c1", 1, 300_000);
    f.publish(&[&b1], &[]);
    let server = FaultyServer::start(&f.mirror);
    let node = f.node("n", &server.url(), "");
    let r = fetch(&node, &[]).expect(0);
    assert!(
        r.stdout.contains("fetched cycle c1 sequence 1"),
        "{}",
        r.stdout
    );
    assert_complete(&node, &f.published(1));
    assert!(
        last_result(&node).contains("command fetch\nexit 0"),
        "{}",
        last_result(&node)
    );
    node.agent(&["apply"]).expect(0);
    assert_eq!(deb_version(&node.root, "ep-big").as_deref(), Some("1.0 ii"));
    let r = fetch(&node, &[]).expect(0);
    assert!(
        r.stdout.contains("nothing to fetch: installed sequence 1"),
        "{}",
        r.stdout
    );
    assert_eq!(
        bundle_requests(&server).len(),
        1,
        "one download, no refetch"
    );
}

#[test]
fn cut_connection_resumes_with_range() {
    let f = Fleet::new("dist-cut");
    let b1 = f.bundle("c1", 1, 400_000);
    f.publish(&[&b1], &[]);
    let server = FaultyServer::start(&f.mirror);
    server.set(|x| {
        x.cut_after = Some(150_000);
        x.cut_count = 2;
    });
    let node = f.node("n", &server.url(), "");
    fetch(&node, &[]).expect(0);
    assert_complete(&node, &f.published(1));
    let reqs = bundle_requests(&server);
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=150000-"), "{reqs:?}");
    assert_eq!(reqs[2].range.as_deref(), Some("bytes=300000-"), "{reqs:?}");
    assert!(
        reqs[1].if_range.is_some(),
        "resume must be conditional: {reqs:?}"
    );
    assert!(reqs[1..].iter().all(|r| r.status == 206), "{reqs:?}");
    let size = std::fs::metadata(f.published(1)).unwrap().len();
    let index_bytes = std::fs::metadata(f.index()).unwrap().len();
    assert_eq!(
        server.bytes_served(),
        size + index_bytes,
        "no byte served twice"
    );
}

#[test]
fn changed_file_on_mirror_restarts_instead_of_mixing() {
    let f = Fleet::new("dist-changed");
    let b1 = f.bundle("c1", 1, 400_000);
    f.publish(&[&b1], &[]);
    let server = FaultyServer::start(&f.mirror);
    // A slow link and a short budget: the pass ends with a partial file kept.
    let node = f.node("n", &server.url(), "bwlimit = \"100K\"\n");
    let r = run(&mut node.command(&["-v", "fetch", "--budget", "2"]));
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("time budget is used up"), "{}", r.stderr);
    let part = node.state_dir.join("incoming/1-c1.epb.partial");
    assert!(
        part.is_file(),
        "partial kept across runs: {:?}",
        incoming(&node)
    );
    // The mirror rewrites the file (new mtime, so a new ETag): the resume must not mix old
    // bytes with new ones; If-Range makes the server send the whole file again.
    std::thread::sleep(Duration::from_millis(20));
    let p = f.published(1);
    std::fs::write(&p, std::fs::read(&p).unwrap()).unwrap();
    server.clear();
    fetch(&node, &[]).expect(0);
    assert_complete(&node, &f.published(1));
    let last = bundle_requests(&server).pop().unwrap();
    assert!(last.range.is_some() && last.if_range.is_some(), "{last:?}");
    assert_eq!(
        last.status, 200,
        "changed file: whole file, not a range: {last:?}"
    );
}

#[test]
fn busy_mirror_retry_after_is_honoured() {
    let f = Fleet::new("dist-busy");
    let b1 = f.bundle("c1", 1, 100_000);
    f.publish(&[&b1], &[]);
    let server = FaultyServer::start(&f.mirror);
    server.set(|x| {
        x.busy = 2;
        x.retry_after = 1;
    });
    let node = f.node("n", &server.url(), "");
    let t = Instant::now();
    let r = fetch(&node, &[]).expect(0);
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "Retry-After: 1 twice"
    );
    assert!(
        r.stderr
            .contains("HTTP 503 (mirror busy); retrying in 1.0s"),
        "{}",
        r.stderr
    );
    assert_complete(&node, &f.published(1));
    // Retry-After beyond the pass budget: stop cleanly, deferred, nothing half-done.
    let node2 = f.node("n2", &server.url(), "");
    server.set(|x| {
        x.busy = 5;
        x.retry_after = 3600;
    });
    let r = run(&mut node2.command(&["fetch", "--budget", "60"]));
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("next pass retries"), "{}", r.stderr);
}

#[test]
fn stalled_transfer_times_out_and_resumes() {
    let f = Fleet::new("dist-stall");
    let b1 = f.bundle("c1", 1, 300_000);
    f.publish(&[&b1], &[]);
    let server = FaultyServer::start(&f.mirror);
    server.set(|x| {
        x.stall_after = Some(120_000);
        x.stall_for = Duration::from_secs(20);
        x.stall_count = 1;
    });
    let node = f.node("n", &server.url(), "");
    let t = Instant::now();
    fetch(&node, &[("EDGEPATCH_HTTP_TIMEOUT", "1")]).expect(0);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_complete(&node, &f.published(1));
    let reqs = bundle_requests(&server);
    assert!(
        reqs[1]
            .range
            .as_deref()
            .is_some_and(|r| r.starts_with("bytes=")),
        "{reqs:?}"
    );
}

#[test]
fn body_longer_than_declared_or_than_index_is_capped() {
    let f = Fleet::new("dist-long");
    let b1 = f.bundle("c1", 1, 100_000);
    f.publish(&[&b1], &[]);
    let server = FaultyServer::start(&f.mirror);
    // More bytes on the wire than Content-Length says.
    server.set(|x| x.overrun = 5_000_000);
    let node = f.node("n", &server.url(), "");
    fetch(&node, &[]).expect(0);
    assert_complete(&node, &f.published(1));
    // A server that declares and sends far more than the signed index says (endless data).
    server.clear();
    server.set(|x| x.pad = 50_000_000);
    let node2 = f.node("n2", &server.url(), "");
    let t = Instant::now();
    let r = fetch(&node2, &[]).expect(0);
    assert!(r.stderr.contains("reading at most"), "{}", r.stderr);
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_complete(&node2, &f.published(1));
}

#[test]
fn flipped_byte_is_discarded_reported_and_fetched_again() {
    let f = Fleet::new("dist-flip");
    let b1 = f.bundle("c1", 1, 200_000);
    f.publish(&[&b1], &[]);
    let server = FaultyServer::start(&f.mirror);
    server.set(|x| {
        x.flip_at = Some(150_000);
        x.flip_count = 1;
    });
    let node = f.node("n", &server.url(), "");
    let r = fetch(&node, &[]).expect(2);
    assert!(r.stderr.contains("is corrupt: sha256"), "{}", r.stderr);
    assert!(
        incoming(&node).is_empty(),
        "corrupt download discarded: {:?}",
        incoming(&node)
    );
    let status = node.agent(&["status", "--json"]).expect(0).stdout;
    assert!(status.contains("\"result\":\"integrity\""), "{status}");
    assert!(status.contains("corrupt"), "{status}");
    // apply never sees it.
    node.agent(&["apply"]).expect(5);
    // Next pass fetches it again, intact.
    fetch(&node, &[]).expect(0);
    assert_complete(&node, &f.published(1));
}

#[test]
fn stale_foreign_expired_or_unsigned_index_is_refused() {
    let f = Fleet::new("dist-index");
    let b1 = f.bundle("c1", 1, 50_000);
    let b2 = f.bundle("c2", 2, 50_000);
    f.publish(&[&b1], &[]);
    let old_index = std::fs::read(f.index()).unwrap();
    f.publish(&[&b2], &[]);
    let server = FaultyServer::start(&f.mirror);
    let node = f.node("n", &server.url(), "");
    fetch(&node, &[]).expect(0);
    assert_complete(&node, &f.published(2));

    // A mirror that goes back to an old (validly signed) index: refused, nothing changes.
    server.set(|x| x.index_override = Some(old_index.clone()));
    let r = fetch(&node, &[]).expect(4);
    assert!(
        r.stderr.contains("older than one already seen"),
        "{}",
        r.stderr
    );
    assert!(last_result(&node).contains("result not-applicable"));
    assert_complete(&node, &f.published(2));

    // An index for another variant.
    let other = f.bundle_for("rhel-9-x86_64", "r1", 1, 20_000);
    f.publish(&[&other], &[]);
    let foreign = std::fs::read(f.mirror.join("rhel-9-x86_64/index")).unwrap();
    server.set(|x| x.index_override = Some(foreign));
    let r = fetch(&node, &[]).expect(4);
    assert!(
        r.stderr.contains("index is for variant rhel-9-x86_64"),
        "{}",
        r.stderr
    );

    // An index signed by a key the node does not trust.
    let (k2, _) = keygen(&f.dir.join("keys2"));
    let rogue = f.dir.join("rogue-mirror");
    builder(&[
        "publish",
        "--key",
        k2.to_str().unwrap(),
        "--trusted",
        f.public.to_str().unwrap(),
        "--out",
        rogue.to_str().unwrap(),
        b2.to_str().unwrap(),
    ])
    .expect(0);
    server.set(|x| {
        x.index_override = Some(std::fs::read(rogue.join(VARIANT).join("index")).unwrap())
    });
    let r = fetch(&node, &[]).expect(3);
    assert!(r.stderr.contains("index refused"), "{}", r.stderr);

    // An expired index (stale mirror left behind) on a fresh node.
    let f2 = Fleet::new("dist-expired");
    let b = f2.bundle("c1", 1, 20_000);
    let long_ago = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 10 * 86400)
        .to_string();
    f2.publish(&[&b], &["--now", &long_ago, "--index-expires-in", "7d"]);
    let server2 = FaultyServer::start(&f2.mirror);
    let node2 = f2.node("n", &server2.url(), "");
    let r = fetch(&node2, &[]).expect(4);
    assert!(r.stderr.contains("index expired"), "{}", r.stderr);
    assert!(bundle_requests(&server2).is_empty());
}

/// Unix time of 10:00 UTC tomorrow (test clocks must not run behind the real one: the ratchet).
fn tomorrow_10_utc() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (now / 86400 + 1) * 86400 + 10 * 3600
}

#[test]
fn transfer_window_defers_and_a_cut_at_window_end_resumes_next_window() {
    let f = Fleet::new("dist-window");
    let b1 = f.bundle("c1", 1, 700_000);
    f.publish(&[&b1], &[]);
    let server = FaultyServer::start(&f.mirror);
    let node = f.node(
        "n",
        &server.url(),
        "transfer_window = \"Mon-Sun 09:00-10:00\"\nbwlimit = \"200K\"\n",
    );
    let t10 = tomorrow_10_utc();
    // Outside the window: exit 5 and not one request.
    let r = fetch(&node, &[("EDGEPATCH_TEST_NOW", &(t10 + 3600).to_string())]).expect(5);
    assert!(r.stderr.contains("outside transfer window"), "{}", r.stderr);
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    // Three seconds before the window closes: the download stops at the close, partial kept.
    let r = fetch(&node, &[("EDGEPATCH_TEST_NOW", &(t10 - 3).to_string())]).expect(5);
    assert!(
        r.stderr.contains("the transfer window closed"),
        "{}",
        r.stderr
    );
    let part = node.state_dir.join("incoming/1-c1.epb.partial");
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!((300_000..700_000).contains(&kept), "kept {kept}");
    // Next window: resumes where it stopped.
    fetch(&node, &[("EDGEPATCH_TEST_NOW", &(t10 - 1800).to_string())]).expect(0);
    assert_complete(&node, &f.published(1));
    let last = bundle_requests(&server).pop().unwrap();
    assert_eq!(last.range, Some(format!("bytes={kept}-")));
    assert_eq!(last.status, 206);
}

#[test]
fn bandwidth_limit_holds_within_ten_percent() {
    let f = Fleet::new("dist-bw");
    let b1 = f.bundle("c1", 1, 2_700_000);
    f.publish(&[&b1], &[]);
    let server = FaultyServer::start(&f.mirror);
    let node = f.node("n", &server.url(), "bwlimit = \"256K\"\n");
    let size = std::fs::metadata(f.published(1)).unwrap().len();
    let t = Instant::now();
    let r = fetch(&node, &[]).expect(0);
    let wall = t.elapsed().as_secs_f64();
    // The agent's own account of the transfer: "N bytes in T ms (R KiB/s)".
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains(" bytes in "))
        .unwrap_or_else(|| panic!("no transfer line: {}", r.stderr))
        .to_string();
    let ms: f64 = line
        .split(" bytes in ")
        .nth(1)
        .and_then(|x| x.split(" ms").next())
        .and_then(|x| x.trim().parse().ok())
        .unwrap_or_else(|| panic!("no time in {line:?}"));
    let secs = ms / 1000.0;
    let rate = size as f64 / secs;
    let want = 256.0 * KB as f64;
    eprintln!(
        "{size} bytes: transfer {secs:.2}s = {:.1} KiB/s (limit 256), whole command {wall:.2}s = {:.1} KiB/s",
        rate / 1024.0,
        size as f64 / wall / 1024.0
    );
    assert!(
        secs >= 10.0,
        "the test needs a download of at least 10 s: {secs}"
    );
    assert!(
        (rate - want).abs() / want <= 0.10,
        "rate {:.1} KiB/s not within 10% of 256",
        rate / 1024.0
    );
    assert!(
        size as f64 / wall >= want * 0.85,
        "whole command far slower than the limit"
    );
    assert_complete(&node, &f.published(1));
}

/// Bind-mount `src` read-only at `dst`; false when mounting is not possible here.
fn ro_bind(src: &Path, dst: &Path) -> bool {
    std::fs::create_dir_all(dst).unwrap();
    let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    if !ok(Command::new("mount").arg("--bind").arg(src).arg(dst)) {
        return false;
    }
    if !ok(Command::new("mount")
        .args(["-o", "remount,ro,bind"])
        .arg(dst))
    {
        let _ = Command::new("umount").arg(dst).status();
        return false;
    }
    true
}

#[test]
fn import_from_read_only_drop_ignores_partials_and_reports_bad_ones() {
    let f = Fleet::new("dist-import");
    let b1 = f.bundle("c1", 1, 100_000);
    let b2 = f.bundle("c2", 2, 100_000);
    let drop = f.dir.join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    std::fs::copy(&b1, drop.join("c1.epb")).unwrap();
    // c2 damaged in its payload: authentic head, bad bytes. Newest, so tried first.
    std::fs::copy(&b2, drop.join("c2.epb")).unwrap();
    flip_byte(&drop.join("c2.epb"), -5000);
    // An rsync temp file and a partial download: must not even be opened.
    std::fs::write(drop.join(".c3.epb.Ab12Cd"), b"garbage").unwrap();
    std::fs::write(drop.join("c3.epb.partial"), b"garbage").unwrap();
    let before: Vec<(String, Vec<u8>)> = {
        let mut v: Vec<_> = std::fs::read_dir(&drop)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let ro = f.dir.join("usb");
    let (dir, mounted) = if ro_bind(&drop, &ro) {
        (ro.clone(), true)
    } else {
        eprintln!(
            "SKIP read-only part: cannot bind-mount read-only here; importing from a plain dir"
        );
        (drop.clone(), false)
    };
    if mounted {
        assert!(
            std::fs::write(ro.join("probe"), b"x").is_err(),
            "mount is read-only"
        );
    }
    let node = f.node("n", "http://127.0.0.1:9", "");
    let r = node.agent(&["import", dir.to_str().unwrap()]);
    if mounted {
        let _ = Command::new("umount").arg(&ro).status();
    }
    assert_eq!(r.code, 2, "bad bundle reported\n{}", r.stderr);
    assert!(r.stderr.contains("c2.epb"), "{}", r.stderr);
    // The bad bundle stays on the stick, only its reason is recorded (nothing copied).
    assert!(r.stderr.contains("file left in place"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("c3.epb"),
        "partial/temp files are ignored: {}",
        r.stderr
    );
    // The good, older one was imported instead; the bad one only has its reason recorded (a
    // stick of bad bundles must not fill state_dir with copies).
    // incoming/ keeps the medium's file name.
    assert_complete(&node, &drop.join("c1.epb"));
    let q: Vec<String> = std::fs::read_dir(node.state_dir.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!q.iter().any(|n| n.ends_with("-c2.epb")), "{q:?}");
    assert!(q.iter().any(|n| n.ends_with("-c2.epb.reason")), "{q:?}");
    // The medium is untouched.
    let mut after: Vec<(String, Vec<u8>)> = std::fs::read_dir(&drop)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    after.sort();
    assert!(before == after, "the medium must never be changed");
    node.agent(&["apply"]).expect(0);
    assert_eq!(deb_version(&node.root, "ep-big").as_deref(), Some("1.0 ii"));
}

#[test]
fn run_with_wan_down_imports_and_applies() {
    let f = Fleet::new("dist-run");
    let b1 = f.bundle("c1", 1, 100_000);
    let drop = f.dir.join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    std::fs::copy(&b1, drop.join("c1.epb")).unwrap();
    // Port 9 (discard) on loopback: nothing listens, the "WAN" is down.
    let node = f.node(
        "n",
        "http://127.0.0.1:9",
        &format!(
            "import_paths = [\"{}\", \"/nonexistent/usb\"]\nsplay = \"1h\"\n",
            drop.display()
        ),
    );
    let t = Instant::now();
    let r = node.agent(&["run", "--no-splay"]).expect(0);
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(r.stdout.contains("fetch: deferred"), "{}", r.stdout);
    assert!(r.stdout.contains("import: "), "{}", r.stdout);
    assert!(
        r.stdout.contains("apply: cycle c1 sequence 1 applied"),
        "{}",
        r.stdout
    );
    assert_eq!(deb_version(&node.root, "ep-big").as_deref(), Some("1.0 ii"));
    // Nothing new: apply says already applied; exit 0.
    node.agent(&["run", "--no-splay"]).expect(0);
}

#[test]
fn run_reports_the_most_important_outcome() {
    let f = Fleet::new("dist-run-worst");
    let b1 = f.bundle("c1", 1, 100_000);
    f.publish(&[&b1], &[]);
    let server = FaultyServer::start(&f.mirror);
    server.set(|x| {
        x.flip_at = Some(50_000);
        x.flip_count = 1;
    });
    let node = f.node("n", &server.url(), "");
    // Corrupt download, and apply has nothing: integrity (2) beats deferred (5).
    let r = node.agent(&["run", "--no-splay"]).expect(2);
    assert!(r.stderr.contains("corrupt"), "{}", r.stderr);
    assert!(
        last_result(&node).contains("command fetch\nexit 2"),
        "{}",
        last_result(&node)
    );
    // Next pass: fetched and applied.
    let r = node.agent(&["run", "--no-splay"]).expect(0);
    assert!(r.stdout.contains("applied"), "{}", r.stdout);
}

/// A real nginx (Debian nginx-light) serving the same tree: a download killed mid-way (kill -9,
/// as a power cut) resumes with Range on the next run; a file changed meanwhile starts over.
#[test]
fn nginx_serves_the_mirror_and_resumes_a_killed_download() {
    if !have("nginx") {
        eprintln!("SKIP nginx test: nginx is not installed (apt-get install nginx-light)");
        return;
    }
    let f = Fleet::new("dist-nginx");
    let b1 = f.bundle("c1", 1, 600_000);
    f.publish(&[&b1], &[]);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ng = f.dir.join("nginx");
    std::fs::create_dir_all(ng.join("tmp")).unwrap();
    let conf = ng.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {ng}/nginx.pid;
error_log {ng}/error.log;
events {{ worker_connections 64; }}
http {{
    log_format ranges '$request_uri $status $body_bytes_sent range="$http_range" if_range="$http_if_range"';
    access_log {ng}/access.log ranges;
    client_body_temp_path {ng}/tmp;
    proxy_temp_path {ng}/tmp;
    fastcgi_temp_path {ng}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {mirror};
    }}
}}
"#,
            ng = ng.display(),
            mirror = f.mirror.display()
        ),
    )
    .unwrap();
    let mut nginx = spawn_group({
        let mut c = Command::new("nginx");
        c.arg("-c").arg(&conf).arg("-p").arg(&ng);
        c
    });
    let up = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(
        up,
        "nginx did not start: {}",
        std::fs::read_to_string(ng.join("error.log")).unwrap_or_default()
    );
    let url = format!("http://127.0.0.1:{port}");
    let access = || std::fs::read_to_string(ng.join("access.log")).unwrap_or_default();

    let result = std::panic::catch_unwind(|| {
        for (name, change) in [("resume", false), ("changed", true)] {
            let node = f.node(name, &url, "bwlimit = \"200K\"\n");
            let part = node.state_dir.join("incoming/1-c1.epb.partial");
            let mut agent = spawn_group(node.command(&["fetch"]));
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < 150_000 {
                assert!(Instant::now() < deadline, "no progress");
                std::thread::sleep(Duration::from_millis(20));
            }
            kill_group(&mut agent);
            let kept = std::fs::metadata(&part).unwrap().len();
            if change {
                std::thread::sleep(Duration::from_millis(1100));
                let p = f.published(1);
                std::fs::write(&p, std::fs::read(&p).unwrap()).unwrap();
            }
            fetch(&node, &[]).expect(0);
            assert_complete(&node, &f.published(1));
            let line = access().lines().last().unwrap_or("").to_string();
            if change {
                assert!(
                    line.contains(" 200 ") && line.contains(&format!("range=\"bytes={kept}-\"")),
                    "{line}"
                );
            } else {
                assert!(line.contains(" 206 "), "resumed with Range: {line}");
                assert!(line.contains(&format!("range=\"bytes={kept}-\"")), "{line}");
                assert!(!line.contains("if_range=\"\""), "If-Range sent: {line}");
            }
        }
    });
    kill_group(&mut nginx);
    if let Err(e) = result {
        eprintln!("nginx access log:\n{}", access());
        std::panic::resume_unwind(e);
    }
}

/// A signed rollback order published with the index reaches the node through `fetch`: the node
/// that has the cycle rolls back to the previous one, and does it once.
#[test]
fn rollback_order_travels_with_the_index() {
    let f = Fleet::new("dist-order");
    let (b1, b2) = (f.bundle("c1", 1, 50_000), f.bundle("c2", 2, 50_000));
    f.publish(&[&b1], &[]);
    let server = FaultyServer::start(&f.mirror);
    let node = f.node("n", &server.url(), "snapshot = \"packages\"\n");
    fetch(&node, &[]).expect(0);
    node.agent(&["apply"]).expect(0);
    f.publish(&[&b2], &[]);
    fetch(&node, &[]).expect(0);
    node.agent(&["apply"]).expect(0);
    assert_eq!(deb_version(&node.root, "ep-big").as_deref(), Some("2.0 ii"));

    let order = f.dir.join("rollback-c2.order");
    let k = f.key.to_str().unwrap();
    let o = order.to_str().unwrap();
    builder(&[
        "order",
        "--key",
        k,
        "--kind",
        "rollback",
        "--variant",
        VARIANT,
        "--cycle",
        "c2",
        "--out",
        o,
    ])
    .expect(0);
    f.publish(&[], &["--variant", VARIANT, "--order", o]);
    fetch(&node, &[]).expect(0);
    assert_eq!(deb_version(&node.root, "ep-big").as_deref(), Some("1.0 ii"));
    let st = node.agent(&["status", "--json"]).expect(0).stdout;
    assert!(st.contains("\"installed_cycle\":\"c1\""), "{st}");
    // c2 is refused from now on, and the order is not carried out twice.
    node.agent(&["apply"]).expect(4);
    fetch(&node, &[]).expect(0);
    assert_eq!(deb_version(&node.root, "ep-big").as_deref(), Some("1.0 ii"));
}

/// Hardening item 6: a mirror that drips one byte at a time never trips the read timeout, so
/// the pass ends on the minimum-progress rule, and the download never holds the install lock: a
/// bundle from a USB stick applies meanwhile.
#[test]
fn slow_mirror_neither_holds_the_install_lock_nor_the_pass() {
    let f = Fleet::new("dist-drip");
    let b1 = f.bundle("c1", 1, 50_000);
    f.publish(&[&b1], &[]);
    let server = FaultyServer::start(&f.mirror);
    server.set(|x| x.drip = Some(Duration::from_millis(200)));
    let node = f.node("n", &server.url(), "");
    let mut cmd = node.command(&["fetch"]);
    cmd.env("EDGEPATCH_PROGRESS_WINDOW", "3");
    let t = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the download is under way, then apply the same cycle from "USB".
    let partial_seen = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        incoming(&node).iter().any(|n| n.ends_with(".partial"))
    });
    assert!(
        partial_seen,
        "download never started: {:?}",
        incoming(&node)
    );
    node.agent(&["apply", b1.to_str().unwrap()]).expect(0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("too slow"), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}

/// After a rollback, `fetch` (and so `run`) does not download the refused cycle again.
#[test]
fn rolled_back_cycle_is_not_fetched_again() {
    let f = Fleet::new("dist-refused");
    let (b1, b2) = (f.bundle("c1", 1, 50_000), f.bundle("c2", 2, 50_000));
    f.publish(&[&b1], &[]);
    let server = FaultyServer::start(&f.mirror);
    let node = f.node("n", &server.url(), "snapshot = \"packages\"\n");
    fetch(&node, &[]).expect(0);
    node.agent(&["apply"]).expect(0);
    f.publish(&[&b2], &[]);
    fetch(&node, &[]).expect(0);
    node.agent(&["apply"]).expect(0);
    node.agent(&["rollback"]).expect(0);
    assert_eq!(deb_version(&node.root, "ep-big").as_deref(), Some("1.0 ii"));
    for name in incoming(&node) {
        std::fs::remove_file(node.state_dir.join("incoming").join(name)).unwrap();
    }
    let before = bundle_requests(&server).len();
    let r = fetch(&node, &[]).expect(0);
    assert!(r.stdout.contains("nothing to fetch"), "{}", r.stdout);
    assert_eq!(
        bundle_requests(&server).len(),
        before,
        "c2 downloaded again"
    );
    assert!(incoming(&node).is_empty(), "{:?}", incoming(&node));
}

/// File names on a stick are not trusted with the console: escape sequences in a bad bundle's
/// name show as `\x1b`, in the import's output and in `status`, and the quarantine record's
/// name is made of safe characters.
#[test]
fn escape_sequences_in_stick_file_names_never_reach_the_console() {
    let f = Fleet::new("dist-escape");
    let b = f.bundle("c2", 2, 10_000);
    let drop = f.dir.join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    let evil = drop.join("x\u{1b}[2J\u{1b}]0;pwn\u{7}.epb");
    std::fs::copy(&b, &evil).unwrap();
    flip_byte(&evil, -500);
    let node = f.node("n", "http://127.0.0.1:9", "");
    let r = node.agent(&["import", drop.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let all = r.stdout.clone() + &r.stderr;
    assert!(!all.contains('\u{1b}') && !all.contains('\u{7}'), "{all:?}");
    assert!(all.contains("x\\x1b[2J"), "{all}");
    for e in std::fs::read_dir(node.state_dir.join("quarantine")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.chars().any(|c| c.is_control()), "{name:?}");
    }
    let st = node.agent(&["status"]).stdout;
    assert!(!st.contains('\u{1b}') && !st.contains('\u{7}'), "{st:?}");
}

/// A stick that holds only bundles not for this node (another variant, one already installed)
/// imports nothing and says so with exit 4 (`not-applicable`), not 0: a technician who brought
/// the wrong stick sees it in `status`. With no bundle at all it stays 0.
#[test]
fn a_stick_with_nothing_for_this_node_exits_4_naming_what_was_skipped() {
    let f = Fleet::new("dist-wrong-stick");
    let stick = f.dir.join("stick");
    std::fs::create_dir_all(&stick).unwrap();
    let node = f.node("n", "http://127.0.0.1:9", "");
    node.agent(&["import", stick.to_str().unwrap()]).expect(0);
    let other = f.bundle_for("debian-12-arm64", "c1", 1, 10_000);
    std::fs::copy(&other, stick.join("c1-arm64.epb")).unwrap();
    let r = node.agent(&["import", stick.to_str().unwrap()]);
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("c1-arm64.epb") && r.stderr.contains("nothing on it for this node"),
        "{}",
        r.stderr
    );
    assert!(incoming(&node).is_empty(), "{:?}", incoming(&node));
    let st = node.agent(&["status"]).stdout;
    assert!(st.contains("import not-applicable (exit 4)"), "{st}");
    // The right bundle beside it is imported as before (exit 0).
    std::fs::copy(f.bundle("c2", 2, 10_000), stick.join("c2.epb")).unwrap();
    node.agent(&["import", stick.to_str().unwrap()]).expect(0);
    let got: Vec<String> = incoming(&node)
        .into_iter()
        .filter(|n| n.ends_with(".epb"))
        .collect();
    assert_eq!(got, ["c2.epb"]);
}
