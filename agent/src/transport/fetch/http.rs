//! HTTP to the mirror: retries with Retry-After and backoff, failure classes, and the signed
//! index (fetched, checked and ratcheted against the last one seen).

use super::*;

pub(super) fn read_timeout() -> Duration {
    std::env::var("EDGEPATCH_HTTP_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| (1..86400).contains(v))
        .map(Duration::from_secs)
        .unwrap_or(READ_TIMEOUT)
}

/// The longest one index, order or key list download may take.
pub(super) const DOC_DEADLINE: Duration = Duration::from_secs(60);

pub(super) fn http_agent(stop: &Stop) -> ureq::Agent {
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

pub(super) fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Retry-After in seconds (the HTTP-date form is treated as absent: normal backoff applies).
pub(super) fn retry_after(resp: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    header(resp, "retry-after").and_then(|v| v.parse::<u64>().ok())
}

/// What one failed attempt means for the pass.
pub(super) enum Fail {
    /// Try again after backoff (or after the server's Retry-After).
    Retry(String, Option<u64>),
    /// Stop this pass; try again next pass.
    Stop(Error),
}

/// Run attempts until one succeeds, backing off in between; gives up at `stop` or after
/// `max` failures without progress (`attempt` sets its flag when it made progress).
pub(super) fn with_retries<T>(
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
        log::warn!(
            "{msg}; retrying in {}.{}s",
            wait.as_secs(),
            wait.subsec_millis() / 100
        );
        std::thread::sleep(wait);
    }
}

pub(super) fn classify(url: &str, status: u16, resp: &ureq::http::Response<ureq::Body>) -> Fail {
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

pub(super) fn fetch_index(url: &str, stop: &Stop, rng: &mut Rng) -> Result<Vec<u8>> {
    with_retries(stop, rng, INDEX_ATTEMPTS, url, |_| {
        // A signed document is at most MAX_DOC (1 MiB): at the 1 KiB/s minimum-progress rate
        // that is well under DOC_DEADLINE, so a drip-fed index cannot hold the pass for hours.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(read_timeout()))
            .timeout_per_read(Some(read_timeout()))
            .timeout_global(Some(
                DOC_DEADLINE.min(stop.remaining() + Duration::from_millis(100)),
            ))
            .user_agent(format!("edgepatch/{}", crate::VERSION))
            .max_redirects(3)
            .build()
            .into();
        let mut resp = agent
            .get(url)
            .call()
            .map_err(|e| Fail::Retry(format!("{url}: {e}"), None))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(classify(url, status, &resp));
        }
        let limit = crate::bundle::signed::MAX_DOC as u64;
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

pub(super) fn seen_path(state_dir: &Path) -> PathBuf {
    state_dir.join(INDEX_SEEN)
}

/// Open the index and check it is for us, fresh, and not older than the last one seen.
pub(super) fn accept_index(ctx: &Ctx, url: &str, doc: &[u8], now: u64) -> Result<Index> {
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
                "{url}: index expired at {} (node time {}); the mirror is stale, re-run publish",
                crate::support::clock::iso_utc(ix.expires),
                crate::support::clock::iso_utc(now)
            ),
        ));
    }
    let sd = &ctx.config.state_dir;
    let sum = hex(&crate::bundle::format::sha256(doc));
    let seen = Record::load(&seen_path(sd)).ok().flatten();
    if let Some(seen) = seen.filter(|s| s.get("variant") == Some(&ctx.config.variant)) {
        let last = seen.num("published").unwrap_or(0);
        let last = last.min(Ratchet::new(sd).signed_cap(ctx.clock));
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
    // Remember the published time only up to what trusted time may reach now: an index dated in
    // the future (a publisher's wrong clock) must not make every honest index look stale.
    let published = ix.published.min(Ratchet::new(sd).signed_cap(ctx.clock));
    let mut r = Record::new();
    r.set("variant", &ix.variant)
        .set("published", published)
        .set("expires", ix.expires)
        .set("sha256", &sum);
    let p = seen_path(sd);
    r.save(&p).map_err(|e| Error::io(Exit::Usage, &p, e))?;
    if let Err(e) = Ratchet::new(sd).observe_signed(ix.published, ctx.clock) {
        log::warn!("cannot record trusted time: {e}");
    }
    Ok(ix)
}
