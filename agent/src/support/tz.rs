//! Time zones from the system tz database, without a tz library.
//!
//! [`Tz::load`] reads one TZif file (RFC 8536, versions 1, 2 and 3) from a zoneinfo directory,
//! normally `/usr/share/zoneinfo` ([`ZONEINFO_DIR`]; tests inject their own). Version 2+ files
//! are read from their 64-bit section, and times after the last transition follow the POSIX TZ
//! string in the footer (e.g. `EST5EDT,M3.2.0,M11.1.0`), so a zone stays right after 2037 and for
//! files that zic wrote "slim". Version 1 files use their 32-bit table only.
//!
//! Zone names are checked before any file is opened ([`check_name`]): relative, components of
//! `[A-Za-z0-9._+-]`, no `.` or `..` component, at most 255 bytes. `UTC` and `Etc/UTC` are built
//! in and need no file at all.
//!
//! **Image without a tz database**: loading any other zone fails with a one-line error naming
//! the missing file and saying to install tzdata or use `UTC`. The agent then does not evaluate
//! the window at all (it never guesses an offset), so a policy with a local-time window is not
//! applied on such a node until tzdata is there or the policy is re-issued in `UTC`.
//!
//! Zones with leap seconds (`right/...`) are refused: node clocks count POSIX seconds.
//!
//! Everything here is pure apart from [`Tz::load`] reading the one file it is given.

use std::path::Path;

pub const ZONEINFO_DIR: &str = "/usr/share/zoneinfo";
/// Largest TZif file accepted (the biggest real zone is a few KiB).
const MAX_TZIF: u64 = 256 * 1024;
/// Offsets beyond ±26 hours are not time zones.
const MAX_OFFSET: i64 = 26 * 3600;
/// Instants are clamped to ±2^40 s (about ±34,000 years) so no arithmetic can overflow.
pub const T_LIMIT: i64 = 1 << 40;

fn clamp(t: i64) -> i64 {
    t.clamp(-T_LIMIT, T_LIMIT)
}

/// A loaded time zone: UTC offset for any instant, and the instants where it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tz {
    name: String,
    /// Transition instants, strictly ascending.
    times: Vec<i64>,
    /// UTC offset (seconds east) in force from the matching transition on.
    offsets: Vec<i32>,
    /// Offset before the first transition (time type 0).
    initial: i32,
    /// Rule for instants after the last transition.
    footer: Option<Posix>,
}

/// Validate a zone name: a relative path inside the zoneinfo directory, nothing else.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err(format!(
            "timezone {name:?}: length {} not in 1..=255",
            name.len()
        ));
    }
    for part in name.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!(
                "timezone {name:?}: not a zone name; use e.g. America/New_York"
            ));
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        {
            return Err(format!(
                "timezone {name:?}: bad characters; use e.g. America/New_York"
            ));
        }
    }
    Ok(())
}

impl Tz {
    /// Coordinated Universal Time; needs no tz database.
    pub fn utc() -> Tz {
        Tz {
            name: "UTC".into(),
            times: Vec::new(),
            offsets: Vec::new(),
            initial: 0,
            footer: None,
        }
    }

    /// Load zone `name` from `dir` (normally [`ZONEINFO_DIR`]). `UTC`/`Etc/UTC` never touch disk.
    pub fn load(dir: &Path, name: &str) -> Result<Tz, String> {
        check_name(name)?;
        if name == "UTC" || name == "Etc/UTC" {
            return Ok(Tz {
                name: name.into(),
                ..Tz::utc()
            });
        }
        let path = dir.join(name);
        let meta = std::fs::metadata(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "timezone {name}: {} not found; install tzdata or use UTC",
                    path.display()
                )
            } else {
                format!("timezone {name}: {}: {e}", path.display())
            }
        })?;
        if !meta.is_file() || meta.len() > MAX_TZIF {
            return Err(format!(
                "timezone {name}: {} is not a zone file",
                path.display()
            ));
        }
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("timezone {name}: {}: {e}", path.display()))?;
        Tz::parse(name, &bytes).map_err(|m| format!("timezone {name}: {}: {m}", path.display()))
    }

    /// Parse TZif bytes. Errors are short and do not name the zone (the caller does).
    pub fn parse(name: &str, bytes: &[u8]) -> Result<Tz, String> {
        let mut r = Reader { b: bytes, pos: 0 };
        let h1 = Header::read(&mut r)?;
        if h1.version == 0 {
            let tz = h1.read_body(&mut r, 4)?;
            return Ok(Tz {
                name: name.into(),
                ..tz
            });
        }
        r.skip(h1.body_len(4)?)?;
        let h2 = Header::read(&mut r)?;
        let mut tz = h2.read_body(&mut r, 8)?;
        // Footer: "\n" POSIX-TZ "\n".
        if r.take(1)? != b"\n" {
            return Err("missing footer".into());
        }
        let rest = &r.b[r.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("footer not terminated")?;
        let text = std::str::from_utf8(&rest[..end]).map_err(|_| "footer is not text")?;
        if !text.is_empty() {
            tz.footer = Some(Posix::parse(text)?);
        }
        tz.name = name.into();
        Ok(tz)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// UTC offset in seconds east of Greenwich at instant `t` (unix seconds).
    pub fn offset_at(&self, t: i64) -> i32 {
        let t = clamp(t);
        let n = self.times.partition_point(|&x| x <= t);
        if n == 0 {
            return self.initial;
        }
        if n == self.times.len() {
            if let Some(p) = &self.footer {
                return p.offset_at(t);
            }
        }
        self.offsets[n - 1]
    }

    /// Instants in `[a, b]` at which the offset may change, ascending.
    pub fn transitions_in(&self, a: i64, b: i64) -> Vec<i64> {
        let (a, b) = (clamp(a), clamp(b));
        let lo = self.times.partition_point(|&x| x < a);
        let hi = self.times.partition_point(|&x| x <= b);
        let mut out: Vec<i64> = self.times[lo..hi].to_vec();
        if let Some(p) = &self.footer {
            let last = self.times.last().copied().unwrap_or(i64::MIN);
            let (ya, yb) = (year_of(a) - 1, year_of(b) + 1);
            for y in ya..=yb {
                for (at, _) in p.transitions(y) {
                    if at > last && at >= a && at <= b {
                        out.push(at);
                    }
                }
            }
            out.sort_unstable();
            out.dedup();
        }
        out
    }

    /// The instants whose local wall-clock reading is `local` (seconds since 1970-01-01T00:00
    /// local): one normally, two in a fall-back overlap, none in a spring-forward gap.
    /// For a gap, returns `Err((transition, offset_before))`.
    pub fn from_local(&self, local: i64) -> Result<Vec<i64>, (i64, i32)> {
        let local = clamp(local);
        let span = MAX_OFFSET + 86400;
        let trans = self.transitions_in(local - span, local + span);
        let mut candidates = vec![self.offset_at(local - span)];
        for &t in &trans {
            candidates.push(self.offset_at(t));
        }
        let mut found: Vec<i64> = candidates
            .iter()
            .map(|&o| local - o as i64)
            .filter(|&u| self.offset_at(u) as i64 == local - u)
            .collect();
        found.sort_unstable();
        found.dedup();
        if !found.is_empty() {
            return Ok(found);
        }
        for &t in &trans {
            let (before, after) = (self.offset_at(t - 1) as i64, self.offset_at(t) as i64);
            if t + before <= local && local < t + after {
                return Err((t, before as i32));
            }
        }
        // Unreachable for consistent data; read it with the offset in force at that instant.
        Err((local - self.offset_at(local) as i64, self.offset_at(local)))
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or("file truncated")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn skip(&mut self, n: usize) -> Result<(), String> {
        self.take(n).map(|_| ())
    }
    fn u32(&mut self) -> Result<u32, String> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn i32(&mut self) -> Result<i32, String> {
        self.u32().map(|v| v as i32)
    }
    fn i64(&mut self) -> Result<i64, String> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(i64::from_be_bytes(a))
    }
}

struct Header {
    version: u8,
    isutcnt: usize,
    isstdcnt: usize,
    leapcnt: usize,
    timecnt: usize,
    typecnt: usize,
    charcnt: usize,
}

impl Header {
    fn read(r: &mut Reader) -> Result<Header, String> {
        if r.take(4)? != b"TZif" {
            return Err("not a TZif file".into());
        }
        let version = match r.take(1)?[0] {
            0 => 0,
            b'2' => 2,
            b'3' | b'4' => 3,
            v => return Err(format!("unknown TZif version {v}")),
        };
        r.skip(15)?;
        let mut c = [0usize; 6];
        for v in &mut c {
            // Every count is bounded by the file size, which is capped.
            *v = r.u32()? as usize;
            if *v > MAX_TZIF as usize {
                return Err("count too large".into());
            }
        }
        let h = Header {
            version,
            isutcnt: c[0],
            isstdcnt: c[1],
            leapcnt: c[2],
            timecnt: c[3],
            typecnt: c[4],
            charcnt: c[5],
        };
        if h.typecnt == 0 {
            return Err("no time types".into());
        }
        if h.leapcnt != 0 {
            return Err("has leap seconds (right/ zone); use the plain zone name".into());
        }
        Ok(h)
    }

    fn body_len(&self, tsize: usize) -> Result<usize, String> {
        let n = self.timecnt * (tsize + 1)
            + self.typecnt * 6
            + self.charcnt
            + self.leapcnt * (tsize + 4)
            + self.isstdcnt
            + self.isutcnt;
        Ok(n)
    }

    fn read_body(&self, r: &mut Reader, tsize: usize) -> Result<Tz, String> {
        let mut times = Vec::with_capacity(self.timecnt);
        for _ in 0..self.timecnt {
            let t = if tsize == 8 {
                r.i64()?
            } else {
                r.i32()? as i64
            };
            if times.last().is_some_and(|&p| t <= p) {
                return Err("transitions out of order".into());
            }
            times.push(t);
        }
        let idx = r.take(self.timecnt)?.to_vec();
        let mut types = Vec::with_capacity(self.typecnt);
        for _ in 0..self.typecnt {
            let off = r.i32()? as i64;
            r.skip(2)?; // isdst, abbreviation index
            if !(-MAX_OFFSET..=MAX_OFFSET).contains(&off) {
                return Err(format!("offset {off} out of range"));
            }
            types.push(off as i32);
        }
        let mut offsets = Vec::with_capacity(self.timecnt);
        for i in idx {
            offsets.push(*types.get(i as usize).ok_or("bad time type index")?);
        }
        r.skip(self.charcnt + self.isstdcnt + self.isutcnt)?;
        Ok(Tz {
            name: String::new(),
            times,
            offsets,
            initial: types[0],
            footer: None,
        })
    }
}

/// Date part of a POSIX TZ rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleDate {
    /// `Jn`: day 1..=365, February 29 never counted.
    Julian1(u16),
    /// `n`: day 0..=365, February 29 counted.
    Julian0(u16),
    /// `Mm.w.d`: weekday d (0 = Sunday) of week w (5 = last) of month m.
    Month(u8, u8, u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    date: RuleDate,
    /// Seconds after local midnight (may be negative or past 24h in TZif v3).
    time: i64,
}

/// A POSIX TZ string such as `CET-1CEST,M3.5.0,M10.5.0/3`, offsets stored as seconds east.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Posix {
    std: i32,
    dst: Option<(i32, Rule, Rule)>,
}

impl Posix {
    fn parse(s: &str) -> Result<Posix, String> {
        let bad = || format!("unsupported TZ footer {s:?}");
        let mut p = PosixParser {
            s: s.as_bytes(),
            i: 0,
        };
        p.name().ok_or_else(bad)?;
        let std = -p.offset(24).ok_or_else(bad)?;
        if p.done() {
            return Ok(Posix {
                std: std as i32,
                dst: None,
            });
        }
        p.name().ok_or_else(bad)?;
        let dst = if p.peek() == Some(b',') {
            std + 3600
        } else {
            -p.offset(24).ok_or_else(bad)?
        };
        if !p.eat(b',') {
            return Err(bad());
        }
        let start = p.rule().ok_or_else(bad)?;
        if !p.eat(b',') {
            return Err(bad());
        }
        let end = p.rule().ok_or_else(bad)?;
        if !p.done() {
            return Err(bad());
        }
        Ok(Posix {
            std: std as i32,
            dst: Some((dst as i32, start, end)),
        })
    }

    /// The year's two transitions as (instant, offset from then on), unsorted.
    fn transitions(&self, year: i64) -> Vec<(i64, i32)> {
        match &self.dst {
            None => Vec::new(),
            Some((dst, start, end)) => {
                // The start is written in standard time, the end in daylight time.
                let s = rule_local(year, start) - self.std as i64;
                let e = rule_local(year, end) - *dst as i64;
                vec![(s, *dst), (e, self.std)]
            }
        }
    }

    fn offset_at(&self, t: i64) -> i32 {
        if self.dst.is_none() {
            return self.std;
        }
        let y = year_of(t);
        let mut all: Vec<(i64, i32)> = (y - 1..=y + 1).flat_map(|y| self.transitions(y)).collect();
        all.sort_unstable();
        all.iter()
            .take_while(|&&(at, _)| at <= t)
            .last()
            .map_or(self.std, |&(_, o)| o)
    }
}

struct PosixParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl PosixParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn done(&self) -> bool {
        self.i == self.s.len()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn name(&mut self) -> Option<()> {
        let start = self.i;
        if self.eat(b'<') {
            while self.peek()? != b'>' {
                self.i += 1;
            }
            self.i += 1;
            return (self.i - start >= 5).then_some(());
        }
        while self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
            self.i += 1;
        }
        (self.i - start >= 3).then_some(())
    }
    fn num(&mut self, max: i64) -> Option<i64> {
        let start = self.i;
        let mut v: i64 = 0;
        while let Some(c) = self.peek().filter(u8::is_ascii_digit) {
            v = v * 10 + (c - b'0') as i64;
            self.i += 1;
            if v > max {
                return None;
            }
        }
        (self.i > start).then_some(v)
    }
    /// `[+-]hh[:mm[:ss]]` in seconds, hours up to `max_h`.
    fn offset(&mut self, max_h: i64) -> Option<i64> {
        let sign = if self.eat(b'-') {
            -1
        } else {
            self.eat(b'+');
            1
        };
        let mut v = self.num(max_h)? * 3600;
        if self.eat(b':') {
            v += self.num(59)? * 60;
            if self.eat(b':') {
                v += self.num(59)?;
            }
        }
        Some(sign * v)
    }
    fn rule(&mut self) -> Option<Rule> {
        let date = if self.eat(b'J') {
            RuleDate::Julian1(self.num(365).filter(|&n| n >= 1)? as u16)
        } else if self.eat(b'M') {
            let m = self.num(12).filter(|&n| n >= 1)? as u8;
            self.eat(b'.').then_some(())?;
            let w = self.num(5).filter(|&n| n >= 1)? as u8;
            self.eat(b'.').then_some(())?;
            let d = self.num(6)? as u8;
            RuleDate::Month(m, w, d)
        } else {
            RuleDate::Julian0(self.num(365)? as u16)
        };
        let time = if self.eat(b'/') {
            self.offset(167)?
        } else {
            7200
        };
        Some(Rule { date, time })
    }
}

/// Local seconds (since 1970-01-01 local) at which `rule` fires in `year`.
fn rule_local(year: i64, rule: &Rule) -> i64 {
    let jan1 = days_from_civil(year, 1, 1);
    let day = match rule.date {
        RuleDate::Julian1(n) => {
            let n = n as i64;
            jan1 + n - 1 + i64::from(is_leap(year) && n >= 60)
        }
        RuleDate::Julian0(n) => jan1 + n as i64,
        RuleDate::Month(m, w, d) => {
            let first = days_from_civil(year, m as i64, 1);
            let wd_first = (first + 4).rem_euclid(7); // 0 = Sunday
            let mut day = first + (d as i64 - wd_first).rem_euclid(7) + (w as i64 - 1) * 7;
            let next = if m == 12 {
                days_from_civil(year + 1, 1, 1)
            } else {
                days_from_civil(year, m as i64 + 1, 1)
            };
            while day >= next {
                day -= 7;
            }
            day
        }
    };
    day * 86400 + rule.time
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// (year, month, day) of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

fn year_of(t: i64) -> i64 {
    civil_from_days(t.div_euclid(86400)).0
}

/// `YYYY-MM-DD HH:MM` of local seconds, for messages and status files.
pub fn format_local(local: i64) -> String {
    let (y, m, d) = civil_from_days(local.div_euclid(86400));
    let s = local.rem_euclid(86400);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", s / 3600, s / 60 % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> Tz {
        Tz::load(Path::new(ZONEINFO_DIR), name).unwrap()
    }

    /// Unix seconds of a UTC date and time.
    fn utc(y: i64, mo: i64, d: i64, h: i64, mi: i64) -> i64 {
        days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60
    }

    #[test]
    fn civil_round_trip() {
        for z in [-800_000, -1, 0, 1, 59, 11_016, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn names() {
        for good in [
            "UTC",
            "America/New_York",
            "Etc/GMT+5",
            "America/Port-au-Prince",
        ] {
            check_name(good).unwrap();
        }
        for bad in [
            "",
            "/etc/passwd",
            "../etc/passwd",
            "America/../../etc",
            "America//New_York",
            "America/New York",
            "./UTC",
            "Europe/Berlin\n",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let long = "a".repeat(256);
        assert!(check_name(&long).is_err());
    }

    #[test]
    fn utc_needs_no_database() {
        let tz = Tz::load(Path::new("/nonexistent"), "UTC").unwrap();
        assert_eq!(tz.offset_at(1_700_000_000), 0);
        let e = Tz::load(Path::new("/nonexistent"), "Europe/Berlin").unwrap_err();
        assert!(e.contains("install tzdata or use UTC"), "{e}");
        assert!(e.contains("/nonexistent/Europe/Berlin"), "{e}");
    }

    #[test]
    fn new_york_offsets() {
        let tz = zone("America/New_York");
        // 2024-03-10 spring forward at 07:00Z, 2024-11-03 fall back at 06:00Z.
        assert_eq!(tz.offset_at(utc(2024, 3, 10, 6, 59)), -5 * 3600);
        assert_eq!(tz.offset_at(utc(2024, 3, 10, 7, 0)), -4 * 3600);
        assert_eq!(tz.offset_at(utc(2024, 11, 3, 5, 59)), -4 * 3600);
        assert_eq!(tz.offset_at(utc(2024, 11, 3, 6, 0)), -5 * 3600);
        // Far future: the POSIX footer.
        assert_eq!(tz.offset_at(utc(2099, 7, 1, 0, 0)), -4 * 3600);
        assert_eq!(tz.offset_at(utc(2099, 12, 1, 0, 0)), -5 * 3600);
        // 2099-03-08 is the second Sunday of March.
        assert_eq!(tz.offset_at(utc(2099, 3, 8, 6, 59)), -5 * 3600);
        assert_eq!(tz.offset_at(utc(2099, 3, 8, 7, 0)), -4 * 3600);
    }

    #[test]
    fn berlin_footer_and_table_agree() {
        let tz = zone("Europe/Berlin");
        assert_eq!(tz.offset_at(utc(2024, 3, 31, 0, 59)), 3600);
        assert_eq!(tz.offset_at(utc(2024, 3, 31, 1, 0)), 7200);
        assert_eq!(tz.offset_at(utc(2024, 10, 27, 0, 59)), 7200);
        assert_eq!(tz.offset_at(utc(2024, 10, 27, 1, 0)), 3600);
        let footer = tz.footer.clone().unwrap();
        for y in 2010..2037 {
            for (at, _) in footer.transitions(y) {
                for t in [at - 1, at, at + 1] {
                    assert_eq!(footer.offset_at(t), tz.offset_at(t), "{y} {t}");
                }
            }
        }
    }

    #[test]
    fn local_resolution() {
        let tz = zone("America/New_York");
        let local = |y, mo, d, h, mi| utc(y, mo, d, h, mi);
        // Ordinary time: one instant.
        assert_eq!(
            tz.from_local(local(2024, 7, 1, 12, 0)),
            Ok(vec![utc(2024, 7, 1, 16, 0)])
        );
        // Spring-forward gap: 02:30 does not exist; the gap starts at 07:00Z, EST before it.
        assert_eq!(
            tz.from_local(local(2024, 3, 10, 2, 30)),
            Err((utc(2024, 3, 10, 7, 0), -5 * 3600))
        );
        // Fall-back overlap: 01:30 happens twice.
        assert_eq!(
            tz.from_local(local(2024, 11, 3, 1, 30)),
            Ok(vec![utc(2024, 11, 3, 5, 30), utc(2024, 11, 3, 6, 30)])
        );
    }

    #[test]
    fn posix_strings() {
        let p = Posix::parse("<+0330>-3:30").unwrap();
        assert_eq!(p.std, 12600);
        assert!(p.dst.is_none());
        let p = Posix::parse("AEST-10AEDT,M10.1.0,M4.1.0/3").unwrap();
        assert_eq!(
            p.offset_at(utc(2024, 1, 1, 0, 0)),
            11 * 3600,
            "southern summer"
        );
        assert_eq!(p.offset_at(utc(2024, 7, 1, 0, 0)), 10 * 3600);
        // v3: all-year daylight time and hours beyond 24.
        let p = Posix::parse("EST5EDT,0/0,J365/25").unwrap();
        assert_eq!(p.offset_at(utc(2030, 6, 1, 0, 0)), -4 * 3600);
        assert_eq!(p.offset_at(utc(2030, 12, 31, 12, 0)), -4 * 3600);
        for bad in [
            "",
            "E5",
            "EST",
            "EST5EDT,M3.2.0",
            "EST5EDT,M13.1.0,M1.1.0",
            "EST5x",
        ] {
            assert!(Posix::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostile_files() {
        let good = std::fs::read(Path::new(ZONEINFO_DIR).join("Europe/Berlin")).unwrap();
        for cut in [0, 3, 20, 44, 60, good.len() / 2, good.len() - 1] {
            assert!(Tz::parse("x", &good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = good.clone();
        bad[4] = b'9';
        assert!(Tz::parse("x", &bad).is_err());
        // Huge counts must not allocate or panic.
        let mut huge = good.clone();
        for b in &mut huge[20..44] {
            *b = 0xff;
        }
        assert!(Tz::parse("x", &huge).is_err());
        assert!(Tz::parse("x", b"not a zone at all").is_err());
    }

    #[test]
    fn version1_file() {
        // Build a v1 file by hand: two types (EST, EDT), one transition.
        let mut f = Vec::new();
        f.extend_from_slice(b"TZif\0");
        f.extend_from_slice(&[0; 15]);
        for c in [0u32, 0, 0, 1, 2, 8] {
            f.extend_from_slice(&c.to_be_bytes());
        }
        f.extend_from_slice(&1_000_000i32.to_be_bytes());
        f.push(1);
        f.extend_from_slice(&(-18000i32).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&(-14400i32).to_be_bytes());
        f.extend_from_slice(&[1, 4]);
        f.extend_from_slice(b"EST\0EDT\0");
        let tz = Tz::parse("v1", &f).unwrap();
        assert_eq!(tz.offset_at(999_999), -18000);
        assert_eq!(tz.offset_at(1_000_000), -14400);
        assert_eq!(tz.offset_at(i64::MAX / 4), -14400);
    }
}
