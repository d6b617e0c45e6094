//! Package-level restore: put every package of a transaction back to its pre-patch version, and
//! the compact `name=version,...` encoding of those versions kept in the journal.

use crate::node::ctx::Ctx;
use crate::node::pkg::PackageManager;
use crate::node::store;

pub type Versions = Vec<(String, Option<String>)>;
pub fn encode_versions(v: &[(String, Option<String>)]) -> String {
    v.iter()
        .map(|(n, ver)| format!("{n}={}", ver.as_deref().unwrap_or("-")))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn decode_versions(s: &str) -> Versions {
    s.split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(n, v)| (n.to_string(), (v != "-").then(|| v.to_string())))
        .collect()
}

/// Put every package back to its pre-patch version. Returns a one-line account of what was done.
pub fn restore_packages(
    ctx: &Ctx,
    pm: &dyn PackageManager,
    pre: &[(String, Option<String>)],
) -> String {
    let names: Vec<String> = pre.iter().map(|(n, _)| n.clone()).collect();
    if let Err(e) = pm.repair() {
        log::warn!("repair before restore: {e}");
    }
    let now = match pm.installed(&names) {
        Ok(v) => v,
        Err(e) => return format!("could not read installed versions to restore: {e}"),
    };
    let sd = ctx.state_dir();
    let caches = [store::cache_current(sd), store::cache_previous(sd)];
    let (mut files, mut remove, mut restored, mut missing) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((name, before), after) in pre.iter().zip(now) {
        if *before == after {
            continue;
        }
        match before {
            None => remove.push(name.clone()),
            Some(v) => {
                let found = caches.iter().find_map(|c| {
                    let p = pm
                        .repo_packages(c)
                        .ok()?
                        .into_iter()
                        .find(|p| p.name == *name && p.version == *v)?;
                    Some(c.join(p.file))
                });
                match found {
                    Some(f) => {
                        files.push(f);
                        restored.push(format!("{name}={v}"));
                    }
                    None => missing.push(format!("{name}={v}")),
                }
            }
        }
    }
    let mut msg = match pm.restore(&files, &remove) {
        Ok(()) if restored.is_empty() && remove.is_empty() => {
            "nothing needed restoring".to_string()
        }
        Ok(()) => {
            let mut parts = Vec::new();
            if !restored.is_empty() {
                parts.push(format!("restored {}", restored.join(" ")));
            }
            if !remove.is_empty() {
                parts.push(format!("removed {}", remove.join(" ")));
            }
            parts.join("; ")
        }
        Err(e) => format!("RESTORE FAILED ({e}); node needs attention"),
    };
    if !missing.is_empty() {
        msg += &format!("; no cached package to restore {}", missing.join(" "));
    }
    msg
}
