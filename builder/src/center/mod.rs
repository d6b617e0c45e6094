//! The center: where every agent's reports end up (issue 8).
//!
//! - `serve`: HTTP API for agents (`POST /api/v1/reports`), JSON views, Prometheus metrics, the
//!   dashboard at `/`, and optionally the mirror tree under `/mirror/`;
//! - `ingest`: USB exports from offline sites (signature checked; new keys wait for acceptance);
//! - `fleet`: the dashboard's summary for a terminal, node lists and history, enrolment.
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
    /// Seconds a client has to send a whole request head
    #[arg(long, default_value_t = 10)]
    pub header_timeout: u64,
    /// Open connections in total (more wait in the kernel backlog)
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// Open connections per client address (more wait up to 2 s for one to end, then are closed)
    #[arg(long, default_value_t = 32)]
    pub max_per_client: usize,
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
    /// Write a signed halt order for any cycle whose failed + rolled-back share of finished
    /// nodes reaches PERCENT (the policy's haltFailurePercent); needs --halt-key, --orders-dir.
    /// A cycle with a resume order (resume-VARIANT-CYCLE.order) in --orders-dir is not halted.
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
    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Option<FleetCmd>,
}

#[derive(clap::Subcommand)]
pub enum FleetCmd {
    /// The nodes behind a count: one cycle, optionally one state, variant or label
    List {
        #[arg(long)]
        cycle: Option<String>,
        /// failed, pending, silent, rolled-back, superseded, done, unaccepted, ...
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        variant: Option<String>,
        /// key=value
        #[arg(long)]
        label: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One node's state, keys (fingerprints) and report history
    Node {
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// Accept the key waiting for each NODE (check its fingerprint with 'fleet list --state
    /// unaccepted' against 'edgepatch status' on the node first)
    Accept {
        #[arg(required_unless_present = "all_pending")]
        nodes: Vec<String>,
        /// Every new node with exactly one waiting key (a key change of an accepted node
        /// always needs 'accept NODE')
        #[arg(long, conflicts_with = "nodes")]
        all_pending: bool,
        /// With --all-pending: accept at most this many at once (default 20); more waiting is
        /// refused whole, so a burst of made-up nodes is never enrolled (and able to sign a
        /// --halt-over halt) by one routine command
        #[arg(long, requires = "all_pending", value_name = "N")]
        max: Option<usize>,
    },
    /// Accept ids and keys from an inventory: one 'NODE_ID KEY' per line (KEY: 64 hex digits
    /// or the line of the node's node.pub); '#' starts a comment
    Preauthorize { file: PathBuf },
}

/// Most nodes `accept --all-pending` takes at once without `--max N`.
pub const ALL_PENDING_MAX: usize = 20;

fn silent_secs(hours: u64) -> i64 {
    i64::try_from(hours.saturating_mul(3600)).unwrap_or(i64::MAX / 2)
}

pub fn serve(a: &ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.header_timeout > 0 && a.max_connections > 0 && a.max_per_client > 0,
        "--header-timeout, --max-connections and --max-per-client must be at least 1"
    );
    http::serve(
        &a.listen,
        &a.db,
        a.mirror.clone(),
        silent_secs(a.silent_hours),
        http::Limits {
            header_timeout: std::time::Duration::from_secs(a.header_timeout),
            max_connections: a.max_connections,
            max_per_client: a.max_per_client,
        },
    )
}

pub fn ingest(a: &IngestArgs) -> anyhow::Result<()> {
    ingest::run(&a.db, &a.dir)
}

/// One inventory line: `NODE_ID KEY`, KEY as 64 hex digits (optionally after the public key tag).
fn parse_inventory(text: &str, origin: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(node), Some(key)) = (words.next(), words.last()) else {
            anyhow::bail!("{origin}:{}: want 'NODE_ID KEY', got {line:?}", i + 1);
        };
        anyhow::ensure!(
            key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
            "{origin}:{}: key of {node} must be 64 hex digits (the node's node.pub)",
            i + 1
        );
        anyhow::ensure!(
            node.len() <= 128 && node.bytes().all(|b| b.is_ascii_graphic()),
            "{origin}:{}: node id {node:?} is not printable ASCII",
            i + 1
        );
        out.push((node.to_string(), key.to_ascii_lowercase()));
    }
    Ok(out)
}

pub fn fleet(a: &FleetArgs) -> anyhow::Result<()> {
    // Preauthorizing may come before the first node reports: it creates the database.
    let creates = matches!(a.cmd, Some(FleetCmd::Preauthorize { .. }));
    anyhow::ensure!(
        creates || a.db.is_file(),
        "{}: no such database (serve, ingest or fleet preauthorize create it)",
        a.db.display()
    );
    let mut conn = db::open(&a.db)?;
    let cutoff = db::now() - silent_secs(a.silent_hours);
    match &a.cmd {
        Some(FleetCmd::List {
            cycle,
            state,
            variant,
            label,
            json,
        }) => return list(&conn, cycle, state, variant, label, *json, cutoff),
        Some(FleetCmd::Node { node, json }) => return show_node(&conn, node, *json, cutoff),
        Some(FleetCmd::Accept {
            nodes,
            all_pending,
            max,
        }) => {
            anyhow::ensure!(
                max.is_none() || *all_pending,
                "--max N goes with --all-pending"
            );
            let targets: Vec<String> = if *all_pending {
                let mut t = Vec::new();
                for (n, keys, known) in db::waiting_nodes(&conn)? {
                    if known {
                        eprintln!(
                            "node {n}: a new key would replace its accepted one (reimaged, or an \
                             impostor); not accepted: check, then 'fleet accept {n}'"
                        );
                    } else if keys == 1 {
                        t.push(n);
                    } else {
                        eprintln!(
                            "node {n}: {keys} different keys wait; not accepted (preauthorize \
                             the right one)"
                        );
                    }
                }
                let limit = max.unwrap_or(ALL_PENDING_MAX);
                anyhow::ensure!(
                    t.len() <= limit,
                    "{} new nodes wait, more than {limit} at once: nothing accepted; check their \
                     fingerprints ('fleet list --state unaccepted') and accept them by name, or \
                     run 'accept --all-pending --max {}' if they are all yours",
                    t.len(),
                    t.len()
                );
                t
            } else {
                nodes.clone()
            };
            let mut failed = 0;
            for n in &targets {
                let fp = db::keys(&conn, Some(n), Some("unaccepted"))?
                    .first()
                    .map(|k| k.key_id.clone())
                    .unwrap_or_else(|| "-".into());
                match db::accept(&mut conn, n) {
                    Ok(k) => {
                        println!("node {n}: key {fp} accepted, {k} stored report(s) now counted")
                    }
                    Err(e) => {
                        eprintln!("edgepatch-builder fleet accept: {e}");
                        failed += 1;
                    }
                }
            }
            anyhow::ensure!(failed == 0, "{failed} node(s) not accepted (see above)");
            if targets.is_empty() {
                println!("no node waits for acceptance");
            }
            return Ok(());
        }
        Some(FleetCmd::Preauthorize { file }) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("inventory {}: {e}", file.display()))?;
            let entries = parse_inventory(&text, &file.display().to_string())?;
            let p = db::preauthorize(&mut conn, &entries)?;
            println!(
                "{} node key(s): {} preauthorized, {} waiting now accepted, {} already accepted",
                entries.len(),
                p.recorded,
                p.accepted,
                p.unchanged
            );
            return Ok(());
        }
        None => {}
    }
    let view = dashboard::View::default();
    let page = dashboard::load(&conn, &view, silent_secs(a.silent_hours))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary_json(&page))?);
    } else {
        print!("{}", summary_text(&page));
    }
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

fn list(
    conn: &rusqlite::Connection,
    cycle: &Option<String>,
    state: &Option<String>,
    variant: &Option<String>,
    label: &Option<String>,
    json: bool,
    cutoff: i64,
) -> anyhow::Result<()> {
    if state.as_deref() == Some("unaccepted") {
        let keys = db::keys(conn, None, Some("unaccepted"))?;
        if json {
            println!("{}", serde_json::to_string_pretty(&keys)?);
        } else {
            println!("{} key(s) wait for acceptance", keys.len());
            for k in &keys {
                println!(
                    "{:<32} key {} variant {} reports {} first seen {} UTC",
                    k.node_id,
                    k.key_id,
                    k.variant.as_deref().unwrap_or("-"),
                    k.reports,
                    dashboard::utc(k.first_seen)
                );
            }
        }
        return Ok(());
    }
    let filter = db::Filter::parse(variant.as_deref(), label.as_deref(), state.as_deref())
        .map_err(anyhow::Error::msg)?;
    if let Some(c) = cycle {
        anyhow::ensure!(
            db::cycle(conn, c)?.is_some(),
            "no report names cycle {c}; see 'fleet --db DB' for the cycles"
        );
    }
    let (nodes, total) = db::nodes(conn, cycle.as_deref(), &filter, cutoff, usize::MAX >> 1)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "total": total, "nodes": nodes }))?
        );
        return Ok(());
    }
    println!(
        "{total} node(s){}{}",
        cycle
            .as_ref()
            .map(|c| format!(" in {c}"))
            .unwrap_or_default(),
        state.as_ref().map(|s| format!(", {s}")).unwrap_or_default()
    );
    for n in &nodes {
        println!(
            "{:<32} {:<14} {:<18} installed {:<12} {}",
            n.node_id,
            n.state,
            n.variant,
            n.installed_cycle.as_deref().unwrap_or("-"),
            n.last_reason.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

fn show_node(conn: &rusqlite::Connection, id: &str, json: bool, cutoff: i64) -> anyhow::Result<()> {
    let node = db::node(conn, id, cutoff)?;
    let keys = db::keys(conn, Some(id), None)?;
    anyhow::ensure!(
        node.is_some() || !keys.is_empty(),
        "no node {id} in the database; see 'fleet list'"
    );
    let hist = db::history(conn, id, 1000)?;
    let pending = db::pending_history(conn, id, PENDING_SHOWN)?;
    if json {
        let v = serde_json::json!({
            "node": node.as_ref().map(|(n, _)| n),
            "keys": keys,
            "history": hist,
            "unaccepted_history": pending,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match &node {
        Some((n, _)) => println!(
            "node {id}: {} ({}), installed {}, last seen {} UTC",
            n.state,
            n.variant,
            n.installed_cycle.as_deref().unwrap_or("-"),
            dashboard::utc(n.last_seen)
        ),
        None => println!("node {id}: not counted yet (no accepted key)"),
    }
    for k in &keys {
        println!("  key {} {} ({} reports)", k.key_id, k.status, k.reports);
    }
    print_history(&hist);
    if !pending.is_empty() {
        println!(
            "  reports under keys NOT accepted for this id (newest {PENDING_SHOWN} at most; \
             not counted; a reimaged node or an impostor):"
        );
        print_history(&pending);
    }
    Ok(())
}

/// Most reports under unaccepted keys shown by `fleet node` and the node page.
pub const PENDING_SHOWN: usize = 50;

fn print_history(hist: &[db::HistoryRow]) {
    println!("  received (UTC)    node clock (UTC)  seq  cycle        command  exit state");
    for r in hist {
        println!(
            "  {}  {}  {:>4} {:<12} {:<8} {:>4} {}{} {}",
            dashboard::utc(r.received),
            dashboard::utc(r.node_time),
            r.report_seq,
            r.cycle.as_deref().unwrap_or("-"),
            r.command,
            r.exit_code,
            r.state.as_deref().unwrap_or("-"),
            if r.counted { "" } else { " (not counted)" },
            r.reason
        );
    }
}

fn pct(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 * 100.0 / of as f64
    }
}

/// The summary as JSON: per cycle, counts by state and self-healing.
pub fn summary_json(p: &dashboard::Page) -> serde_json::Value {
    let cycles: Vec<serde_json::Value> = p
        .cycles
        .iter()
        .map(|(c, n)| {
            serde_json::json!({
                "cycle": c.cycle,
                "nodes": n.nodes,
                "counts": n.by_state,
                "hit_failure": n.hit_failure,
                "self_healed": n.self_healed,
            })
        })
        .collect();
    serde_json::json!({
        "nodes": p.fleet.nodes,
        "unaccepted": p.unaccepted,
        "latest": p.fleet.by_state,
        "cycles": cycles,
    })
}

/// The dashboard's summary table as plain text (80-column friendly per row).
pub fn summary_text(p: &dashboard::Page) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "fleet: {} nodes, {} done, {} silent (not seen for {} h), {} unaccepted",
        p.fleet.nodes,
        p.fleet.get("done"),
        p.fleet.get("silent"),
        p.silent_after / 3600,
        p.unaccepted
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
        ("superseded", "super"),
        ("silent", "silent"),
    ];
    let _ = write!(s, "{:<16} {:>6}", "cycle", "nodes");
    for (_, short) in cols {
        let _ = write!(s, " {short:>6}");
    }
    let _ = writeln!(s, " {:>6} {:>6}", "done%", "healed");
    let mut rows: Vec<(String, &db::Counts)> =
        p.cycles.iter().map(|(c, n)| (c.cycle.clone(), n)).collect();
    rows.push(("(latest state)".into(), &p.fleet));
    for (name, n) in rows {
        let _ = write!(s, "{name:<16} {:>6}", n.nodes);
        for (st, _) in cols {
            let _ = write!(s, " {:>6}", n.get(st));
        }
        let done = pct(n.get("done"), n.nodes);
        let _ = writeln!(s, " {done:>5.1}% {:>6}", n.self_healed);
    }
    if p.cycles.is_empty() {
        s += "no cycle reported yet\n";
    }
    for (c, n) in &p.cycles {
        if n.hit_failure > 0 {
            let _ = writeln!(
                s,
                "{}: {} of {} nodes that hit a failure healed without an operator ({:.1}%)",
                c.cycle,
                n.self_healed,
                n.hit_failure,
                pct(n.self_healed, n.hit_failure)
            );
        }
    }
    if p.unaccepted > 0 {
        let _ = writeln!(
            s,
            "{} node(s) wait for acceptance: 'fleet --db DB list --state unaccepted', then \
             'fleet --db DB accept NODE'",
            p.unaccepted
        );
    }
    let _ = writeln!(
        s,
        "(as of {}; summary query {:.1} ms)",
        edgepatch::support::clock::iso_utc(u64::try_from(p.now).unwrap_or(0)),
        p.summary_ms
    );
    s
}
