//! Small lists in state_dir that gate installs: `refused` (cycles rolled back here; never
//! installed again, exit 4), `halted` (cycles a signed halt order stopped, exit 5) and `orders`
//! (sha256 of every order already carried out; orders are idempotent). `snapshots` lists the
//! snapshot ids taken, oldest first; `install-failures` counts failed installs per cycle.

use std::path::{Path, PathBuf};

pub fn list_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(name)
}

pub fn read_list(state_dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(list_path(state_dir, name))
        .map(|t| {
            t.lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

pub fn add_to_list(state_dir: &Path, name: &str, item: &str) {
    let mut items = read_list(state_dir, name);
    if items.iter().any(|i| i == item) {
        return;
    }
    items.push(item.to_string());
    // Bounded: the oldest entries matter least (sequences only grow).
    let skip = items.len().saturating_sub(200);
    let text: String = items[skip..].iter().map(|i| format!("{i}\n")).collect();
    if let Err(e) =
        crate::support::fsutil::write_atomic(&list_path(state_dir, name), text.as_bytes(), false)
    {
        log::warn!("cannot record {item} in {name}: {e}");
    }
}

/// Take `item` off a list (a resume order lifts a halt).
pub fn remove_from_list(state_dir: &Path, name: &str, item: &str) {
    let items = read_list(state_dir, name);
    if !items.iter().any(|i| i == item) {
        return;
    }
    let text: String = items
        .iter()
        .filter(|i| *i != item)
        .map(|i| format!("{i}\n"))
        .collect();
    if let Err(e) =
        crate::support::fsutil::write_atomic(&list_path(state_dir, name), text.as_bytes(), false)
    {
        log::warn!("cannot remove {item} from {name}: {e}");
    }
}

pub fn refuse_cycle(state_dir: &Path, cycle: &str) {
    add_to_list(state_dir, "refused", cycle);
}

pub fn is_refused(state_dir: &Path, cycle: &str) -> bool {
    read_list(state_dir, "refused").iter().any(|c| c == cycle)
}

/// Install attempts a cycle gets on one node: after this many failed installs (each restored to
/// the pre-patch state) it is refused, so a broken bundle does not fail the service forever.
pub const INSTALL_ATTEMPTS: usize = 3;

/// Count one failed install of `cycle` (`install-failures`: `CYCLE N` lines); returns the count.
pub fn count_install_failure(state_dir: &Path, cycle: &str) -> usize {
    let n = read_list(state_dir, "install-failures")
        .iter()
        .filter(|l| l.rsplit_once(' ').is_some_and(|(c, _)| c == cycle))
        .count()
        + 1;
    add_to_list(state_dir, "install-failures", &format!("{cycle} {n}"));
    n
}

/// Has the order with this sha256 (hex) been carried out on this node already?
pub fn order_done(state_dir: &Path, sha256_hex: &str) -> bool {
    read_list(state_dir, "orders")
        .iter()
        .any(|d| d == sha256_hex)
}

pub fn is_halted(state_dir: &Path, cycle: &str) -> bool {
    read_list(state_dir, "halted").iter().any(|c| c == cycle)
}
