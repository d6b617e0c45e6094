//! Ed25519 keys: the text files that hold them, key ids, and checking a bundle's signatures.
//!
//! Key files are one line of text so they can be pasted over a serial console:
//! `edgepatch-ed25519-public <64 hex digits>` and `edgepatch-ed25519-secret <128 hex digits>`.
//! A key id is the first 8 bytes of sha256(public key), shown as 16 hex digits.

use crate::bundle::format::{hex, parse_hex, sha256, Signature, KEY_ID_LEN};
use ed25519_compact::{PublicKey, SecretKey};

pub const PUBLIC_TAG: &str = "edgepatch-ed25519-public";
pub const SECRET_TAG: &str = "edgepatch-ed25519-secret";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub id: [u8; KEY_ID_LEN],
    pub key: PublicKey,
    /// Where the key came from, for messages.
    pub origin: String,
    /// Set when this key's signatures must not count (revoked or expired in the key list, or the
    /// key list itself expired): the reason, for the error message.
    pub refused: Option<String>,
    /// Distinct signers a bundle needs (from the key list or config; 1 by default).
    pub threshold: usize,
}

pub fn key_id(pk: &PublicKey) -> [u8; KEY_ID_LEN] {
    let digest = sha256(pk.as_ref());
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    id
}

fn tagged<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'))?;
    let mut parts = line.split_whitespace();
    (parts.next()? == tag).then_some(())?;
    parts.next()
}

pub fn parse_public(text: &str, origin: &str) -> Result<TrustedKey, String> {
    let hexkey = tagged(text, PUBLIC_TAG).ok_or_else(|| {
        format!("{origin}: not an edgepatch public key (want '{PUBLIC_TAG} HEX')")
    })?;
    let raw: [u8; 32] =
        parse_hex(hexkey).ok_or_else(|| format!("{origin}: public key is not 64 hex digits"))?;
    let key = PublicKey::new(raw);
    Ok(TrustedKey {
        id: key_id(&key),
        key,
        origin: origin.to_string(),
        refused: None,
        threshold: 1,
    })
}

pub fn parse_secret(text: &str, origin: &str) -> Result<SecretKey, String> {
    let hexkey = tagged(text, SECRET_TAG).ok_or_else(|| {
        format!("{origin}: not an edgepatch secret key (want '{SECRET_TAG} HEX')")
    })?;
    let raw: [u8; 64] =
        parse_hex(hexkey).ok_or_else(|| format!("{origin}: secret key is not 128 hex digits"))?;
    let sk = SecretKey::from_slice(&raw).map_err(|e| format!("{origin}: {e}"))?;
    sk.validate_public_key(&sk.public_key())
        .map_err(|_| format!("{origin}: secret key is inconsistent"))?;
    Ok(sk)
}

pub fn public_text(pk: &PublicKey) -> String {
    format!("{PUBLIC_TAG} {}\n", hex(pk.as_ref()))
}

pub fn secret_text(sk: &SecretKey) -> String {
    format!("{SECRET_TAG} {}\n", hex(sk.as_ref()))
}

pub fn sign(sk: &SecretKey, message: &[u8]) -> Signature {
    let pk = sk.public_key();
    let sig = sk.sign(message, None);
    let mut bytes = [0u8; 64];
    bytes.copy_from_slice(sig.as_ref());
    Signature {
        key_id: key_id(&pk),
        bytes,
    }
}

/// The manifest is authentic when at least `threshold` distinct trusted keys signed it.
/// Signatures by unknown keys are ignored (they may belong to a key this node does not trust yet),
/// and so are signatures by refused keys (revoked or expired: they never count, whatever the
/// bundle's age), but a signature that names a usable trusted key and does not verify is an
/// error: it means tampering. Returns the ids of the keys that vouched.
pub fn check_signatures(
    message: &[u8],
    sigs: &[Signature],
    trusted: &[TrustedKey],
    threshold: usize,
) -> Result<Vec<[u8; KEY_ID_LEN]>, String> {
    let mut good: Vec<[u8; KEY_ID_LEN]> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    for s in sigs {
        let Some(k) = trusted.iter().find(|k| k.id == s.key_id) else {
            continue;
        };
        if let Some(why) = &k.refused {
            let note = format!("key {} {why}", hex(&k.id));
            if !refused.contains(&note) {
                refused.push(note);
            }
            continue;
        }
        let sig = ed25519_compact::Signature::new(s.bytes);
        k.key.verify(message, &sig).map_err(|_| {
            format!(
                "signature by key {} ({}) does not match the manifest",
                hex(&k.id),
                k.origin
            )
        })?;
        if !good.contains(&k.id) {
            good.push(k.id);
        }
    }
    if good.len() < threshold.max(1) {
        let ids: Vec<String> = sigs.iter().map(|s| hex(&s.key_id)).collect();
        let mut msg = format!(
            "signed by {} trusted key(s), need {}; signer ids: {}",
            good.len(),
            threshold.max(1),
            ids.join(",")
        );
        if !refused.is_empty() {
            msg += &format!("; refused: {}", refused.join("; "));
        }
        return Err(msg);
    }
    Ok(good)
}

/// Signers a bundle needs from this trusted set: the largest threshold among its usable keys
/// (they all come from one key list or one config), at least 1.
pub fn required_signers(trusted: &[TrustedKey]) -> usize {
    trusted
        .iter()
        .filter(|k| k.refused.is_none())
        .map(|k| k.threshold)
        .max()
        .unwrap_or(1)
        .max(1)
}

/// Load the trusted public keys: one `.pub` file, or every `*.pub` file in a directory.
pub fn load_trusted(path: &std::path::Path) -> Result<Vec<TrustedKey>, String> {
    let hint = "check trusted_keys in the agent config";
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("trusted_keys {}: {e}; {hint}", path.display()))?;
    let files: Vec<std::path::PathBuf> = if meta.is_dir() {
        let mut v: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| format!("trusted_keys {}: {e}", path.display()))?
            .filter_map(|d| d.ok().map(|d| d.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pub"))
            .collect();
        v.sort_unstable();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut keys = Vec::new();
    for f in files {
        let bytes = crate::support::fsutil::read_capped(&f, 64 * 1024)
            .map_err(|e| format!("{}: {e}", f.display()))?;
        let text = String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", f.display()))?;
        keys.push(parse_public(&text, &f.display().to_string())?);
    }
    if keys.is_empty() {
        return Err(format!(
            "trusted_keys {}: no *.pub key found; {hint}",
            path.display()
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed_key(seed: u8) -> SecretKey {
        ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32])).sk
    }

    #[test]
    fn key_files_round_trip() {
        let sk = fixed_key(1);
        let pk = parse_public(&public_text(&sk.public_key()), "t").unwrap();
        assert_eq!(pk.key, sk.public_key());
        assert_eq!(parse_secret(&secret_text(&sk), "t").unwrap(), sk);
        assert!(parse_public("garbage", "t").is_err());
        assert!(parse_public(&format!("{PUBLIC_TAG} abcd"), "t").is_err());
    }

    #[test]
    fn signatures_need_a_trusted_valid_key() {
        let (a, b) = (fixed_key(1), fixed_key(2));
        let trusted = vec![parse_public(&public_text(&a.public_key()), "a").unwrap()];
        let sig = sign(&a, b"manifest");
        check_signatures(b"manifest", std::slice::from_ref(&sig), &trusted, 1).unwrap();
        assert!(check_signatures(b"manifesT", std::slice::from_ref(&sig), &trusted, 1).is_err());
        let other = sign(&b, b"manifest");
        assert!(check_signatures(b"manifest", std::slice::from_ref(&other), &trusted, 1).is_err());
        // Same trusted key twice does not meet a threshold of two.
        assert!(check_signatures(b"manifest", &[sig.clone(), sig.clone()], &trusted, 2).is_err());
        // A refused key's valid signature does not count, and the error says why.
        let mut revoked = trusted.clone();
        revoked[0].refused = Some("is revoked".into());
        let e = check_signatures(b"manifest", &[sig], &revoked, 1).unwrap_err();
        assert!(e.contains("is revoked"), "{e}");
    }

    #[test]
    fn threshold_counts_distinct_usable_keys() {
        let (a, b, c) = (fixed_key(1), fixed_key(2), fixed_key(3));
        let mut trusted: Vec<TrustedKey> = [&a, &b, &c]
            .iter()
            .map(|k| parse_public(&public_text(&k.public_key()), "t").unwrap())
            .collect();
        for k in &mut trusted {
            k.threshold = 2;
        }
        assert_eq!(required_signers(&trusted), 2);
        let (sa, sb) = (sign(&a, b"m"), sign(&b, b"m"));
        assert!(check_signatures(b"m", std::slice::from_ref(&sa), &trusted, 2).is_err());
        check_signatures(b"m", &[sa.clone(), sb.clone()], &trusted, 2).unwrap();
        trusted[1].refused = Some("expired".into());
        assert!(check_signatures(b"m", &[sa, sb], &trusted, 2).is_err());
    }
}
