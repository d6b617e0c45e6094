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
