//! Repack installed packages of a root with the agent's native dpkg-repack (`preserve`), for
//! scripts/bench-preserve.sh and by hand. Usage: repack ROOT OUTDIR [PACKAGE[:ARCH]...]
//! (no packages: every installed package). Prints one line per package and a total.

use std::path::Path;
use std::time::Instant;

fn main() {
    edgepatch::support::logger::init(0);
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: repack ROOT OUTDIR [PACKAGE[:ARCH]...]");
        std::process::exit(1);
    }
    let (root, out) = (Path::new(&args[0]), Path::new(&args[1]));
    std::fs::create_dir_all(out).expect("create OUTDIR");
    let mut names: Vec<(String, Option<String>)> = args[2..]
        .iter()
        .map(|a| match a.split_once(':') {
            Some((n, a)) => (n.to_string(), Some(a.to_string())),
            None => (a.clone(), None),
        })
        .collect();
    if names.is_empty() {
        names = edgepatch::node::preserve::installed_debs(root)
            .unwrap_or_else(|e| fail(&e.to_string()))
            .into_iter()
            .map(|(n, a, _)| (n, Some(a)))
            .collect();
    }
    let start = Instant::now();
    let (mut bytes, mut failed) = (0u64, 0);
    for (n, a) in &names {
        match edgepatch::node::preserve::repack_deb(root, n, a.as_deref(), out) {
            Ok(r) => {
                bytes += r.bytes;
                println!(
                    "{} {} {} {}",
                    r.package,
                    r.version,
                    r.bytes,
                    r.path.display()
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("repack {n}: {e}");
            }
        }
    }
    println!(
        "total: {} packages, {} failed, {bytes} bytes, {:.3} s",
        names.len(),
        failed,
        start.elapsed().as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("repack: {msg}");
    std::process::exit(1)
}
