//! Time for freshness checks. Kiosk clocks reset to 1970 when the RTC battery dies, so the agent
//! never believes a time older than the newest trusted time it has seen, persisted in
//! `state_dir/trusted-time`. Only *signed* times raise it (a verified bundle's `created`, an
//! accepted index's `published`, an accepted key list's `issued`), never the system clock: a clock
//! that was wrong once must not leave the node believing it for good. A signed time that is more
//! than a day ahead of a plausible system clock raises the floor only to that clock plus a day, so
//! one mis-dated document cannot make every later bundle "expired".

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

/// How far a signed time may run ahead of a plausible system clock before it is clamped.
pub const SIGNED_LEAD: u64 = 24 * 3600;
/// With a reset clock, how far one signed document may move the floor.
pub const DEAD_CLOCK_STEP: u64 = 30 * 24 * 3600;
/// Signed times past this (2100-01-01) are refused as documents and never enter the ratchet.
pub const MAX_SIGNED_TIME: u64 = 4_102_444_800;

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

    /// Record a signed time from a document just verified. The system clock only bounds it: when
    /// the clock is plausible (not behind the floor, i.e. no dead RTC) the floor rises at most to
    /// the clock plus [`SIGNED_LEAD`]; with a dead RTC the signed time is the best time there is.
    pub fn observe_signed(&self, signed: u64, clock: &dyn Clock) -> std::io::Result<()> {
        let floor = self.floor();
        let t = signed.min(self.signed_cap(clock));
        if t > floor {
            if let Some(dir) = self.path.parent().filter(|d| !d.exists()) {
                crate::support::fsutil::create_dir_mode(dir, 0o700)?;
            }
            write_atomic(&self.path, format!("{t}\n").as_bytes(), false)?;
        }
        Ok(())
    }

    /// The most a signed time may raise the floor to now. A plausible clock (not more than a day
    /// behind the floor) caps it at clock + a day, on every raise, so repeated mis-dated documents
    /// cannot walk it forward; with a dead RTC the floor may move at most [`DEAD_CLOCK_STEP`] per
    /// document. Never past [`MAX_SIGNED_TIME`].
    pub fn signed_cap(&self, clock: &dyn Clock) -> u64 {
        let floor = self.floor();
        let system = clock.now();
        let cap = if system.saturating_add(SIGNED_LEAD) >= floor {
            system.saturating_add(SIGNED_LEAD)
        } else {
            floor.saturating_add(DEAD_CLOCK_STEP)
        };
        cap.min(MAX_SIGNED_TIME)
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
        r.observe_signed(500, &FixedClock(0)).unwrap();
        assert_eq!(r.now(&FixedClock(0)), 500, "dead RTC battery");
        r.observe_signed(300, &FixedClock(0)).unwrap();
        assert_eq!(r.floor(), 500);
        assert_eq!(r.now(&FixedClock(900)), 900);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Regression (hardening item 7): the system clock never enters the ratchet, and a signed
    /// time far ahead of a plausible clock is clamped to clock + a day.
    #[test]
    fn trusted_time_comes_only_from_signed_times() {
        let dir = std::env::temp_dir().join(format!("ep-clock2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = Ratchet::new(&dir);
        let day = 24 * 3600;
        let now = 1_800_000_000;
        // A bundle created now, verified while the clock ran 20 days ahead: floor = created.
        r.observe_signed(now, &FixedClock(now + 20 * day)).unwrap();
        assert_eq!(r.floor(), now);
        // A signed created of 2^63 with a sane clock: clamped to clock + 1 day.
        r.observe_signed(1 << 63, &FixedClock(now)).unwrap();
        assert_eq!(r.floor(), now + day);
        // Again and again: the cap holds on every raise (attack finding: it used to hold once).
        r.observe_signed(1 << 63, &FixedClock(now)).unwrap();
        r.observe_signed(1 << 63, &FixedClock(now)).unwrap();
        assert_eq!(r.floor(), now + day);
        // With a dead RTC a signed time moves the floor at most 30 days per document.
        r.observe_signed(u64::MAX, &FixedClock(0)).unwrap();
        assert_eq!(r.floor(), now + day + DEAD_CLOCK_STEP);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
