//! The center: where every agent's reports end up (issue 8).
//!
//! - `serve`: HTTP API for agents (`POST /api/v1/reports`), JSON views, Prometheus metrics, the
//!   dashboard at `/`, and optionally the mirror tree under `/mirror/`;
//! - `ingest`: USB exports from offline sites (signature checked, node key pinned);
//! - `fleet`: the dashboard's summary for a terminal.
//!
//! Everything is stored in one SQLite file (WAL), see `db`.

pub mod dashboard;
pub mod db;
mod halt;
pub mod http;
pub mod ingest;
pub mod model;

use std::path::PathBuf;

/// Default for `--silent-hours`.
pub const SILENT_HOURS: u64 = 48;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 0.0.0.0:8080 (port 0 picks a free port, printed on stderr)
    #[arg(long)]
    pub listen: String,
    /// SQLite database (created when missing)
    #[arg(long)]
    pub db: PathBuf,
    /// Also serve this directory (the bundle mirror) under /mirror/, with Range support
    #[arg(long)]
    pub mirror: Option<PathBuf>,
    /// A node not seen for this many hours counts as silent
    #[arg(long, default_value_t = SILENT_HOURS)]
    pub silent_hours: u64,
}

#[derive(clap::Args)]
pub struct IngestArgs {
    /// SQLite database (created when missing)
    #[arg(long)]
    pub db: PathBuf,
    /// An export directory written by 'edgepatch export-status', or a directory of them
    pub dir: PathBuf,
}

#[derive(clap::Args)]
pub struct FleetArgs {
    /// SQLite database
    #[arg(long)]
    pub db: PathBuf,
    /// A node not seen for this many hours counts as silent
    #[arg(long, default_value_t = SILENT_HOURS)]
    pub silent_hours: u64,
    /// Forget the key pinned for NODE (after a reinstall); its next report pins a new one
    #[arg(long, value_name = "NODE")]
    pub unpin: Option<String>,
    /// Write a signed halt order for any cycle whose failed + rolled-back share of finished
    /// nodes reaches PERCENT (the policy's haltFailurePercent); needs --halt-key, --orders-dir
    #[arg(long, value_name = "PERCENT", requires_all = ["halt_key", "orders_dir"])]
    pub halt_over: Option<u64>,
    /// Decide only once this many nodes finished a cycle
    #[arg(long, default_value_t = 20)]
    pub halt_min_finished: u64,
    /// Release key that signs halt orders
    #[arg(long)]
    pub halt_key: Option<PathBuf>,
    /// Where halt orders are written (publish them with the mirror)
    #[arg(long)]
    pub orders_dir: Option<PathBuf>,
}

fn silent_secs(hours: u64) -> i64 {
    i64::try_from(hours.saturating_mul(3600)).unwrap_or(i64::MAX / 2)
}

pub fn serve(a: &ServeArgs) -> anyhow::Result<()> {
    http::serve(
        &a.listen,
        &a.db,
        a.mirror.clone(),
        silent_secs(a.silent_hours),
    )
}

pub fn ingest(a: &IngestArgs) -> anyhow::Result<()> {
    ingest::run(&a.db, &a.dir)
}

pub fn fleet(a: &FleetArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.db.is_file(),
        "{}: no such database (serve or ingest create it)",
        a.db.display()
    );
    let conn = db::open(&a.db)?;
    if let Some(node) = &a.unpin {
        anyhow::ensure!(
            db::unpin(&conn, node)?,
            "no node {node} in {}",
            a.db.display()
        );
        println!("node {node}: key unpinned; its next report or export pins a new one");
        return Ok(());
    }
    let view = dashboard::View::default();
    let page = dashboard::load(&conn, &view, silent_secs(a.silent_hours))?;
    print!("{}", summary_text(&page));
    if let (Some(percent), Some(key), Some(dir)) = (a.halt_over, &a.halt_key, &a.orders_dir) {
        anyhow::ensure!((1..=100).contains(&percent), "--halt-over must be 1 to 100");
        let text = std::fs::read_to_string(key)
            .map_err(|e| anyhow::anyhow!("halt key {}: {e}", key.display()))?;
        let sk = edgepatch::bundle::keys::parse_secret(&text, &key.display().to_string())
            .map_err(anyhow::Error::msg)?;
        let rule = halt::HaltRule {
            percent,
            min_finished: a.halt_min_finished,
            key: &sk,
            orders_dir: dir,
        };
        halt::apply_rule(&conn, &rule)?;
    }
    Ok(())
}

/// The dashboard's summary table as plain text (80-column friendly per row).
pub fn summary_text(p: &dashboard::Page) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "fleet: {} nodes, {} done, {} silent (not seen for {} h)",
        p.fleet.nodes,
        p.fleet.get("done"),
        p.fleet.get("silent"),
        p.silent_after / 3600
    );
    let cols = [
        ("done", "done"),
        ("ready", "ready"),
        ("deferred", "defer"),
        ("pending", "pend"),
        ("failed", "fail"),
        ("error", "err"),
        ("rolled-back", "rollb"),
        ("quarantined", "quar"),
        ("not-applicable", "n/a"),
        ("silent", "silent"),
    ];
    let _ = write!(s, "{:<16} {:>6}", "cycle", "nodes");
    for (_, short) in cols {
        let _ = write!(s, " {short:>6}");
    }
    let _ = writeln!(s, " {:>6}", "done%");
    let mut rows: Vec<(String, &db::Counts)> =
        p.cycles.iter().map(|(c, n)| (c.cycle.clone(), n)).collect();
    rows.push(("(latest state)".into(), &p.fleet));
    for (name, n) in rows {
        let _ = write!(s, "{name:<16} {:>6}", n.nodes);
        for (st, _) in cols {
            let _ = write!(s, " {:>6}", n.get(st));
        }
        let pct = if n.nodes == 0 {
            0.0
        } else {
            n.get("done") as f64 * 100.0 / n.nodes as f64
        };
        let _ = writeln!(s, " {pct:>5.1}%");
    }
    if p.cycles.is_empty() {
        s += "no cycle reported yet\n";
    }
    let _ = writeln!(
        s,
        "(as of {}; summary query {:.1} ms)",
        edgepatch::support::clock::iso_utc(u64::try_from(p.now).unwrap_or(0)),
        p.summary_ms
    );
    s
}
