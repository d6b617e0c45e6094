//! `edgepatch doctor`: is this node ready to patch? One line per check, for a technician on a
//! 9600-baud serial console:
//!
//! ```text
//! ok   config   /etc/edgepatch/agent.conf: node till-1, variant debian-12-amd64
//! FAIL keys     /etc/edgepatch/keys: no *.pub key found - copy the release key there
//! ok   clock    system 2026-11-26 04:50 UTC, trusted 2026-11-26 04:49
//! ```
//!
//! Checks: config (parses), keys (load; ids, and expiry when a key list is in use), clock (system
//! clock vs `state_dir/trusted-time`: behind it means a dead RTC battery), space (free bytes and
//! inodes where state_dir lives, writable), pkgmgr (apt-get/dpkg or dnf/rpm for `root`),
//! snapshot (the backend `auto` resolves to), tz (the tz database), mirror (GET of
//! `MIRROR/<variant>/index`, 5 s timeout, only when `mirror` is set).
//!
//! Levels: `ok`, `warn` (works, but degraded or soon broken), `FAIL`, `skip` (needs the config,
//! which failed). Every `warn` and `FAIL` line ends with what to do (`- hint`). Lines never pass
//! 80 columns: a long message wraps onto lines indented under the message. The level word is
//! coloured only when stdout is a TTY, `NO_COLOR` is unset and `TERM` is not `dumb`.
//!
//! Exit 0 when no check failed (warnings allowed), 1 otherwise.

use crate::bundle::format::hex;
use crate::support::clock::{Clock, Ratchet};
use crate::support::config::{Config, PackageManagerChoice};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Console width every line fits in.
pub const WIDTH: usize = 80;
/// Level word (4) + space, check name (8) + space.
const INDENT: usize = 14;
/// Free space below this fails (a bundle is held twice: incoming/ and its staged copy).
pub const MIN_FREE: u64 = 128 << 20;
/// Free space below this warns.
pub const LOW_FREE: u64 = 512 << 20;
/// A system clock this far behind the newest trusted time warns (builder/node clock skew).
pub const CLOCK_SLACK: u64 = 600;
/// A system clock before this (2025-01-01 UTC) has certainly been reset.
pub const CLOCK_FLOOR: u64 = 1_735_689_600;
/// A key list expiring within this many seconds warns.
pub const KEYLIST_SOON: u64 = 30 * 86_400;
/// Timeout of the mirror probe.
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
    Skip,
}

impl Level {
    fn word(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
            Level::Skip => "skip",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Level::Ok => "\x1b[32m",
            Level::Warn => "\x1b[33m",
            Level::Fail => "\x1b[1;31m",
            Level::Skip => "\x1b[2m",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub msg: String,
}

impl Check {
    fn ok(name: &'static str, msg: impl Into<String>) -> Check {
        Check {
            name,
            level: Level::Ok,
            msg: msg.into(),
        }
    }

    fn warn(name: &'static str, msg: impl AsRef<str>, hint: &str) -> Check {
        Check {
            name,
            level: Level::Warn,
            msg: format!("{} - {hint}", msg.as_ref()),
        }
    }

    fn fail(name: &'static str, msg: impl AsRef<str>, hint: &str) -> Check {
        Check {
            name,
            level: Level::Fail,
            msg: format!("{} - {hint}", msg.as_ref()),
        }
    }

    fn skip(name: &'static str) -> Check {
        Check {
            name,
            level: Level::Skip,
            msg: "needs a readable config (see the config line)".into(),
        }
    }
}

/// One check as console lines (each ≤ [`WIDTH`] columns), newline-terminated.
pub fn render(c: &Check, colour: bool) -> String {
    let mut out = String::new();
    for (i, line) in crate::support::text::wrap(&c.msg, WIDTH - INDENT)
        .iter()
        .enumerate()
    {
        if i == 0 {
            let word = c.level.word();
            if colour {
                out += &format!("{}{word}\x1b[0m", c.level.colour());
            } else {
                out += word;
            }
            out += &" ".repeat(5 - word.len());
            out += &format!("{:<8} {line}\n", c.name);
        } else {
            out += &format!("{}{line}\n", " ".repeat(INDENT));
        }
    }
    out
}

/// Colour only for a person at a colour terminal.
pub fn use_colour() -> bool {
    use std::os::fd::AsRawFd;
    std::env::var_os("NO_COLOR").is_none()
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
        && nix::unistd::isatty(std::io::stdout().as_raw_fd()).unwrap_or(false)
}

/// ISO-8601 UTC of unix seconds (`support::clock::iso_utc`).
pub fn utc_minutes(t: u64) -> String {
    crate::support::clock::iso_utc(t)
}

/// Bytes as a short human number (KiB, MiB, GiB; one decimal).
fn human(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    // Tenths, in integers (no float formatting in the agent: it costs ~25 KB).
    let mut v = n * 10 / 1024;
    let mut u = 0;
    while v >= 10240 && u + 1 < UNITS.len() {
        v /= 1024;
        u += 1;
    }
    format!("{}.{} {}", v / 10, v % 10, UNITS[u])
}

// --- the checks ------------------------------------------------------------------------------

fn check_config(path: &Path) -> (Check, Option<Config>) {
    match Config::load(path) {
        Ok(c) => (
            Check::ok(
                "config",
                format!(
                    "{}: node {}, variant {}",
                    path.display(),
                    c.node_id,
                    c.variant
                ),
            ),
            Some(c),
        ),
        Err(e) => (
            Check::fail("config", &e.msg, "fix it (README: config reference)"),
            None,
        ),
    }
}

fn check_keys(config: &Config, now: u64) -> Check {
    const COPY: &str = "copy the release key there";
    // The common mistakes first, in words a technician can act on.
    if let (None, Some(p)) = (&config.root_keys, &config.trusted_keys) {
        match std::fs::metadata(p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Check::fail("keys", format!("{}: missing", p.display()), COPY)
            }
            Ok(m) if m.is_dir() => {
                let any = std::fs::read_dir(p).ok().is_some_and(|mut d| {
                    d.any(|e| {
                        e.ok()
                            .is_some_and(|e| e.path().extension().is_some_and(|x| x == "pub"))
                    })
                });
                if !any {
                    return Check::fail(
                        "keys",
                        format!("{}: no *.pub key found", p.display()),
                        COPY,
                    );
                }
            }
            _ => {}
        }
    }
    let trusted = match crate::node::trust::load_at(config, now) {
        Ok(t) => t,
        Err(e) => return Check::fail("keys", &e.msg, "fix trusted_keys/root_keys in the config"),
    };
    let list = match &config.root_keys {
        Some(_) => crate::node::trust::current(config).ok().flatten(),
        None => None,
    };
    let usable: Vec<String> = trusted
        .iter()
        .filter(|k| k.refused.is_none())
        .map(|k| hex(&k.id))
        .collect();
    let need = crate::bundle::keys::required_signers(&trusted);
    if usable.len() < need {
        let why: Vec<String> = trusted
            .iter()
            .filter_map(|k| k.refused.as_ref().map(|r| format!("{} {r}", hex(&k.id))))
            .collect();
        return Check::fail(
            "keys",
            format!(
                "{} usable key(s), bundles need {need}; {}",
                usable.len(),
                why.join("; ")
            ),
            "import a newer key list: edgepatch keys --import FILE",
        );
    }
    let refused = trusted.len() - usable.len();
    let mut msg = format!("{} usable: {}", usable.len(), usable.join(" "));
    if refused > 0 {
        msg += &format!(" ({refused} refused)");
    }
    match list {
        None => {
            msg += "; no expiry (trusted_keys)";
            Check::ok("keys", msg)
        }
        Some((l, _)) => {
            msg += &format!(
                "; key list v{} expires {}",
                l.version,
                utc_minutes(l.expires).split('T').next().unwrap_or("")
            );
            if l.expires <= now.saturating_add(KEYLIST_SOON) {
                Check::warn("keys", msg, "sign a new key list and import it before then")
            } else {
                Check::ok("keys", msg)
            }
        }
    }
}

/// A freshly imaged node must not take an old key list or an expired bundle (see node::trust).
fn check_first_contact(config: &Config) -> Check {
    if let Err(e) = crate::node::trust::floor(config) {
        return Check::fail("floor", &e.msg, "bake the current key list as trust_floor");
    }
    let w = crate::node::trust::first_contact_warnings(config);
    if w.is_empty() {
        return Check::ok("floor", "trust floor or key list present");
    }
    Check::warn(
        "floor",
        w.join("; "),
        "set trust_floor to the image's key list (README: baking an image)",
    )
}

fn check_clock(config: &Config, clock: &dyn Clock) -> Check {
    let system = clock.now();
    let trusted = Ratchet::new(&config.state_dir).floor();
    let sys = format!("system {}", utc_minutes(system));
    if system < CLOCK_FLOOR {
        return Check::warn(
            "clock",
            format!("{sys}: reset (dead RTC battery?)"),
            "set the clock or enable NTP",
        );
    }
    if trusted == 0 {
        return Check::ok("clock", format!("{sys}, no trusted time yet"));
    }
    let msg = format!("{sys}, trusted {}", utc_minutes(trusted));
    if system.saturating_add(CLOCK_SLACK) < trusted {
        return Check::warn(
            "clock",
            format!("{msg}: behind (dead RTC battery?)"),
            "set the clock or enable NTP",
        );
    }
    Check::ok("clock", msg)
}

/// The directory itself or, when it does not exist yet, its nearest existing ancestor.
fn existing_ancestor(p: &Path) -> Option<PathBuf> {
    p.ancestors().find(|a| a.exists()).map(Path::to_path_buf)
}

// statvfs field types differ between targets (u32 on armv7, u64 on x86_64).
#[allow(clippy::unnecessary_cast)]
fn check_space(config: &Config) -> Check {
    let dir = &config.state_dir;
    let Some(at) = existing_ancestor(dir) else {
        return Check::fail(
            "space",
            format!("{}: no existing parent", dir.display()),
            "fix state_dir",
        );
    };
    let st = match nix::sys::statvfs::statvfs(&at) {
        Ok(s) => s,
        Err(e) => {
            return Check::fail(
                "space",
                format!("statvfs {}: {e}", at.display()),
                "check the mount",
            )
        }
    };
    let frag = st.fragment_size() as u64;
    let free = (st.blocks_available() as u64).saturating_mul(frag);
    let total = (st.blocks() as u64).saturating_mul(frag);
    let (files, files_free) = (st.files() as u64, st.files_available() as u64);
    let mut msg = format!("{}: {} free of {}", at.display(), human(free), human(total));
    if at != *dir {
        msg = format!("{} (state_dir not created yet) {msg}", dir.display());
    }
    let writable = nix::unistd::access(&at, nix::unistd::AccessFlags::W_OK).is_ok();
    if !writable {
        return Check::fail(
            "space",
            format!("{msg}; not writable"),
            "run as root or fix the owner of state_dir",
        );
    }
    let prune = "remove old bundles from state_dir/incoming or grow the filesystem";
    if free < MIN_FREE {
        return Check::fail("space", format!("{msg}, need {}", human(MIN_FREE)), prune);
    }
    // Filesystems without inode accounting (btrfs) report 0 files.
    if files > 0 && files_free < 1000 {
        return Check::fail("space", format!("{msg}; {files_free} inodes left"), prune);
    }
    if free < LOW_FREE {
        return Check::warn(
            "space",
            format!("{msg}, low (below {})", human(LOW_FREE)),
            prune,
        );
    }
    Check::ok("space", msg)
}

/// First `name` on PATH, if any.
fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn check_pkgmgr(config: &Config) -> Check {
    let pm = match crate::node::pkg::select(config.package_manager, &config.root, &config.state_dir)
    {
        Ok(pm) => pm,
        Err(e) => return Check::fail("pkgmgr", &e.msg, "set package_manager = \"apt\" or \"dnf\""),
    };
    let root = &config.root;
    let (tools, dbs): (&[&str], &[&str]) = match pm.name() {
        "dnf" => (&["dnf", "rpm"], &["var/lib/rpm", "usr/lib/sysimage/rpm"]),
        _ => (&["apt-get", "dpkg"], &["var/lib/dpkg/status"]),
    };
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    if !missing.is_empty() {
        return Check::fail(
            "pkgmgr",
            format!("{}: {} not found on PATH", pm.name(), missing.join(", ")),
            "install them or fix PATH",
        );
    }
    if !dbs.iter().any(|d| root.join(d).exists()) {
        return Check::fail(
            "pkgmgr",
            format!("{}: no {} in root {}", pm.name(), dbs[0], root.display()),
            "check root and package_manager",
        );
    }
    let how = if config.package_manager == PackageManagerChoice::Auto {
        " (auto)"
    } else {
        ""
    };
    Check::ok(
        "pkgmgr",
        format!(
            "{}{how}: {} for root {}",
            pm.name(),
            tools.join(", "),
            root.display()
        ),
    )
}

fn check_snapshot(config: &Config) -> Check {
    let snaps = crate::node::snapshot::Snapshots::new(&config.root);
    match snaps.choose(&config.snapshot, &config.state_dir) {
        Ok(b) => {
            let how = if config.snapshot == "auto" {
                " (auto)"
            } else {
                ""
            };
            let what = match b {
                crate::node::snapshot::Backend::Packages => {
                    ": package-level rollback, no fs snapshot"
                }
                crate::node::snapshot::Backend::None => "",
                _ => ": filesystem snapshot before install",
            };
            if b == crate::node::snapshot::Backend::None {
                return Check::warn(
                    "snapshot",
                    "none: no snapshot, installs cannot be rolled back",
                    "set snapshot = \"auto\"",
                );
            }
            Check::ok("snapshot", format!("{}{how}{what}", b.name()))
        }
        Err(m) => Check::fail("snapshot", m, "set snapshot = \"auto\" or \"packages\""),
    }
}

/// The zone /etc/localtime points to, if it is a link into a zoneinfo tree.
fn local_zone() -> Option<String> {
    let target = std::fs::read_link("/etc/localtime").ok()?;
    let s = target.to_str()?;
    let (_, zone) = s.split_once("zoneinfo/")?;
    crate::support::tz::check_name(zone).ok()?;
    Some(zone.to_string())
}

fn check_tz() -> Check {
    let dir = Path::new(crate::support::tz::ZONEINFO_DIR);
    let hint = "install tzdata, or use UTC in policies";
    if !dir.is_dir() {
        return Check::warn(
            "tz",
            format!(
                "{}: missing; local-time windows are not applied",
                dir.display()
            ),
            hint,
        );
    }
    let zone = local_zone().unwrap_or_else(|| "Europe/London".to_string());
    match crate::support::tz::Tz::load(dir, &zone) {
        Ok(_) => Check::ok("tz", format!("{}: {zone} loads", dir.display())),
        Err(e) => Check::warn("tz", e, hint),
    }
}

/// Does the center answer at report_url?
fn check_report(config: &Config) -> Check {
    let Some(url) = config.report_url.as_deref() else {
        return Check::ok("report", "not set; export-status DIR for USB");
    };
    let key = crate::node::status::node_key_fingerprint(&config.state_dir)
        .map_or(String::new(), |fp| format!("; node key {fp}"));
    match crate::transport::report::probe(url, MIRROR_TIMEOUT) {
        Ok(m) => Check::ok("report", format!("{m}{key}")),
        Err(m) => Check::fail("report", m, "fix report_url or start the center"),
    }
}

fn check_mirror(config: &Config) -> Check {
    let Some(mirror) = &config.mirror else {
        return Check::ok("mirror", "not set; bundles come by import (USB, drop dir)");
    };
    let url = format!("{mirror}/{}/index", config.variant);
    if url.starts_with("https://") && !cfg!(feature = "tls") {
        return Check::fail(
            "mirror",
            format!("{url}: this agent has no TLS"),
            "use an http:// mirror or the --features tls agent",
        );
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(MIRROR_TIMEOUT))
        .user_agent(format!("edgepatch/{} doctor", crate::VERSION))
        .max_redirects(3)
        .build()
        .into();
    let start = Instant::now();
    match agent.get(&url).call() {
        Ok(resp) => {
            let ms = start.elapsed().as_millis();
            let code = resp.status().as_u16();
            drop(resp);
            match code {
                200..=299 => Check::ok("mirror", format!("{url}: HTTP {code} in {ms} ms")),
                404 => Check::fail(
                    "mirror",
                    format!("{url}: HTTP 404"),
                    "publish this variant there or fix mirror/variant",
                ),
                _ => Check::fail(
                    "mirror",
                    format!("{url}: HTTP {code}"),
                    "check the mirror server",
                ),
            }
        }
        Err(e) => Check::fail(
            "mirror",
            format!("{url}: {e}"),
            "check network, DNS, proxy and mirror in the config",
        ),
    }
}

/// Run every check in order.
pub fn checks(config_path: &Path, clock: &dyn Clock) -> Vec<Check> {
    let (first, config) = check_config(config_path);
    let mut out = vec![first];
    match &config {
        Some(c) => {
            let now = Ratchet::new(&c.state_dir).now(clock);
            out.push(check_keys(c, now));
            out.push(check_first_contact(c));
            out.push(check_clock(c, clock));
            out.push(check_space(c));
            out.push(check_pkgmgr(c));
            out.push(check_snapshot(c));
        }
        None => {
            for name in ["keys", "clock", "space", "pkgmgr", "snapshot"] {
                out.push(Check::skip(name));
            }
        }
    }
    out.push(check_tz());
    out.push(match &config {
        Some(c) => check_mirror(c),
        None => Check::skip("mirror"),
    });
    out.push(match &config {
        Some(c) => check_report(c),
        None => Check::skip("report"),
    });
    out
}

/// `edgepatch doctor`; returns the exit code (0: nothing failed, 1: something did).
pub fn main(config_path: &Path, rest: &[OsString]) -> i32 {
    if !rest.is_empty() {
        eprintln!("edgepatch: usage: edgepatch doctor");
        return 1;
    }
    let clock = crate::support::clock::from_env();
    let colour = use_colour();
    let mut failed = false;
    for c in checks(config_path, clock.as_ref()) {
        use std::io::Write;
        failed |= matches!(c.level, Level::Fail | Level::Skip);
        // Each line as soon as it is known: a slow mirror must not hide the rest.
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(render(&c, colour).as_bytes());
        let _ = out.flush();
    }
    i32::from(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_fit_80_columns() {
        let c = Check::fail(
            "keys",
            format!(
                "/var/lib/{}/keys: no *.pub key found",
                "very-long-directory-name/".repeat(5)
            ),
            "copy the release key there",
        );
        let text = render(&c, false);
        assert!(text.starts_with("FAIL keys     /var/lib/"), "{text}");
        for line in text.lines() {
            assert!(line.chars().count() <= WIDTH, "{line:?}");
        }
        assert!(text.contains("copy the release key"), "{text}");
        let short = render(&Check::ok("clock", "fine"), false);
        assert_eq!(short, "ok   clock    fine\n");
        assert!(render(&Check::ok("clock", "fine"), true).contains("\x1b[32mok\x1b[0m"));
    }

    #[test]
    fn wrap_keeps_words_and_cuts_long_ones() {
        use crate::support::text::wrap;
        assert_eq!(wrap("a bb ccc", 4), vec!["a bb", "ccc"]);
        assert_eq!(wrap("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        assert_eq!(wrap("", 4), vec![""]);
    }

    #[test]
    fn times_and_sizes() {
        assert_eq!(utc_minutes(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_minutes(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
