//! Time for freshness checks. Kiosk clocks reset to 1970 when the RTC battery dies, so the agent
//! never believes a time older than the newest trusted time it has seen: the largest of the system
//! clock and every verified bundle's signed `created` time, persisted in `state_dir/trusted-time`.

use crate::support::fsutil::write_atomic;
use std::path::{Path, PathBuf};

pub trait Clock {
    /// Unix seconds.
    fn now(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// A fixed clock for tests and for `--now` style overrides.
pub struct FixedClock(pub u64);

impl Clock for FixedClock {
    fn now(&self) -> u64 {
        self.0
    }
}

/// The clock commands use: the system clock, or a fixed time from `EDGEPATCH_TEST_NOW` (unix
/// seconds) for tests of windows and expiry. It cannot relax expiry: the ratchet still applies.
pub fn from_env() -> Box<dyn Clock> {
    match std::env::var("EDGEPATCH_TEST_NOW")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(t) => {
            log::warn!("EDGEPATCH_TEST_NOW set: using fixed time {t}");
            Box::new(FixedClock(t))
        }
        None => Box::new(SystemClock),
    }
}

/// The one format for times people read: ISO-8601 UTC, `2025-06-02T10:00:00Z` (20 columns).
/// Status files keep the numbers; text output, logs and error messages use this.
pub fn iso_utc(t: u64) -> String {
    let t = i64::try_from(t).unwrap_or(i64::MAX / 2);
    let (y, m, d) = crate::support::tz::civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// `iso_utc` of a number kept as text (last-result fields); anything else is shown as it is.
pub fn iso_utc_text(t: &str) -> String {
    t.parse().map(iso_utc).unwrap_or_else(|_| t.to_string())
}

pub struct Ratchet {
    path: PathBuf,
}

impl Ratchet {
    pub fn new(state_dir: &Path) -> Ratchet {
        Ratchet {
            path: state_dir.join("trusted-time"),
        }
    }

    /// The newest trusted time recorded, 0 when none (or unreadable: the file only ever raises
    /// the floor, so losing it weakens freshness but never blocks patching).
    pub fn floor(&self) -> u64 {
        std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Now, as far as freshness checks are concerned.
    pub fn now(&self, clock: &dyn Clock) -> u64 {
        clock.now().max(self.floor())
    }

    /// Record a trusted time (system time seen, or a verified bundle's created time).
    pub fn advance(&self, t: u64) -> std::io::Result<()> {
        if t > self.floor() {
            write_atomic(&self.path, format!("{t}\n").as_bytes(), false)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_utc_dates() {
        use super::{iso_utc, iso_utc_text};
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso_utc(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(iso_utc(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(iso_utc_text("86399"), "1970-01-01T23:59:59Z");
        assert_eq!(iso_utc_text("?"), "?");
    }

    use super::*;

    #[test]
    fn never_goes_back() {
        let dir = std::env::temp_dir().join(format!("ep-clock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = Ratchet::new(&dir);
        assert_eq!(r.now(&FixedClock(100)), 100);
        r.advance(500).unwrap();
        assert_eq!(r.now(&FixedClock(0)), 500, "dead RTC battery");
        r.advance(300).unwrap();
        assert_eq!(r.floor(), 500);
        assert_eq!(r.now(&FixedClock(900)), 900);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
