//! Maintenance windows: `DAYS HH:MM-HH:MM`, several joined with `;`, in the policy's time zone.
//!
//! ```text
//! Tue 02:00-04:00                      one day
//! Mon-Fri 22:00-02:00                  a day range; crosses midnight
//! Sat,Sun 00:00-24:00                  a list; 24:00 is the end of the day
//! Fri-Mon 23:00-01:00                  ranges may wrap around the week
//! Mon-Fri 22:00-02:00; Sat,Sun 00:00-24:00   several windows
//! ```
//!
//! Days are `Mon Tue Wed Thu Fri Sat Sun` (any letter case). Times are `H:MM` or `HH:MM`, start
//! `00:00`..`23:59`, end `00:01`..`24:00`. An end at or before the start crosses midnight, and the
//! whole window belongs to the day it starts on (`Fri 22:00-02:00` is Friday night into
//! Saturday). A start equal to the end is an error (write `00:00-24:00` for a whole day).
//!
//! # Daylight-saving semantics
//!
//! Each day's window is turned into one interval `[open, close)` of UTC instants:
//! - A start that does not exist (spring-forward gap) opens at the end of the gap: a
//!   02:00–04:00 window on the US spring-forward night opens at 03:00 EDT and closes at 04:00.
//! - A start that happens twice (fall-back overlap) opens at its first occurrence; an end that
//!   happens twice closes at its second. So on a fall-back night the window covers every instant
//!   at which the wall clock shows a time inside it: 01:00–02:00 lasts two real hours.
//! - An end that does not exist is read with the offset in force before the gap (it moves later
//!   by the gap's length).
//! - A window is never empty: if the rules above give `close <= open` (a window that lies wholly
//!   inside a gap), it lasts its nominal length from `open`.
//!
//! Overlapping intervals (two windows that touch across DST, or written to overlap) are merged.

use super::tz::Tz;

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MAX_SPANS: usize = 16;
const MAX_TEXT: usize = 512;

/// One `DAYS HH:MM-HH:MM` part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    /// Bit 0 = Monday ... bit 6 = Sunday.
    days: u8,
    /// Minutes after local midnight.
    start: u32,
    /// Minutes after local midnight, 1..=1440; at or before `start` means the next day.
    end: u32,
}

impl Span {
    fn crosses_midnight(&self) -> bool {
        self.end <= self.start
    }
    fn minutes(&self) -> u32 {
        if self.crosses_midnight() {
            self.end + 1440 - self.start
        } else {
            self.end - self.start
        }
    }
}

/// A parsed maintenance window. `Display` gives back the text it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    text: String,
    spans: Vec<Span>,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_day(s: &str) -> Result<u8, String> {
    DAY_NAMES
        .iter()
        .position(|d| d.eq_ignore_ascii_case(s))
        .map(|i| i as u8)
        .ok_or_else(|| format!("day {s:?} is not one of Mon Tue Wed Thu Fri Sat Sun"))
}

fn parse_days(s: &str) -> Result<u8, String> {
    let mut mask = 0u8;
    for item in s.split(',') {
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse_day(a)?, parse_day(b)?);
                let mut d = a;
                loop {
                    mask |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => mask |= 1 << parse_day(item)?,
        }
    }
    Ok(mask)
}

fn parse_time(s: &str, max: u32) -> Result<u32, String> {
    let bad = || format!("time {s:?} is not HH:MM");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let digits = |x: &str, n: std::ops::RangeInclusive<usize>| {
        n.contains(&x.len()) && x.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(h, 1..=2) || !digits(m, 2..=2) {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    let v = h * 60 + m;
    if m > 59 || v > max {
        return Err(format!("time {s:?} is out of range"));
    }
    Ok(v)
}

impl Window {
    /// Parse window text; the error says what is wrong and shows the expected form.
    pub fn parse(text: &str) -> Result<Window, String> {
        let text = text.trim();
        if text.is_empty() || text.len() > MAX_TEXT || text.contains(['\n', '\r']) {
            return Err(format!(
                "window must be one line of 1..={MAX_TEXT} bytes like \"Tue 02:00-04:00\""
            ));
        }
        let mut spans = Vec::new();
        for part in text.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let [days, times] = words[..] else {
                return Err(format!(
                    "window part {:?}: want DAYS HH:MM-HH:MM, e.g. \"Mon-Fri 22:00-02:00\"",
                    part.trim()
                ));
            };
            let (a, b) = times
                .split_once('-')
                .ok_or_else(|| format!("window times {times:?}: want HH:MM-HH:MM"))?;
            let span = Span {
                days: parse_days(days)?,
                start: parse_time(a, 1439)?,
                end: parse_time(b, 1440)?,
            };
            if span.start == span.end || span.end == 0 && span.start == 0 {
                return Err(format!(
                    "window times {times:?}: start equals end; use 00:00-24:00 for a whole day"
                ));
            }
            if spans.len() == MAX_SPANS {
                return Err(format!("window has more than {MAX_SPANS} parts"));
            }
            spans.push(span);
        }
        Ok(Window {
            text: text.to_string(),
            spans,
        })
    }

    /// The merged window intervals `[open, close)` for local days around `t`, sorted.
    fn occurrences(&self, tz: &Tz, t: i64) -> Vec<(i64, i64)> {
        let t = t.clamp(-super::tz::T_LIMIT, super::tz::T_LIMIT);
        let local = t + tz.offset_at(t) as i64;
        let today = local.div_euclid(86400);
        let mut all = Vec::new();
        for day in today - 2..=today + 8 {
            let weekday = (day + 3).rem_euclid(7); // 1970-01-01 was a Thursday; 0 = Monday
            for span in self.spans.iter().filter(|s| s.days & (1 << weekday) != 0) {
                let open_local = day * 86400 + span.start as i64 * 60;
                let close_local =
                    (day + i64::from(span.crosses_midnight())) * 86400 + span.end as i64 * 60;
                let open = match tz.from_local(open_local) {
                    Ok(v) => v[0],
                    Err((gap_end, _)) => gap_end,
                };
                let mut close = match tz.from_local(close_local) {
                    Ok(v) => v[v.len() - 1],
                    Err((_, before)) => close_local - before as i64,
                };
                if close <= open {
                    close = open + span.minutes() as i64 * 60;
                }
                all.push((open, close));
            }
        }
        all.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(all.len());
        for (s, e) in all {
            match merged.last_mut() {
                Some(last) if s < last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        merged
    }

    /// The interval containing `t`, or the next one to open after it.
    pub fn occurrence_from(&self, tz: &Tz, t: i64) -> Option<(i64, i64)> {
        self.occurrences(tz, t).into_iter().find(|&(_, e)| e > t)
    }

    /// The interval containing `now`, if the window is open.
    pub fn current(&self, tz: &Tz, now: i64) -> Option<(i64, i64)> {
        self.occurrence_from(tz, now).filter(|&(s, _)| s <= now)
    }

    pub fn in_window(&self, tz: &Tz, now: i64) -> bool {
        self.current(tz, now).is_some()
    }

    /// The next instant at or after `now` at which the window opens (a window open at `now`
    /// does not count: this is the start of the following one).
    pub fn next_window_start(&self, tz: &Tz, now: i64) -> Option<i64> {
        let open_now = self.current(tz, now).map(|(s, _)| s);
        self.occurrences(tz, now)
            .into_iter()
            .map(|(s, _)| s)
            .find(|&s| s >= now && open_now != Some(s))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tz::{days_from_civil, ZONEINFO_DIR};
    use super::*;
    use std::path::Path;

    fn zone(name: &str) -> Tz {
        Tz::load(Path::new(ZONEINFO_DIR), name).unwrap()
    }
    fn utc(y: i64, mo: i64, d: i64, h: i64, mi: i64) -> i64 {
        days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60
    }
    fn w(s: &str) -> Window {
        Window::parse(s).unwrap()
    }

    #[test]
    fn syntax_good() {
        for s in [
            "Tue 02:00-04:00",
            "Mon-Fri 22:00-02:00",
            "Sat,Sun 00:00-23:59",
            "Mon-Sun 20:00-06:00",
            "sat,SUN 00:00-24:00",
            "Fri-Mon 23:00-1:00",
            "Mon,Wed-Thu 9:30-10:00",
            "Mon-Fri 22:00-02:00; Sat,Sun 00:00-24:00",
            "  Tue   02:00-04:00  ",
        ] {
            let win = w(s);
            assert_eq!(win.to_string(), s.trim());
            assert_eq!(Window::parse(&win.to_string()).unwrap(), win);
        }
        assert_eq!(w("Fri-Mon 23:00-01:00").spans[0].days, 0b111_0001);
        assert_eq!(w("Sat,Sun 00:00-24:00").spans[0].minutes(), 1440);
        assert_eq!(w("Mon 22:00-02:00").spans[0].minutes(), 240);
    }

    #[test]
    fn syntax_bad() {
        for (s, want) in [
            ("", "one line"),
            ("Tue", "want DAYS"),
            ("Tue 02:00", "HH:MM-HH:MM"),
            ("Tue 02:00-04:00 UTC", "want DAYS"),
            ("Tuesday 02:00-04:00", "not one of"),
            ("Tue-Xyz 02:00-04:00", "not one of"),
            ("Tue,,Wed 02:00-04:00", "not one of"),
            ("Tue 2-4", "not HH:MM"),
            ("Tue 02:00-04:0", "not HH:MM"),
            ("Tue 24:00-04:00", "out of range"),
            ("Tue 02:60-04:00", "out of range"),
            ("Tue 02:00-24:01", "out of range"),
            ("Tue 02:00-02:00", "start equals end"),
            ("Tue 00:00-00:00", "start equals end"),
            ("Tue -1:00-02:00", "not HH:MM"),
            ("Tue 02:00-04:00;", "want DAYS"),
            ("Tue 02:00-04:00\nWed 02:00-04:00", "one line"),
        ] {
            let e = Window::parse(s).unwrap_err();
            assert!(e.contains(want), "{s:?}: {e}");
        }
        let many = vec!["Mon 01:00-02:00"; 17].join(";");
        assert!(Window::parse(&many).is_err());
    }

    #[test]
    fn simple_utc() {
        let tz = Tz::utc();
        let win = w("Tue 02:00-04:00");
        // 2024-11-05 is a Tuesday.
        assert!(!win.in_window(&tz, utc(2024, 11, 5, 1, 59)));
        assert!(win.in_window(&tz, utc(2024, 11, 5, 2, 0)));
        assert!(win.in_window(&tz, utc(2024, 11, 5, 3, 59)));
        assert!(!win.in_window(&tz, utc(2024, 11, 5, 4, 0)));
        assert_eq!(
            win.next_window_start(&tz, utc(2024, 11, 5, 1, 0)),
            Some(utc(2024, 11, 5, 2, 0))
        );
        assert_eq!(
            win.next_window_start(&tz, utc(2024, 11, 5, 2, 0)),
            Some(utc(2024, 11, 12, 2, 0)),
            "an open window is not the next one"
        );
        assert_eq!(
            win.next_window_start(&tz, utc(2024, 11, 6, 0, 0)),
            Some(utc(2024, 11, 12, 2, 0))
        );
    }

    #[test]
    fn across_midnight_belongs_to_start_day() {
        let tz = Tz::utc();
        let win = w("Fri 22:00-02:00");
        // 2024-11-08 is a Friday.
        assert!(win.in_window(&tz, utc(2024, 11, 8, 23, 0)));
        assert!(win.in_window(&tz, utc(2024, 11, 9, 1, 59)));
        assert!(!win.in_window(&tz, utc(2024, 11, 9, 2, 0)));
        assert!(
            !win.in_window(&tz, utc(2024, 11, 9, 23, 0)),
            "Saturday night"
        );
        assert!(!win.in_window(&tz, utc(2024, 11, 8, 1, 0)), "Friday early");
        let all = w("Mon-Sun 20:00-06:00");
        for day in 4..=10 {
            assert!(all.in_window(&tz, utc(2024, 11, day, 5, 59)));
            assert!(!all.in_window(&tz, utc(2024, 11, day, 6, 0)));
            assert!(all.in_window(&tz, utc(2024, 11, day, 20, 0)));
        }
        let weekend = w("Sat,Sun 00:00-24:00");
        assert!(!weekend.in_window(&tz, utc(2024, 11, 8, 23, 59)));
        assert!(weekend.in_window(&tz, utc(2024, 11, 9, 0, 0)));
        assert!(weekend.in_window(&tz, utc(2024, 11, 10, 23, 59)));
        assert!(!weekend.in_window(&tz, utc(2024, 11, 11, 0, 0)));
        // Sat and Sun adjoin: the window opens again at Sunday 00:00.
        assert_eq!(
            weekend.next_window_start(&tz, utc(2024, 11, 9, 12, 0)),
            Some(utc(2024, 11, 10, 0, 0))
        );
    }

    #[test]
    fn new_york_spring_forward() {
        // 2024-03-10 (Sunday): 02:00 EST jumps to 03:00 EDT at 07:00Z.
        let tz = zone("America/New_York");
        let win = w("Sun 02:00-04:00");
        assert!(!win.in_window(&tz, utc(2024, 3, 10, 6, 59)), "01:59 EST");
        assert!(win.in_window(&tz, utc(2024, 3, 10, 7, 0)), "03:00 EDT");
        assert!(win.in_window(&tz, utc(2024, 3, 10, 7, 59)), "03:59 EDT");
        assert!(!win.in_window(&tz, utc(2024, 3, 10, 8, 0)), "04:00 EDT");
        assert_eq!(
            win.occurrence_from(&tz, utc(2024, 3, 10, 0, 0)),
            Some((utc(2024, 3, 10, 7, 0), utc(2024, 3, 10, 8, 0)))
        );
        assert_eq!(
            win.next_window_start(&tz, utc(2024, 3, 9, 0, 0)),
            Some(utc(2024, 3, 10, 7, 0))
        );
        // A window wholly inside the gap still happens, for its nominal length.
        let inside = w("Sun 02:10-02:50");
        assert_eq!(
            inside.occurrence_from(&tz, utc(2024, 3, 10, 0, 0)),
            Some((utc(2024, 3, 10, 7, 0), utc(2024, 3, 10, 7, 50)))
        );
        let edge = w("Sun 02:30-03:00");
        assert_eq!(
            edge.occurrence_from(&tz, utc(2024, 3, 10, 0, 0)),
            Some((utc(2024, 3, 10, 7, 0), utc(2024, 3, 10, 7, 30)))
        );
        // The week before and after: ordinary 2-hour windows, EST then EDT.
        assert_eq!(
            win.occurrence_from(&tz, utc(2024, 3, 3, 0, 0)),
            Some((utc(2024, 3, 3, 7, 0), utc(2024, 3, 3, 9, 0)))
        );
        assert_eq!(
            win.occurrence_from(&tz, utc(2024, 3, 17, 0, 0)),
            Some((utc(2024, 3, 17, 6, 0), utc(2024, 3, 17, 8, 0)))
        );
    }

    #[test]
    fn new_york_fall_back() {
        // 2024-11-03 (Sunday): 02:00 EDT falls back to 01:00 EST at 06:00Z.
        let tz = zone("America/New_York");
        let win = w("Sun 01:00-02:00");
        assert_eq!(
            win.occurrence_from(&tz, utc(2024, 11, 3, 0, 0)),
            Some((utc(2024, 11, 3, 5, 0), utc(2024, 11, 3, 7, 0))),
            "both passes through 01:00-02:00"
        );
        assert!(win.in_window(&tz, utc(2024, 11, 3, 5, 30)), "01:30 EDT");
        assert!(win.in_window(&tz, utc(2024, 11, 3, 6, 30)), "01:30 EST");
        assert!(!win.in_window(&tz, utc(2024, 11, 3, 7, 0)), "02:00 EST");
        // Saturday night across midnight into the fall-back night.
        let sat = w("Sat 22:00-02:00");
        assert_eq!(
            sat.occurrence_from(&tz, utc(2024, 11, 2, 12, 0)),
            Some((utc(2024, 11, 3, 2, 0), utc(2024, 11, 3, 7, 0)))
        );
    }

    #[test]
    fn berlin_transitions() {
        let tz = zone("Europe/Berlin");
        // 2024-03-31: 02:00 CET -> 03:00 CEST at 01:00Z.
        let win = w("Sun 02:00-04:00");
        assert_eq!(
            win.occurrence_from(&tz, utc(2024, 3, 30, 0, 0)),
            Some((utc(2024, 3, 31, 1, 0), utc(2024, 3, 31, 2, 0)))
        );
        assert!(!win.in_window(&tz, utc(2024, 3, 31, 0, 59)));
        assert!(win.in_window(&tz, utc(2024, 3, 31, 1, 0)));
        assert!(!win.in_window(&tz, utc(2024, 3, 31, 2, 0)));
        // 2024-10-27: 03:00 CEST -> 02:00 CET at 01:00Z; 02:00-03:00 happens twice.
        let fall = w("Sun 02:00-03:00");
        assert_eq!(
            fall.occurrence_from(&tz, utc(2024, 10, 26, 0, 0)),
            Some((utc(2024, 10, 27, 0, 0), utc(2024, 10, 27, 2, 0)))
        );
        // Crossing midnight on the fall-back night: Sat 23:00 CEST to Sun 03:00 CET.
        let night = w("Sat 23:00-03:00");
        assert_eq!(
            night.occurrence_from(&tz, utc(2024, 10, 26, 12, 0)),
            Some((utc(2024, 10, 26, 21, 0), utc(2024, 10, 27, 2, 0)))
        );
        // An ordinary weekday window in summer and winter.
        let tue = w("Tue 02:00-04:00");
        assert!(tue.in_window(&tz, utc(2024, 7, 2, 0, 0)), "02:00 CEST");
        assert!(tue.in_window(&tz, utc(2024, 12, 3, 1, 0)), "02:00 CET");
        assert!(!tue.in_window(&tz, utc(2024, 12, 3, 0, 59)));
    }

    #[test]
    fn extreme_instants_do_not_panic() {
        let tz = zone("America/New_York");
        let win = w("Mon-Fri 22:00-02:00");
        for t in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
            let _ = win.in_window(&tz, t);
            let _ = win.next_window_start(&tz, t);
            let _ = win.occurrence_from(&tz, t);
            let _ = tz.offset_at(t);
            let _ = tz.from_local(t);
        }
    }

    #[test]
    fn every_minute_of_a_dst_week_is_consistent() {
        // in_window agrees with the wall clock reading everywhere except the documented
        // spring-forward/fall-back rules, and next_window_start is always a real opening.
        let tz = zone("America/New_York");
        let win = w("Mon-Sun 01:30-02:30");
        let mut t = utc(2024, 3, 7, 0, 0);
        while t < utc(2024, 3, 14, 0, 0) {
            let next = win.next_window_start(&tz, t).unwrap();
            assert!(next >= t);
            assert!(win.in_window(&tz, next), "{next}");
            assert!(!win.in_window(&tz, next - 1), "{next} opens, not continues");
            t += 600;
        }
    }
}
