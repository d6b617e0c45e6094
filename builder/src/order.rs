//! `order`: a signed rollback, halt or resume order for one cycle of one variant. It travels like
//! everything else (mirror index, USB stick) and is checked by the agent against its trusted
//! keys; an unsigned HTTP call can never roll a fleet back.

use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct OrderArgs {
    /// Secret key file (from keygen)
    #[arg(long)]
    pub key: PathBuf,
    /// rollback: nodes with the cycle installed roll back, all refuse it; halt: nodes that have
    /// not started it wait; resume: lifts a halt of the cycle (name it
    /// resume-VARIANT-CYCLE.order in the center's --orders-dir so it does not halt again)
    #[arg(long, value_parser = ["rollback", "halt", "resume"])]
    pub kind: String,
    #[arg(long)]
    pub variant: String,
    #[arg(long)]
    pub cycle: String,
    /// How long nodes accept the order: a number with s, m, h or d
    #[arg(long, default_value = "14d", value_parser = crate::build::parse_duration)]
    pub expires_in: u64,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: &OrderArgs) -> Result<()> {
    let key_text = std::fs::read_to_string(&args.key)
        .with_context(|| format!("key {}", args.key.display()))?;
    let sk = edgepatch::bundle::keys::parse_secret(&key_text, &args.key.display().to_string())
        .map_err(anyhow::Error::msg)?;
    write_order(
        &sk,
        &args.kind,
        &args.variant,
        &args.cycle,
        args.expires_in,
        &args.out,
    )?;
    println!(
        "{} order for {} cycle {} written to {}",
        args.kind,
        args.variant,
        args.cycle,
        args.out.display()
    );
    Ok(())
}

/// Sign and write one order (also used by the center's automatic halt).
pub fn write_order(
    sk: &ed25519_compact::SecretKey,
    kind: &str,
    variant: &str,
    cycle: &str,
    expires_in: u64,
    out: &std::path::Path,
) -> Result<()> {
    for (what, v) in [("variant", variant), ("cycle", cycle)] {
        anyhow::ensure!(
            !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()),
            "{what} {v:?} must be printable with no spaces"
        );
    }
    let issued = edgepatch::support::clock::Clock::now(&edgepatch::support::clock::SystemClock);
    let body = format!(
        "edgepatch-order 1\nkind {kind}\nvariant {variant}\ncycle {cycle}\nissued {issued}\nexpires {}\n",
        issued + expires_in
    );
    let doc = edgepatch::bundle::signed::seal(&body, &[sk]);
    edgepatch::support::fsutil::write_atomic(out, doc.as_bytes(), false)
        .with_context(|| format!("writing {}", out.display()))
}
