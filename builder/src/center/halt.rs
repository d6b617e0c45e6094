//! Automatic halt: when the share of nodes that failed or rolled back a cycle passes a threshold
//! (the policy's `haltFailurePercent`), the center writes a signed halt order for that cycle and
//! variant into the orders directory (publish it with the mirror: `publish --order FILE`). Nodes
//! that have not started the cycle then defer it (exit 5); nodes that finished are not touched.
//! `order --kind resume` lifts it; written as `resume-VARIANT-CYCLE.order` into the orders
//! directory it also keeps this rule from halting the same cycle again.

use anyhow::Result;
use rusqlite::Connection;
use std::path::{Path, PathBuf};

pub struct HaltRule<'a> {
    pub percent: u64,
    /// Decide only once this many nodes finished the cycle (done + failed + rolled back).
    pub min_finished: u64,
    pub key: &'a ed25519_compact::SecretKey,
    pub orders_dir: &'a Path,
}

/// (cycle, variant, failed or rolled back, done) for every cycle with reports of accepted nodes,
/// each node counted by its own state in that cycle (an outcome is not erased by later reports).
pub fn failure_counts(conn: &Connection) -> Result<Vec<(String, String, u64, u64)>> {
    let mut st = conn.prepare(
        "SELECT nc.cycle, n.variant,
                sum(nc.state IN ('failed', 'rolled-back')), sum(nc.state = 'done')
         FROM node_cycles nc JOIN nodes n ON n.node_id = nc.node_id
         GROUP BY nc.cycle, n.variant ORDER BY nc.cycle, n.variant",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get::<_, i64>(2)? as u64,
            r.get::<_, i64>(3)? as u64,
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Write halt orders for every cycle over the threshold; returns the orders written now.
pub fn apply_rule(conn: &Connection, rule: &HaltRule) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(rule.orders_dir)?;
    let mut written = Vec::new();
    for (cycle, variant, failed, done) in failure_counts(conn)? {
        let finished = failed + done;
        if finished < rule.min_finished.max(1) || failed * 100 < rule.percent * finished {
            continue;
        }
        let out = rule
            .orders_dir
            .join(format!("halt-{variant}-{cycle}.order"));
        if out.exists() {
            continue;
        }
        // The operator lifted a halt for this cycle ('order --kind resume'): do not halt again.
        let resume = rule
            .orders_dir
            .join(format!("resume-{variant}-{cycle}.order"));
        if resume.exists() {
            println!(
                "{variant} {cycle}: {failed} of {finished} finished nodes failed or rolled back, \
                 but {} lifts the halt; not halting again",
                resume.display()
            );
            continue;
        }
        crate::order::write_order(rule.key, "halt", &variant, &cycle, 30 * 86400, &out)?;
        println!(
            "HALT {variant} {cycle}: {failed} of {finished} finished nodes failed or rolled back (>= {}%); order {}",
            rule.percent,
            out.display()
        );
        written.push(out);
    }
    Ok(written)
}
