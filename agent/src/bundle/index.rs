//! The mirror index: one small signed document per variant, `MIRROR/<variant>/index`, written by
//! `edgepatch-builder publish` and read by `edgepatch fetch`. It is a `signed` document of type
//! `edgepatch-index`, so it has the one verifier every signed text has.
//!
//! ```text
//! edgepatch-index 1
//! variant debian-12-amd64
//! published 1718000000          unix seconds; strictly increases with every publish
//! expires 1718604800            nodes refuse the index after this (stale-index defence)
//! bundle sequence=3 cycle=c3 file=c3.epb size=123 sha256=<64 hex> manifest_sha256=<64 hex> expires=<unix> delta_base=-
//! delta sequence=4 base_sequence=3 cycle=c4 file=c4-from-3.epb size=.. sha256=.. manifest_sha256=.. expires=..
//! order rollback-c4.order <64 hex>
//! ```
//!
//! `bundle` lines are full bundles (`delta_base=-`); `delta` lines are binary deltas that only a
//! node at `base_sequence` can use. `order` lines name signed rollback/halt orders stored next to
//! the index (`MIRROR/<variant>/orders/<file>`); their format belongs to the orders module.
//! Bundle files live in `MIRROR/<variant>/bundles/<file>`. File names are plain names
//! (`[A-Za-z0-9._+-]`, not starting with a dot), bundle names end in `.epb`.
//!
//! Unknown lines and unknown `key=value` fields are refused: an old agent never silently
//! ignores something a newer publisher signed.

use crate::bundle::format::{hex, parse_hex};
use crate::bundle::keys::TrustedKey;

pub const DOC_TYPE: &str = "edgepatch-index";
pub const MAX_BUNDLES: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexBundle {
    pub cycle: String,
    pub sequence: u64,
    /// Bytes of the whole bundle file.
    pub size: u64,
    /// sha256 of the whole bundle file.
    pub sha256: [u8; 32],
    pub manifest_sha256: [u8; 32],
    /// The bundle's own signed expiry (copied from its manifest).
    pub expires: u64,
    pub file: String,
    /// For a delta bundle: the sequence it must be applied on top of.
    pub delta_base: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub file: String,
    pub sha256: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Index {
    pub variant: String,
    pub published: u64,
    pub expires: u64,
    pub bundles: Vec<IndexBundle>,
    pub orders: Vec<Order>,
}

/// A file name that is safe in a URL path and as a single path component.
pub fn check_file_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "file name {name:?} must be 1-200 of [A-Za-z0-9._+-], not starting with '.'"
        ))
    }
}

/// A variant usable as one path component of the mirror tree.
pub fn check_variant(v: &str) -> Result<(), String> {
    check_file_name(v).map_err(|_| {
        format!("variant {v:?} cannot be a mirror directory: use only [A-Za-z0-9._+-]")
    })
}

impl IndexBundle {
    fn render(&self) -> String {
        let common = format!(
            "sequence={} cycle={} file={} size={} sha256={} manifest_sha256={} expires={}",
            self.sequence,
            self.cycle,
            self.file,
            self.size,
            hex(&self.sha256),
            hex(&self.manifest_sha256),
            self.expires
        );
        match self.delta_base {
            None => format!("bundle {common} delta_base=-\n"),
            Some(b) => format!("delta {common} base_sequence={b}\n"),
        }
    }

    fn parse(kind: &str, rest: &str) -> Result<IndexBundle, String> {
        let mut fields: Vec<(&str, &str)> = Vec::new();
        for tok in rest.split(' ').filter(|t| !t.is_empty()) {
            let (k, v) = tok
                .split_once('=')
                .ok_or_else(|| format!("{kind} field {tok:?} is not key=value"))?;
            if fields.iter().any(|(x, _)| *x == k) {
                return Err(format!("{kind} field {k} given twice"));
            }
            fields.push((k, v));
        }
        let get = |k: &str| {
            fields
                .iter()
                .find(|(x, _)| *x == k)
                .map(|(_, v)| *v)
                .ok_or_else(|| format!("{kind} line has no {k}="))
        };
        let num = |k: &str| {
            get(k)?
                .parse::<u64>()
                .map_err(|_| format!("{kind} {k}= is not a number"))
        };
        let sum =
            |k: &str| parse_hex::<32>(get(k)?).ok_or_else(|| format!("{kind} {k}= is not 64 hex"));
        let allowed: &[&str] = match kind {
            "bundle" => &["delta_base"],
            _ => &["base_sequence"],
        };
        let known = [
            "sequence",
            "cycle",
            "file",
            "size",
            "sha256",
            "manifest_sha256",
            "expires",
        ];
        if let Some((k, _)) = fields
            .iter()
            .find(|(k, _)| !known.contains(k) && !allowed.contains(k))
        {
            return Err(format!(
                "{kind} line has unknown field {k}; upgrade the agent"
            ));
        }
        let delta_base = match kind {
            "bundle" => match get("delta_base")? {
                "-" => None,
                _ => return Err("bundle delta_base must be '-' (deltas are delta lines)".into()),
            },
            _ => Some(num("base_sequence")?),
        };
        let file = get("file")?.to_string();
        check_file_name(&file)?;
        if !file.ends_with(".epb") {
            return Err(format!("bundle file {file:?} must end in .epb"));
        }
        let cycle = get("cycle")?.to_string();
        if cycle.is_empty() || !cycle.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("cycle {cycle:?} is not printable"));
        }
        Ok(IndexBundle {
            cycle,
            sequence: num("sequence")?,
            size: num("size")?,
            sha256: sum("sha256")?,
            manifest_sha256: sum("manifest_sha256")?,
            expires: num("expires")?,
            file,
            delta_base,
        })
    }
}

impl Index {
    /// The document body (type line included), ready for `signed::seal`.
    pub fn render(&self) -> String {
        let mut s = format!(
            "{DOC_TYPE} 1\nvariant {}\npublished {}\nexpires {}\n",
            self.variant, self.published, self.expires
        );
        for b in &self.bundles {
            s += &b.render();
        }
        for o in &self.orders {
            s += &format!("order {} {}\n", o.file, hex(&o.sha256));
        }
        s
    }

    /// Check the signature (threshold 1) and parse. Errors are one line, without a path.
    pub fn open(doc: &[u8], trusted: &[TrustedKey]) -> Result<Index, String> {
        let rec = crate::bundle::signed::open(doc, DOC_TYPE, trusted, 1)?;
        Index::from_record(&rec)
    }

    pub fn from_record(rec: &crate::support::kv::Record) -> Result<Index, String> {
        let mut ix = Index::default();
        let (mut variant, mut published, mut expires) = (None, None, None);
        for (k, v) in &rec.fields {
            let twice = |set: bool| {
                if set {
                    Err(format!("index line {k} given twice"))
                } else {
                    Ok(())
                }
            };
            let num = || {
                v.parse::<u64>()
                    .map_err(|_| format!("index {k} {v:?} is not a number"))
            };
            match k.as_str() {
                "variant" => {
                    twice(variant.is_some())?;
                    variant = Some(v.clone())
                }
                "published" => {
                    twice(published.is_some())?;
                    published = Some(num()?)
                }
                "expires" => {
                    twice(expires.is_some())?;
                    expires = Some(num()?)
                }
                "bundle" | "delta" => {
                    if ix.bundles.len() >= MAX_BUNDLES {
                        return Err(format!("index lists more than {MAX_BUNDLES} bundles"));
                    }
                    ix.bundles.push(IndexBundle::parse(k, v)?)
                }
                "order" => {
                    let mut f = v.split(' ');
                    let (file, sum) = match (f.next(), f.next(), f.next()) {
                        (Some(file), Some(sum), None) => (file, sum),
                        _ => return Err(format!("order line {v:?} is not 'order FILE SHA256'")),
                    };
                    check_file_name(file)?;
                    let sha256 =
                        parse_hex(sum).ok_or_else(|| format!("order {file}: bad sha256"))?;
                    ix.orders.push(Order {
                        file: file.to_string(),
                        sha256,
                    })
                }
                other => {
                    return Err(format!(
                        "index has unknown line {other:?}; upgrade the agent"
                    ))
                }
            }
        }
        ix.variant = variant.ok_or("index has no variant line")?;
        ix.published = published.ok_or("index has no published line")?;
        ix.expires = expires.ok_or("index has no expires line")?;
        Ok(ix)
    }

    /// The bundle a node at `installed` should fetch: the highest sequence above it that has not
    /// expired at `now`; as a delta when one exists for that sequence whose base is the bundle
    /// whose packages the node holds in its cache (`cached`), else the full bundle.
    pub fn due(&self, installed: Option<u64>, now: u64) -> Option<&IndexBundle> {
        self.due_with_cache(installed, None, now)
    }

    pub fn due_with_cache(
        &self,
        installed: Option<u64>,
        cached: Option<u64>,
        now: u64,
    ) -> Option<&IndexBundle> {
        let full = self
            .bundles
            .iter()
            .filter(|b| b.delta_base.is_none())
            .filter(|b| installed.is_none_or(|i| b.sequence > i) && b.expires > now)
            .max_by_key(|b| b.sequence)?;
        let delta = self.bundles.iter().find(|b| {
            b.sequence == full.sequence
                && b.expires > now
                && b.delta_base.is_some()
                && b.delta_base == cached
                && b.size < full.size
        });
        Some(delta.unwrap_or(full))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Index {
        Index {
            variant: "debian-12-amd64".into(),
            published: 1000,
            expires: 2000,
            bundles: vec![
                IndexBundle {
                    cycle: "c1".into(),
                    sequence: 1,
                    size: 10,
                    sha256: [1; 32],
                    manifest_sha256: [2; 32],
                    expires: 5000,
                    file: "c1.epb".into(),
                    delta_base: None,
                },
                IndexBundle {
                    cycle: "c2".into(),
                    sequence: 2,
                    size: 20,
                    sha256: [3; 32],
                    manifest_sha256: [4; 32],
                    expires: 1500,
                    file: "c2.epb".into(),
                    delta_base: None,
                },
                IndexBundle {
                    cycle: "c2".into(),
                    sequence: 2,
                    size: 5,
                    sha256: [5; 32],
                    manifest_sha256: [6; 32],
                    expires: 5000,
                    file: "c2-from-1.epb".into(),
                    delta_base: Some(1),
                },
            ],
            orders: vec![Order {
                file: "halt-c2.order".into(),
                sha256: [7; 32],
            }],
        }
    }

    #[test]
    fn round_trip_signed() {
        let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([3; 32]));
        let trusted =
            vec![
                crate::bundle::keys::parse_public(&crate::bundle::keys::public_text(&kp.pk), "t")
                    .unwrap(),
            ];
        let doc = crate::bundle::signed::seal(&sample().render(), &[&kp.sk]);
        assert_eq!(Index::open(doc.as_bytes(), &trusted).unwrap(), sample());
        assert!(Index::open(doc.replace("c1.epb", "c9.epb").as_bytes(), &trusted).is_err());
    }

    #[test]
    fn due_picks_highest_unexpired_full_bundle() {
        let ix = sample();
        assert_eq!(ix.due(None, 1000).unwrap().sequence, 2);
        assert_eq!(ix.due(None, 1600).unwrap().sequence, 1, "c2 expired");
        assert!(ix.due(Some(2), 1000).is_none());
        // A delta is picked only when the node caches exactly its base.
        let with_delta = ix.bundles.iter().find(|b| b.delta_base.is_some()).cloned();
        if let Some(d) = with_delta {
            let base = d.delta_base;
            let chosen = ix.due_with_cache(base, base, 1000).unwrap();
            assert!(chosen.sequence >= d.sequence);
        }
    }

    #[test]
    fn refuses_unknown_and_unsafe() {
        let body = sample().render();
        let rec = |t: &str| crate::support::kv::Record::parse(t.split_once('\n').unwrap().1);
        assert!(Index::from_record(&rec(&format!("{body}halt now\n"))).is_err());
        let bad = body.replace("file=c1.epb", "file=../c1.epb");
        assert!(Index::from_record(&rec(&bad)).is_err());
        let bad = body.replace("file=c1.epb", "file=c1.epb extra=1");
        assert!(Index::from_record(&rec(&bad)).is_err());
        let bad = body.replace("published 1000\n", "");
        assert!(Index::from_record(&rec(&bad)).is_err());
        assert!(check_variant("a/b").is_err());
    }
}
