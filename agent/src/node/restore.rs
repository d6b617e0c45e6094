//! Package-level restore: put every package of a transaction back to its pre-patch version, and
//! the compact `name=version,...` encoding of those versions kept in the journal.

use crate::node::ctx::Ctx;
use crate::node::pkg::PackageManager;
use crate::node::sets;
use crate::node::store;
use crate::node::whole;
use crate::support::kv::Record;
use std::path::PathBuf;

pub use crate::node::sets::{decode_versions, encode_versions, Versions};

/// Does a restore account say some package is not back (exit 6, node needs attention)?
pub fn incomplete(account: &str) -> bool {
    account.starts_with("restore incomplete")
}

pub fn attention_path(sd: &std::path::Path) -> std::path::PathBuf {
    sd.join("needs-attention")
}

/// What is not at its pre-patch version (`name (at X, want Y)`), and the package database's
/// complaint if it has one; empty when the pre-patch state is back.
pub fn not_back(pm: &dyn PackageManager, pre: &[(String, Option<String>)]) -> Vec<String> {
    let names: Vec<String> = pre.iter().map(|(n, _)| n.clone()).collect();
    let mut bad = Vec::new();
    match pm.installed(&names) {
        Ok(now) => {
            for ((name, want), have) in pre.iter().zip(now) {
                if *want != have {
                    bad.push(format!(
                        "{name} (at {}, want {})",
                        have.as_deref().unwrap_or("none"),
                        want.as_deref().unwrap_or("none")
                    ));
                }
            }
        }
        Err(e) => bad.push(e),
    }
    if let Err(e) = pm.audit() {
        bad.push(e);
    }
    bad
}

/// Put every package back to its pre-patch version: the file from the cycle's rollback set
/// first, then the package caches of the last two bundles; packages the patch added are purged.
/// Then check: every package at its pre-patch version and dpkg clean, or "restore incomplete:
/// ..." naming the ones that are not. Returns a one-line account.
pub fn restore_packages(
    ctx: &Ctx,
    pm: &dyn PackageManager,
    pre: &[(String, Option<String>)],
    set: Option<&Record>,
) -> String {
    let names: Vec<String> = pre.iter().map(|(n, _)| n.clone()).collect();
    if let Err(e) = pm.repair() {
        log::warn!("repair before restore: {e}");
    }
    let sd = ctx.state_dir();
    let caches = [store::cache_current(sd), store::cache_previous(sd)];
    // The copy to install for `name` at `v`: the set's (Err: damaged), else a bundle cache's.
    let copy_of = |name: &str, v: &str| -> (Option<PathBuf>, Option<String>) {
        let (in_set, why) = match set.map(|s| sets::file_for(sd, s, name, v)) {
            Some(Err(why)) => (None, Some(why)),
            Some(Ok(f)) => (f, None),
            None => (None, None),
        };
        let found = in_set.or_else(|| {
            caches.iter().find_map(|c| {
                let p = pm
                    .repo_packages(c)
                    .ok()?
                    .into_iter()
                    .find(|p| p.name == name && p.version == v)?;
                Some(c.join(p.file))
            })
        });
        (found, why)
    };
    let has_copy = |name: &str, v: &str| copy_of(name, v).0.is_some();
    let mut again = pm.drop_extra_entries(pre, &has_copy);
    let now = match pm.installed(&names) {
        Ok(v) => v,
        Err(e) => return format!("restore incomplete: cannot read versions: {e}"),
    };
    let (mut files, mut remove, mut restored) = (Vec::new(), Vec::new(), Vec::new());
    let mut from_set = Vec::new();
    let mut damaged = Vec::new();
    for ((name, before), after) in pre.iter().zip(now) {
        if *before == after && !again.contains(name) {
            continue;
        }
        match before {
            None => remove.push(name.clone()),
            Some(v) => {
                let (found, why) = copy_of(name, v);
                if let Some(why) = why {
                    log::warn!("{name}: {why}");
                    damaged.push(why);
                }
                if let Some(f) = found {
                    files.push(f);
                    restored.push(format!("{name}={v}"));
                    from_set.push(name.clone());
                }
            }
        }
    }
    let kept = pm.edited_config(&remove);
    // rpm family: edits the admin made since the cycle, kept beside before rpm touches them.
    let mut later = Vec::new();
    if let (Some(set), "dnf") = (set, pm.name()) {
        match whole::save_later_edits(&ctx.config.root, set, &from_set) {
            Ok(v) => later = v,
            Err(e) => {
                return format!(
                    "restore incomplete: nothing restored: cannot keep a later edit: {e}"
                )
            }
        }
    }
    let mut done = pm.restore(&files, &remove);
    // dpkg installs in command-line order and refuses a package whose Pre-Depends pins an exact
    // version of another one not yet put back (libpam-modules on libpam-modules-bin): go again
    // with what is still not back, as long as each pass makes progress.
    // (apt only: rpm orders its transaction itself, and rpm -U of one multilib arch's copy
    // would erase the other arch, rpm #2837.)
    let mut left = files.len();
    while done.is_err() && left > 0 && pm.name() == "apt" {
        let Ok(now) = pm.installed(&names) else { break };
        let retry: Vec<PathBuf> = pre
            .iter()
            .zip(now)
            .filter(|((_, want), have)| want.is_some() && want != have)
            .filter_map(|((name, _), _)| {
                let i = restored
                    .iter()
                    .position(|r| r.split('=').next() == Some(name))?;
                Some(files[i].clone())
            })
            .collect();
        if retry.is_empty() || retry.len() >= left {
            break;
        }
        left = retry.len();
        done = pm.restore(&retry, &[]);
    }
    // rpm: a scriptlet of the undone version failed in the erase rpm -U does (its %preun):
    // both entries stay. Drop the undone one and install the pre-patch version once more.
    let dropped = pm.drop_extra_entries(pre, &has_copy);
    if !dropped.is_empty() {
        let redo: Vec<PathBuf> = dropped
            .iter()
            .filter_map(|n| {
                let i = restored
                    .iter()
                    .position(|r| r.split('=').next() == Some(n))?;
                Some(files[i].clone())
            })
            .collect();
        done = pm.restore(&redo, &[]);
    }
    again.extend(dropped);
    // dpkg's conffile records of the packages put back from the set (Debian family), and the
    // undone versions' .dpkg-dist files.
    let mut dist_removed = Vec::new();
    if let (Some(set), "apt") = (set, pm.name()) {
        if let Ok(now) = pm.installed(&names) {
            for ((name, want), have) in pre.iter().zip(now) {
                if *want == have && from_set.contains(name) {
                    sets::restore_conffile_records(&ctx.config.root, set, name);
                    dist_removed.extend(sets::remove_new_dist_files(&ctx.config.root, set, name));
                }
            }
        }
    }
    // rpm family: the files kept whole (%config with .rpmnew / .rpmsave, files carried cut)
    // written back exactly, for every package that is at its pre-patch version again (also
    // when an earlier, interrupted rollback already put the package back).
    crate::support::testhook::pause_point("packages-restored");
    let mut bad = Vec::new();
    if let (Some(set), "dnf") = (set, pm.name()) {
        if let Ok(now) = pm.installed(&names) {
            let back: Vec<String> = pre
                .iter()
                .zip(now)
                .filter(|((_, want), have)| want.is_some() && want == have)
                .map(|((n, _), _)| n.clone())
                .collect();
            let (deleted, problems) =
                whole::put_back(&ctx.config.root, &sets::pool(sd), set, &back);
            dist_removed.extend(deleted);
            bad.extend(problems);
        }
    }
    // Check what is there now, whatever the package manager said; and the files of the
    // packages put back.
    bad.extend(not_back(pm, pre));
    let own = set.map(whole::paths).unwrap_or_default();
    if let Err(e) = pm.verify(&from_set, &own) {
        bad.push(e);
    }
    // The package manager's own failure of the last pass (a scriptlet rpm did not count as an
    // error, say) stands even when versions and database look right.
    if let (true, Err(e)) = (bad.is_empty(), &done) {
        bad.push(e.clone());
    }
    let attention = attention_path(sd);
    if !bad.is_empty() {
        let mut msg = format!("restore incomplete: {}", bad.join(", "));
        for why in &damaged {
            msg += &format!("; {why}");
        }
        for copy in &later {
            msg += &format!("; kept the edit made since the cycle as {copy}");
        }
        match &done {
            Err(e) if !bad.contains(e) => msg += &format!("; {e}"),
            _ => {}
        }
        let _ = crate::support::fsutil::write_atomic(&attention, msg.as_bytes(), false);
        return msg;
    }
    let _ = std::fs::remove_file(&attention);
    let mut parts = Vec::new();
    if !restored.is_empty() {
        parts.push(format!("restored {}", restored.join(" ")));
    }
    if !remove.is_empty() {
        parts.push(format!("removed {}", remove.join(" ")));
    }
    for (name, paths) in &kept {
        parts.push(format!(
            "kept the admin's {} ({name} removed, not purged; `dpkg --purge {name}` drops it)",
            paths.join(" ")
        ));
    }
    if !dist_removed.is_empty() {
        parts.push(format!("deleted {}", dist_removed.join(" ")));
    }
    if !again.is_empty() {
        parts.push(format!(
            "dropped the undone versions' database entries of {} without their scriptlets (one \
             failed)",
            again.join(" ")
        ));
    }
    for copy in &later {
        parts.push(format!("kept the edit made since the cycle as {copy}"));
    }
    if parts.is_empty() {
        return "nothing needed restoring".to_string();
    }
    parts.join("; ")
}
