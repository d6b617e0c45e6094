//! `faulty-mirror`: the test suite's fault-injecting HTTP server as a program, for
//! scripts/bench-fleet.sh. Serves a published mirror tree on 127.0.0.1 only.
//!
//! ```text
//! faulty-mirror --root DIR --port-file FILE --stop-file FILE --stats FILE [--cut-percent P]
//! ```
//! Writes the port to --port-file once listening; runs until --stop-file exists; then writes
//! `key value` stats (bytes served, requests by status, peak bytes per second, the per-second
//! series) to --stats and exits.

use edgepatch_e2e::faulty_http::FaultyServer;
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut root, mut port_file, mut stop_file, mut stats) = (None, None, None, None);
    let mut cut = 0u32;
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--root" => root = Some(PathBuf::from(val())),
            "--port-file" => port_file = Some(PathBuf::from(val())),
            "--stop-file" => stop_file = Some(PathBuf::from(val())),
            "--stats" => stats = Some(PathBuf::from(val())),
            "--cut-percent" => cut = val().parse().expect("--cut-percent N"),
            other => panic!("unknown argument {other}"),
        }
    }
    let (root, port_file, stop_file, stats) = (
        root.expect("--root"),
        port_file.expect("--port-file"),
        stop_file.expect("--stop-file"),
        stats.expect("--stats"),
    );
    let server = FaultyServer::start(&root);
    server.set(|f| f.random_cut_percent = cut);
    std::fs::write(&port_file, server.addr.port().to_string()).expect("port file");
    while !stop_file.exists() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let reqs = server.requests();
    let per = server.per_second();
    let count = |st: u16| reqs.iter().filter(|r| r.status == st).count();
    let bundle_reqs = reqs.iter().filter(|r| r.path.contains("/bundles/")).count();
    let text = format!(
        "bytes {}\nrequests {}\nbundle_requests {}\nstatus_200 {}\nstatus_206 {}\nstatus_other {}\npeak_bytes_per_second {}\nseconds {}\nper_second {}\n",
        server.bytes_served(),
        reqs.len(),
        bundle_reqs,
        count(200),
        count(206),
        reqs.len() - count(200) - count(206),
        per.iter().max().copied().unwrap_or(0),
        per.len(),
        per.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(",")
    );
    std::fs::write(&stats, text).expect("stats file");
}
