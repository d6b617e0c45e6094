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

use crate::apply::{self, Ctx, RunInfo};
use crate::clock::Ratchet;
use crate::error::{Error, Exit, Result};
use crate::format::hex;
use crate::index::{check_variant, Index, IndexBundle};
use crate::kv::Record;
use crate::state::Installed;
use crate::store;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Default per-pass time budget.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(4 * 3600);
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

/// `edgepatch fetch [--budget DURATION]` from the command line.
pub fn main(config: &crate::config::Config, rest: &[std::ffi::OsString]) -> Result<()> {
    let mut opts = Options::default();
    let mut it = rest.iter().map(|a| a.to_str());
    while let Some(arg) = it.next() {
        match arg {
            Some("--budget") => {
                let v = it.next().flatten().unwrap_or("");
                let secs = crate::config::parse_duration(v)
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| {
                        Error::usage(format!("--budget {v:?}: use e.g. 90, 10m or 2h"))
                    })?;
                opts.budget = Duration::from_secs(secs);
            }
            _ => return Err(Error::usage("usage: edgepatch fetch [--budget DURATION]")),
        }
    }
    let trusted = crate::run::trusted_keys(config, &[], true)?;
    let clock = crate::clock::from_env();
    let ctx = Ctx {
        config,
        trusted: &trusted,
        clock: clock.as_ref(),
    };
    let msg = command(&ctx, &opts)?;
    println!("ok: {msg}");
    Ok(())
}

/// `edgepatch fetch`: lock, one pass, record the result.
pub fn command(ctx: &Ctx, opts: &Options) -> Result<String> {
    let _lock = crate::lock::acquire(&ctx.config.state_dir)?;
    let mut info = RunInfo::default();
    let result = pass(ctx, opts, &mut info);
    apply::finish(ctx, "fetch", &result, &info);
    result
}

// ---------------------------------------------------------------------------------------------
// Small helpers: randomness for jitter and splay, the token bucket, the stop time.

/// xorshift64*: jitter and splay only, nothing secret.
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng(t ^ ((std::process::id() as u64) << 32) ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in 0..n (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// Full-jitter exponential backoff: uniform in [0, min(cap, base * 2^attempt)).
pub fn backoff(rng: &mut Rng, attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE_MS
        .saturating_mul(1u64 << attempt.min(20))
        .min(BACKOFF_CAP_MS);
    Duration::from_millis(rng.below(ceiling + 1))
}

/// A token bucket over the read loop: `rate` bytes per second, bursts of at most `cap` bytes.
/// It starts nearly empty, so the first seconds are not a burst.
pub struct Bucket {
    rate: f64,
    cap: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: u64) -> Bucket {
        let rate = rate.max(1) as f64;
        let chunk = ((rate / 8.0) as usize).clamp(1024, 64 * 1024);
        Bucket {
            rate,
            // Room for two reads, so time spent reading and writing still earns tokens (a
            // bucket that is exactly full when a read starts would drop them).
            cap: (rate / 4.0).max(2.0 * chunk as f64),
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    /// Largest read that keeps the granularity fine (about an eighth of a second of traffic).
    pub fn chunk(&self) -> usize {
        ((self.rate / 8.0) as usize).clamp(1024, 64 * 1024)
    }

    /// Wait until `n` bytes may be read (never past `stop`); returns false if `stop` came first.
    pub fn wait_for(&mut self, n: usize, stop: Instant) -> bool {
        loop {
            let now = Instant::now();
            self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate)
                .min(self.cap);
            self.last = now;
            if self.tokens >= n as f64 {
                return true;
            }
            let wait = Duration::from_secs_f64((n as f64 - self.tokens) / self.rate);
            if now + wait > stop {
                return false;
            }
            std::thread::sleep(wait);
        }
    }

    /// Account for bytes actually read (may be fewer than waited for).
    pub fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

/// When this pass must stop, and why (for the message).
#[derive(Clone, Copy)]
struct Stop {
    at: Instant,
    window: bool,
}

impl Stop {
    fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }
    fn passed(&self) -> bool {
        Instant::now() >= self.at
    }
    fn why(&self) -> &'static str {
        if self.window {
            "the transfer window closed"
        } else {
            "the per-pass time budget is used up"
        }
    }
}

fn deferred(msg: impl Into<String>) -> Error {
    Error::new(Exit::Deferred, msg)
}

// ---------------------------------------------------------------------------------------------
// The transfer window.

/// The node's own time zone: `root/etc/localtime`, UTC when there is none.
pub fn local_zone(root: &Path) -> Result<crate::policy::Tz> {
    let etc = root.join("etc");
    if !etc.join("localtime").exists() {
        log::info!(
            "{} not found; evaluating transfer_window in UTC",
            etc.join("localtime").display()
        );
        return Ok(crate::policy::Tz::utc());
    }
    crate::policy::Tz::load(&etc, "localtime").map_err(|e| {
        Error::usage(format!(
            "{e}; fix /etc/localtime or remove transfer_window from the config"
        ))
    })
}

/// None when no window is configured; Some(end) (unix seconds) when inside; Err(Deferred) outside.
pub fn window_check(ctx: &Ctx) -> Result<Option<u64>> {
    let Some(text) = &ctx.config.transfer_window else {
        return Ok(None);
    };
    let w = crate::policy::Window::parse(text)
        .map_err(|e| Error::usage(format!("transfer_window: {e}")))?;
    let tz = local_zone(&ctx.config.root)?;
    let now = Ratchet::new(&ctx.config.state_dir).now(ctx.clock) as i64;
    match w.current(&tz, now) {
        Some((_, end)) => Ok(Some(end.max(now) as u64)),
        None => {
            let next = w
                .next_window_start(&tz, now)
                .map(|t| crate::policy::local_time(&tz, t))
                .unwrap_or_else(|| "never".into());
            Err(deferred(format!(
                "outside transfer window {text:?} (next opens {next}); nothing downloaded"
            )))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP.

fn read_timeout() -> Duration {
    std::env::var("EDGEPATCH_HTTP_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0 && *v < 86400.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(READ_TIMEOUT)
}

fn http_agent(stop: &Stop) -> ureq::Agent {
    let per_read = read_timeout().min(stop.remaining() + Duration::from_millis(100));
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(per_read))
        .timeout_per_read(Some(per_read))
        .timeout_global(Some(stop.remaining() + Duration::from_millis(100)))
        .user_agent(format!("edgepatch/{}", crate::VERSION))
        .max_redirects(3)
        .build()
        .into()
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Retry-After in seconds (the HTTP-date form is treated as absent: normal backoff applies).
fn retry_after(resp: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    header(resp, "retry-after").and_then(|v| v.parse::<u64>().ok())
}

/// What one failed attempt means for the pass.
enum Fail {
    /// Try again after backoff (or after the server's Retry-After).
    Retry(String, Option<u64>),
    /// Stop this pass; try again next pass.
    Stop(Error),
}

/// Run attempts until one succeeds, backing off in between; gives up at `stop` or after
/// `max` failures without progress (`attempt` sets its flag when it made progress).
fn with_retries<T>(
    stop: &Stop,
    rng: &mut Rng,
    max: u32,
    what: &str,
    mut attempt: impl FnMut(&mut bool) -> std::result::Result<T, Fail>,
) -> Result<T> {
    let mut failures = 0u32;
    loop {
        if stop.passed() {
            return Err(deferred(format!("{what}: {} first", stop.why())));
        }
        let mut progress = false;
        let (msg, after) = match attempt(&mut progress) {
            Ok(v) => return Ok(v),
            Err(Fail::Stop(e)) => return Err(e),
            Err(Fail::Retry(m, a)) => (m, a),
        };
        if progress {
            failures = 0;
        }
        failures += 1;
        if failures >= max {
            return Err(deferred(format!(
                "{msg}; gave up after {failures} attempts, next pass retries"
            )));
        }
        let wait = match after {
            Some(s) if s > MAX_RETRY_AFTER => {
                return Err(deferred(format!(
                    "{msg}; mirror asks to wait {s}s, next pass retries"
                )))
            }
            Some(s) => Duration::from_secs(s),
            None => backoff(rng, failures - 1),
        };
        if wait >= stop.remaining() {
            return Err(deferred(format!(
                "{msg}; {} before the next attempt, next pass retries",
                stop.why()
            )));
        }
        log::warn!("{msg}; retrying in {:.1}s", wait.as_secs_f64());
        std::thread::sleep(wait);
    }
}

fn classify(url: &str, status: u16, resp: &ureq::http::Response<ureq::Body>) -> Fail {
    match status {
        429 | 503 => Fail::Retry(
            format!("{url}: HTTP {status} (mirror busy)"),
            retry_after(resp).filter(|s| *s > 0),
        ),
        408 | 500..=599 => Fail::Retry(format!("{url}: HTTP {status}"), None),
        _ => Fail::Stop(deferred(format!(
            "{url}: HTTP {status}; check the mirror URL and that publish ran"
        ))),
    }
}

fn fetch_index(url: &str, stop: &Stop, rng: &mut Rng) -> Result<Vec<u8>> {
    with_retries(stop, rng, INDEX_ATTEMPTS, url, |_| {
        let agent = http_agent(stop);
        let mut resp = agent
            .get(url)
            .call()
            .map_err(|e| Fail::Retry(format!("{url}: {e}"), None))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(classify(url, status, &resp));
        }
        let limit = crate::signed::MAX_DOC as u64;
        let mut body = Vec::new();
        resp.body_mut()
            .as_reader()
            .take(limit + 1)
            .read_to_end(&mut body)
            .map_err(|e| Fail::Retry(format!("{url}: reading: {e}"), None))?;
        if body.len() as u64 > limit {
            return Err(Fail::Stop(Error::new(
                Exit::Integrity,
                format!("{url}: index is larger than {limit} bytes; refused"),
            )));
        }
        Ok(body)
    })
}

// ---------------------------------------------------------------------------------------------
// The index.

fn seen_path(state_dir: &Path) -> PathBuf {
    state_dir.join(INDEX_SEEN)
}

/// Open the index and check it is for us, fresh, and not older than the last one seen.
fn accept_index(ctx: &Ctx, url: &str, doc: &[u8], now: u64) -> Result<Index> {
    let ix = Index::open(doc, ctx.trusted)
        .map_err(|m| Error::new(Exit::Authenticity, format!("{url}: {m}; index refused")))?;
    if ix.variant != ctx.config.variant {
        return Err(Error::new(
            Exit::NotApplicable,
            format!(
                "{url}: index is for variant {}, this node is {}; check the mirror URL",
                ix.variant, ctx.config.variant
            ),
        ));
    }
    if ix.expires <= now {
        return Err(Error::new(
            Exit::NotApplicable,
            format!(
                "{url}: index expired at {} (node time {now}); the mirror is stale, re-run publish",
                ix.expires
            ),
        ));
    }
    let sd = &ctx.config.state_dir;
    let sum = hex(&crate::format::sha256(doc));
    let seen = Record::load(&seen_path(sd)).ok().flatten();
    if let Some(seen) = seen.filter(|s| s.get("variant") == Some(&ctx.config.variant)) {
        let last = seen.num("published").unwrap_or(0);
        if ix.published < last || (ix.published == last && seen.get("sha256") != Some(&sum)) {
            return Err(Error::new(
                Exit::NotApplicable,
                format!(
                    "{url}: index published {} is older than one already seen ({last}); \
                     stale mirror or replay, refused",
                    ix.published
                ),
            ));
        }
    }
    let mut r = Record::new();
    r.set("variant", &ix.variant)
        .set("published", ix.published)
        .set("expires", ix.expires)
        .set("sha256", &sum);
    let p = seen_path(sd);
    r.save(&p).map_err(|e| Error::io(Exit::Usage, &p, e))?;
    Ok(ix)
}

// ---------------------------------------------------------------------------------------------
// Download with resume.

fn partial_paths(incoming: &Path, file: &str) -> (PathBuf, PathBuf) {
    (
        incoming.join(format!("{file}.partial")),
        incoming.join(format!("{file}.partial.meta")),
    )
}

/// Validators of the partial file, so a resume only continues the same file.
struct Meta {
    sha256: String,
    etag: Option<String>,
    last_modified: Option<String>,
}

impl Meta {
    fn load(path: &Path) -> Option<Meta> {
        let r = Record::load(path).ok().flatten()?;
        Some(Meta {
            sha256: r.get("sha256")?.to_string(),
            etag: r.get("etag").map(str::to_string),
            last_modified: r.get("last_modified").map(str::to_string),
        })
    }
    fn save(&self, path: &Path) -> Result<()> {
        let mut r = Record::new();
        r.set("sha256", &self.sha256);
        if let Some(e) = &self.etag {
            r.set("etag", e);
        }
        if let Some(l) = &self.last_modified {
            r.set("last_modified", l);
        }
        r.save(path).map_err(|e| Error::io(Exit::Usage, path, e))
    }
    /// The If-Range value: a strong ETag, else Last-Modified (weak ETags may not be used).
    fn if_range(&self) -> Option<&str> {
        self.etag
            .as_deref()
            .filter(|e| !e.starts_with("W/"))
            .or(self.last_modified.as_deref())
    }
}

/// `bytes START-END/TOTAL` -> (start, total)
fn content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

fn free_space(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

struct Download<'a> {
    url: String,
    part: PathBuf,
    meta_path: PathBuf,
    want: &'a IndexBundle,
    bucket: Option<Bucket>,
    started_at: u64,
    received: u64,
}

impl Download<'_> {
    fn have(&self) -> u64 {
        std::fs::metadata(&self.part).map(|m| m.len()).unwrap_or(0)
    }

    fn restart(&self, why: &str) -> std::result::Result<(), Fail> {
        log::warn!("{}: {why}; restarting the download from byte 0", self.url);
        let _ = std::fs::remove_file(&self.meta_path);
        match std::fs::remove_file(&self.part) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Fail::Stop(Error::io(Exit::Usage, &self.part, e))),
        }
    }

    /// One HTTP attempt. Ok(()) when the partial file holds `want.size` bytes.
    fn attempt(&mut self, stop: &Stop, progress: &mut bool) -> std::result::Result<(), Fail> {
        let size = self.want.size;
        let mut have = self.have();
        if have > size {
            self.restart(&format!("partial file has {have} bytes, index says {size}"))?;
            have = 0;
        }
        if have == size {
            return Ok(());
        }
        let meta = Meta::load(&self.meta_path).filter(|m| m.sha256 == hex(&self.want.sha256));
        if have > 0 && meta.is_none() {
            self.restart("partial file has no matching validators")?;
            have = 0;
        }
        let url = &self.url;
        let mut req = http_agent(stop).get(url);
        if have > 0 {
            req = req.header("Range", &format!("bytes={have}-"));
            if let Some(v) = meta.as_ref().and_then(|m| m.if_range()) {
                req = req.header("If-Range", v);
            }
        }
        let mut resp = req
            .call()
            .map_err(|e| Fail::Retry(format!("{url}: {e}"), None))?;
        let status = resp.status().as_u16();
        let offset = match status {
            200 => {
                if have > 0 {
                    self.restart("mirror sent the whole file (changed, or no Range support)")?;
                }
                0
            }
            206 => {
                let cr = header(&resp, "content-range").and_then(|v| content_range(&v));
                match cr {
                    Some((start, total)) if start == have && total.is_none_or(|t| t == size) => {
                        have
                    }
                    _ => {
                        self.restart(&format!(
                            "Content-Range {:?} does not continue byte {have} of {size}",
                            header(&resp, "content-range")
                        ))?;
                        return Err(Fail::Retry(
                            format!("{url}: unusable partial response"),
                            None,
                        ));
                    }
                }
            }
            416 => {
                self.restart("mirror refused the range")?;
                return Err(Fail::Retry(format!("{url}: HTTP 416"), Some(0)));
            }
            _ => return Err(classify(url, status, &resp)),
        };
        if let Some(cl) = header(&resp, "content-length").and_then(|v| v.parse::<u64>().ok()) {
            if cl != size - offset {
                log::warn!(
                    "{url}: declares {cl} bytes, index says {}; reading at most that",
                    size - offset
                );
            }
        }
        let new_meta = Meta {
            sha256: hex(&self.want.sha256),
            etag: header(&resp, "etag"),
            last_modified: header(&resp, "last-modified"),
        };
        if offset == 0 || meta.is_none() {
            new_meta.save(&self.meta_path).map_err(Fail::Stop)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&self.part)
            .and_then(|mut f| {
                f.set_len(offset)?;
                f.seek(SeekFrom::Start(offset))?;
                Ok(f)
            })
            .map_err(|e| Fail::Stop(Error::io(Exit::Usage, &self.part, e)))?;
        if offset > 0 {
            log::info!("{url}: resuming at byte {offset} of {size}");
        }
        // Never read more than the index says, whatever the server declares or sends.
        let mut body = resp.body_mut().as_reader().take(size - offset);
        let chunk = self.bucket.as_ref().map_or(64 * 1024, |b| b.chunk());
        let mut buf = vec![0u8; chunk];
        let mut pos = offset;
        let result = loop {
            if pos == size {
                break Ok(());
            }
            if let Some(b) = self.bucket.as_mut() {
                if !b.wait_for(chunk, stop.at) {
                    break Err(Fail::Stop(self.stopped(stop, pos)));
                }
            }
            if stop.passed() {
                break Err(Fail::Stop(self.stopped(stop, pos)));
            }
            let n = match body.read(&mut buf) {
                Ok(0) => {
                    break Err(Fail::Retry(
                        format!("{url}: connection ended at byte {pos} of {size}"),
                        None,
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if stop.passed() {
                        break Err(Fail::Stop(self.stopped(stop, pos)));
                    }
                    break Err(Fail::Retry(format!("{url}: at byte {pos}: {e}"), None));
                }
            };
            if let Some(b) = self.bucket.as_mut() {
                b.spend(n);
            }
            if let Err(e) = file.write_all(&buf[..n]) {
                break Err(Fail::Stop(Error::io(Exit::Usage, &self.part, e)));
            }
            pos += n as u64;
            self.received += n as u64;
            *progress = true;
        };
        if let Err(e) = file.sync_data() {
            return Err(Fail::Stop(Error::io(Exit::Usage, &self.part, e)));
        }
        result
    }

    fn stopped(&self, stop: &Stop, pos: u64) -> Error {
        deferred(format!(
            "{}: {}; {pos} of {} bytes kept in {}, the next pass resumes",
            self.url,
            stop.why(),
            self.want.size,
            self.part.display()
        ))
    }
}

/// Reads through while hashing (for the whole-file sha256 next to `verify_stream`).
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Why a complete download was refused.
enum Refused {
    /// The bytes differ from what the index names: transfer damage or a lying mirror. Deleted.
    Corrupt(Error),
    /// The bytes are what the signed index names, yet the bundle fails: quarantined.
    Bad(Error),
}

/// sha256 of the whole file against the index, then the bundle's own verification, in one read.
fn verify_download(
    ctx: &Ctx,
    part: &Path,
    want: &IndexBundle,
    installed: Option<u64>,
) -> std::result::Result<crate::verify::Verified, Refused> {
    let io_err = |e| Refused::Bad(Error::io(Exit::Usage, part, e));
    let f = File::open(part).map_err(io_err)?;
    let mut r = Hashing {
        inner: io::BufReader::with_capacity(256 * 1024, f),
        hasher: Sha256::new(),
    };
    let ratchet = Ratchet::new(&ctx.config.state_dir);
    let node = crate::verify::NodeFacts {
        variant: &ctx.config.variant,
        installed_sequence: installed,
        now: ratchet.now(ctx.clock),
    };
    let verified =
        crate::verify::verify_stream(&mut r, ctx.trusted, &node, &mut crate::verify::Discard);
    io::copy(&mut r, &mut io::sink()).map_err(io_err)?;
    let sum: [u8; 32] = r.hasher.finalize().into();
    if sum != want.sha256 {
        return Err(Refused::Corrupt(Error::new(
            Exit::Integrity,
            format!(
                "download of {} is corrupt: sha256 {}.., index says {}..; discarded, fetched again next pass",
                want.file,
                &hex(&sum)[..16],
                &hex(&want.sha256)[..16]
            ),
        )));
    }
    let v = verified.map_err(Refused::Bad)?;
    if v.manifest_sha256 != want.manifest_sha256 || v.manifest.sequence != want.sequence {
        return Err(Refused::Bad(Error::new(
            Exit::Integrity,
            format!(
                "{}: manifest (sequence {}) does not match the index (sequence {})",
                want.file, v.manifest.sequence, want.sequence
            ),
        )));
    }
    if let Err(e) = ratchet.advance(v.manifest.created.max(node.now)) {
        log::warn!("cannot record trusted time: {e}");
    }
    Ok(v)
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
        crate::cli::open_bundle(p)
            .ok()
            .and_then(|mut r| crate::verify::authenticate(&mut r, ctx.trusted).ok())
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
        let sum = crate::format::hex(&order.sha256);
        if crate::rollback::order_done(&ctx.config.state_dir, &sum) {
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
        if crate::format::sha256(&body) != order.sha256 {
            log::warn!("order {url}: sha256 differs from the signed index; ignored");
            continue;
        }
        let path = dir.join(&order.file);
        let saved = crate::fsutil::create_dir_mode(&dir, 0o700)
            .and_then(|_| crate::fsutil::write_atomic(&path, &body, false));
        if let Err(e) = saved {
            log::warn!("order {}: {e}", path.display());
            continue;
        }
        match crate::rollback::carry_out_order(ctx, &path, info) {
            Ok(msg) => log::warn!("order {}: {msg}", order.file),
            Err(e) => log::warn!("order {}: {e}", order.file),
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
    let ix = accept_index(ctx, &index_url, &doc, now)?;
    carry_out_orders(ctx, mirror, &ix, &stop, &mut rng, info);

    let installed = Installed::load(&cfg.state_dir)?.map(|i| i.sequence);
    // The packages of the bundle applied last are the base a delta bundle is rebuilt from.
    let cached = crate::store::cached_manifest(&crate::store::cache_current(&cfg.state_dir))
        .map(|m| m.sequence);
    let Some(want) = ix.due_with_cache(installed, cached, now) else {
        return Ok(format!(
            "nothing to fetch: installed sequence {}, index (published {}) offers {}",
            installed.map_or("none".into(), |s| s.to_string()),
            ix.published,
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
    crate::fsutil::create_dir_mode(&incoming, 0o700)
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
    if let Some(free) = free_space(&incoming) {
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
    let secs = t0.elapsed().as_secs_f64().max(0.001);
    log::info!(
        "{url}: {} bytes in {secs:.1}s ({:.0} KiB/s){}",
        dl.received,
        dl.received as f64 / secs / 1024.0,
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
            return Err(match q {
                Ok(q) => Error::new(
                    e.exit,
                    format!("{} (quarantined as {})", e.msg, q.display()),
                ),
                Err(qe) => Error::new(e.exit, format!("{}; quarantine failed: {qe}", e.msg)),
            });
        }
    }
    let done = incoming.join(&want.file);
    std::fs::rename(&part, &done).map_err(|e| Error::io(Exit::Usage, &done, e))?;
    let _ = std::fs::remove_file(&meta_path);
    crate::fsutil::sync_dir(&incoming).map_err(|e| Error::io(Exit::Usage, &incoming, e))?;
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
