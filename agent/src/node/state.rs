//! What is installed on this node: the last bundle applied, in `state_dir/installed`.
//! Plain `key value` lines; written only through `write_atomic`.

use crate::bundle::format::{hex, parse_hex};
use crate::support::error::{Error, Exit, Result};
use crate::support::fsutil::write_atomic;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub cycle: String,
    pub sequence: u64,
    pub manifest_sha256: [u8; 32],
    pub applied_at: u64,
}

const FILE: &str = "installed";

impl Installed {
    pub fn load(state_dir: &Path) -> Result<Option<Installed>> {
        let path = state_dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(Exit::Usage, &path, e)),
        };
        let bad = || {
            Error::usage(format!(
                "{} is damaged; restore it from status.json or remove it to accept any sequence",
                path.display()
            ))
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(' ')))
                .map(str::to_string)
        };
        Ok(Some(Installed {
            cycle: field("cycle").ok_or_else(bad)?,
            sequence: field("sequence")
                .and_then(|s| s.parse().ok())
                .ok_or_else(bad)?,
            manifest_sha256: field("manifest_sha256")
                .and_then(|s| parse_hex(&s))
                .ok_or_else(bad)?,
            applied_at: field("applied_at")
                .and_then(|s| s.parse().ok())
                .ok_or_else(bad)?,
        }))
    }

    pub fn save(&self, state_dir: &Path) -> Result<()> {
        let text = format!(
            "cycle {}\nsequence {}\nmanifest_sha256 {}\napplied_at {}\n",
            self.cycle,
            self.sequence,
            hex(&self.manifest_sha256),
            self.applied_at
        );
        let path = state_dir.join(FILE);
        write_atomic(&path, text.as_bytes(), false).map_err(|e| Error::io(Exit::Usage, &path, e))
    }
}
