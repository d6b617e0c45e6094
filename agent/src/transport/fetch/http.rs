//! HTTP to the mirror: retries with Retry-After and backoff, failure classes, and the signed
//! index (fetched, checked and ratcheted against the last one seen).

use super::*;

pub(super) fn read_timeout() -> Duration {
    std::env::var("EDGEPATCH_HTTP_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0 && *v < 86400.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(READ_TIMEOUT)
}

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
        log::warn!("{msg}; retrying in {:.1}s", wait.as_secs_f64());
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
        let agent = http_agent(stop);
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
