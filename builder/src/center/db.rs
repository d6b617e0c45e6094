//! The center's SQLite store. Every statement is a constant with bound parameters; nothing from
//! a request is ever spliced into SQL.
//!
//! Tables:
//! - `reports`: every report once (the id is unique, so a retried delivery is ignored);
//! - `nodes`: one row per node with its latest state (by the node's own event time, so reports
//!   that arrive late or out of order never overwrite newer news) and its pinned public key;
//! - `node_labels`: for the label filter;
//! - `node_cycles`: one row per node and cycle with the latest state in that cycle and when it
//!   was first done: the dashboard's counts and plot come from here, never from `reports`;
//! - `cycles`: the cycles seen, newest first on the dashboard.

use super::model::WireReport;
use rusqlite::{named_params, params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS reports (
    id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    cycle TEXT,
    sequence INTEGER,
    command TEXT NOT NULL,
    exit_code INTEGER NOT NULL,
    result TEXT NOT NULL,
    state TEXT,
    reason TEXT NOT NULL,
    event_time INTEGER NOT NULL,
    time INTEGER NOT NULL,
    trusted_time INTEGER NOT NULL,
    received INTEGER NOT NULL,
    source TEXT NOT NULL,
    snapshot_id TEXT,
    installed_cycle TEXT,
    installed_sequence INTEGER,
    agent_version TEXT NOT NULL,
    dropped_before INTEGER NOT NULL,
    timings TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_node_time ON reports(node_id, event_time);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    variant TEXT NOT NULL,
    labels TEXT NOT NULL,
    pubkey TEXT NOT NULL,
    last_event INTEGER NOT NULL,
    last_state TEXT NOT NULL,
    last_exit INTEGER,
    last_result TEXT,
    last_reason TEXT,
    last_cycle TEXT,
    installed_cycle TEXT,
    installed_sequence INTEGER,
    agent_version TEXT,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    status TEXT
);
CREATE INDEX IF NOT EXISTS nodes_variant ON nodes(variant);
CREATE INDEX IF NOT EXISTS nodes_last_seen ON nodes(last_seen);
CREATE INDEX IF NOT EXISTS nodes_last_state ON nodes(last_state);
CREATE TABLE IF NOT EXISTS node_labels (
    node_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (node_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS node_labels_kv ON node_labels(key, value, node_id);
CREATE TABLE IF NOT EXISTS node_cycles (
    node_id TEXT NOT NULL,
    cycle TEXT NOT NULL,
    state TEXT NOT NULL,
    exit_code INTEGER NOT NULL,
    event_time INTEGER NOT NULL,
    done_time INTEGER,
    reports INTEGER NOT NULL,
    dropped INTEGER NOT NULL,
    PRIMARY KEY (node_id, cycle)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS node_cycles_cycle ON node_cycles(cycle, state);
CREATE INDEX IF NOT EXISTS node_cycles_done ON node_cycles(cycle, done_time) WHERE done_time IS NOT NULL;
CREATE TABLE IF NOT EXISTS cycles (
    cycle TEXT PRIMARY KEY,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cycles_first ON cycles(first_seen);
";

/// Open (and create) the database: WAL, relaxed fsync (WAL keeps it consistent), busy wait.
pub fn open(path: &Path) -> anyhow::Result<Connection> {
    use anyhow::Context;
    let conn =
        Connection::open(path).with_context(|| format!("open database {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        anyhow::bail!("{}: cannot switch to WAL (got {mode})", path.display());
    }
    conn.execute_batch(
        "PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY; PRAGMA cache_size=-32000;
         PRAGMA mmap_size=268435456;",
    )?;
    conn.execute_batch(SCHEMA)
        .with_context(|| format!("create tables in {}", path.display()))?;
    Ok(conn)
}

/// One writer and a few pooled readers, shared by the server's blocking tasks.
pub struct Db {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl Db {
    pub fn open(path: &Path) -> anyhow::Result<Db> {
        let writer = open(path)?;
        Ok(Db {
            path: path.to_path_buf(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    pub fn write<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        let mut c = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c)
    }

    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => open(&self.path)?,
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 8 {
            pool.push(conn);
        }
        out
    }
}

#[derive(Debug)]
pub enum IngestError {
    /// The report's key differs from the one pinned for its node (HTTP 409).
    KeyMismatch(String),
    Db(rusqlite::Error),
}

impl std::fmt::Display for IngestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IngestError::KeyMismatch(m) => f.write_str(m),
            IngestError::Db(e) => write!(f, "database: {e}"),
        }
    }
}

impl std::error::Error for IngestError {}

impl From<rusqlite::Error> for IngestError {
    fn from(e: rusqlite::Error) -> Self {
        IngestError::Db(e)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    pub accepted: usize,
    pub duplicates: usize,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Store a batch in one transaction: all or nothing. `seen` is when the center heard from the
/// nodes (now for HTTP, the export's time for USB); `source` is "http" or "usb".
pub fn ingest(
    conn: &mut Connection,
    reports: &[WireReport],
    seen: i64,
    source: &str,
) -> Result<Ingested, IngestError> {
    let received = now();
    let tx = conn.transaction()?;
    let mut out = Ingested::default();
    {
        let mut get_node =
            tx.prepare_cached("SELECT pubkey, last_event, labels FROM nodes WHERE node_id = ?1")?;
        let mut add_report = tx.prepare_cached(
            "INSERT OR IGNORE INTO reports (id, node_id, cycle, sequence, command, exit_code,
                result, state, reason, event_time, time, trusted_time, received, source,
                snapshot_id, installed_cycle, installed_sequence, agent_version, dropped_before,
                timings)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                ?18, ?19, ?20)",
        )?;
        let mut new_node = tx.prepare_cached(
            "INSERT INTO nodes (node_id, variant, labels, pubkey, last_event, last_state,
                last_exit, last_result, last_reason, last_cycle, installed_cycle,
                installed_sequence, agent_version, first_seen, last_seen)
             VALUES (:node, :variant, :labels, :pubkey, :event, :state, :exit, :result, :reason,
                :cycle, :icycle, :iseq, :version, :seen, :seen)",
        )?;
        let mut newer_node = tx.prepare_cached(
            "UPDATE nodes SET variant = :variant, labels = :labels, last_event = :event,
                last_state = :state, last_exit = :exit, last_result = :result,
                last_reason = :reason, last_cycle = :cycle, installed_cycle = :icycle,
                installed_sequence = :iseq, agent_version = :version,
                pubkey = CASE WHEN pubkey = '' THEN :pubkey ELSE pubkey END,
                last_seen = max(last_seen, :seen)
             WHERE node_id = :node",
        )?;
        let mut seen_node = tx.prepare_cached(
            "UPDATE nodes SET last_seen = max(last_seen, :seen),
                pubkey = CASE WHEN pubkey = '' THEN :pubkey ELSE pubkey END
             WHERE node_id = :node",
        )?;
        let mut del_labels = tx.prepare_cached("DELETE FROM node_labels WHERE node_id = ?1")?;
        let mut add_label =
            tx.prepare_cached("INSERT INTO node_labels (node_id, key, value) VALUES (?1, ?2, ?3)")?;
        let mut node_cycle = tx.prepare_cached(
            "INSERT INTO node_cycles (node_id, cycle, state, exit_code, event_time, done_time,
                reports, dropped)
             VALUES (:node, :cycle, :state, :exit, :event, :done, 1, :dropped)
             ON CONFLICT (node_id, cycle) DO UPDATE SET
                state = CASE WHEN excluded.event_time >= event_time
                              AND NOT (state = 'done' AND excluded.state = 'ready')
                         THEN excluded.state ELSE state END,
                exit_code = CASE WHEN excluded.event_time >= event_time
                              AND NOT (state = 'done' AND excluded.state = 'ready')
                         THEN excluded.exit_code ELSE exit_code END,
                event_time = max(event_time, excluded.event_time),
                done_time = CASE WHEN excluded.done_time IS NULL THEN done_time
                                 WHEN done_time IS NULL THEN excluded.done_time
                                 ELSE min(done_time, excluded.done_time) END,
                reports = reports + 1,
                dropped = dropped + excluded.dropped",
        )?;
        let mut cycle = tx.prepare_cached(
            "INSERT INTO cycles (cycle, first_seen, last_seen) VALUES (?1, ?2, ?2)
             ON CONFLICT (cycle) DO UPDATE SET first_seen = min(first_seen, excluded.first_seen),
                last_seen = max(last_seen, excluded.last_seen)",
        )?;

        for r in reports {
            let event = r.event_time();
            let state = r.state();
            let node: Option<(String, i64, String)> = get_node
                .query_row([&r.node_id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()?;
            if let Some((pinned, _, _)) = &node {
                if !pinned.is_empty() && *pinned != r.node_pubkey {
                    return Err(IngestError::KeyMismatch(format!(
                        "report {} for node {}: node key {}… differs from the key pinned \
                         at first sight ({}…); if the node was reinstalled, unpin it with \
                         'edgepatch-builder fleet --db DB --unpin {}'",
                        r.id,
                        r.node_id,
                        &r.node_pubkey[..16],
                        &pinned[..pinned.len().min(16)],
                        r.node_id
                    )));
                }
            }
            let timings = serde_json::to_string(&r.timings_ms).unwrap_or_else(|_| "{}".into());
            let added = add_report.execute(params![
                r.id,
                r.node_id,
                r.cycle,
                r.sequence.map(|s| s as i64),
                r.command,
                r.exit_code,
                r.result,
                state,
                r.reason,
                event,
                r.time as i64,
                r.trusted_time as i64,
                received,
                source,
                r.snapshot_id,
                r.installed_cycle,
                r.installed_sequence.map(|s| s as i64),
                r.agent_version,
                r.dropped_before as i64,
                timings,
            ])?;
            if added == 0 {
                out.duplicates += 1;
                continue;
            }
            out.accepted += 1;
            let labels = serde_json::to_string(&r.labels).unwrap_or_else(|_| "{}".into());
            let seen = seen.max(0);
            let write_labels = |del: &mut rusqlite::CachedStatement,
                                add: &mut rusqlite::CachedStatement|
             -> rusqlite::Result<()> {
                del.execute([&r.node_id])?;
                for (k, v) in &r.labels {
                    add.execute(params![r.node_id, k, v])?;
                }
                Ok(())
            };
            match &node {
                None => {
                    new_node.execute(named_params! {
                        ":node": r.node_id, ":variant": r.variant, ":labels": labels,
                        ":pubkey": r.node_pubkey, ":event": event,
                        ":state": state.unwrap_or("pending"), ":exit": r.exit_code,
                        ":result": r.result, ":reason": r.reason, ":cycle": r.cycle,
                        ":icycle": r.installed_cycle,
                        ":iseq": r.installed_sequence.map(|s| s as i64),
                        ":version": r.agent_version, ":seen": seen,
                    })?;
                    write_labels(&mut del_labels, &mut add_label)?;
                }
                Some((_, last_event, old_labels)) if state.is_some() && event >= *last_event => {
                    newer_node.execute(named_params! {
                        ":node": r.node_id, ":variant": r.variant, ":labels": labels,
                        ":pubkey": r.node_pubkey, ":event": event, ":state": state,
                        ":exit": r.exit_code, ":result": r.result, ":reason": r.reason,
                        ":cycle": r.cycle, ":icycle": r.installed_cycle,
                        ":iseq": r.installed_sequence.map(|s| s as i64),
                        ":version": r.agent_version, ":seen": seen,
                    })?;
                    if *old_labels != labels {
                        write_labels(&mut del_labels, &mut add_label)?;
                    }
                }
                Some(_) => {
                    seen_node.execute(named_params! {
                        ":node": r.node_id, ":pubkey": r.node_pubkey, ":seen": seen,
                    })?;
                }
            }
            if let (Some(c), Some(s)) = (&r.cycle, state) {
                node_cycle.execute(named_params! {
                    ":node": r.node_id, ":cycle": c, ":state": s, ":exit": r.exit_code,
                    ":event": event, ":done": (s == "done").then_some(event),
                    ":dropped": r.dropped_before as i64,
                })?;
                cycle.execute(params![c, event])?;
            }
        }
    }
    tx.commit()?;
    Ok(out)
}

/// Save the status.json text a USB export carried.
pub fn set_status(conn: &Connection, node: &str, status: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE nodes SET status = ?2 WHERE node_id = ?1",
        params![node, status],
    )?;
    Ok(())
}

/// The pinned key of a node ('' when unpinned), None for an unknown node.
pub fn pinned_key(conn: &Connection, node: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT pubkey FROM nodes WHERE node_id = ?1", [node], |r| {
        r.get(0)
    })
    .optional()
}

/// Forget a node's pinned key: the next report or export pins a new one.
pub fn unpin(conn: &Connection, node: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute("UPDATE nodes SET pubkey = '' WHERE node_id = ?1", [node])? == 1)
}

// ---------------------------------------------------------------------------------------------
// Queries

/// Dashboard / API filter. Empty means "all".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub variant: Option<String>,
    pub label: Option<(String, String)>,
    pub state: Option<String>,
}

impl Filter {
    /// From query parameters; `label` is `key=value`.
    pub fn parse(
        variant: Option<&str>,
        label: Option<&str>,
        state: Option<&str>,
    ) -> Result<Filter, String> {
        let some = |v: Option<&str>| v.map(str::trim).filter(|s| !s.is_empty()).map(String::from);
        let label = match some(label) {
            None => None,
            Some(l) => {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| format!("label {l:?} must look like key=value"))?;
                Some((k.to_string(), v.to_string()))
            }
        };
        let state = some(state);
        if let Some(s) = &state {
            if !super::model::STATES.contains(&s.as_str()) {
                return Err(format!(
                    "state {s:?} is not one of {}",
                    super::model::STATES.join(", ")
                ));
            }
        }
        Ok(Filter {
            variant: some(variant),
            label,
            state,
        })
    }
}

/// A node's state: in a cycle when `cycle` is bound, else its latest state. Done stays done;
/// otherwise a node not seen since `cutoff` is silent, and a node without a report for the
/// cycle is pending.
const STATE_EXPR: &str = "CASE WHEN nc.state = 'done' THEN 'done'
    WHEN n.last_seen < :cutoff THEN 'silent'
    ELSE coalesce(nc.state, CASE WHEN :cycle IS NULL THEN n.last_state ELSE 'pending' END) END";

/// The nodes a filter selects, as `FROM ... WHERE ...` with `n` (nodes) and `nc` (their row in
/// `:cycle`). One constant per filter shape so SQLite can use the matching index; all values
/// are bound parameters.
fn from_filtered(f: &Filter) -> &'static str {
    match (&f.variant, &f.label) {
        (None, None) => {
            "FROM nodes n
             LEFT JOIN node_cycles nc ON nc.node_id = n.node_id AND nc.cycle = :cycle
             WHERE 1"
        }
        (Some(_), None) => {
            "FROM nodes n
             LEFT JOIN node_cycles nc ON nc.node_id = n.node_id AND nc.cycle = :cycle
             WHERE n.variant = :variant"
        }
        (None, Some(_)) => {
            "FROM node_labels l JOIN nodes n ON n.node_id = l.node_id
             LEFT JOIN node_cycles nc ON nc.node_id = n.node_id AND nc.cycle = :cycle
             WHERE l.key = :lkey AND l.value = :lvalue"
        }
        (Some(_), Some(_)) => {
            "FROM node_labels l JOIN nodes n ON n.node_id = l.node_id
             LEFT JOIN node_cycles nc ON nc.node_id = n.node_id AND nc.cycle = :cycle
             WHERE l.key = :lkey AND l.value = :lvalue AND n.variant = :variant"
        }
    }
}

/// Bind the named values a statement uses (statements differ by filter shape).
fn bind(
    st: &mut rusqlite::CachedStatement,
    values: &[(&str, &dyn rusqlite::ToSql)],
) -> rusqlite::Result<()> {
    for (name, v) in values {
        if let Some(i) = st.parameter_index(name)? {
            st.raw_bind_parameter(i, v)?;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub nodes: u64,
    pub by_state: BTreeMap<String, u64>,
}

impl Counts {
    pub fn get(&self, s: &str) -> u64 {
        self.by_state.get(s).copied().unwrap_or(0)
    }

    fn add(&mut self, s: &str, n: i64) {
        let e = self.by_state.entry(s.to_string()).or_insert(0);
        *e = e.saturating_add_signed(n);
    }

    fn tidy(mut self) -> Counts {
        self.by_state.retain(|_, n| *n > 0);
        self
    }
}

/// Nodes by state for one cycle (or their latest state when `cycle` is None).
pub fn counts(
    conn: &Connection,
    cycle: Option<&str>,
    f: &Filter,
    cutoff: i64,
) -> anyhow::Result<Counts> {
    if f.variant.is_none() && f.label.is_none() {
        return counts_all(conn, cycle, cutoff);
    }
    let sql = format!(
        "SELECT {STATE_EXPR} AS s, count(*) {} GROUP BY s",
        from_filtered(f)
    );
    let mut st = conn.prepare_cached(&sql)?;
    let (lkey, lvalue) = f.label.clone().unzip();
    bind(
        &mut st,
        &[
            (":cutoff", &cutoff),
            (":cycle", &cycle),
            (":variant", &f.variant),
            (":lkey", &lkey),
            (":lvalue", &lvalue),
        ],
    )?;
    let mut rows = st.raw_query();
    let mut c = Counts::default();
    while let Some(r) = rows.next()? {
        let (s, n): (String, i64) = (r.get(0)?, r.get(1)?);
        c.nodes += n as u64;
        c.add(&s, n);
    }
    Ok(c.tidy())
}

/// The whole fleet, without a join over every node: counts come from covering indexes, then
/// the (few) silent nodes are moved to `silent`, and nodes without a report are `pending`.
fn counts_all(conn: &Connection, cycle: Option<&str>, cutoff: i64) -> anyhow::Result<Counts> {
    let mut c = Counts::default();
    let total: i64 = conn
        .prepare_cached("SELECT count(*) FROM nodes")?
        .query_row([], |r| r.get(0))?;
    c.nodes = total as u64;
    let Some(cycle) = cycle else {
        let mut st =
            conn.prepare_cached("SELECT last_state, count(*) FROM nodes GROUP BY last_state")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            c.add(&r.get::<_, String>(0)?, r.get(1)?);
        }
        let mut st = conn.prepare_cached(
            "SELECT last_state, count(*) FROM nodes WHERE last_seen < ?1 GROUP BY last_state",
        )?;
        let mut rows = st.query([cutoff])?;
        while let Some(r) = rows.next()? {
            let n: i64 = r.get(1)?;
            c.add(&r.get::<_, String>(0)?, -n);
            c.add("silent", n);
        }
        return Ok(c.tidy());
    };
    let mut reported = 0i64;
    let mut st = conn.prepare_cached(
        "SELECT state, count(*) FROM node_cycles WHERE cycle = ?1 GROUP BY state",
    )?;
    let mut rows = st.query([cycle])?;
    while let Some(r) = rows.next()? {
        let n: i64 = r.get(1)?;
        reported += n;
        c.add(&r.get::<_, String>(0)?, n);
    }
    let mut silent_unreported = 0i64;
    let mut st = conn.prepare_cached(
        "SELECT nc.state FROM nodes n
         LEFT JOIN node_cycles nc ON nc.node_id = n.node_id AND nc.cycle = ?1
         WHERE n.last_seen < ?2",
    )?;
    let mut rows = st.query(params![cycle, cutoff])?;
    while let Some(r) = rows.next()? {
        match r.get::<_, Option<String>>(0)? {
            Some(s) if s == "done" => {}
            Some(s) => {
                c.add(&s, -1);
                c.add("silent", 1);
            }
            None => {
                silent_unreported += 1;
                c.add("silent", 1);
            }
        }
    }
    c.add("pending", total - reported - silent_unreported);
    Ok(c.tidy())
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cycle {
    pub cycle: String,
    pub first_seen: i64,
    pub last_seen: i64,
}

/// The newest cycles first.
pub fn cycles(conn: &Connection, limit: usize) -> anyhow::Result<Vec<Cycle>> {
    let mut st = conn.prepare_cached(
        "SELECT cycle, first_seen, last_seen FROM cycles
         ORDER BY first_seen DESC, cycle DESC LIMIT ?1",
    )?;
    let rows = st.query_map([limit as i64], |r| {
        Ok(Cycle {
            cycle: r.get(0)?,
            first_seen: r.get(1)?,
            last_seen: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn cycle(conn: &Connection, name: &str) -> anyhow::Result<Option<Cycle>> {
    Ok(conn
        .query_row(
            "SELECT cycle, first_seen, last_seen FROM cycles WHERE cycle = ?1",
            [name],
            |r| {
                Ok(Cycle {
                    cycle: r.get(0)?,
                    first_seen: r.get(1)?,
                    last_seen: r.get(2)?,
                })
            },
        )
        .optional()?)
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Node {
    pub node_id: String,
    pub variant: String,
    pub labels: BTreeMap<String, String>,
    pub installed_cycle: Option<String>,
    pub installed_sequence: Option<i64>,
    pub last_state: String,
    pub last_reason: Option<String>,
    pub last_cycle: Option<String>,
    pub last_seen: i64,
    pub first_seen: i64,
    pub agent_version: Option<String>,
    pub pubkey: String,
    /// In the cycle asked for (or the latest state, `silent` when not seen for too long).
    pub state: String,
    pub silent: bool,
}

const NODE_COLS: &str = "n.node_id, n.variant, n.labels, n.installed_cycle,
    n.installed_sequence, n.last_state, n.last_reason, n.last_cycle, n.last_seen, n.first_seen,
    n.agent_version, n.pubkey";

fn node_row(r: &rusqlite::Row, cutoff: i64) -> rusqlite::Result<Node> {
    let labels: String = r.get(2)?;
    let last_seen: i64 = r.get(8)?;
    Ok(Node {
        node_id: r.get(0)?,
        variant: r.get(1)?,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        installed_cycle: r.get(3)?,
        installed_sequence: r.get(4)?,
        last_state: r.get(5)?,
        last_reason: r.get(6)?,
        last_cycle: r.get(7)?,
        last_seen,
        first_seen: r.get(9)?,
        agent_version: r.get(10)?,
        pubkey: r.get(11)?,
        state: r.get(12)?,
        silent: last_seen < cutoff,
    })
}

/// Nodes matching the filter (state in `cycle`), worst first; at most `limit`, plus the total.
pub fn nodes(
    conn: &Connection,
    cycle: Option<&str>,
    f: &Filter,
    cutoff: i64,
    limit: usize,
) -> anyhow::Result<(Vec<Node>, u64)> {
    let sql = format!(
        "SELECT {NODE_COLS}, {STATE_EXPR} AS s {}
           AND (:state IS NULL OR s = :state)
         ORDER BY CASE s WHEN 'failed' THEN 0 WHEN 'rolled-back' THEN 1 WHEN 'quarantined' THEN 2
           WHEN 'error' THEN 3 WHEN 'silent' THEN 4 WHEN 'deferred' THEN 5 WHEN 'pending' THEN 6
           ELSE 7 END, n.node_id
         LIMIT :limit",
        from_filtered(f)
    );
    let (lkey, lvalue) = f.label.clone().unzip();
    let mut st = conn.prepare_cached(&sql)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    bind(
        &mut st,
        &[
            (":cutoff", &cutoff),
            (":cycle", &cycle),
            (":variant", &f.variant),
            (":lkey", &lkey),
            (":lvalue", &lvalue),
            (":state", &f.state),
            (":limit", &limit),
        ],
    )?;
    let mut rows = st.raw_query();
    let mut list = Vec::new();
    while let Some(r) = rows.next()? {
        list.push(node_row(r, cutoff)?);
    }
    let c = counts(conn, cycle, f, cutoff)?;
    let total = match &f.state {
        Some(s) => c.get(s),
        None => c.nodes,
    };
    Ok((list, total))
}

pub fn node(
    conn: &Connection,
    id: &str,
    cutoff: i64,
) -> anyhow::Result<Option<(Node, Option<String>)>> {
    let sql = format!(
        "SELECT {NODE_COLS}, CASE WHEN n.last_seen < :cutoff THEN 'silent' ELSE n.last_state END,
            n.status FROM nodes n WHERE n.node_id = :id"
    );
    Ok(conn
        .query_row(&sql, named_params! {":cutoff": cutoff, ":id": id}, |r| {
            Ok((node_row(r, cutoff)?, r.get(13)?))
        })
        .optional()?)
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryRow {
    pub id: String,
    pub cycle: Option<String>,
    pub sequence: Option<i64>,
    pub command: String,
    pub exit_code: i32,
    pub result: String,
    pub state: Option<String>,
    pub reason: String,
    pub event_time: i64,
    pub received: i64,
    pub source: String,
    pub snapshot_id: Option<String>,
    pub timings: String,
    pub dropped_before: i64,
}

/// A node's reports, newest first.
pub fn history(conn: &Connection, id: &str, limit: usize) -> anyhow::Result<Vec<HistoryRow>> {
    let mut st = conn.prepare_cached(
        "SELECT id, cycle, sequence, command, exit_code, result, state, reason, event_time,
            received, source, snapshot_id, timings, dropped_before
         FROM reports WHERE node_id = ?1 ORDER BY event_time DESC, received DESC LIMIT ?2",
    )?;
    let rows = st.query_map(params![id, limit as i64], |r| {
        Ok(HistoryRow {
            id: r.get(0)?,
            cycle: r.get(1)?,
            sequence: r.get(2)?,
            command: r.get(3)?,
            exit_code: r.get(4)?,
            result: r.get(5)?,
            state: r.get(6)?,
            reason: r.get(7)?,
            event_time: r.get(8)?,
            received: r.get(9)?,
            source: r.get(10)?,
            snapshot_id: r.get(11)?,
            timings: r.get(12)?,
            dropped_before: r.get(13)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// When each matching node first finished `cycle`, oldest first (for the completion plot).
pub fn done_times(conn: &Connection, cycle: &str, f: &Filter) -> anyhow::Result<Vec<i64>> {
    let sql = if f.variant.is_none() && f.label.is_none() {
        "SELECT nc.done_time FROM node_cycles nc
         WHERE nc.cycle = :cycle AND nc.done_time IS NOT NULL ORDER BY nc.done_time"
            .to_string()
    } else {
        format!(
            "SELECT nc.done_time {} AND nc.done_time IS NOT NULL ORDER BY nc.done_time",
            from_filtered(f)
        )
    };
    let (lkey, lvalue) = f.label.clone().unzip();
    let mut st = conn.prepare_cached(&sql)?;
    bind(
        &mut st,
        &[
            (":cycle", &cycle),
            (":variant", &f.variant),
            (":lkey", &lkey),
            (":lvalue", &lvalue),
        ],
    )?;
    let mut rows = st.raw_query();
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(r.get(0)?);
    }
    Ok(out)
}

/// Distinct variants, for the filter form.
pub fn variants(conn: &Connection) -> anyhow::Result<Vec<String>> {
    let mut st =
        conn.prepare_cached("SELECT DISTINCT variant FROM nodes ORDER BY variant LIMIT 200")?;
    let rows = st.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Distinct labels as `key=value`, for the filter form.
pub fn labels(conn: &Connection) -> anyhow::Result<Vec<String>> {
    let mut st = conn.prepare_cached(
        "SELECT DISTINCT key || '=' || value FROM node_labels ORDER BY 1 LIMIT 200",
    )?;
    let rows = st.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn report_count(conn: &Connection) -> anyhow::Result<i64> {
    Ok(conn
        .query_row("SELECT max(rowid) FROM reports", [], |r| {
            r.get::<_, Option<i64>>(0)
        })?
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::center::model::WireReport;

    fn rep(id: &str, node: &str, cycle: &str, code: i32, t: u64) -> WireReport {
        WireReport {
            id: id.into(),
            node_id: node.into(),
            node_pubkey: "ab".repeat(32),
            variant: if node.ends_with('2') {
                "rhel-9"
            } else {
                "debian-12"
            }
            .into(),
            labels: [("role".to_string(), "till".to_string())].into(),
            command: "apply".into(),
            cycle: Some(cycle.into()),
            sequence: Some(1),
            exit_code: code,
            result: "x".into(),
            reason: String::new(),
            timings_ms: BTreeMap::new(),
            snapshot_id: None,
            installed_cycle: None,
            installed_sequence: None,
            agent_version: "0.1.0".into(),
            time: t,
            trusted_time: 0,
            dropped_before: 0,
        }
    }

    fn db() -> (tempfile::TempDir, Connection) {
        let d = tempfile::tempdir().unwrap();
        let c = open(&d.path().join("c.db")).unwrap();
        (d, c)
    }

    #[test]
    fn idempotent_and_latest_event_wins() {
        let (_d, mut c) = db();
        let now = now();
        let batch = vec![
            rep("a", "n1", "c1", 5, 100),
            rep("b", "n1", "c1", 0, 200),
            rep("c", "n2", "c1", 6, 150),
        ];
        let r = ingest(&mut c, &batch, now, "http").unwrap();
        assert_eq!(
            r,
            Ingested {
                accepted: 3,
                duplicates: 0
            }
        );
        let r = ingest(&mut c, &batch, now, "http").unwrap();
        assert_eq!(
            r,
            Ingested {
                accepted: 0,
                duplicates: 3
            }
        );
        // An older report arriving late changes nothing.
        ingest(&mut c, &[rep("d", "n1", "c1", 6, 50)], now, "usb").unwrap();
        let cnt = counts(&c, Some("c1"), &Filter::default(), now - 100).unwrap();
        assert_eq!(cnt.nodes, 2);
        assert_eq!(cnt.get("done"), 1);
        assert_eq!(cnt.get("failed"), 1);
        let f = Filter::parse(Some("rhel-9"), Some("role=till"), None).unwrap();
        assert_eq!(counts(&c, Some("c1"), &f, now - 100).unwrap().nodes, 1);
        // Not seen since the cutoff: failed becomes silent, done stays done.
        let cnt = counts(&c, Some("c1"), &Filter::default(), now + 100).unwrap();
        assert_eq!((cnt.get("done"), cnt.get("silent")), (1, 1));
        // A cycle with no report from a node: pending.
        ingest(&mut c, &[rep("e", "n1", "c2", 0, 300)], now, "http").unwrap();
        let cnt = counts(&c, Some("c2"), &Filter::default(), now - 100).unwrap();
        assert_eq!((cnt.get("done"), cnt.get("pending")), (1, 1));
        // The index-only path (no filter) agrees with the join path (a filter matching all).
        let all = Filter::parse(None, Some("role=till"), None).unwrap();
        for cyc in [None, Some("c1"), Some("c2"), Some("c9")] {
            for cut in [now - 100, now + 100] {
                assert_eq!(
                    counts(&c, cyc, &Filter::default(), cut).unwrap(),
                    counts(&c, cyc, &all, cut).unwrap(),
                    "{cyc:?} {cut}"
                );
            }
        }
        let (list, total) = nodes(&c, Some("c2"), &Filter::default(), now - 100, 10).unwrap();
        assert_eq!(total, 2);
        assert_eq!(list[0].node_id, "n2");
        assert_eq!(list[0].state, "pending");
        assert_eq!(done_times(&c, "c1", &Filter::default()).unwrap(), vec![200]);
        assert_eq!(history(&c, "n1", 10).unwrap().len(), 4);
        assert_eq!(cycles(&c, 10).unwrap()[0].cycle, "c2");
    }

    #[test]
    fn pinned_key_refuses_other_keys() {
        let (_d, mut c) = db();
        ingest(&mut c, &[rep("a", "n1", "c1", 0, 1)], now(), "http").unwrap();
        let mut other = rep("b", "n1", "c1", 0, 2);
        other.node_pubkey = "cd".repeat(32);
        let e = ingest(
            &mut c,
            &[rep("z", "n3", "c1", 0, 1), other.clone()],
            now(),
            "http",
        )
        .unwrap_err();
        assert!(matches!(e, IngestError::KeyMismatch(_)), "{e}");
        assert!(e.to_string().contains("--unpin n1"));
        // All or nothing: n3 was not stored either.
        assert_eq!(pinned_key(&c, "n3").unwrap(), None);
        assert!(unpin(&c, "n1").unwrap());
        ingest(&mut c, &[other], now(), "http").unwrap();
        assert_eq!(pinned_key(&c, "n1").unwrap().unwrap(), "cd".repeat(32));
    }

    #[test]
    fn filter_parse() {
        assert!(Filter::parse(None, Some("novalue"), None).is_err());
        assert!(Filter::parse(None, None, Some("bogus")).is_err());
        let f = Filter::parse(Some(""), Some("a=b"), Some("done")).unwrap();
        assert_eq!(f.variant, None);
        assert_eq!(f.label, Some(("a".into(), "b".into())));
    }
}
