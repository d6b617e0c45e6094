//! `fetch`: one pass over the mirror. Read the signed index, download the bundle that is due into
//! `incoming/<file>.partial` (resumable across runs and reboots), verify every byte, and only then
//! rename it to `incoming/<file>` where `apply` finds it.
//!
//! ```text
//! window   outside `transfer_window` (node local time, root/etc/localtime): exit 5, no traffic
//! index    GET MIRROR/<variant>/index, capped at signed::MAX_DOC; signature by a trusted key;
//!          variant must be ours; not expired; `published` not older than the last index seen
//!          (state_dir/index-seen), so a stale or replaying mirror cannot roll a node back
//! due      highest full bundle with sequence > installed and not expired; done if incoming/
//!          already holds it
//! space    statvfs: the rest of the download (+1 MiB) must fit; the size comes from the index
//! get      Range: bytes=N- with If-Range (strong ETag, else Last-Modified) so a file changed on
//!          the mirror restarts instead of mixing; never more than the index's size is read;
//!          429/503 honour Retry-After; other failures back off exponentially with full jitter;
//!          reads go through a token bucket (`bwlimit`); the pass ends at the earlier of its time
//!          budget and the end of the transfer window, keeping the partial file
//! verify   sha256 of the whole file against the index, and `verify_stream` over the same bytes;
//!          a file whose sha256 is wrong is deleted (and reported, exit 2) and fetched again on
//!          the next pass; a file that matches the index but fails verification is quarantined
//! ```
//!
//! `EDGEPATCH_HTTP_TIMEOUT` (seconds, default 30) bounds each network read, so a stalled mirror
//! costs at most that long per attempt.

mod download;
mod http;
mod pacing;

use download::*;
use http::*;
use pacing::*;
pub use pacing::{backoff, local_zone, window_check, Bucket, Rng};

use crate::bundle::format::hex;
use crate::bundle::index::{check_variant, Index, IndexBundle};
use crate::node::ctx::{Ctx, RunInfo};
use crate::node::outcome::finish;
use crate::node::state::Installed;
use crate::node::store;
use crate::support::clock::Ratchet;
use crate::support::error::{Error, Exit, Result};
use crate::support::kv::Record;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Default per-pass time budget.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(4 * 3600);
/// The longest `--budget` a pass takes (a week; larger values are refused, not overflowed).
pub const MAX_BUDGET: Duration = Duration::from_secs(7 * 24 * 3600);
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_BASE_MS: u64 = 1000;
const BACKOFF_CAP_MS: u64 = 60_000;
/// Consecutive failed attempts without progress before the pass gives up: few for the index (an
/// unreachable mirror must not hold up import and apply in `run`), more for a download under way.
const INDEX_ATTEMPTS: u32 = 3;
const DOWNLOAD_ATTEMPTS: u32 = 8;
const MAX_RETRY_AFTER: u64 = 6 * 3600;
const SPACE_MARGIN: u64 = 1 << 20;
const INDEX_SEEN: &str = "index-seen";

pub struct Options {
    pub budget: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            budget: DEFAULT_BUDGET,
        }
    }
}

/// `edgepatch fetch`: lock, one pass, record the result.
pub fn command(ctx: &Ctx, opts: &Options) -> Result<String> {
    let _lock = crate::node::lock::acquire_transfer(&ctx.config.state_dir)?;
    let mut info = RunInfo::default();
    let result = pass(ctx, opts, &mut info);
    finish(ctx, "fetch", &result, &info);
    result
}

/// Remove downloads in progress that are not `keep` (bundles no longer due).
fn drop_stale_partials(incoming: &Path, keep: &str) {
    let Ok(rd) = std::fs::read_dir(incoming) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let stem = name
            .strip_suffix(".partial")
            .or_else(|| name.strip_suffix(".partial.meta"));
        if let Some(stem) = stem.filter(|s| *s != keep) {
            log::info!("removing stale download {name} ({stem} is no longer due)");
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Is a bundle with this manifest already complete in incoming/?
fn already_complete(ctx: &Ctx, incoming: &Path, want: &IndexBundle) -> Option<PathBuf> {
    let direct = incoming.join(&want.file);
    let mut candidates = vec![direct];
    if let Ok(rd) = std::fs::read_dir(incoming) {
        candidates.extend(
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "epb")),
        );
    }
    candidates.into_iter().find(|p| {
        crate::support::fsutil::open_bundle(p)
            .ok()
            .and_then(|mut r| crate::bundle::verify::authenticate(&mut r, ctx.trusted).ok())
            .is_some_and(|v| v.manifest_sha256 == want.manifest_sha256)
    })
}

/// Signed rollback/halt orders the index lists and this node has not carried out yet: download
/// each (size-capped, sha256 pinned by the signed index), then carry it out as
/// `edgepatch rollback --order` would. A bad order is logged and skipped, never fatal to the pass.
fn carry_out_orders(
    ctx: &Ctx,
    mirror: &str,
    ix: &Index,
    stop: &Stop,
    rng: &mut Rng,
    info: &mut RunInfo,
) {
    let dir = ctx.config.state_dir.join("orders-in");
    for order in &ix.orders {
        let sum = crate::bundle::format::hex(&order.sha256);
        if crate::node::marks::order_done(&ctx.config.state_dir, &sum) {
            continue;
        }
        let url = format!("{mirror}/{}/orders/{}", ctx.config.variant, order.file);
        let body = match fetch_index(&url, stop, rng) {
            Ok(b) => b,
            Err(e) => {
                log::warn!("order {url}: {e}");
                continue;
            }
        };
        if crate::bundle::format::sha256(&body) != order.sha256 {
            log::warn!("order {url}: sha256 differs from the signed index; ignored");
            continue;
        }
        let path = dir.join(&order.file);
        let saved = crate::support::fsutil::create_dir_mode(&dir, 0o700)
            .and_then(|_| crate::support::fsutil::write_atomic(&path, &body, false));
        if let Err(e) = saved {
            log::warn!("order {}: {e}", path.display());
            continue;
        }
        // Orders change the machine: they need the install lock, which an apply may hold.
        let Ok(_install) = crate::node::lock::acquire(&ctx.config.state_dir) else {
            log::warn!(
                "order {}: an install is running; carried out next pass",
                order.file
            );
            continue;
        };
        // Each order is its own outcome, reported as order-<kind>.
        let mut done = RunInfo::default();
        let result = crate::node::rollback::carry_out_order(ctx, &path, &mut done);
        match &result {
            Ok(msg) => log::warn!("order {}: {msg}", order.file),
            Err(e) => log::warn!("order {}: {e}", order.file),
        }
        let command = done.command.clone().unwrap_or_else(|| "order".into());
        finish(ctx, &command, &result, &done);
        if info.restored.is_none() {
            info.restored = done.restored;
        }
    }
}

/// One fetch pass, with the lock already held.
pub fn pass(ctx: &Ctx, opts: &Options, info: &mut RunInfo) -> Result<String> {
    let cfg = ctx.config;
    let mirror = cfg.mirror.as_deref().ok_or_else(|| {
        Error::usage("no mirror in the config; set mirror = \"http://...\" or use import")
    })?;
    check_variant(&cfg.variant).map_err(Error::usage)?;
    if mirror.starts_with("https://") && !cfg!(feature = "tls") {
        return Err(Error::usage(format!(
            "mirror {mirror}: this agent is built without TLS; use http:// (bundles and index \
             are signed) or the agent built with --features tls"
        )));
    }
    let window_end = window_check(ctx)?;
    let now = Ratchet::new(&cfg.state_dir).now(ctx.clock);
    let mut stop = Stop {
        at: Instant::now() + opts.budget,
        window: false,
    };
    if let Some(end) = window_end {
        let left = Duration::from_secs(end.saturating_sub(now));
        if left < opts.budget {
            stop = Stop {
                at: Instant::now() + left,
                window: true,
            };
        }
    }
    let mut rng = Rng::seeded();
    let index_url = format!("{mirror}/{}/index", cfg.variant);
    let doc = fetch_index(&index_url, &stop, &mut rng)?;
    let mut ix = accept_index(ctx, &index_url, &doc, now)?;
    carry_out_orders(ctx, mirror, &ix, &stop, &mut rng, info);
    // A cycle rolled back here (state_dir/refused) would only be refused again: never fetch it.
    ix.bundles.retain(|b| {
        let refused = crate::node::marks::is_refused(&cfg.state_dir, &b.cycle);
        if refused {
            log::info!("cycle {} was rolled back here: not fetched", b.cycle);
        }
        !refused
    });

    let installed = Installed::load(&cfg.state_dir)?.map(|i| i.sequence);
    // The packages of the bundle applied last are the base a delta bundle is rebuilt from.
    let cached =
        crate::node::store::cached_manifest(&crate::node::store::cache_current(&cfg.state_dir))
            .map(|m| m.sequence);
    let Some(want) = ix.due_with_cache(installed, cached, now) else {
        return Ok(format!(
            "nothing to fetch: installed sequence {}, index (published {}) offers {}",
            installed.map_or("none".into(), |s| s.to_string()),
            crate::support::clock::iso_utc(ix.published),
            ix.bundles
                .iter()
                .map(|b| b.sequence)
                .max()
                .map_or("nothing".into(), |s| s.to_string())
        ));
    };
    info.cycle = Some(want.cycle.clone());
    info.sequence = Some(want.sequence);
    let incoming = store::incoming_dir(&cfg.state_dir);
    crate::support::fsutil::create_dir_mode(&incoming, 0o700)
        .map_err(|e| Error::io(Exit::Usage, &incoming, e))?;
    if let Some(p) = already_complete(ctx, &incoming, want) {
        drop_stale_partials(&incoming, "");
        return Ok(format!(
            "cycle {} sequence {} already complete in {}",
            want.cycle,
            want.sequence,
            p.display()
        ));
    }
    drop_stale_partials(&incoming, &want.file);
    let (part, meta_path) = partial_paths(&incoming, &want.file);
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let need = want.size.saturating_sub(have) + SPACE_MARGIN;
    if let Ok(free) = crate::support::fsutil::free_bytes(&incoming) {
        if free < need {
            return Err(deferred(format!(
                "{}: {free} bytes free, the download needs {need}; free space in state_dir",
                incoming.display()
            )));
        }
    }

    let mut dl = Download {
        url: format!("{mirror}/{}/bundles/{}", cfg.variant, want.file),
        part: part.clone(),
        meta_path: meta_path.clone(),
        want,
        bucket: cfg.bwlimit.map(Bucket::new),
        started_at: have,
        received: 0,
    };
    let t0 = Instant::now();
    let url = dl.url.clone();
    with_retries(&stop, &mut rng, DOWNLOAD_ATTEMPTS, &url, |progress| {
        dl.attempt(&stop, progress)
    })?;
    let ms = t0.elapsed().as_millis().max(1) as u64;
    log::info!(
        "{url}: {} bytes in {ms} ms ({} KiB/s){}",
        dl.received,
        dl.received * 1000 / ms / 1024,
        if dl.started_at > 0 {
            format!(", resumed at byte {}", dl.started_at)
        } else {
            String::new()
        }
    );

    match verify_download(ctx, &part, want, installed) {
        Ok(_) => {}
        Err(Refused::Corrupt(e)) => {
            let _ = std::fs::remove_file(&part);
            let _ = std::fs::remove_file(&meta_path);
            return Err(e);
        }
        Err(Refused::Bad(e)) => {
            // Keep it for the technician, never for apply.
            let _ = std::fs::remove_file(&meta_path);
            let q = store::quarantine(&cfg.state_dir, &part, &e.msg, now);
            if !matches!(q, Ok((_, true))) {
                let _ = std::fs::remove_file(&part);
            }
            return Err(Error::new(
                e.exit,
                format!("{}{}", e.msg, store::quarantine_note(&q)),
            ));
        }
    }
    let done = incoming.join(&want.file);
    std::fs::rename(&part, &done).map_err(|e| Error::io(Exit::Usage, &done, e))?;
    let _ = std::fs::remove_file(&meta_path);
    crate::support::fsutil::sync_dir(&incoming)
        .map_err(|e| Error::io(Exit::Usage, &incoming, e))?;
    Ok(format!(
        "fetched cycle {} sequence {} ({} bytes{}) into {}",
        want.cycle,
        want.sequence,
        want.size,
        if dl.started_at > 0 {
            format!(", resumed at byte {}", dl.started_at)
        } else {
            String::new()
        },
        done.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(content_range("items 1-2/3"), None);
    }

    #[test]
    fn backoff_is_full_jitter_and_capped() {
        let mut rng = Rng(42);
        for attempt in 0..30 {
            let d = backoff(&mut rng, attempt);
            let ceiling = (BACKOFF_BASE_MS << attempt.min(20)).min(BACKOFF_CAP_MS);
            assert!(d.as_millis() as u64 <= ceiling, "{attempt}: {d:?}");
        }
        let spread: Vec<u64> = (0..50)
            .map(|_| backoff(&mut rng, 5).as_millis() as u64)
            .collect();
        assert!(spread.iter().any(|&d| d < 8000) && spread.iter().any(|&d| d > 24000));
    }

    #[test]
    fn bucket_holds_the_rate() {
        let mut b = Bucket::new(400 * 1024);
        let t = Instant::now();
        let stop = t + Duration::from_secs(10);
        let mut total = 0usize;
        while total < 200 * 1024 {
            assert!(b.wait_for(b.chunk(), stop));
            b.spend(b.chunk());
            total += b.chunk();
        }
        let secs = t.elapsed().as_secs_f64();
        assert!((0.45..0.6).contains(&secs), "{secs}");
        // A stop time before the tokens arrive ends the wait.
        let mut b = Bucket::new(1024);
        assert!(!b.wait_for(4096, Instant::now() + Duration::from_millis(10)));
    }

    #[test]
    fn meta_prefers_strong_etag() {
        let m = Meta {
            sha256: String::new(),
            etag: Some("W/\"x\"".into()),
            last_modified: Some("Tue, 01 Jan 2030 00:00:00 GMT".into()),
        };
        assert_eq!(m.if_range(), Some("Tue, 01 Jan 2030 00:00:00 GMT"));
        let m = Meta {
            etag: Some("\"abc\"".into()),
            ..m
        };
        assert_eq!(m.if_range(), Some("\"abc\""));
    }
}
