//! Trust on the node: the key list kept in state_dir, the one entry point ([`load`]) every command
//! uses to get the trusted release keys, and accepting a newer key list (see `bundle::keylist` for
//! the document and its rules).
//!
//! First contact: a freshly imaged node has no key list yet. Without a floor it would take any
//! root-signed list, even an old one that still names a revoked key. The image therefore bakes a
//! **trust floor** beside the root key (`trust_floor` in the config): the key list file itself
//! (then it is also the node's current list until a newer one arrives, and its `issued` time is
//! the node's first trusted time) or `VERSION:SHA256` of it. No list below the floor is accepted.

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

/// What the image baked in as the lowest acceptable key list.
pub enum Floor {
    None,
    /// The baked key list itself (checked against the baked roots).
    List(KeyList, Vec<u8>),
    /// Version and sha256 of the baked key list.
    Version(u64, [u8; 32]),
}

/// The configured trust floor. A floor file that is missing or not signed by the baked roots is
/// an error: the image is broken, and guessing would defeat the floor.
pub fn floor(config: &Config) -> Result<Floor> {
    let Some(v) = config.trust_floor.as_deref() else {
        return Ok(Floor::None);
    };
    if let Some((n, h)) = v.split_once(':').filter(|_| !v.starts_with('/')) {
        let version = n.parse().map_err(|_| Error::usage("trust_floor version"))?;
        let sum = crate::bundle::format::parse_hex(h)
            .ok_or_else(|| Error::usage("trust_floor: sha256 must be 64 hex digits"))?;
        return Ok(Floor::Version(version, sum));
    }
    let path = Path::new(v);
    let doc = read_capped(path)?;
    let baked = config.root_keys.as_deref().ok_or_else(|| {
        Error::usage("trust_floor needs root_keys: the floor is a root-signed key list")
    })?;
    let bad = |m: String| {
        Error::new(
            Exit::Authenticity,
            format!(
                "trust_floor {}: {m}; bake the current key list again",
                path.display()
            ),
        )
    };
    crate::bundle::signed::open(
        &doc,
        crate::bundle::keylist::DOC_TYPE,
        &load_files(baked, "root_keys")?,
        1,
    )
    .map_err(|e| bad(format!("not signed by root_keys: {e}")))?;
    let list = KeyList::open_self(&doc).map_err(bad)?;
    Ok(Floor::List(list, doc))
}

/// The key list the node goes by: the newer of the accepted one and the baked floor list.
pub fn current(config: &Config) -> Result<Option<(KeyList, Vec<u8>)>> {
    let stored = stored(&config.state_dir)?;
    Ok(match (stored, floor(config)?) {
        (Some(s), Floor::List(f, doc)) if f.version > s.0.version => Some((f, doc)),
        (Some(s), _) => Some(s),
        (None, Floor::List(f, doc)) => Some((f, doc)),
        (None, _) => None,
    })
}

/// Warnings for `status` and `doctor` when first contact is unprotected.
pub fn first_contact_warnings(config: &Config) -> Vec<String> {
    let mut w = Vec::new();
    if let Err(e) = floor(config) {
        w.push(format!("trust_floor unusable: {}", e.msg));
    }
    let no_floor = matches!(floor(config), Ok(Floor::None));
    if config.root_keys.is_some() && no_floor && stored(&config.state_dir).ok().flatten().is_none()
    {
        w.push("no trust_floor and no key list yet: any root-signed list is taken".to_string());
    }
    if no_floor && Ratchet::new(&config.state_dir).floor() == 0 {
        w.push("no trusted time yet: a reset clock accepts expired bundles".to_string());
    }
    w
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
    if let Some((list, _)) = current(config)? {
        // A baked list's signed issue time is the node's first trusted time.
        let clock = crate::support::clock::from_env();
        if let Err(e) = Ratchet::new(&config.state_dir).observe_signed(list.issued, clock.as_ref())
        {
            log::warn!("cannot record trusted time: {e}");
        }
        let now = now.max(list.issued.min(crate::support::clock::MAX_SIGNED_TIME));
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
    let current = current(config)?;
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
    if let Floor::Version(version, sum) = floor(config)? {
        if list.version < version {
            return Err(Error::new(
                Exit::NotApplicable,
                format!(
                    "key list version {} is below this image's trust floor {version}",
                    list.version
                ),
            ));
        }
        if list.version == version && crate::bundle::format::sha256(doc) != sum {
            return Err(Error::new(
                Exit::Authenticity,
                format!("key list version {version} does not match the trust floor's sha256"),
            ));
        }
    }
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| Error::io(Exit::Usage, &config.state_dir, e))?;
    let p = keylist_path(&config.state_dir);
    crate::support::fsutil::write_atomic(&p, doc, false)
        .map_err(|e| Error::io(Exit::Usage, &p, e))?;
    let clock = crate::support::clock::from_env();
    if let Err(e) = Ratchet::new(&config.state_dir).observe_signed(list.issued, clock.as_ref()) {
        log::warn!("cannot record trusted time: {e}");
    }
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
    crate::support::fsutil::read_capped(file, crate::bundle::signed::MAX_DOC)
        .map_err(|e| Error::new(Exit::Usage, format!("{}: {e}", file.display())))
}

/// Lines for `edgepatch keys`: where trust comes from, the roots, each release key's state.
pub fn describe(config: &Config, now: u64) -> Result<String> {
    let mut out = String::new();
    let stored = match &config.root_keys {
        Some(_) => current(config)?,
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
    // Long key names, paths and refusal reasons wrap at 80 columns (serial consoles).
    Ok(crate::support::text::wrap_labelled(&out, 80, 4))
}
