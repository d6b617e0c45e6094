//! Exit codes (the contract with cron, systemd, the center and technicians) and the agent's error.
//! The table below is printed by `--help` and copied into README.

use std::fmt;

/// Why the agent stopped. The numeric value is the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Exit {
    Ok = 0,
    Usage = 1,
    Integrity = 2,
    Authenticity = 3,
    NotApplicable = 4,
    Deferred = 5,
    InstallFailed = 6,
    HealthFailed = 7,
    Locked = 8,
}

pub const EXIT_TABLE: &str = "\
exit codes:
  0 ok            done, or already applied
  1 usage         bad command line or config
  2 integrity     checksum, size, truncated or malformed bundle
  3 authenticity  bad or missing signature, unknown key
  4 not-applicable wrong variant, not newer, expired, not targeted
  5 deferred      no complete bundle, outside window, wave not due
  6 install-failed node left at its pre-patch state
  7 health-failed health check failed, rolled back
  8 locked        another edgepatch run holds the lock
";

impl Exit {
    pub fn code(self) -> i32 {
        self as i32
    }

    /// One word for status files, reports and logs.
    pub fn word(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Usage => "usage",
            Exit::Integrity => "integrity",
            Exit::Authenticity => "authenticity",
            Exit::NotApplicable => "not-applicable",
            Exit::Deferred => "deferred",
            Exit::InstallFailed => "install-failed",
            Exit::HealthFailed => "health-failed",
            Exit::Locked => "locked",
        }
    }

    pub fn from_code(code: i32) -> Option<Exit> {
        [
            Exit::Ok,
            Exit::Usage,
            Exit::Integrity,
            Exit::Authenticity,
            Exit::NotApplicable,
            Exit::Deferred,
            Exit::InstallFailed,
            Exit::HealthFailed,
            Exit::Locked,
        ]
        .into_iter()
        .find(|e| e.code() == code)
    }
}

/// An error with the exit code it maps to and a one-line message for a 80-column console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub exit: Exit,
    pub msg: String,
}

impl Error {
    pub fn new(exit: Exit, msg: impl Into<String>) -> Error {
        Error {
            exit,
            msg: msg.into(),
        }
    }
    pub fn usage(msg: impl Into<String>) -> Error {
        Error::new(Exit::Usage, msg)
    }
    /// An I/O failure on a file we own (state dir, config): name the path and the cause.
    pub fn io(exit: Exit, path: &std::path::Path, e: std::io::Error) -> Error {
        Error::new(exit, format!("{}: {e}", path.display()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
