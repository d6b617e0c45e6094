//! The center's SQLite store. Every statement is a constant with bound parameters; nothing from
//! a request is ever spliced into SQL.
//!
//! Tables:
//! - `node_keys`: every (node id, node key) pair ever seen, with its enrolment status:
//!   `unaccepted` (first sight), `preauthorized` (from an inventory, not seen yet), `accepted`
//!   (its reports count), `retired` (replaced by a newer accepted key). Only reports under an
//!   accepted key reach the tables below; the others are stored and counted on acceptance.
//! - `reports`: every report once per key (a retried delivery is ignored; another key cannot
//!   squat an id), with the center's receive time and the node's report sequence;
//! - `nodes`: accepted nodes with their latest state, "latest" meaning the highest (key
//!   generation, report sequence, receive time): the node's clock is shown, never trusted;
//! - `node_labels`: for the label filter;
//! - `node_cycles`: one row per node and cycle: its state *in that cycle* from its reports about
//!   that cycle only (an outcome is not overwritten by a later weak report such as "not newer"),
//!   failures, rollbacks, and whether it healed without an operator;
//! - `cycles`, `cycle_variants`: the cycles seen, and for each the variants and bundle sequence,
//!   so "pending" means "of this cycle's variant, not on it or newer".

use super::model::{operator_action, Envelope, WireReport};
use rusqlite::{named_params, params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Schema version (PRAGMA user_version).
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS node_keys (
    key_no INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL,
    pubkey TEXT NOT NULL,
    status TEXT NOT NULL,
    variant TEXT,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    reports INTEGER NOT NULL DEFAULT 0,
    UNIQUE (node_id, pubkey)
);
CREATE INDEX IF NOT EXISTS node_keys_status ON node_keys(status, node_id);
CREATE TABLE IF NOT EXISTS reports (
    id TEXT NOT NULL,
    key_no INTEGER NOT NULL,
    node_id TEXT NOT NULL,
    report_seq INTEGER NOT NULL,
    cycle TEXT,
    sequence INTEGER,
    command TEXT NOT NULL,
    exit_code INTEGER NOT NULL,
    result TEXT NOT NULL,
    state TEXT,
    reason TEXT NOT NULL,
    time INTEGER NOT NULL,
    trusted_time INTEGER NOT NULL,
    received INTEGER NOT NULL,
    source TEXT NOT NULL,
    snapshot_id TEXT,
    installed_cycle TEXT,
    installed_sequence INTEGER,
    agent_version TEXT NOT NULL,
    dropped_before INTEGER NOT NULL,
    timings TEXT NOT NULL,
    variant TEXT NOT NULL,
    labels TEXT NOT NULL,
    counted INTEGER NOT NULL,
    UNIQUE (key_no, id)
);
CREATE INDEX IF NOT EXISTS reports_node ON reports(node_id, received);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    variant TEXT NOT NULL,
    labels TEXT NOT NULL,
    key_no INTEGER NOT NULL,
    last_ord INTEGER NOT NULL,
    last_received INTEGER NOT NULL,
    last_state TEXT NOT NULL,
    last_exit INTEGER,
    last_result TEXT,
    last_reason TEXT,
    last_cycle TEXT,
    installed_cycle TEXT,
    installed_sequence INTEGER,
    agent_version TEXT,
    node_time INTEGER,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    status TEXT
);
-- Covering for the per-cycle counts: one index walk per variant, no table lookups.
CREATE INDEX IF NOT EXISTS nodes_variant ON nodes(variant, node_id, last_seen, installed_sequence);
-- The summary walks all nodes once in id order (see `counts_many`).
CREATE INDEX IF NOT EXISTS nodes_by_id ON nodes(node_id, variant, last_seen, installed_sequence);
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
    ord INTEGER NOT NULL,
    received INTEGER NOT NULL,
    done_time INTEGER,
    reports INTEGER NOT NULL,
    dropped INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    rollbacks INTEGER NOT NULL,
    fail_ord INTEGER,
    op_after_fail INTEGER NOT NULL,
    healed INTEGER NOT NULL,
    PRIMARY KEY (cycle, node_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cycles (
    cycle TEXT PRIMARY KEY,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cycles_first ON cycles(first_seen);
CREATE TABLE IF NOT EXISTS cycle_variants (
    cycle TEXT NOT NULL,
    variant TEXT NOT NULL,
    sequence INTEGER,
    PRIMARY KEY (cycle, variant)
) WITHOUT ROWID;
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
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
        [],
        |r| r.get(0),
    )?;
    if tables > 0 && version != SCHEMA_VERSION {
        anyhow::bail!(
            "{}: made by an older center (schema {version}, unsigned reports); start a new \
             database with another --db FILE",
            path.display()
        );
    }
    conn.execute_batch(SCHEMA)
        .with_context(|| format!("create tables in {}", path.display()))?;
    conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Reports stored now (new ids for this key).
    pub accepted: usize,
    pub duplicates: usize,
    /// Of the new ones, how many count (the node key is accepted).
    pub counted: usize,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Position of a report in its node's history: key generation, then the node's report sequence.
fn ord_of(key_no: i64, report_seq: i64) -> i64 {
    (key_no.clamp(0, i64::from(i32::MAX)) << 32) | report_seq.clamp(0, i64::from(u32::MAX))
}

/// Fingerprint of a node key (64 hex digits) for people, the key itself is never served:
/// `edgepatch::bundle::report::key_fingerprint`, the same everywhere.
pub fn key_id(pubkey: &str) -> String {
    match edgepatch::bundle::format::parse_hex::<32>(pubkey) {
        Some(k) => edgepatch::bundle::report::key_fingerprint(&k),
        // Stored keys are checked to be 64 hex digits; never shown as something else.
        None => "(malformed key)".into(),
    }
}

/// What counting needs of one report (from the wire or from the `reports` table).
struct Rec {
    node_id: String,
    key_no: i64,
    report_seq: i64,
    received: i64,
    variant: String,
    labels: String,
    command: String,
    cycle: Option<String>,
    sequence: Option<i64>,
    exit_code: i32,
    result: String,
    state: Option<String>,
    reason: String,
    installed_cycle: Option<String>,
    installed_sequence: Option<i64>,
    agent_version: String,
    node_time: i64,
    dropped: i64,
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Store one verified envelope in one transaction: all or nothing. `received` is the center's
/// clock; `source` is "http" or "usb". Reports of a key seen for the first time are stored and
/// the key waits as `unaccepted`; a preauthorized key is accepted on first sight.
pub fn ingest(
    conn: &mut Connection,
    env: &Envelope,
    received: i64,
    source: &str,
) -> rusqlite::Result<(Ingested, &'static str)> {
    let tx = conn.transaction()?;
    let out = ingest_on(&tx, env, received, source)?;
    tx.commit()?;
    Ok(out)
}

/// Several envelopes in one transaction (the server's group commit), each in its own
/// savepoint: one failing leaves the others stored.
pub fn ingest_many(
    conn: &mut Connection,
    envs: &[(Envelope, i64)],
    source: &str,
) -> rusqlite::Result<Vec<rusqlite::Result<(Ingested, &'static str)>>> {
    let mut tx = conn.transaction()?;
    let mut out = Vec::with_capacity(envs.len());
    for (env, received) in envs {
        let sp = tx.savepoint()?;
        match ingest_on(&sp, env, *received, source) {
            Ok(v) => {
                sp.commit()?;
                out.push(Ok(v));
            }
            Err(e) => {
                drop(sp);
                out.push(Err(e));
            }
        }
    }
    tx.commit()?;
    Ok(out)
}

fn ingest_on(
    tx: &Connection,
    env: &Envelope,
    received: i64,
    source: &str,
) -> rusqlite::Result<(Ingested, &'static str)> {
    let mut out = Ingested::default();
    let Some(node) = env.node_id.as_deref() else {
        return Ok((out, "none"));
    };
    let variant = env.reports.last().map(|r| r.variant.as_str());
    let key: Option<(i64, String)> = tx
        .prepare_cached("SELECT key_no, status FROM node_keys WHERE node_id = ?1 AND pubkey = ?2")?
        .query_row(params![node, env.pubkey], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (key_no, status) = match key {
        Some(k) => k,
        None => {
            evict_pending_keys(tx, node, MAX_PENDING_KEYS - 1)?;
            tx.prepare_cached(
                "INSERT INTO node_keys (node_id, pubkey, status, variant, first_seen, last_seen)
                 VALUES (?1, ?2, 'unaccepted', ?3, ?4, ?4)",
            )?
            .execute(params![node, env.pubkey, variant, received])?;
            (tx.last_insert_rowid(), "unaccepted".to_string())
        }
    };
    let counted = status == "accepted";
    {
        let mut add = tx.prepare_cached(
            "INSERT OR IGNORE INTO reports (id, key_no, node_id, report_seq, cycle, sequence,
                command, exit_code, result, state, reason, time, trusted_time, received, source,
                snapshot_id, installed_cycle, installed_sequence, agent_version, dropped_before,
                timings, variant, labels, counted)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                ?18, ?19, ?20, ?21, ?22, ?23, ?24)",
        )?;
        for r in &env.reports {
            let labels = serde_json::to_string(&r.labels).unwrap_or_else(|_| "{}".into());
            let timings = serde_json::to_string(&r.timings_ms).unwrap_or_else(|_| "{}".into());
            let added = add.execute(params![
                r.id,
                key_no,
                r.node_id,
                i64_of(r.report_seq),
                r.cycle,
                r.sequence.map(i64_of),
                r.command,
                r.exit_code,
                r.result,
                r.state(),
                r.reason,
                i64_of(r.time),
                i64_of(r.trusted_time),
                received,
                source,
                r.snapshot_id,
                r.installed_cycle,
                r.installed_sequence.map(i64_of),
                r.agent_version,
                i64_of(r.dropped_before),
                timings,
                r.variant,
                labels,
                counted,
            ])?;
            if added == 0 {
                out.duplicates += 1;
                continue;
            }
            out.accepted += 1;
            if counted {
                out.counted += 1;
                count_report(tx, &rec_of(r, key_no, received, labels))?;
            }
        }
    }
    // An unaccepted key keeps only its newest reports: nobody can fill the disk with keys.
    let pruned = if status == "unaccepted" {
        tx.prepare_cached(
            "DELETE FROM reports WHERE key_no = ?1 AND rowid NOT IN (SELECT rowid FROM reports
                WHERE key_no = ?1 ORDER BY report_seq DESC, received DESC, rowid DESC LIMIT ?2)",
        )?
        .execute(params![key_no, MAX_PENDING_REPORTS as i64])?
    } else {
        0
    };
    // `reports` counts stored rows (a replayed report is a duplicate, not a report).
    tx.prepare_cached(
        "UPDATE node_keys SET last_seen = max(last_seen, ?2), variant = coalesce(?3, variant),
            reports = max(0, reports + ?4) WHERE key_no = ?1",
    )?
    .execute(params![
        key_no,
        received,
        variant,
        out.accepted as i64 - pruned as i64
    ])?;
    if status == "preauthorized" {
        promote(tx, node, key_no)?;
        out.counted = out.accepted;
    }
    if let Some(s) = &env.status {
        tx.execute(
            "UPDATE nodes SET status = ?2 WHERE node_id = ?1 AND key_no = ?3",
            params![node, s, key_no],
        )?;
    }
    let st = match status.as_str() {
        "accepted" | "preauthorized" => "accepted",
        "retired" => "retired",
        _ => "unaccepted",
    };
    Ok((out, st))
}

/// Reports kept per unaccepted key (its newest).
pub const MAX_PENDING_REPORTS: usize = 100;
/// Unaccepted keys kept per node id; a new one evicts the one seen least recently.
pub const MAX_PENDING_KEYS: usize = 8;

/// Drop the least recently seen unaccepted keys of `node` (and their reports) until at most
/// `keep` remain.
fn evict_pending_keys(tx: &Connection, node: &str, keep: usize) -> rusqlite::Result<()> {
    let old: Vec<i64> = tx
        .prepare_cached(
            "SELECT key_no FROM node_keys WHERE node_id = ?1 AND status = 'unaccepted'
             ORDER BY last_seen DESC, key_no DESC LIMIT -1 OFFSET ?2",
        )?
        .query_map(params![node, keep as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for k in old {
        tx.prepare_cached("DELETE FROM reports WHERE key_no = ?1")?
            .execute([k])?;
        tx.prepare_cached("DELETE FROM node_keys WHERE key_no = ?1")?
            .execute([k])?;
    }
    Ok(())
}

fn rec_of(r: &WireReport, key_no: i64, received: i64, labels: String) -> Rec {
    Rec {
        node_id: r.node_id.clone(),
        key_no,
        report_seq: i64_of(r.report_seq),
        received,
        variant: r.variant.clone(),
        labels,
        command: r.command.clone(),
        cycle: r.cycle.clone(),
        sequence: r.sequence.map(i64_of),
        exit_code: r.exit_code,
        result: r.result.clone(),
        state: r.state().map(String::from),
        reason: r.reason.clone(),
        installed_cycle: r.installed_cycle.clone(),
        installed_sequence: r.installed_sequence.map(i64_of),
        agent_version: r.agent_version.clone(),
        node_time: r.event_time(),
        dropped: i64_of(r.dropped_before),
    }
}

/// Make `key_no` the node's accepted key (retiring any other) and count its stored reports.
fn promote(tx: &Connection, node: &str, key_no: i64) -> rusqlite::Result<usize> {
    tx.execute(
        "UPDATE node_keys SET status = 'retired'
         WHERE node_id = ?1 AND status = 'accepted' AND key_no != ?2",
        params![node, key_no],
    )?;
    tx.execute(
        "UPDATE node_keys SET status = 'accepted' WHERE key_no = ?1",
        [key_no],
    )?;
    let recs: Vec<Rec> = {
        let mut st = tx.prepare_cached(
            "SELECT node_id, report_seq, received, variant, labels, command, cycle, sequence,
                exit_code, result, state, reason, installed_cycle, installed_sequence,
                agent_version, max(time, trusted_time), dropped_before
             FROM reports WHERE key_no = ?1 AND counted = 0
             ORDER BY report_seq, received, rowid",
        )?;
        let rows = st.query_map([key_no], |r| {
            Ok(Rec {
                node_id: r.get(0)?,
                key_no,
                report_seq: r.get(1)?,
                received: r.get(2)?,
                variant: r.get(3)?,
                labels: r.get(4)?,
                command: r.get(5)?,
                cycle: r.get(6)?,
                sequence: r.get(7)?,
                exit_code: r.get(8)?,
                result: r.get(9)?,
                state: r.get(10)?,
                reason: r.get(11)?,
                installed_cycle: r.get(12)?,
                installed_sequence: r.get(13)?,
                agent_version: r.get(14)?,
                node_time: r.get(15)?,
                dropped: r.get(16)?,
            })
        })?;
        rows.collect::<Result<_, _>>()?
    };
    for r in &recs {
        count_report(tx, r)?;
    }
    tx.execute(
        "UPDATE reports SET counted = 1 WHERE key_no = ?1 AND counted = 0",
        [key_no],
    )?;
    Ok(recs.len())
}

fn strong(s: &str) -> bool {
    matches!(s, "done" | "failed" | "rolled-back" | "quarantined")
}

/// A setback the node may recover from on its own: install or health failure, a damaged
/// download, waiting for a bundle that did not arrive.
fn is_failure(state: &str, r: &Rec) -> bool {
    match state {
        "failed" => true,
        "rolled-back" => r.exit_code != 0,
        "quarantined" => matches!(r.command.as_str(), "fetch" | "run"),
        "deferred" => {
            r.reason.contains("no complete bundle")
                || (r.command == "fetch" && !r.reason.contains("window"))
        }
        _ => false,
    }
}

/// Apply one report of an accepted node to `nodes`, `node_cycles` and `cycles`.
fn count_report(tx: &Connection, r: &Rec) -> rusqlite::Result<()> {
    let ord = ord_of(r.key_no, r.report_seq);
    let node: Option<(i64, i64, String)> = tx
        .prepare_cached("SELECT last_ord, last_received, labels FROM nodes WHERE node_id = ?1")?
        .query_row([&r.node_id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    let write_labels = || -> rusqlite::Result<()> {
        tx.prepare_cached("DELETE FROM node_labels WHERE node_id = ?1")?
            .execute([&r.node_id])?;
        let labels: BTreeMap<String, String> = serde_json::from_str(&r.labels).unwrap_or_default();
        let mut add =
            tx.prepare_cached("INSERT INTO node_labels (node_id, key, value) VALUES (?1, ?2, ?3)")?;
        for (k, v) in &labels {
            add.execute(params![r.node_id, k, v])?;
        }
        Ok(())
    };
    match node {
        None => {
            tx.prepare_cached(
                "INSERT INTO nodes (node_id, variant, labels, key_no, last_ord, last_received,
                    last_state, last_exit, last_result, last_reason, last_cycle, installed_cycle,
                    installed_sequence, agent_version, node_time, first_seen, last_seen)
                 VALUES (:node, :variant, :labels, :key, :ord, :rcv, :state, :exit, :result,
                    :reason, :cycle, :icycle, :iseq, :version, :ntime, :rcv, :rcv)",
            )?
            .execute(named_params! {
                ":node": r.node_id, ":variant": r.variant, ":labels": r.labels, ":key": r.key_no,
                ":ord": ord, ":rcv": r.received,
                ":state": r.state.as_deref().unwrap_or("pending"), ":exit": r.exit_code,
                ":result": r.result, ":reason": r.reason, ":cycle": r.cycle,
                ":icycle": r.installed_cycle, ":iseq": r.installed_sequence,
                ":version": r.agent_version, ":ntime": r.node_time,
            })?;
            write_labels()?;
        }
        Some((last_ord, last_rcv, old_labels)) if (ord, r.received) >= (last_ord, last_rcv) => {
            tx.prepare_cached(
                "UPDATE nodes SET variant = :variant, labels = :labels, key_no = :key,
                    last_ord = :ord, last_received = :rcv,
                    last_state = coalesce(:state, last_state),
                    last_exit = CASE WHEN :state IS NULL THEN last_exit ELSE :exit END,
                    last_result = CASE WHEN :state IS NULL THEN last_result ELSE :result END,
                    last_reason = CASE WHEN :state IS NULL THEN last_reason ELSE :reason END,
                    last_cycle = CASE WHEN :state IS NULL THEN last_cycle ELSE :cycle END,
                    installed_cycle = :icycle, installed_sequence = :iseq,
                    agent_version = :version, node_time = :ntime,
                    last_seen = max(last_seen, :rcv)
                 WHERE node_id = :node",
            )?
            .execute(named_params! {
                ":node": r.node_id, ":variant": r.variant, ":labels": r.labels, ":key": r.key_no,
                ":ord": ord, ":rcv": r.received, ":state": r.state, ":exit": r.exit_code,
                ":result": r.result, ":reason": r.reason, ":cycle": r.cycle,
                ":icycle": r.installed_cycle, ":iseq": r.installed_sequence,
                ":version": r.agent_version, ":ntime": r.node_time,
            })?;
            if old_labels != r.labels {
                write_labels()?;
            }
        }
        Some(_) => {
            tx.prepare_cached(
                "UPDATE nodes SET last_seen = max(last_seen, ?2) WHERE node_id = ?1",
            )?
            .execute(params![r.node_id, r.received])?;
        }
    }
    let Some(cycle) = &r.cycle else {
        return Ok(());
    };
    tx.prepare_cached(
        "INSERT INTO cycles (cycle, first_seen, last_seen) VALUES (?1, ?2, ?2)
         ON CONFLICT (cycle) DO UPDATE SET first_seen = min(first_seen, excluded.first_seen),
            last_seen = max(last_seen, excluded.last_seen)",
    )?
    .execute(params![cycle, r.received])?;
    tx.prepare_cached(
        "INSERT INTO cycle_variants (cycle, variant, sequence) VALUES (?1, ?2, ?3)
         ON CONFLICT (cycle, variant) DO UPDATE SET
            sequence = CASE WHEN excluded.sequence IS NULL THEN sequence
                            WHEN sequence IS NULL THEN excluded.sequence
                            ELSE max(sequence, excluded.sequence) END",
    )?
    .execute(params![cycle, r.variant, r.sequence])?;
    merge_cycle(tx, cycle, r, ord)
}

#[derive(Debug, Clone)]
struct CycleRow {
    state: String,
    exit_code: i32,
    ord: i64,
    received: i64,
    done_time: Option<i64>,
    reports: i64,
    dropped: i64,
    failures: i64,
    rollbacks: i64,
    fail_ord: Option<i64>,
    op_after_fail: bool,
    healed: bool,
}

/// A node's state in one cycle, from its reports about that cycle. Outcomes (done, failed,
/// rolled back, quarantined) are not overwritten by weak news (ready, deferred, not newer,
/// error); done is undone only by a rollback.
fn merge_cycle(tx: &Connection, cycle: &str, r: &Rec, ord: i64) -> rusqlite::Result<()> {
    let row: Option<CycleRow> = tx
        .prepare_cached(
            "SELECT state, exit_code, ord, received, done_time, reports, dropped, failures,
                rollbacks, fail_ord, op_after_fail, healed
             FROM node_cycles WHERE node_id = ?1 AND cycle = ?2",
        )?
        .query_row(params![r.node_id, cycle], |x| {
            Ok(CycleRow {
                state: x.get(0)?,
                exit_code: x.get(1)?,
                ord: x.get(2)?,
                received: x.get(3)?,
                done_time: x.get(4)?,
                reports: x.get(5)?,
                dropped: x.get(6)?,
                failures: x.get(7)?,
                rollbacks: x.get(8)?,
                fail_ord: x.get(9)?,
                op_after_fail: x.get(10)?,
                healed: x.get(11)?,
            })
        })
        .optional()?;
    // A rollback order rolls back only a node that had the cycle; elsewhere it means "refuse it".
    let state = match r.state.as_deref() {
        Some("rolled-back")
            if r.command == "order-rollback" && row.as_ref().is_none_or(|x| x.state != "done") =>
        {
            None
        }
        s => s,
    };
    let mut row = match (row, state) {
        (Some(row), _) => row,
        (None, Some(s)) => CycleRow {
            state: s.to_string(),
            exit_code: r.exit_code,
            ord,
            received: r.received,
            done_time: None,
            reports: 0,
            dropped: 0,
            failures: 0,
            rollbacks: 0,
            fail_ord: None,
            op_after_fail: false,
            healed: false,
        },
        (None, None) => return Ok(()),
    };
    if operator_action(&r.command) && row.fail_ord.is_some() && row.done_time.is_none() {
        row.op_after_fail = true;
    }
    if let Some(s) = state {
        let newer = (ord, r.received) >= (row.ord, row.received);
        let replace = match row.state.as_str() {
            "done" => matches!(s, "rolled-back" | "done"),
            cur if strong(cur) => strong(s),
            _ => true,
        };
        if (newer && replace) || (!newer && !strong(&row.state) && strong(s)) {
            row.state = s.to_string();
            row.exit_code = r.exit_code;
        }
        if newer {
            row.ord = ord;
            row.received = r.received;
        }
        if is_failure(s, r) {
            row.failures = row.failures.saturating_add(1);
            row.fail_ord = Some(row.fail_ord.map_or(ord, |f| f.min(ord)));
        }
        if s == "rolled-back" {
            row.rollbacks = row.rollbacks.saturating_add(1);
        }
        if s == "done" && row.done_time.is_none() {
            row.done_time = Some(r.received);
            row.healed = row.fail_ord.is_some_and(|f| f < ord) && !row.op_after_fail;
        }
    }
    row.reports = row.reports.saturating_add(1);
    row.dropped = row.dropped.saturating_add(r.dropped);
    tx.prepare_cached(
        "INSERT OR REPLACE INTO node_cycles (node_id, cycle, state, exit_code, ord, received,
            done_time, reports, dropped, failures, rollbacks, fail_ord, op_after_fail, healed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        r.node_id,
        cycle,
        row.state,
        row.exit_code,
        row.ord,
        row.received,
        row.done_time,
        row.reports,
        row.dropped,
        row.failures,
        row.rollbacks,
        row.fail_ord,
        row.op_after_fail,
        row.healed,
    ])?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Enrolment

/// Accept the one key waiting for `node`: its reports count from now on (stored ones included).
pub fn accept(conn: &mut Connection, node: &str) -> anyhow::Result<usize> {
    let tx = conn.transaction()?;
    let waiting: Vec<i64> = tx
        .prepare_cached(
            "SELECT key_no FROM node_keys WHERE node_id = ?1 AND status = 'unaccepted'",
        )?
        .query_map([node], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let key_no = match waiting.as_slice() {
        [k] => *k,
        [] => anyhow::bail!(
            "node {node}: no key waiting for acceptance; see 'fleet list --state unaccepted'"
        ),
        many => anyhow::bail!(
            "node {node}: {} different keys wait (one may be an impostor); preauthorize the \
             right one with 'fleet preauthorize INVENTORY'",
            many.len()
        ),
    };
    let n = promote(&tx, node, key_no)?;
    tx.commit()?;
    Ok(n)
}

/// Nodes with a key waiting for acceptance: (node, waiting keys, whether the node already has
/// an accepted key, i.e. the waiting key would replace it).
pub fn waiting_nodes(conn: &Connection) -> anyhow::Result<Vec<(String, i64, bool)>> {
    let mut st = conn.prepare_cached(
        "SELECT w.node_id, count(*), EXISTS (SELECT 1 FROM node_keys a
                WHERE a.node_id = w.node_id AND a.status = 'accepted')
         FROM node_keys w WHERE w.status = 'unaccepted'
         GROUP BY w.node_id ORDER BY w.node_id",
    )?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Preauthorized {
    /// New ids+keys recorded ahead of the node's first report.
    pub recorded: usize,
    /// Keys that were waiting and are accepted now.
    pub accepted: usize,
    /// Already accepted.
    pub unchanged: usize,
}

/// Record (node id, key) pairs from an inventory: a key seen later is accepted on first sight,
/// a key already waiting is accepted now.
pub fn preauthorize(
    conn: &mut Connection,
    entries: &[(String, String)],
) -> anyhow::Result<Preauthorized> {
    let tx = conn.transaction()?;
    let mut out = Preauthorized::default();
    let t = now();
    for (node, key) in entries {
        let row: Option<(i64, String)> = tx
            .query_row(
                "SELECT key_no, status FROM node_keys WHERE node_id = ?1 AND pubkey = ?2",
                params![node, key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match row {
            Some((_, s)) if s == "accepted" || s == "preauthorized" => out.unchanged += 1,
            Some((k, _)) => {
                promote(&tx, node, k)?;
                out.accepted += 1;
            }
            None => {
                tx.execute(
                    "INSERT INTO node_keys (node_id, pubkey, status, first_seen, last_seen)
                     VALUES (?1, ?2, 'preauthorized', ?3, ?3)",
                    params![node, key, t],
                )?;
                out.recorded += 1;
            }
        }
    }
    tx.commit()?;
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyRow {
    pub node_id: String,
    /// Fingerprint (`key_fingerprint`: 16 hex digits of sha256 of the raw key), never the key.
    pub key_id: String,
    pub status: String,
    pub variant: Option<String>,
    pub first_seen: i64,
    pub last_seen: i64,
    pub reports: i64,
}

/// Keys by status (`None`: all) for one node or all nodes.
pub fn keys(
    conn: &Connection,
    node: Option<&str>,
    status: Option<&str>,
) -> anyhow::Result<Vec<KeyRow>> {
    let mut st = conn.prepare_cached(
        "SELECT node_id, pubkey, status, variant, first_seen, last_seen, reports FROM node_keys
         WHERE (?1 IS NULL OR node_id = ?1) AND (?2 IS NULL OR status = ?2)
         ORDER BY node_id, key_no",
    )?;
    let rows = st.query_map(params![node, status], |r| {
        Ok(KeyRow {
            node_id: r.get(0)?,
            key_id: key_id(&r.get::<_, String>(1)?),
            status: r.get(2)?,
            variant: r.get(3)?,
            first_seen: r.get(4)?,
            last_seen: r.get(5)?,
            reports: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn unaccepted_count(conn: &Connection) -> anyhow::Result<u64> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT count(DISTINCT node_id) FROM node_keys WHERE status = 'unaccepted'",
        )?
        .query_row([], |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

/// Save the status.json text a USB export carried.
pub fn set_status(conn: &Connection, node: &str, status: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE nodes SET status = ?2 WHERE node_id = ?1",
        params![node, status],
    )?;
    Ok(())
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
            if !super::model::STATES.contains(&s.as_str()) && s != "unaccepted" {
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

/// A node's state in `:cycle` (nodes `n`, its `node_cycles` row `nc`, the cycle's bundle for
/// its variant `cv`): done stays done; otherwise a node not seen since `:cutoff` is silent;
/// an outcome stands; a node already on a newer bundle than the cycle's is superseded; a node
/// without a report is pending.
const CYCLE_STATE: &str = "CASE WHEN nc.state = 'done' THEN 'done'
    WHEN n.last_seen < :cutoff THEN 'silent'
    WHEN nc.state IN ('failed', 'rolled-back', 'quarantined') THEN nc.state
    WHEN cv.sequence IS NOT NULL AND n.installed_sequence > cv.sequence THEN 'superseded'
    ELSE coalesce(nc.state, 'pending') END";

/// The latest state of a node.
const LATEST_STATE: &str = "CASE WHEN n.last_seen < :cutoff THEN 'silent' ELSE n.last_state END";

/// `SELECT <state> AS s, <extra> FROM ... WHERE ...` for the filter shape. A cycle's nodes are
/// the nodes of the variants that reported it.
fn select_sql(cycle: bool, f: &Filter, extra: &str) -> String {
    let label_join = if f.label.is_some() {
        "JOIN node_labels l ON l.node_id = n.node_id AND l.key = :lkey AND l.value = :lvalue"
    } else {
        ""
    };
    let variant = if f.variant.is_some() {
        "AND n.variant = :variant"
    } else {
        ""
    };
    if cycle {
        format!(
            "SELECT {CYCLE_STATE} AS s{extra} FROM cycle_variants cv
             JOIN nodes n ON n.variant = cv.variant
             {label_join}
             LEFT JOIN node_cycles nc ON nc.node_id = n.node_id AND nc.cycle = cv.cycle
             WHERE cv.cycle = :cycle {variant}"
        )
    } else {
        format!("SELECT {LATEST_STATE} AS s{extra} FROM nodes n {label_join} WHERE 1 {variant}")
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
    /// Nodes that hit a failure in this cycle (install, health, damaged download, no bundle).
    pub hit_failure: u64,
    /// Of those, nodes that then reached done with no operator action in between.
    pub self_healed: u64,
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
    let extra = if cycle.is_some() {
        ", nc.fail_ord IS NOT NULL AS hit, coalesce(nc.healed AND nc.state = 'done', 0) AS healed"
    } else {
        ", 0 AS hit, 0 AS healed"
    };
    let sql = format!(
        "SELECT s, count(*), sum(hit), sum(healed) FROM ({}) GROUP BY s",
        select_sql(cycle.is_some(), f, extra)
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
        let hit: i64 = r.get::<_, Option<i64>>(2)?.unwrap_or(0);
        let healed: i64 = r.get::<_, Option<i64>>(3)?.unwrap_or(0);
        c.nodes = c.nodes.saturating_add(n.max(0) as u64);
        c.hit_failure = c.hit_failure.saturating_add(hit.max(0) as u64);
        c.self_healed = c.self_healed.saturating_add(healed.max(0) as u64);
        c.add(&s, n);
    }
    Ok(c.tidy())
}

/// `counts` for several cycles of the whole fleet (no variant/label filter) in one walk: the
/// nodes once in id order, then each cycle's rows (stored in id order) merged against them in
/// memory, with the very rules of `CYCLE_STATE`. The dashboard summary at 10,000 nodes and 8
/// cycles costs one join per cycle otherwise.
pub fn counts_many(conn: &Connection, cycles: &[&str], cutoff: i64) -> anyhow::Result<Vec<Counts>> {
    struct N {
        id: String,
        variant: String,
        last_seen: i64,
        iseq: Option<i64>,
    }
    let mut nodes: Vec<N> = Vec::new();
    {
        let mut st = conn.prepare_cached(
            "SELECT node_id, variant, last_seen, installed_sequence FROM nodes ORDER BY node_id",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            nodes.push(N {
                id: r.get(0)?,
                variant: r.get(1)?,
                last_seen: r.get(2)?,
                iseq: r.get(3)?,
            });
        }
    }
    let mut out = Vec::with_capacity(cycles.len());
    for cycle in cycles {
        let mut cv: BTreeMap<String, Option<i64>> = BTreeMap::new();
        {
            let mut st = conn
                .prepare_cached("SELECT variant, sequence FROM cycle_variants WHERE cycle = ?1")?;
            let mut rows = st.query([cycle])?;
            while let Some(r) = rows.next()? {
                cv.insert(r.get(0)?, r.get(1)?);
            }
        }
        let mut c = Counts::default();
        let mut st = conn.prepare_cached(
            "SELECT node_id, state, fail_ord IS NOT NULL, healed FROM node_cycles
             WHERE cycle = ?1 ORDER BY node_id",
        )?;
        let mut rows = st.query([cycle])?;
        let mut next: Option<(String, String, bool, bool)> = match rows.next()? {
            Some(r) => Some((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            None => None,
        };
        for n in &nodes {
            // Advance the cycle's rows to this node (rows of nodes that are gone are skipped).
            while next
                .as_ref()
                .is_some_and(|(id, ..)| id.as_str() < n.id.as_str())
            {
                next = match rows.next()? {
                    Some(r) => Some((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    None => None,
                };
            }
            let row = next.as_ref().filter(|(id, ..)| *id == n.id);
            let Some(seq) = cv.get(&n.variant) else {
                continue;
            };
            let state = row.map(|(_, s, ..)| s.as_str());
            let s = match state {
                Some("done") => "done",
                _ if n.last_seen < cutoff => "silent",
                Some(s @ ("failed" | "rolled-back" | "quarantined")) => s,
                _ if matches!((seq, n.iseq), (Some(q), Some(i)) if i > *q) => "superseded",
                Some(s) => s,
                None => "pending",
            };
            c.nodes += 1;
            c.add(s, 1);
            if let Some((_, st, hit, healed)) = row {
                c.hit_failure += u64::from(*hit);
                c.self_healed += u64::from(*healed && st == "done");
            }
        }
        out.push(c.tidy());
    }
    Ok(out)
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
    /// Center time of the last report.
    pub last_seen: i64,
    pub first_seen: i64,
    pub agent_version: Option<String>,
    /// The node's own clock in its latest report (shown, never used to order).
    pub node_time: Option<i64>,
    /// In the cycle asked for (or the latest state, `silent` when not seen for too long).
    pub state: String,
    pub silent: bool,
}

const NODE_COLS: &str = "n.node_id, n.variant, n.labels, n.installed_cycle,
    n.installed_sequence, n.last_state, n.last_reason, n.last_cycle, n.last_seen, n.first_seen,
    n.agent_version, n.node_time";

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
        node_time: r.get(11)?,
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
    let inner = select_sql(cycle.is_some(), f, &format!(", {NODE_COLS}"));
    let sql = format!(
        "SELECT node_id, variant, labels, installed_cycle, installed_sequence, last_state,
            last_reason, last_cycle, last_seen, first_seen, agent_version, node_time, s
         FROM ({inner}) WHERE (:state IS NULL OR s = :state)
         ORDER BY CASE s WHEN 'failed' THEN 0 WHEN 'rolled-back' THEN 1 WHEN 'quarantined' THEN 2
           WHEN 'error' THEN 3 WHEN 'silent' THEN 4 WHEN 'deferred' THEN 5 WHEN 'pending' THEN 6
           ELSE 7 END, node_id
         LIMIT :limit"
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
    /// The node's clock (max of system time and its ratchet): shown, never trusted.
    pub node_time: i64,
    /// The center's clock when the report arrived.
    pub received: i64,
    pub report_seq: i64,
    pub source: String,
    pub snapshot_id: Option<String>,
    pub timings: String,
    pub dropped_before: i64,
    /// Fingerprint of the key that signed it, and whether it counts.
    pub key_id: String,
    pub counted: bool,
}

/// A node's reports under the keys it was accepted with (the accepted one, retired ones), newest
/// first (key generation, then node sequence, then center time).
pub fn history(conn: &Connection, id: &str, limit: usize) -> anyhow::Result<Vec<HistoryRow>> {
    history_where(conn, id, limit, false)
}

/// Reports under keys of this node id that are not accepted (a reimaged node, an impostor):
/// shown apart, after the history, so they never bury it.
pub fn pending_history(
    conn: &Connection,
    id: &str,
    limit: usize,
) -> anyhow::Result<Vec<HistoryRow>> {
    history_where(conn, id, limit, true)
}

fn history_where(
    conn: &Connection,
    id: &str,
    limit: usize,
    pending: bool,
) -> anyhow::Result<Vec<HistoryRow>> {
    let mut st = conn.prepare_cached(
        "SELECT r.id, r.cycle, r.sequence, r.command, r.exit_code, r.result, r.state, r.reason,
            max(r.time, r.trusted_time), r.received, r.report_seq, r.source, r.snapshot_id,
            r.timings, r.dropped_before, k.pubkey, r.counted
         FROM reports r JOIN node_keys k ON k.key_no = r.key_no
         WHERE r.node_id = ?1 AND (k.status = 'unaccepted') = ?3
         ORDER BY r.key_no DESC, r.report_seq DESC, r.received DESC, r.rowid DESC LIMIT ?2",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = st.query_map(params![id, limit, pending], |r| {
        Ok(HistoryRow {
            id: r.get(0)?,
            cycle: r.get(1)?,
            sequence: r.get(2)?,
            command: r.get(3)?,
            exit_code: r.get(4)?,
            result: r.get(5)?,
            state: r.get(6)?,
            reason: r.get(7)?,
            node_time: r.get(8)?,
            received: r.get(9)?,
            report_seq: r.get(10)?,
            source: r.get(11)?,
            snapshot_id: r.get(12)?,
            timings: r.get(13)?,
            dropped_before: r.get(14)?,
            key_id: key_id(&r.get::<_, String>(15)?),
            counted: r.get(16)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// When each matching node first finished `cycle` (center time), oldest first (for the plot).
pub fn done_times(conn: &Connection, cycle: &str, f: &Filter) -> anyhow::Result<Vec<i64>> {
    let sql = format!(
        "SELECT nc.done_time FROM cycle_variants cv JOIN nodes n ON n.variant = cv.variant
         {} JOIN node_cycles nc ON nc.node_id = n.node_id AND nc.cycle = cv.cycle
         WHERE cv.cycle = :cycle AND nc.done_time IS NOT NULL {} ORDER BY nc.done_time",
        if f.label.is_some() {
            "JOIN node_labels l ON l.node_id = n.node_id AND l.key = :lkey AND l.value = :lvalue"
        } else {
            ""
        },
        if f.variant.is_some() {
            "AND n.variant = :variant"
        } else {
            ""
        }
    );
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
        .query_row("SELECT count(*) FROM reports", [], |r| {
            r.get::<_, Option<i64>>(0)
        })?
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::center::model::WireReport;

    fn rep(id: &str, node: &str, cycle: &str, code: i32, seq: u64) -> WireReport {
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
            time: 1_700_000_000,
            trusted_time: 0,
            report_seq: seq,
            dropped_before: 0,
        }
    }

    fn env(reports: Vec<WireReport>) -> Envelope {
        Envelope {
            pubkey: reports[0].node_pubkey.clone(),
            node_id: Some(reports[0].node_id.clone()),
            exported_at: 0,
            status: None,
            reports,
        }
    }

    fn db() -> (tempfile::TempDir, Connection) {
        let d = tempfile::tempdir().unwrap();
        let c = open(&d.path().join("c.db")).unwrap();
        (d, c)
    }

    fn st(c: &Connection, cycle: &str) -> Counts {
        counts(c, Some(cycle), &Filter::default(), 0).unwrap()
    }

    #[test]
    fn unaccepted_until_accepted_then_replayed() {
        let (_d, mut c) = db();
        let t = now();
        let (got, state) =
            ingest(&mut c, &env(vec![rep("a", "n1", "c1", 6, 1)]), t, "http").unwrap();
        assert_eq!((got.accepted, got.counted, state), (1, 0, "unaccepted"));
        assert_eq!(st(&c, "c1").nodes, 0);
        assert_eq!(accept(&mut c, "n1").unwrap(), 1);
        assert_eq!(st(&c, "c1").get("failed"), 1);
        // Later reports count at once; a retry is a duplicate.
        let (got, _) = ingest(&mut c, &env(vec![rep("b", "n1", "c1", 0, 2)]), t, "http").unwrap();
        assert_eq!(got.counted, 1);
        let (got, _) = ingest(&mut c, &env(vec![rep("b", "n1", "c1", 0, 2)]), t, "http").unwrap();
        assert_eq!(got.duplicates, 1);
        let cn = st(&c, "c1");
        assert_eq!((cn.get("done"), cn.hit_failure, cn.self_healed), (1, 1, 1));
        // Another key under the same id waits; it never blocks and never counts.
        let mut forged = rep("b", "n1", "c1", 7, 99);
        forged.node_pubkey = "cd".repeat(32);
        let (got, state) = ingest(&mut c, &env(vec![forged]), t, "http").unwrap();
        assert_eq!((got.accepted, state), (1, "unaccepted"));
        assert_eq!(st(&c, "c1").get("done"), 1);
        assert!(accept(&mut c, "nobody").is_err());
    }

    #[test]
    fn outcomes_stick_and_order_is_by_sequence() {
        let (_d, mut c) = db();
        let t = now();
        preauthorize(&mut c, &[("n1".into(), "ab".repeat(32))]).unwrap();
        // Rolled back, then "not newer" reports: still rolled back.
        ingest(
            &mut c,
            &env(vec![rep("a", "n1", "c1", 7, 1), rep("b", "n1", "c1", 4, 2)]),
            t,
            "http",
        )
        .unwrap();
        assert_eq!(st(&c, "c1").get("rolled-back"), 1);
        // An older report arriving late does not win.
        ingest(&mut c, &env(vec![rep("z", "n1", "c1", 5, 0)]), t + 5, "usb").unwrap();
        assert_eq!(st(&c, "c1").get("rolled-back"), 1);
        // Reports about c2 do not touch c1.
        let mut r = rep("c", "n1", "c2", 0, 3);
        r.sequence = Some(2);
        r.installed_sequence = Some(2);
        ingest(&mut c, &env(vec![r]), t, "http").unwrap();
        assert_eq!(st(&c, "c1").get("rolled-back"), 1);
        assert_eq!(st(&c, "c2").get("done"), 1);
    }

    #[test]
    fn pending_only_for_the_cycles_variant_and_superseded() {
        let (_d, mut c) = db();
        let t = now();
        let mut keys = Vec::new();
        for (n, k) in [("n1", "01"), ("n3", "03"), ("n2", "02")] {
            keys.push((n.to_string(), k.repeat(32)));
        }
        preauthorize(&mut c, &keys).unwrap();
        let with_key = |mut r: WireReport, k: &str| {
            r.node_pubkey = k.repeat(32);
            r
        };
        // n1 (debian) does c1 (seq 1); n3 (debian) reports nothing about c1 but is on seq 2;
        // n2 (rhel) is another variant.
        ingest(
            &mut c,
            &env(vec![with_key(rep("a", "n1", "c1", 0, 1), "01")]),
            t,
            "http",
        )
        .unwrap();
        let mut r = with_key(rep("b", "n3", "c2", 0, 1), "03");
        r.sequence = Some(2);
        r.installed_sequence = Some(2);
        ingest(&mut c, &env(vec![r]), t, "http").unwrap();
        ingest(
            &mut c,
            &env(vec![with_key(rep("c", "n2", "r1", 0, 1), "02")]),
            t,
            "http",
        )
        .unwrap();
        let cn = st(&c, "c1");
        assert_eq!(
            (
                cn.nodes,
                cn.get("done"),
                cn.get("superseded"),
                cn.get("pending")
            ),
            (2, 1, 1, 0)
        );
        // A node that silently lost its bundle: pending once it reports without c1.
        let (list, total) = nodes(&c, Some("c1"), &Filter::default(), 0, 10).unwrap();
        assert_eq!(total, 2);
        assert_eq!(list.len(), 2);
        assert_eq!(cycles(&c, 10).unwrap().len(), 3);
        let f = Filter::parse(Some("rhel-9"), Some("role=till"), None).unwrap();
        assert_eq!(counts(&c, Some("r1"), &f, 0).unwrap().get("done"), 1);
        assert_eq!(done_times(&c, "c1", &Filter::default()).unwrap(), vec![t]);
        assert_eq!(history(&c, "n1", 10).unwrap().len(), 1);
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
