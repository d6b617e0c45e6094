//! Load generator for `scripts/bench-center.sh` (not a test): simulated agents POST reports to a
//! running `edgepatch-builder serve`, then the dashboard is fetched and its summary query timed.
//!
//! Every report travels as the agents send it: one envelope per node, signed by that node's key
//! (issue 17), so the timed run checks 10,000 signatures.
//!
//! usage: bench_center URL [--nodes N] [--history-cycles H] [--clients C]
//!        bench_center --inventory FILE [--nodes N]   (write the nodes' ids and keys, for
//!                                                    'fleet preauthorize')
//!   URL               e.g. http://127.0.0.1:8080 (loopback only)
//!   --nodes N         fleet size; the timed run sends one report per node (default 10000)
//!   --history-cycles  older cycles loaded first so the database holds history (default 12)
//!   --clients C       concurrent agents' connections (default 4)

use ed25519_compact::{KeyPair, Seed};
use edgepatch::bundle::report::Report;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The key of simulated node `n`.
fn node_key(n: usize) -> KeyPair {
    let mut seed = [42u8; 32];
    seed[..8].copy_from_slice(&(n as u64).to_le_bytes());
    KeyPair::from_seed(Seed::new(seed))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    addr: SocketAddr,
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).expect("connect to the center");
        s.set_nodelay(true).ok();
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        Conn {
            addr,
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    /// Returns (status, headers, body).
    fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
        sig: &str,
    ) -> (u16, String, Vec<u8>) {
        let sig = if sig.is_empty() {
            String::new()
        } else {
            format!(
                "{}: {}\r\n",
                edgepatch::bundle::report::SIGNATURE_HEADER,
                sig.trim()
            )
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             {sig}Content-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        self.w.write_all(head.as_bytes()).unwrap();
        self.w.write_all(body).unwrap();
        let mut headers = String::new();
        let mut len = 0usize;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            assert!(
                self.r.read_line(&mut line).unwrap() > 0,
                "center closed the connection"
            );
            if line == "\r\n" {
                break;
            }
            let l = line.to_ascii_lowercase();
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if l.starts_with("transfer-encoding:") && l.contains("chunked") {
                chunked = true;
            }
            headers += &line;
        }
        let status = headers
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut out = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                self.r.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                self.r.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..n]);
            }
        } else {
            out.resize(len, 0);
            self.r.read_exact(&mut out).unwrap();
        }
        (status, headers, out)
    }
}

fn report(node: usize, pk: &str, cycle: &str, k: usize, t: u64) -> String {
    // A plausible mix: most done, some deferred, a few failures.
    let code = match (node * 7 + k) % 100 {
        0..=84 => 0,
        85..=92 => 5,
        93..=95 => 6,
        96..=97 => 7,
        98 => 2,
        _ => 4,
    };
    let r = Report {
        id: format!("node-{node:05}-{cycle}-{k}"),
        node_id: format!("node-{node:05}"),
        variant: ["debian-12-amd64", "rhel-9-x86_64", "ubuntu-24.04-arm64"][node % 3].into(),
        labels: vec![
            ("role".into(), ["till", "kiosk", "gateway"][node % 3].into()),
            ("region".into(), format!("r{}", node % 17)),
        ],
        command: "apply".into(),
        cycle: Some(cycle.into()),
        sequence: Some(k as u64 + 1),
        exit_code: code,
        result: if code == 0 { "ok" } else { "failed" }.into(),
        reason: if code == 0 {
            "installed 14 packages".into()
        } else {
            "apt-get exited 100: E: Sub-process /usr/bin/dpkg returned an error code (1)".into()
        },
        timings_ms: vec![
            ("verify".into(), 900),
            ("snapshot".into(), 1200),
            ("install".into(), 41_000),
            ("health".into(), 3000),
        ],
        snapshot_id: Some(format!("btrfs-{t}")),
        installed_cycle: Some(cycle.into()),
        installed_sequence: Some(k as u64 + 1),
        agent_version: "0.1.0".into(),
        time: t,
        trusted_time: t,
    };
    r.to_json_seq(pk, k as u64 + 1, 0)
}

/// POST one signed report per node for `cycle` with `clients` connections; returns elapsed time.
fn send_cycle(
    addr: SocketAddr,
    keys: &[KeyPair],
    cycle: &str,
    k: usize,
    clients: usize,
) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let base = now - (1000 - k as u64) * 3600;
    // Build and sign the bodies first: time only the delivery, checking and storage.
    let bodies: Vec<(String, String)> = keys
        .iter()
        .enumerate()
        .map(|(n, kp)| {
            let r = report(
                n,
                &hex(kp.pk.as_ref()),
                cycle,
                k,
                base + (n as u64 * 13) % 3600,
            );
            edgepatch::bundle::report::envelope(kp, &[r], None)
        })
        .collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for part in bodies.chunks(bodies.len().div_ceil(clients.max(1))) {
            s.spawn(move || {
                let mut c = Conn::new(addr);
                for (b, sig) in part {
                    let (st, _, body) = c.request("POST", "/api/v1/reports", b.as_bytes(), sig);
                    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
                }
            });
        }
    });
    start.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut url = None;
    let (mut nodes, mut history, mut clients) = (10_000usize, 12usize, 4usize);
    let mut inventory: Option<String> = None;
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match a.as_str() {
            "--nodes" => nodes = num("--nodes"),
            "--history-cycles" => history = num("--history-cycles"),
            "--clients" => clients = num("--clients"),
            "--inventory" => inventory = args.next(),
            u if url.is_none() => url = Some(u.to_string()),
            other => panic!("unexpected argument {other}"),
        }
    }
    if let Some(path) = inventory {
        let text: String = (0..nodes)
            .map(|n| format!("node-{n:05} {}\n", hex(node_key(n).pk.as_ref())))
            .collect();
        std::fs::write(&path, text).expect("write inventory");
        return;
    }
    let keys: Vec<KeyPair> = (0..nodes).map(node_key).collect();
    let url = url.expect("usage: bench_center http://127.0.0.1:PORT [--nodes N] ...");
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("URL must be http://IP:PORT");
    assert!(
        addr.ip().is_loopback(),
        "benchmark only against a loopback center"
    );

    for k in 0..history {
        let cycle = format!("2025-w{:02}", k + 1);
        let d = send_cycle(addr, &keys, &cycle, k, clients);
        eprintln!(
            "history {cycle}: {nodes} reports in {:.2} s ({:.0} reports/s)",
            d.as_secs_f64(),
            nodes as f64 / d.as_secs_f64()
        );
    }
    let cycle = format!("2025-w{:02}", history + 1);
    let d = send_cycle(addr, &keys, &cycle, history, clients);
    let rate = nodes as f64 / d.as_secs_f64();
    println!(
        "ingest: {nodes} signed reports ({nodes} POSTs, one envelope per node, {clients} clients) \
         in {:.3} s = {rate:.0} reports/s (goal >= 5000: {})",
        d.as_secs_f64(),
        if rate >= 5000.0 { "met" } else { "MISSED" }
    );

    let mut c = Conn::new(addr);
    let (mut summary, mut page, mut api) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..15 {
        let t = Instant::now();
        let (st, headers, body) = c.request("GET", "/", b"", "");
        page.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
        let dur = headers
            .to_ascii_lowercase()
            .split("summary;dur=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next().and_then(|v| v.parse().ok()))
            .expect("Server-Timing header");
        summary.push(dur);
        let t = Instant::now();
        let (st, _, _) = c.request("GET", &format!("/api/v1/cycles/{cycle}"), b"", "");
        api.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(st, 200);
    }
    let s = median(summary);
    println!(
        "dashboard at {nodes} nodes, {} cycles: summary query {s:.1} ms (goal <= 50: {}), \
         whole page {:.1} ms, GET /api/v1/cycles/{cycle} {:.1} ms (medians of 15)",
        history + 1,
        if s <= 50.0 { "met" } else { "MISSED" },
        median(page),
        median(api)
    );
}
