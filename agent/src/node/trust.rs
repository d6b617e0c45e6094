//! Trust on the node: the key list kept in state_dir, the one entry point ([`load`]) every command
//! uses to get the trusted release keys, and accepting a newer key list (see `bundle::keylist` for
//! the document and its rules).

use crate::bundle::format::hex;
use crate::bundle::keylist::{check_successor, KeyList, KEYLIST_FILE};
use crate::bundle::keys::{self, TrustedKey};
use crate::support::clock::{iso_utc, Ratchet};
use crate::support::config::Config;
use crate::support::error::{Error, Exit, Result};
use std::path::{Path, PathBuf};

/// Where the node keeps its current key list.
pub fn keylist_path(state_dir: &Path) -> PathBuf {
    state_dir.join(KEYLIST_FILE)
}

/// The current key list in state_dir, if any.
pub fn stored(state_dir: &Path) -> Result<Option<(KeyList, Vec<u8>)>> {
    let p = keylist_path(state_dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(Exit::Usage, &p, e)),
    };
    let list = KeyList::open_self(&bytes).map_err(|e| {
        Error::new(
            Exit::Integrity,
            format!("{}: {e}; import the key list again", p.display()),
        )
    })?;
    Ok(Some((list, bytes)))
}

fn load_files(path: &Path, what: &str) -> Result<Vec<TrustedKey>> {
    keys::load_trusted(path).map_err(|e| Error::usage(format!("{what}: {e}")))
}

/// The node's ratcheted time, for key expiry.
pub fn node_now(config: &Config) -> u64 {
    Ratchet::new(&config.state_dir).now(crate::support::clock::from_env().as_ref())
}

/// The trusted release keys for this node now: the one entry point every command uses.
pub fn load(config: &Config) -> Result<Vec<TrustedKey>> {
    load_at(config, node_now(config))
}

pub fn load_at(config: &Config, now: u64) -> Result<Vec<TrustedKey>> {
    let plain = |path: &Path| -> Result<Vec<TrustedKey>> {
        let mut keys = load_files(path, "trusted_keys")?;
        for k in &mut keys {
            k.threshold = config.signature_threshold;
        }
        Ok(keys)
    };
    let Some(_roots) = &config.root_keys else {
        let path = config
            .trusted_keys
            .as_deref()
            .ok_or_else(|| Error::usage("config sets neither trusted_keys nor root_keys"))?;
        return plain(path);
    };
    if let Some((list, _)) = stored(&config.state_dir)? {
        return Ok(list.release_set(now, config.signature_threshold));
    }
    match &config.trusted_keys {
        Some(path) => {
            log::info!("no key list accepted yet; using trusted_keys until one is imported");
            plain(path)
        }
        None => Err(Error::new(
            Exit::Authenticity,
            format!(
                "no key list accepted yet ({} missing); import one: edgepatch keys --import FILE",
                keylist_path(&config.state_dir).display()
            ),
        )),
    }
}

/// Accept `doc` as the node's new key list if it is a valid successor. Ok(true) when it was
/// stored, Ok(false) when it is exactly the current list. Used by `keys --import`, `import`
/// and `fetch`; the caller holds the run lock.
pub fn accept_keylist(config: &Config, doc: &[u8]) -> Result<bool> {
    accept_keylist_at(config, doc, node_now(config))
}

pub fn accept_keylist_at(config: &Config, doc: &[u8], now: u64) -> Result<bool> {
    let baked = config.root_keys.as_deref().ok_or_else(|| {
        Error::usage("root_keys is not set in the config; this node trusts trusted_keys only")
    })?;
    let current = stored(&config.state_dir)?;
    if current.as_ref().is_some_and(|(_, bytes)| bytes == doc) {
        return Ok(false);
    }
    let list = match &current {
        Some((cur, _)) => check_successor(
            &cur.root_set(),
            cur.root_threshold,
            Some(cur.version),
            doc,
            now,
        )?,
        None => check_successor(&load_files(baked, "root_keys")?, 1, None, doc, now)?,
    };
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| Error::io(Exit::Usage, &config.state_dir, e))?;
    let p = keylist_path(&config.state_dir);
    crate::support::fsutil::write_atomic(&p, doc, false)
        .map_err(|e| Error::io(Exit::Usage, &p, e))?;
    log::info!(
        "accepted key list version {} ({} key(s), threshold {})",
        list.version,
        list.keys.len(),
        list.threshold
    );
    Ok(true)
}

/// Read a key list file, refusing anything larger than a signed document can be.
pub fn read_capped(file: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(file).map_err(|e| Error::io(Exit::Usage, file, e))?;
    let mut doc = Vec::new();
    f.take(crate::bundle::signed::MAX_DOC as u64 + 1)
        .read_to_end(&mut doc)
        .map_err(|e| Error::io(Exit::Usage, file, e))?;
    if doc.len() > crate::bundle::signed::MAX_DOC {
        return Err(Error::new(
            Exit::Integrity,
            format!(
                "{}: larger than {} bytes",
                file.display(),
                crate::bundle::signed::MAX_DOC
            ),
        ));
    }
    Ok(doc)
}

/// Lines for `edgepatch keys`: where trust comes from, the roots, each release key's state.
pub fn describe(config: &Config, now: u64) -> Result<String> {
    let mut out = String::new();
    let stored = match &config.root_keys {
        Some(_) => stored(&config.state_dir)?,
        None => None,
    };
    match (&stored, &config.root_keys) {
        (Some((list, _)), _) => {
            out += &format!(
                "source: key list version {} (issued {}, expires {}{})\n",
                list.version,
                iso_utc(list.issued),
                iso_utc(list.expires),
                if list.expires <= now { ", EXPIRED" } else { "" }
            );
            let ids: Vec<String> = list.roots.iter().map(|r| hex(&keys::key_id(r))).collect();
            out += &format!(
                "roots: {} (need {} for the next list)\n",
                ids.join(","),
                list.root_threshold
            );
        }
        (None, Some(r)) => out += &format!("source: root_keys {} (no key list yet)\n", r.display()),
        (None, None) => {}
    }
    let trusted = load_at(config, now)?;
    if stored.is_none() {
        if let Some(p) = &config.trusted_keys {
            out += &format!("source: trusted_keys {}\n", p.display());
        }
    }
    out += &format!(
        "threshold: {} signature(s) per bundle\n",
        keys::required_signers(&trusted)
    );
    for k in &trusted {
        let expiry = stored
            .as_ref()
            .and_then(|(l, _)| l.keys.iter().find(|r| r.id == k.id))
            .map(|r| format!("expires {}", iso_utc(r.expires)))
            .unwrap_or_else(|| "no expiry".into());
        let state = match &k.refused {
            None => "ok".to_string(),
            Some(why) => format!("REFUSED: {why}"),
        };
        out += &format!("  {}  {expiry}  {}  {state}\n", hex(&k.id), k.origin);
    }
    Ok(out)
}
