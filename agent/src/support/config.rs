//! The agent's config file: a small TOML subset parsed by hand.
//!
//! Accepted lines: `key = "string"`, `key = 123`, `key = ["a", "b"]`, blank lines and `#`
//! comments (also after a value). Unknown keys, repeated keys and wrong types are errors that
//! name the file and line, so a typo never silently falls back to a default.

use crate::support::error::{Error, Result};
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/edgepatch/agent.conf";
/// A config is a few hundred bytes; anything past this is not one.
pub const MAX_CONFIG: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManagerChoice {
    Auto,
    Apt,
    Dnf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub node_id: String,
    pub variant: String,
    /// `key=value` labels matched against a policy's matchLabels.
    pub labels: Vec<(String, String)>,
    /// Release keys as a .pub file or a directory of them (small setups without a root key; with
    /// `root_keys`, only used until the first key list is accepted). See `trust`.
    pub trusted_keys: Option<PathBuf>,
    /// Root public key(s), a .pub file or a directory: the release keys then come from the newest
    /// signed key list accepted into state_dir/keylist.
    pub root_keys: Option<PathBuf>,
    /// The key list the image was baked with (a file), or its `VERSION:SHA256`: no key list
    /// below it is ever accepted, even on first contact. See `node::trust`.
    pub trust_floor: Option<String>,
    /// Distinct release signatures a bundle needs (the key list can only raise it).
    pub signature_threshold: usize,
    pub state_dir: PathBuf,
    /// Filesystem root being patched.
    pub root: PathBuf,
    pub package_manager: PackageManagerChoice,
    /// Base URL of the published mirror tree (fetch).
    pub mirror: Option<String>,
    /// Download rate cap in bytes per second (`bwlimit = "2M"`).
    pub bwlimit: Option<u64>,
    /// When downloads may run, in the node's local time (`"Mon-Sun 20:00-06:00"`).
    pub transfer_window: Option<String>,
    /// Directories scanned by `import` and `run` (USB mount points, rsync drops).
    pub import_paths: Vec<PathBuf>,
    /// Maximum random delay in seconds before a `run` pass.
    pub splay: u64,
    /// Where reports are POSTed.
    pub report_url: Option<String>,
    /// Prometheus textfile for node_exporter.
    pub metrics_file: Option<PathBuf>,
    /// Snapshot backend: auto, btrfs, lvm-thin, timeshift, packages, none.
    pub snapshot: String,
    pub snapshot_keep: u64,
    /// Rollback sets (cycles) kept for `rollback` to step back through.
    pub rollback_keep: u64,
    pub health_url: Option<String>,
    pub health_command: Option<String>,
    /// Seconds the health check may take.
    pub health_timeout: u64,
}

/// Parse a byte count with an optional K, M or G suffix (powers of 1024).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a size like 512K, 2M or 1048576"))
}

/// Parse seconds with an optional s, m, h or d suffix.
pub fn parse_duration(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last() {
        Some(b's') => (&s[..s.len() - 1], 1u64),
        Some(b'm') => (&s[..s.len() - 1], 60),
        Some(b'h') => (&s[..s.len() - 1], 3600),
        Some(b'd') => (&s[..s.len() - 1], 86400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a duration like 90, 10m or 2h"))
}

fn check_url(u: &str) -> std::result::Result<(), String> {
    if (u.starts_with("http://") || u.starts_with("https://")) && !u.contains(char::is_whitespace) {
        Ok(())
    } else {
        Err(format!("{u:?} must be an http:// or https:// URL"))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Int(i64),
    List(Vec<String>),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "a number",
            Value::List(_) => "a list",
        }
    }
}

/// Parse a double-quoted string at the start of `s`; returns the string and the rest.
fn parse_string(s: &str) -> std::result::Result<(String, &str), String> {
    let body = s
        .strip_prefix('"')
        .ok_or("expected a double-quoted string")?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &body[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '"')) => out.push('"'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                _ => return Err("unsupported escape in string".into()),
            },
            c if c.is_control() => return Err("control character in string".into()),
            c => out.push(c),
        }
    }
    Err("string is not closed".into())
}

fn trailing_ok(rest: &str) -> std::result::Result<(), String> {
    let rest = rest.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        Ok(())
    } else {
        Err(format!("unexpected text after value: {rest:?}"))
    }
}

fn parse_value(s: &str) -> std::result::Result<Value, String> {
    let s = s.trim_start();
    if s.starts_with('"') {
        let (v, rest) = parse_string(s)?;
        trailing_ok(rest)?;
        return Ok(Value::Str(v));
    }
    if let Some(mut rest) = s.strip_prefix('[') {
        let mut items = Vec::new();
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix(']') {
                trailing_ok(after)?;
                return Ok(Value::List(items));
            }
            let (item, after) = parse_string(rest)?;
            items.push(item);
            rest = after.trim_start();
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with(']') {
                return Err("expected ',' or ']' in list".into());
            }
        }
    }
    let end = s
        .find(|c: char| c.is_whitespace() || c == '#')
        .unwrap_or(s.len());
    trailing_ok(&s[end..])?;
    s[..end]
        .parse::<i64>()
        .map(Value::Int)
        .map_err(|_| format!("value {:?} is not a string, number or list", &s[..end]))
}

/// (line number, key, value)
type Line = (usize, String, Value);

/// Parse `key = value` lines; an error carries the line number.
fn parse_lines(text: &str) -> std::result::Result<Vec<Line>, (usize, String)> {
    let mut out: Vec<Line> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or((lineno, "expected 'key = value'".to_string()))?;
        let key = key.trim();
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
        {
            return Err((lineno, format!("bad key {key:?}")));
        }
        if out.iter().any(|(_, k, _)| k == key) {
            return Err((lineno, format!("key {key} given twice")));
        }
        let value = parse_value(value).map_err(|e| (lineno, e))?;
        out.push((lineno, key.to_string(), value));
    }
    Ok(out)
}

/// The node id when `node_id` is empty or absent: ROOT/etc/machine-id, trimmed. An image baked
/// for the whole fleet ships that file empty and systemd writes a unique id at first boot; an
/// empty or `uninitialized` one (first boot not finished) is refused, never shared.
pub fn machine_id(root: &Path) -> Result<String> {
    let path = root.join("etc/machine-id");
    let hint = "set node_id in the config, or boot once so systemd writes it";
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::usage(format!(
            "node_id is empty and {} cannot be read ({e}); {hint}",
            path.display()
        ))
    })?;
    match text.trim() {
        "" | "uninitialized" => Err(Error::usage(format!(
            "node_id is empty and so is {} (not initialized); {hint}",
            path.display()
        ))),
        id => Ok(id.to_string()),
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let bytes = crate::support::fsutil::read_capped(path, MAX_CONFIG).map_err(|e| {
            Error::usage(format!(
                "config {}: {e} (use --config FILE or EDGEPATCH_CONFIG)",
                path.display()
            ))
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::usage(format!("config {}: not UTF-8 text", path.display())))?;
        Config::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let at = |line: usize, msg: String| Error::usage(format!("{origin}:{line}: {msg}"));
        let lines = parse_lines(text).map_err(|(l, m)| at(l, m))?;
        let mut node_id = None;
        let mut variant = None;
        let mut labels = Vec::new();
        let mut trusted_keys = None;
        let mut root_keys = None;
        let mut trust_floor = None;
        let mut signature_threshold = 1;
        let mut state_dir = PathBuf::from("/var/lib/edgepatch");
        let mut root = PathBuf::from("/");
        let mut package_manager = PackageManagerChoice::Auto;
        let mut mirror = None;
        let mut bwlimit = None;
        let mut transfer_window = None;
        let mut import_paths = Vec::new();
        let mut splay = 0;
        let mut report_url = None;
        let mut metrics_file = None;
        let mut snapshot = "auto".to_string();
        let mut snapshot_keep = 2;
        let mut rollback_keep = 2;
        let mut health_url = None;
        let mut health_command = None;
        let mut health_timeout = 120;
        for (line, key, value) in lines {
            let checked =
                |r: std::result::Result<(), String>| r.map_err(|m| at(line, format!("{key}: {m}")));
            // Numbers may be written bare (`splay = 600`) or as strings with units (`"10m"`).
            let text_or_int = |v: &Value| match v {
                Value::Int(i) if *i >= 0 => Ok(i.to_string()),
                Value::Str(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err(at(line, format!("{key} must be a number or a string"))),
            };
            let want_str = |v: &Value| match v {
                Value::Str(s) if !s.is_empty() => Ok(s.clone()),
                other => Err(at(
                    line,
                    format!(
                        "{key} must be a non-empty string, not {}",
                        other.type_name()
                    ),
                )),
            };
            match key.as_str() {
                // Empty means "use /etc/machine-id" (one image for the whole fleet).
                "node_id" => match value {
                    Value::Str(s) => node_id = Some(s),
                    _ => return Err(at(line, "node_id must be a string".into())),
                },
                "variant" => variant = Some(want_str(&value)?),
                "trusted_keys" => trusted_keys = Some(PathBuf::from(want_str(&value)?)),
                "root_keys" => root_keys = Some(PathBuf::from(want_str(&value)?)),
                "trust_floor" => {
                    let v = want_str(&value)?;
                    let version_form = v.split_once(':').is_some_and(|(n, h)| {
                        n.parse::<u64>().is_ok_and(|v| v > 0)
                            && h.len() == 64
                            && h.bytes().all(|b| b.is_ascii_hexdigit())
                    });
                    if !version_form && !v.starts_with('/') {
                        return Err(at(
                            line,
                            "trust_floor must be an absolute key list path or VERSION:SHA256"
                                .into(),
                        ));
                    }
                    trust_floor = Some(v);
                }
                "signature_threshold" => {
                    signature_threshold = match value {
                        Value::Int(n) if (1..=16).contains(&n) => n as usize,
                        _ => {
                            return Err(at(
                                line,
                                "signature_threshold must be a number from 1 to 16".into(),
                            ))
                        }
                    }
                }
                "state_dir" => state_dir = PathBuf::from(want_str(&value)?),
                "root" => root = PathBuf::from(want_str(&value)?),
                "package_manager" => {
                    package_manager = match want_str(&value)?.as_str() {
                        "auto" => PackageManagerChoice::Auto,
                        "apt" => PackageManagerChoice::Apt,
                        "dnf" => PackageManagerChoice::Dnf,
                        other => {
                            return Err(at(
                                line,
                                format!("package_manager {other:?}: use apt, dnf or auto"),
                            ))
                        }
                    }
                }
                "mirror" => {
                    let u = want_str(&value)?;
                    checked(check_url(&u))?;
                    mirror = Some(u.trim_end_matches('/').to_string());
                }
                "report_url" => {
                    let u = want_str(&value)?;
                    checked(check_url(&u))?;
                    report_url = Some(u);
                }
                "health_url" => {
                    let u = want_str(&value)?;
                    checked(check_url(&u))?;
                    health_url = Some(u);
                }
                "health_command" => health_command = Some(want_str(&value)?),
                "metrics_file" => metrics_file = Some(PathBuf::from(want_str(&value)?)),
                "bwlimit" => {
                    bwlimit = Some(
                        parse_size(&text_or_int(&value)?)
                            .map_err(|m| at(line, format!("bwlimit: {m}")))?,
                    )
                }
                "splay" => {
                    splay = parse_duration(&text_or_int(&value)?)
                        .map_err(|m| at(line, format!("splay: {m}")))?
                }
                "health_timeout" => {
                    health_timeout = parse_duration(&text_or_int(&value)?)
                        .ok()
                        .filter(|t| (1..=3600).contains(t))
                        .ok_or_else(|| {
                            at(line, "health_timeout must be 1 to 3600 seconds".into())
                        })?
                }
                "snapshot_keep" | "rollback_keep" => {
                    // rollback_keep = 0: no rollback sets at all (a filesystem snapshot is the
                    // node's way back); a snapshot backend always keeps one.
                    let low = i64::from(key == "snapshot_keep");
                    let n = match value {
                        Value::Int(n) if (low..=100).contains(&n) => n as u64,
                        _ => {
                            return Err(at(
                                line,
                                format!("{key} must be a number from {low} to 100"),
                            ))
                        }
                    };
                    if key == "snapshot_keep" {
                        snapshot_keep = n
                    } else {
                        rollback_keep = n
                    }
                }
                "snapshot" => {
                    let v = want_str(&value)?;
                    if !["auto", "btrfs", "lvm-thin", "timeshift", "packages", "none"]
                        .contains(&v.as_str())
                    {
                        return Err(at(line, format!("snapshot {v:?}: use auto, btrfs, lvm-thin, timeshift, packages or none")));
                    }
                    snapshot = v;
                }
                "transfer_window" => {
                    let w = want_str(&value)?;
                    checked(crate::support::window::Window::parse(&w).map(|_| ()))?;
                    transfer_window = Some(w);
                }
                "import_paths" => {
                    let Value::List(items) = value else {
                        return Err(at(
                            line,
                            "import_paths must be a list like [\"/media/usb\"]".into(),
                        ));
                    };
                    import_paths = items.into_iter().map(PathBuf::from).collect();
                }
                "labels" => {
                    let Value::List(items) = value else {
                        return Err(at(
                            line,
                            format!(
                                "labels must be a list like [\"role=kiosk\"], not {}",
                                value.type_name()
                            ),
                        ));
                    };
                    for item in items {
                        let (k, v) = item
                            .split_once('=')
                            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                            .ok_or_else(|| {
                                at(line, format!("label {item:?} must look like key=value"))
                            })?;
                        labels.push((k.to_string(), v.to_string()));
                    }
                }
                other => {
                    return Err(at(
                        line,
                        format!("unknown key {other:?}; see README, config reference"),
                    ))
                }
            }
        }
        let missing = |k: &str| Error::usage(format!("{origin}: required key {k} is missing"));
        let node_id = match node_id.filter(|n| !n.is_empty()) {
            Some(n) => n,
            None => machine_id(&root).map_err(|e| Error::usage(format!("{origin}: {}", e.msg)))?,
        };
        let variant = variant.ok_or_else(|| missing("variant"))?;
        if trusted_keys.is_none() && root_keys.is_none() {
            return Err(missing("trusted_keys (or root_keys)"));
        }
        for (what, v) in [("node_id", &node_id), ("variant", &variant)] {
            if v.len() > 128 || !v.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::usage(format!(
                    "{origin}: {what} {v:?} must be printable, no spaces, ≤128 bytes"
                )));
            }
        }
        Ok(Config {
            node_id,
            variant,
            labels,
            trusted_keys,
            root_keys,
            trust_floor,
            signature_threshold,
            state_dir,
            root,
            package_manager,
            mirror,
            bwlimit,
            transfer_window,
            import_paths,
            splay,
            report_url,
            metrics_file,
            snapshot,
            snapshot_keep,
            rollback_keep,
            health_url,
            health_command,
            health_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
# a kiosk
node_id = "store-0042-till-1"
variant = "debian-12-amd64"   # trailing comment
labels = ["role=edge-node", "region=us-east"]
trusted_keys = "/etc/edgepatch/keys"
state_dir = "/var/lib/edgepatch"
root = "/"
package_manager = "apt"
mirror = "http://mirror.example.invalid/edgepatch/"
bwlimit = "2M"
transfer_window = "Mon-Sun 20:00-06:00"
import_paths = ["/media/usb0", "/srv/drop"]
splay = "10m"
report_url = "http://center.example.invalid/api/v1/reports"
metrics_file = "/var/lib/node_exporter/edgepatch.prom"
snapshot = "packages"
snapshot_keep = 3
health_url = "http://127.0.0.1:8080/health"
health_command = "/usr/local/bin/kiosk-ok"
health_timeout = 60
"#;

    #[test]
    fn parses_every_key() {
        let c = Config::parse(GOOD, "agent.conf").unwrap();
        assert_eq!(c.node_id, "store-0042-till-1");
        assert_eq!(
            c.labels,
            vec![
                ("role".into(), "edge-node".into()),
                ("region".into(), "us-east".into())
            ]
        );
        assert_eq!(c.package_manager, PackageManagerChoice::Apt);
        assert_eq!(c.bwlimit, Some(2 << 20));
        assert_eq!(c.splay, 600);
        assert_eq!(
            c.mirror.as_deref(),
            Some("http://mirror.example.invalid/edgepatch")
        );
        assert_eq!(c.import_paths.len(), 2);
        assert_eq!(
            (c.snapshot.as_str(), c.snapshot_keep, c.health_timeout),
            ("packages", 3, 60)
        );
    }

    #[test]
    fn unknown_key_names_the_line() {
        let e = Config::parse(&format!("{GOOD}colour = \"red\"\n"), "agent.conf").unwrap_err();
        assert!(
            e.msg.starts_with("agent.conf:22: unknown key \"colour\""),
            "{}",
            e.msg
        );
    }

    #[test]
    fn rollback_keep_may_be_zero_snapshot_keep_may_not() {
        let c = Config::parse(&format!("{GOOD}rollback_keep = 0\n"), "agent.conf").unwrap();
        assert_eq!(c.rollback_keep, 0);
        let text = GOOD.replace("snapshot_keep = 3", "snapshot_keep = 0");
        let e = Config::parse(&text, "agent.conf").unwrap_err();
        assert!(
            e.msg
                .contains("snapshot_keep must be a number from 1 to 100"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            "node_id = \"a\nnode_id = \"b\"",
            "labels = [\"nokey\"]",
            "labels = \"role=x\"",
            "package_manager = \"yum\"",
            "bwlimit = \"fast\"",
            "mirror = \"ftp://x\"",
            "transfer_window = \"Someday\"",
            "snapshot = \"zfs\"",
            "health_timeout = 0",
            "splay = -5",
            "node_id = \"x\" junk",
            "node_id = [\"x\",",
            "node_id 5",
        ] {
            let text = format!("variant = \"v\"\ntrusted_keys = \"k\"\n{bad}\n");
            assert!(Config::parse(&text, "c").is_err(), "{bad}");
        }
        assert!(
            Config::parse("variant = \"v\"\nroot = \"/nonexistent\"\n", "c")
                .unwrap_err()
                .msg
                .contains("node_id is empty and /nonexistent/etc/machine-id cannot be read")
        );
    }

    #[test]
    fn empty_node_id_uses_machine_id_under_root() {
        let dir = std::env::temp_dir().join(format!("edgepatch-machine-id-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        let conf = format!(
            "node_id = \"\"\nvariant = \"v\"\ntrusted_keys = \"k\"\nroot = \"{}\"\n",
            dir.display()
        );
        let id_file = dir.join("etc/machine-id");
        std::fs::write(&id_file, "0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(
            Config::parse(&conf, "c").unwrap().node_id,
            "0123456789abcdef0123456789abcdef"
        );
        // Absent node_id: the same.
        let absent = conf.replace("node_id = \"\"\n", "");
        assert_eq!(
            Config::parse(&absent, "c").unwrap().node_id,
            "0123456789abcdef0123456789abcdef"
        );
        for bad in ["", "\n", "uninitialized\n"] {
            std::fs::write(&id_file, bad).unwrap();
            let e = Config::parse(&conf, "c").unwrap_err();
            assert_eq!(
                e.msg,
                format!(
                    "c: node_id is empty and so is {} (not initialized); set node_id in the config, or boot once so systemd writes it",
                    id_file.display()
                ),
                "{bad:?}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn root_keys_alone_are_enough_and_threshold_is_bounded() {
        let c = Config::parse(
            "node_id = \"n\"\nvariant = \"v\"\nroot_keys = \"/etc/edgepatch/root.pub\"\nsignature_threshold = 2\n",
            "c",
        )
        .unwrap();
        assert_eq!(c.trusted_keys, None);
        assert_eq!(
            c.root_keys.as_deref(),
            Some(Path::new("/etc/edgepatch/root.pub"))
        );
        assert_eq!(c.signature_threshold, 2);
        let e = Config::parse("node_id = \"n\"\nvariant = \"v\"\n", "c").unwrap_err();
        assert!(e.msg.contains("root_keys"), "{}", e.msg);
        let e = Config::parse(
            "node_id = \"n\"\nvariant = \"v\"\ntrusted_keys = \"k\"\nsignature_threshold = 0\n",
            "c",
        )
        .unwrap_err();
        assert!(e.msg.contains("signature_threshold"), "{}", e.msg);
    }
}
