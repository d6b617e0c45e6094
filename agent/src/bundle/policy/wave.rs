//! Rolling waves without a coordinator.
//!
//! ```text
//! waves  W = ceil(fleet_size / batch_size)            (1 when fleet_size is unknown)
//! slot     = first 8 bytes, big endian, of sha256("edgepatch-wave" 0 node_id 0 cycle)
//! wave   w = slot mod W                               (0 ..= W-1)
//! cap_k    = ceil(length of window k / batch_delay)   (wave slots that fit in window k)
//! ```
//!
//! Window 0 is the window open at `rollout_start`, counted from `rollout_start`, or else the
//! first one opening after it; windows 1, 2, ... follow. Wave `w` is due in the first window `k`
//! with `w < cap_0 + ... + cap_k`, at `open_k + (w - cap_0 - ... - cap_{k-1}) * batch_delay`: the
//! waves that do not fit in one window carry over, in order, to the next. With a delay of 0 every
//! wave is due when window 0 opens.
//!
//! A node whose wave is due applies while that window is open; a node that missed it (switched
//! off, bundle arrived late) applies in any later window, at once.
//!
//! Each node lands in a wave independently, so wave sizes follow a binomial distribution: mean
//! `fleet_size / W` (≈ batch_size), standard deviation ≈ `sqrt(batch_size)`. For batch sizes of
//! a few hundred and up nearly every wave is within ±20% of batch_size; at batch_size 100 a
//! wave of 80 or 120 is a two-sigma event and happens to a few waves in a hundred.
//! The cycle is part of the hash so that the same nodes are not always first.

use super::tz::Tz;
use super::window::Window;
use sha2::{Digest, Sha256};

/// Upper bound of W; also bounds the work in [`due_at`].
pub const MAX_WAVES: u64 = 10_000;

/// Number of waves for a fleet; 1 when the fleet size is unknown.
pub fn wave_count(fleet_size: Option<u64>, batch_size: u64) -> u64 {
    match fleet_size {
        Some(f) if batch_size > 0 => f.div_ceil(batch_size).clamp(1, MAX_WAVES),
        _ => 1,
    }
}

/// The node's position for this cycle: uniform over u64, stable for (node_id, cycle).
pub fn slot(node_id: &str, cycle: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(b"edgepatch-wave\0");
    h.update(node_id.as_bytes());
    h.update(b"\0");
    h.update(cycle.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

/// The node's wave, `0..waves`.
pub fn wave_of(node_id: &str, cycle: &str, waves: u64) -> u64 {
    slot(node_id, cycle) % waves.max(1)
}

/// When wave `wave` becomes due: `(due, close)` where `close` ends the window it is due in.
/// `None` only if the window never opens (cannot happen for a parsed window).
pub fn due_at(
    window: &Window,
    tz: &Tz,
    rollout_start: i64,
    wave: u64,
    delay_minutes: u64,
) -> Option<(i64, i64)> {
    let rollout_start = rollout_start.clamp(-super::tz::T_LIMIT, super::tz::T_LIMIT);
    let delay = delay_minutes
        .min(super::MAX_DELAY_MINUTES)
        .saturating_mul(60)
        .min(i64::MAX as u64) as i64;
    let (open, mut close) = window.occurrence_from(tz, rollout_start)?;
    let mut open = open.max(rollout_start);
    let mut left = wave;
    // Every window holds at least one wave, so this ends within `wave + 1` windows.
    for _ in 0..=wave.min(MAX_WAVES) {
        let cap = if delay == 0 {
            u64::MAX
        } else {
            ((close - open) as u64).div_ceil(delay as u64)
        };
        if left < cap {
            return Some((open + left as i64 * delay, close));
        }
        left -= cap;
        (open, close) = window.occurrence_from(tz, close)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::tz::days_from_civil;
    use super::*;

    fn utc(y: i64, mo: i64, d: i64, h: i64, mi: i64) -> i64 {
        days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60
    }

    #[test]
    fn counts() {
        assert_eq!(wave_count(None, 100), 1);
        assert_eq!(wave_count(Some(0), 100), 1);
        assert_eq!(wave_count(Some(100), 100), 1);
        assert_eq!(wave_count(Some(101), 100), 2);
        assert_eq!(wave_count(Some(10_000), 100), 100);
        assert_eq!(wave_count(Some(u64::MAX), 1), MAX_WAVES);
    }

    #[test]
    fn slots_are_stable_and_depend_on_cycle() {
        assert_eq!(slot("node-1", "c1"), slot("node-1", "c1"));
        assert_ne!(slot("node-1", "c1"), slot("node-1", "c2"));
        assert_ne!(slot("node-1", "c1"), slot("node-2", "c1"));
        // No ambiguity between (ab, c) and (a, bc).
        assert_ne!(slot("ab", "c"), slot("a", "bc"));
    }

    fn sizes(fleet: u64, batch: u64, cycle: &str) -> Vec<u64> {
        let waves = wave_count(Some(fleet), batch);
        let mut n = vec![0u64; waves as usize];
        for i in 0..fleet {
            n[wave_of(&format!("store-{i:05}-till-1"), cycle, waves) as usize] += 1;
        }
        n
    }

    #[test]
    fn ten_thousand_nodes_large_batches_within_20_percent() {
        for batch in [400, 500, 1000, 2500] {
            for cycle in ["20241105-build-42", "20241203-build-43"] {
                let n = sizes(10_000, batch, cycle);
                assert_eq!(n.iter().sum::<u64>(), 10_000);
                for (w, &c) in n.iter().enumerate() {
                    let dev = (c as f64 - batch as f64).abs() / batch as f64;
                    assert!(dev <= 0.20, "batch {batch} wave {w}: {c}");
                }
            }
        }
    }

    #[test]
    fn ten_thousand_nodes_batch_100_binomial() {
        // 100 waves of expected 100 each: sigma = 10, so ±20% is two sigma (see module docs).
        let n = sizes(10_000, 100, "20241105-build-42");
        assert_eq!(n.len(), 100);
        let within = n.iter().filter(|&&c| (80..=120).contains(&c)).count();
        assert!(within >= 90, "{within} of 100 waves within ±20%: {n:?}");
        assert!(n.iter().all(|&c| (60..=140).contains(&c)), "{n:?}");
        // Per window (8 waves of 15 min in a 2-hour window) the count is within ±10%.
        for chunk in n.chunks(8).filter(|c| c.len() == 8) {
            let s: u64 = chunk.iter().sum();
            assert!((720..=880).contains(&s), "{chunk:?}");
        }
    }

    #[test]
    fn due_times_and_carry_over() {
        let tz = Tz::utc();
        let win = Window::parse("Tue 02:00-04:00").unwrap();
        let start = utc(2024, 11, 1, 0, 0); // a Friday
        let tue = utc(2024, 11, 5, 2, 0);
        let close = utc(2024, 11, 5, 4, 0);
        let week = 7 * 86400;
        // 2 hours / 15 minutes = 8 waves per window.
        assert_eq!(due_at(&win, &tz, start, 0, 15), Some((tue, close)));
        assert_eq!(
            due_at(&win, &tz, start, 7, 15),
            Some((tue + 105 * 60, close))
        );
        assert_eq!(
            due_at(&win, &tz, start, 8, 15),
            Some((tue + week, close + week)),
            "wave 8 carries over to next Tuesday"
        );
        assert_eq!(
            due_at(&win, &tz, start, 17, 15),
            Some((tue + 2 * week + 15 * 60, close + 2 * week))
        );
        // Delay 0: all waves at the opening.
        assert_eq!(due_at(&win, &tz, start, 99, 0), Some((tue, close)));
        // Delay longer than the window: one wave per window.
        assert_eq!(
            due_at(&win, &tz, start, 2, 180),
            Some((tue + 2 * week, close + 2 * week))
        );
        // A rollout starting inside an open window counts from its start.
        let mid = utc(2024, 11, 5, 3, 0);
        assert_eq!(due_at(&win, &tz, mid, 0, 15), Some((mid, close)));
        assert_eq!(due_at(&win, &tz, mid, 3, 15), Some((mid + 45 * 60, close)));
        assert_eq!(
            due_at(&win, &tz, mid, 4, 15),
            Some((tue + week, close + week))
        );
        // Hostile inputs neither panic nor loop.
        let _ = due_at(&win, &tz, i64::MAX, MAX_WAVES, u64::MAX);
        let _ = due_at(&win, &tz, i64::MIN, u64::MAX, 1);
        // The largest wave count terminates.
        assert!(due_at(&win, &tz, start, MAX_WAVES - 1, 600).is_some());
    }
}
