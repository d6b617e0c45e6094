//! The signed key list: which release keys may sign bundles, indexes and orders, and the pure
//! rules for accepting the next list (see `node::trust` for the node's stored list).
//!
//! Small setups list release keys in `trusted_keys` (a .pub file or a directory). Fleets bake only
//! the **root** public key(s) into the image (`root_keys`); an offline root key signs a small
//! **key list** naming the release keys that may sign bundles, indexes and orders. The newest
//! accepted key list is kept in `state_dir/keylist`; [`load`] is the one function every command
//! uses to get the trusted set, whichever way it is configured.
//!
//! The key list is a `signed` document of type `edgepatch-keys`:
//!
//! ```text
//! edgepatch-keys 1
//! version 3                          strictly increasing; a node never goes back
//! issued 1764000000                  unix seconds
//! expires 1795536000                 after this no release key is usable (anti-freeze)
//! threshold 2                        distinct release signatures a bundle needs (default 1)
//! root_threshold 1                   root signatures the next key list needs (default 1)
//! root <64 hex public key>           the root key(s) that sign the next key list
//! key id=<16 hex> public=<64 hex> expires=<unix> revoked=no name=release-2026
//! --- signatures
//! sig <root key id> <signature>      by the current roots, and by the new ones on a rotation
//! ```
//!
//! A node accepts a key list only when (1) at least the current `root_threshold` of its current
//! roots signed it (the baked `root_keys` before the first list, threshold 1), (2) at least the
//! new list's own `root_threshold` of the roots it names signed it (so a root rotation is signed
//! by the old and the new root), (3) its version is greater than the current one, and (4) it has
//! not expired by the node's ratcheted clock. A revoked key, a key past its `expires`, or every
//! key of an expired list is *refused*: its signatures never count, whatever the bundle's age.

use crate::bundle::format::{hex, parse_hex, KEY_ID_LEN};
use crate::bundle::keys::{self, TrustedKey};
use crate::support::clock::iso_utc;
use crate::support::error::{Error, Exit, Result};
use crate::support::kv::Record;
use ed25519_compact::PublicKey;

pub const DOC_TYPE: &str = "edgepatch-keys";
/// File name in state_dir, on the mirror (`MIRROR/keylist`) and on a USB stick (`DIR/keylist`).
pub const KEYLIST_FILE: &str = "keylist";
pub const MAX_KEYS: usize = 64;
pub const MAX_ROOTS: usize = 8;
pub const MAX_THRESHOLD: usize = 16;
pub const MAX_NAME: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseKey {
    pub id: [u8; KEY_ID_LEN],
    pub key: PublicKey,
    pub expires: u64,
    pub revoked: bool,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyList {
    pub version: u64,
    pub issued: u64,
    pub expires: u64,
    pub threshold: usize,
    pub root_threshold: usize,
    pub roots: Vec<PublicKey>,
    pub keys: Vec<ReleaseKey>,
}

fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-@".contains(&b))
    {
        return Err(format!(
            "key name {name:?} must be 1..={MAX_NAME} of [A-Za-z0-9._+-@]"
        ));
    }
    Ok(())
}

impl KeyList {
    /// The signed body (type line included).
    pub fn render(&self) -> String {
        let mut s = format!(
            "{DOC_TYPE} 1\nversion {}\nissued {}\nexpires {}\nthreshold {}\nroot_threshold {}\n",
            self.version, self.issued, self.expires, self.threshold, self.root_threshold
        );
        for r in &self.roots {
            s += &format!("root {}\n", hex(r.as_ref()));
        }
        for k in &self.keys {
            s += &format!(
                "key id={} public={} expires={} revoked={} name={}\n",
                hex(&k.id),
                hex(k.key.as_ref()),
                k.expires,
                if k.revoked { "yes" } else { "no" },
                k.name
            );
        }
        s
    }

    /// Sign with root secret keys: the full document.
    pub fn seal(&self, roots: &[&ed25519_compact::SecretKey]) -> String {
        crate::bundle::signed::seal(&self.render(), roots)
    }

    /// Parse the fields of an opened document (signatures already checked by the caller).
    pub fn from_record(rec: &Record) -> std::result::Result<KeyList, String> {
        let mut version = None;
        let mut issued = None;
        let mut expires = None;
        let mut threshold = None;
        let mut root_threshold = None;
        let mut roots: Vec<PublicKey> = Vec::new();
        let mut keys: Vec<ReleaseKey> = Vec::new();
        for (k, v) in &rec.fields {
            let num = |what: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("key list {what} {v:?} is not a number"))
            };
            let once = |slot: &mut Option<u64>, what: &str| -> std::result::Result<(), String> {
                if slot.replace(num(what)?).is_some() {
                    return Err(format!("key list line {what} given twice"));
                }
                Ok(())
            };
            match k.as_str() {
                "version" => once(&mut version, "version")?,
                "issued" => once(&mut issued, "issued")?,
                "expires" => once(&mut expires, "expires")?,
                "threshold" => once(&mut threshold, "threshold")?,
                "root_threshold" => once(&mut root_threshold, "root_threshold")?,
                "root" => {
                    if roots.len() >= MAX_ROOTS {
                        return Err(format!("key list names more than {MAX_ROOTS} roots"));
                    }
                    let raw: [u8; 32] = parse_hex(v)
                        .ok_or_else(|| format!("key list root {v:?} is not 64 hex digits"))?;
                    let pk = PublicKey::new(raw);
                    if roots.contains(&pk) {
                        return Err(format!("key list names root {v} twice"));
                    }
                    roots.push(pk);
                }
                "key" => {
                    if keys.len() >= MAX_KEYS {
                        return Err(format!("key list names more than {MAX_KEYS} keys"));
                    }
                    let key = parse_key_line(v)?;
                    if keys.iter().any(|k| k.id == key.id) {
                        return Err(format!("key list names key {} twice", hex(&key.id)));
                    }
                    keys.push(key);
                }
                other => return Err(format!("key list has unknown line {other:?}")),
            }
        }
        let need = |v: Option<u64>, what: &str| v.ok_or_else(|| format!("key list has no {what}"));
        let small = |v: u64, what: &str| {
            usize::try_from(v)
                .ok()
                .filter(|n| (1..=MAX_THRESHOLD).contains(n))
                .ok_or_else(|| format!("key list {what} {v} not in 1..={MAX_THRESHOLD}"))
        };
        let list = KeyList {
            version: need(version, "version")?,
            issued: need(issued, "issued")?,
            expires: need(expires, "expires")?,
            threshold: small(threshold.unwrap_or(1), "threshold")?,
            root_threshold: small(root_threshold.unwrap_or(1), "root_threshold")?,
            roots,
            keys,
        };
        list.validate()?;
        Ok(list)
    }

    /// Rules every list must keep (the builder checks them before signing, the node after).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.version == 0 {
            return Err("key list version must be at least 1".into());
        }
        if self.expires <= self.issued {
            return Err(format!(
                "key list expires {} is not after issued {}",
                self.expires, self.issued
            ));
        }
        if self.roots.is_empty() {
            return Err("key list names no root key".into());
        }
        if self.root_threshold > self.roots.len() {
            return Err(format!(
                "key list root_threshold {} but only {} root(s)",
                self.root_threshold,
                self.roots.len()
            ));
        }
        let usable = self.keys.iter().filter(|k| !k.revoked).count();
        if self.threshold > usable.max(1) {
            return Err(format!(
                "key list threshold {} but only {usable} unrevoked key(s)",
                self.threshold
            ));
        }
        for k in &self.keys {
            check_name(&k.name)?;
            if self.roots.contains(&k.key) {
                return Err(format!(
                    "key {} is a root key; release keys must be separate",
                    hex(&k.id)
                ));
            }
        }
        Ok(())
    }

    /// The roots as a trusted set, for checking the next key list.
    pub fn root_set(&self) -> Vec<TrustedKey> {
        self.roots
            .iter()
            .map(|pk| TrustedKey {
                id: keys::key_id(pk),
                key: *pk,
                origin: format!("root of key list version {}", self.version),
                refused: None,
                threshold: self.root_threshold,
            })
            .collect()
    }

    /// The release keys as a trusted set at `now`; `floor` is the config's signature_threshold.
    pub fn release_set(&self, now: u64, floor: usize) -> Vec<TrustedKey> {
        let v = self.version;
        self.keys
            .iter()
            .map(|k| {
                let refused = if k.revoked {
                    Some(format!("is revoked (key list version {v})"))
                } else if k.expires <= now {
                    Some(format!(
                        "expired at {} (key list version {v}, node time {})",
                        iso_utc(k.expires),
                        iso_utc(now)
                    ))
                } else if self.expires <= now {
                    Some(format!(
                        "is in key list version {v}, which expired at {}; import a newer key list",
                        iso_utc(self.expires)
                    ))
                } else {
                    None
                };
                TrustedKey {
                    id: k.id,
                    key: k.key,
                    origin: format!("{} (key list version {v})", k.name),
                    refused,
                    threshold: self.threshold.max(floor),
                }
            })
            .collect()
    }

    /// Open a stored or published list against its own roots only (no chain to the node's
    /// roots): for `state_dir/keylist`, written only after a full check, and for the builder.
    pub fn open_self(doc: &[u8]) -> std::result::Result<KeyList, String> {
        let list = KeyList::from_record(&unverified_body(doc)?)?;
        let rec = crate::bundle::signed::open(doc, DOC_TYPE, &list.root_set(), list.root_threshold)
            .map_err(|e| format!("not signed by its own roots: {e}"))?;
        KeyList::from_record(&rec)
    }
}

fn parse_key_line(v: &str) -> std::result::Result<ReleaseKey, String> {
    let (mut id, mut public, mut expires, mut revoked, mut name) = (None, None, None, None, None);
    for field in v.split(' ') {
        let (k, val) = field
            .split_once('=')
            .ok_or_else(|| format!("key list key field {field:?} is not key=value"))?;
        let slot = match k {
            "id" => &mut id,
            "public" => &mut public,
            "expires" => &mut expires,
            "revoked" => &mut revoked,
            "name" => &mut name,
            other => return Err(format!("key list key field {other:?} is unknown")),
        };
        if slot.replace(val).is_some() {
            return Err(format!("key list key field {k} given twice"));
        }
    }
    fn need<'a>(v: Option<&'a str>, what: &str) -> std::result::Result<&'a str, String> {
        v.ok_or_else(|| format!("key list key has no {what}"))
    }
    let raw: [u8; 32] = parse_hex(need(public, "public")?)
        .ok_or_else(|| "key list key public is not 64 hex digits".to_string())?;
    let key = PublicKey::new(raw);
    let kid = keys::key_id(&key);
    if need(id, "id")? != hex(&kid) {
        return Err(format!(
            "key list key id {} does not match its public key ({})",
            id.unwrap_or(""),
            hex(&kid)
        ));
    }
    let expires = need(expires, "expires")?
        .parse::<u64>()
        .map_err(|_| "key list key expires is not a number".to_string())?;
    let revoked = match need(revoked, "revoked")? {
        "yes" => true,
        "no" => false,
        other => return Err(format!("key list key revoked={other}: use yes or no")),
    };
    let name = need(name, "name")?.to_string();
    check_name(&name)?;
    Ok(ReleaseKey {
        id: kid,
        key,
        expires,
        revoked,
        name,
    })
}

/// The body records of a signed document, without checking signatures. Only for a document
/// whose signatures are checked right after against keys named inside it.
fn unverified_body(doc: &[u8]) -> std::result::Result<Record, String> {
    if doc.len() > crate::bundle::signed::MAX_DOC {
        return Err(format!(
            "key list is {} bytes, limit {}",
            doc.len(),
            crate::bundle::signed::MAX_DOC
        ));
    }
    let text = std::str::from_utf8(doc).map_err(|_| "key list is not UTF-8".to_string())?;
    let at = text
        .find("\n--- signatures\n")
        .ok_or_else(|| "key list is not signed".to_string())?;
    let body = &text[..at + 1];
    let (first, rest) = body.split_once('\n').unwrap_or((body, ""));
    if first != format!("{DOC_TYPE} 1") {
        return Err(format!(
            "expected an {DOC_TYPE} version 1 document, found {first:?}"
        ));
    }
    Ok(Record::parse(rest))
}

/// Pure check of `doc` as the next key list after the current trust state: `roots` and
/// `root_threshold` are the current roots (the baked ones before any list), `version` the
/// current list's version.
pub fn check_successor(
    roots: &[TrustedKey],
    root_threshold: usize,
    version: Option<u64>,
    doc: &[u8],
    now: u64,
) -> Result<KeyList> {
    let auth = |m: String| Error::new(Exit::Authenticity, m);
    let rec = crate::bundle::signed::open(doc, DOC_TYPE, roots, root_threshold).map_err(|e| {
        auth(format!(
            "key list is not signed by the current root key(s): {e}"
        ))
    })?;
    let list = KeyList::from_record(&rec).map_err(|e| Error::new(Exit::Integrity, e))?;
    crate::bundle::signed::open(doc, DOC_TYPE, &list.root_set(), list.root_threshold).map_err(
        |e| {
            auth(format!(
                "key list version {} is not signed by the root key(s) it names: {e}",
                list.version
            ))
        },
    )?;
    if let Some(current) = version {
        if list.version <= current {
            return Err(Error::new(
                Exit::NotApplicable,
                format!(
                    "key list version {} is not newer than the current {current} (replay or rollback)",
                    list.version
                ),
            ));
        }
    }
    if list.expires <= now {
        return Err(Error::new(
            Exit::NotApplicable,
            format!(
                "key list version {} expired at {} (node time {}); sign a fresh one",
                list.version,
                iso_utc(list.expires),
                iso_utc(now)
            ),
        ));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kp(seed: u8) -> ed25519_compact::KeyPair {
        ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]))
    }

    fn release(seed: u8, expires: u64) -> ReleaseKey {
        let pk = kp(seed).pk;
        ReleaseKey {
            id: keys::key_id(&pk),
            key: pk,
            expires,
            revoked: false,
            name: format!("r{seed}"),
        }
    }

    fn list(version: u64, root: u8) -> KeyList {
        KeyList {
            version,
            issued: 100,
            expires: 10_000,
            threshold: 1,
            root_threshold: 1,
            roots: vec![kp(root).pk],
            keys: vec![release(10, 5_000), release(11, 5_000)],
        }
    }

    fn baked(seed: u8) -> Vec<TrustedKey> {
        vec![keys::parse_public(&keys::public_text(&kp(seed).pk), "root").unwrap()]
    }

    #[test]
    fn render_parse_round_trip() {
        let l = list(3, 1);
        let doc = l.seal(&[&kp(1).sk]);
        assert_eq!(KeyList::open_self(doc.as_bytes()).unwrap(), l);
    }

    #[test]
    fn successor_rules() {
        let v1 = list(1, 1).seal(&[&kp(1).sk]);
        check_successor(&baked(1), 1, None, v1.as_bytes(), 200).unwrap();
        // Signed by another root: authenticity.
        let forged = list(2, 2).seal(&[&kp(2).sk]);
        let e = check_successor(&baked(1), 1, Some(1), forged.as_bytes(), 200).unwrap_err();
        assert_eq!(e.exit, Exit::Authenticity, "{e}");
        // Not newer: not applicable.
        let e = check_successor(&baked(1), 1, Some(1), v1.as_bytes(), 200).unwrap_err();
        assert_eq!(e.exit, Exit::NotApplicable, "{e}");
        // Expired.
        let e = check_successor(&baked(1), 1, None, v1.as_bytes(), 20_000).unwrap_err();
        assert_eq!(e.exit, Exit::NotApplicable, "{e}");
        // Root rotation: needs the old and the new root.
        let only_new = list(2, 2).seal(&[&kp(2).sk]);
        assert!(check_successor(&baked(1), 1, Some(1), only_new.as_bytes(), 200).is_err());
        let only_old = list(2, 2).seal(&[&kp(1).sk]);
        let e = check_successor(&baked(1), 1, Some(1), only_old.as_bytes(), 200).unwrap_err();
        assert!(e.msg.contains("root key(s) it names"), "{e}");
        let both = list(2, 2).seal(&[&kp(1).sk, &kp(2).sk]);
        check_successor(&baked(1), 1, Some(1), both.as_bytes(), 200).unwrap();
    }

    #[test]
    fn refused_keys() {
        let mut l = list(1, 1);
        l.keys[1].revoked = true;
        let set = l.release_set(200, 1);
        assert!(set[0].refused.is_none());
        assert!(set[1].refused.as_deref().unwrap().contains("revoked"));
        let set = l.release_set(6_000, 1);
        assert!(set[0].refused.as_deref().unwrap().contains("expired"));
        let set = l.release_set(10_000, 1);
        assert!(set.iter().all(|k| k.refused.is_some()));
    }

    #[test]
    fn malformed_lists_are_refused() {
        let good = list(1, 1).render();
        let body = good.split_once('\n').unwrap().1;
        for bad in [
            body.replace("version 1", "version x"),
            body.replace("threshold 1\n", "threshold 0\n"),
            body.replace("threshold 1\n", "threshold 3\n"),
            body.replace("revoked=no", "revoked=maybe"),
            body.replace("name=r10", "name=r 10"),
            format!("{body}colour blue\n"),
            format!("{body}version 2\n"),
            body.replace("root ", "root 00"),
        ] {
            assert!(KeyList::from_record(&Record::parse(&bad)).is_err(), "{bad}");
        }
        // A key id that does not match its public key.
        let id10 = hex(&release(10, 0).id);
        let id11 = hex(&release(11, 0).id);
        let swapped = body.replacen(&id10, &id11, 1);
        assert!(KeyList::from_record(&Record::parse(&swapped)).is_err());
    }
}
