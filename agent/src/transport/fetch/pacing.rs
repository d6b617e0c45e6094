//! Pacing a pass: jittered backoff and splay, the bandwidth token bucket, the pass's stop time
//! and the transfer window.

use super::*;

/// xorshift64*: jitter and splay only, nothing secret.
pub struct Rng(pub(super) u64);

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
    pub(super) rate: f64,
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
pub(super) struct Stop {
    pub(super) at: Instant,
    pub(super) window: bool,
}

impl Stop {
    pub(super) fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }
    pub(super) fn passed(&self) -> bool {
        Instant::now() >= self.at
    }
    pub(super) fn why(&self) -> &'static str {
        if self.window {
            "the transfer window closed"
        } else {
            "the per-pass time budget is used up"
        }
    }
}

pub(super) fn deferred(msg: impl Into<String>) -> Error {
    Error::new(Exit::Deferred, msg)
}

// ---------------------------------------------------------------------------------------------
// The transfer window.

/// The node's own time zone: `root/etc/localtime`, UTC when there is none.
pub fn local_zone(root: &Path) -> Result<crate::bundle::policy::Tz> {
    let etc = root.join("etc");
    if !etc.join("localtime").exists() {
        log::info!(
            "{} not found; evaluating transfer_window in UTC",
            etc.join("localtime").display()
        );
        return Ok(crate::bundle::policy::Tz::utc());
    }
    crate::bundle::policy::Tz::load(&etc, "localtime").map_err(|e| {
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
    let w = crate::bundle::policy::Window::parse(text)
        .map_err(|e| Error::usage(format!("transfer_window: {e}")))?;
    let tz = local_zone(&ctx.config.root)?;
    let now = Ratchet::new(&ctx.config.state_dir).now(ctx.clock) as i64;
    match w.current(&tz, now) {
        Some((_, end)) => Ok(Some(end.max(now) as u64)),
        None => {
            let next = w
                .next_window_start(&tz, now)
                .map(|t| crate::bundle::policy::local_time(&tz, t))
                .unwrap_or_else(|| "never".into());
            Err(deferred(format!(
                "outside transfer window {text:?} (next opens {next}); nothing downloaded"
            )))
        }
    }
}
