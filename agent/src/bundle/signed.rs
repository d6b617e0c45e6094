//! Small signed text documents: mirror indexes, rollback and halt orders, re-issued policies.
//! One format for all of them, so there is one verifier:
//!
//! ```text
//! edgepatch-index 1          first line: document type and version
//! key value                  body: `key value` lines (see kv)
//! ...
//! --- signatures
//! sig <key id hex> <signature hex>     one or more; Ed25519 over the body bytes, through the
//!                                      newline that precedes `--- signatures`
//! ```
//!
//! The whole document is capped at MAX_DOC bytes before it is parsed.

use crate::bundle::format::{hex, parse_hex, Signature};
use crate::bundle::keys::{check_signatures, TrustedKey};
use crate::support::kv::Record;

pub const MAX_DOC: usize = 1 << 20;
const SEPARATOR: &str = "--- signatures\n";

/// Sign `body` (which must end with a newline) and return the full document.
pub fn seal(body: &str, keys: &[&ed25519_compact::SecretKey]) -> String {
    let mut doc = body.to_string();
    if !doc.ends_with('\n') {
        doc.push('\n');
    }
    let signed_len = doc.len();
    doc += SEPARATOR;
    for k in keys {
        let s = crate::bundle::keys::sign(k, &doc.as_bytes()[..signed_len]);
        doc += &format!("sig {} {}\n", hex(&s.key_id), hex(&s.bytes));
    }
    doc
}

/// Check a document's signatures and type line; returns the body's records (type line excluded).
pub fn open(
    doc: &[u8],
    doc_type: &str,
    trusted: &[TrustedKey],
    threshold: usize,
) -> Result<Record, String> {
    if doc.len() > MAX_DOC {
        return Err(format!(
            "{doc_type} document is {} bytes, limit {MAX_DOC}",
            doc.len()
        ));
    }
    let text = std::str::from_utf8(doc).map_err(|_| format!("{doc_type} document is not UTF-8"))?;
    let at = text
        .find(&format!("\n{SEPARATOR}"))
        .ok_or_else(|| format!("{doc_type} document is not signed"))?;
    let (body, sigs) = (&text[..at + 1], &text[at + 1 + SEPARATOR.len()..]);
    let mut signatures = Vec::new();
    for line in sigs.lines().filter(|l| !l.is_empty()) {
        let mut f = line.split(' ');
        let parsed = match (f.next(), f.next(), f.next(), f.next()) {
            (Some("sig"), Some(id), Some(sig), None) => parse_hex(id).zip(parse_hex(sig)),
            _ => None,
        };
        let (key_id, bytes) =
            parsed.ok_or_else(|| format!("{doc_type}: bad signature line {line:?}"))?;
        signatures.push(Signature { key_id, bytes });
    }
    check_signatures(body.as_bytes(), &signatures, trusted, threshold)
        .map_err(|e| format!("{doc_type}: {e}"))?;
    let mut lines = body.splitn(2, '\n');
    let first = lines.next().unwrap_or("");
    if first != format!("{doc_type} 1") {
        return Err(format!(
            "expected a {doc_type} version 1 document, found {first:?}"
        ));
    }
    Ok(Record::parse(lines.next().unwrap_or("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([9; 32]));
        let trusted =
            vec![
                crate::bundle::keys::parse_public(&crate::bundle::keys::public_text(&kp.pk), "t")
                    .unwrap(),
            ];
        let doc = seal("edgepatch-order 1\nkind rollback\ncycle c1\n", &[&kp.sk]);
        let r = open(doc.as_bytes(), "edgepatch-order", &trusted, 1).unwrap();
        assert_eq!(r.get("kind"), Some("rollback"));
        let tampered = doc.replace("c1", "c2");
        assert!(open(tampered.as_bytes(), "edgepatch-order", &trusted, 1).is_err());
        assert!(open(doc.as_bytes(), "edgepatch-index", &trusted, 1).is_err());
        let unsigned = "edgepatch-order 1\nkind halt\n";
        assert!(open(unsigned.as_bytes(), "edgepatch-order", &trusted, 1).is_err());
    }
}
