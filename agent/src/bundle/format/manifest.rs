//! The signed manifest: its text form, parsed and written, the entries it lists and the rules
//! every entry name must follow (see the parent module for the wire format).

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Ref,
    Delta,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Raw,
    Deflate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: EntryKind,
    pub encoding: Encoding,
    /// Size of the final file.
    pub size: u64,
    /// Bytes this entry occupies in the payload (0 for `ref`).
    pub stored: u64,
    /// sha256 of the final file.
    pub sha256: [u8; 32],
    /// For `delta`: sha256 of the base file the delta applies to.
    pub base_sha256: Option<[u8; 32]>,
    /// For `delta`: sha256 of the stored delta bytes.
    pub patch_sha256: Option<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaBase {
    pub sequence: u64,
    pub manifest_sha256: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub variant: String,
    pub cycle: String,
    pub sequence: u64,
    pub created: u64,
    pub expires: u64,
    pub key_id: String,
    pub install: Vec<String>,
    pub delta_base: Option<DeltaBase>,
    pub policy: Vec<(String, String)>,
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub key_id: [u8; KEY_ID_LEN],
    pub bytes: [u8; SIGNATURE_LEN],
}

/// Entry names are relative paths of plain components: no `..`, no leading `/`, no empty or
/// hidden components, only `[A-Za-z0-9._+~%-]` (`%` for the `%3a` epochs of downloaded .deb
/// file names), at most four levels. Nothing can escape the
/// staging directory, whatever the signer wrote.
pub fn check_entry_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "entry name length {} not in 1..={MAX_NAME_LEN}",
            name.len()
        ));
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 4 {
        return Err(format!(
            "entry name {name:?} is nested deeper than 4 levels"
        ));
    }
    for part in parts {
        if part.is_empty() || part.starts_with('.') {
            return Err(format!(
                "entry name {name:?} has an empty, absolute or dot component"
            ));
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+~%-".contains(&b))
        {
            return Err(format!(
                "entry name {name:?} has a character outside [A-Za-z0-9._+~%-]"
            ));
        }
    }
    Ok(())
}

fn check_token(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_FIELD_LEN {
        return Err(format!(
            "{what} length {} not in 1..={MAX_FIELD_LEN}",
            value.len()
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        return Err(format!("{what} {value:?} has spaces or control characters"));
    }
    Ok(())
}

impl Manifest {
    /// Serialise to the exact bytes that get signed. Fails if a field would not parse back.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        self.validate()?;
        let mut s = format!("edgepatch-manifest {MANIFEST_VERSION}\n");
        s += &format!("variant {}\ncycle {}\n", self.variant, self.cycle);
        s += &format!("sequence {}\ncreated {}\n", self.sequence, self.created);
        s += &format!("expires {}\nkey_id {}\n", self.expires, self.key_id);
        for name in &self.install {
            s += &format!("install {name}\n");
        }
        if let Some(base) = &self.delta_base {
            s += &format!(
                "delta_base {} {}\n",
                base.sequence,
                hex(&base.manifest_sha256)
            );
        }
        for (k, v) in &self.policy {
            s += &format!("policy {k} {v}\n");
        }
        for e in &self.entries {
            let kind = match e.kind {
                EntryKind::File => "file",
                EntryKind::Ref => "ref",
                EntryKind::Delta => "delta",
            };
            let enc = match e.encoding {
                Encoding::Raw => "raw",
                Encoding::Deflate => "deflate",
            };
            s += &format!(
                "entry {} {kind} {enc} {} {} {}",
                e.name,
                e.size,
                e.stored,
                hex(&e.sha256)
            );
            if let (Some(b), Some(p)) = (&e.base_sha256, &e.patch_sha256) {
                s += &format!(" {} {}", hex(b), hex(p));
            }
            s.push('\n');
        }
        if s.len() > MAX_MANIFEST as usize {
            return Err(format!(
                "manifest is {} bytes, limit {MAX_MANIFEST}",
                s.len()
            ));
        }
        Ok(s.into_bytes())
    }

    fn validate(&self) -> Result<(), String> {
        check_token("variant", &self.variant)?;
        check_token("cycle", &self.cycle)?;
        check_token("key_id", &self.key_id)?;
        if self.expires <= self.created {
            return Err(format!(
                "expires {} is not after created {}",
                self.expires, self.created
            ));
        }
        for name in &self.install {
            check_token("install name", name)?;
        }
        for (k, v) in &self.policy {
            check_token("policy key", k)?;
            if v.is_empty() || v.len() > 4096 || v.contains('\n') {
                return Err(format!(
                    "policy value for {k} is empty, too long or multi-line"
                ));
            }
        }
        if self.entries.len() > MAX_ENTRIES {
            return Err(format!(
                "{} entries, limit {MAX_ENTRIES}",
                self.entries.len()
            ));
        }
        let mut names: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("entry {} appears twice", w[0]));
        }
        for e in &self.entries {
            check_entry_name(&e.name)?;
            if e.size > MAX_ENTRY_SIZE || e.stored > MAX_ENTRY_SIZE {
                return Err(format!(
                    "entry {} is larger than {MAX_ENTRY_SIZE} bytes",
                    e.name
                ));
            }
            match e.kind {
                EntryKind::Ref if e.stored != 0 => {
                    return Err(format!("ref entry {} must store 0 bytes", e.name))
                }
                EntryKind::File if e.encoding == Encoding::Raw && e.stored != e.size => {
                    return Err(format!(
                        "raw entry {} stored size differs from size",
                        e.name
                    ))
                }
                EntryKind::Delta
                    if e.base_sha256.is_none()
                        || e.patch_sha256.is_none()
                        || e.encoding != Encoding::Raw =>
                {
                    return Err(format!(
                        "delta entry {} needs a base, a patch sum and raw",
                        e.name
                    ))
                }
                EntryKind::File | EntryKind::Ref
                    if e.base_sha256.is_some() || e.patch_sha256.is_some() =>
                {
                    return Err(format!("entry {} has a base but is not a delta", e.name))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Parse manifest bytes. Call only on bytes whose signature was already checked.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, FormatError> {
        let text = std::str::from_utf8(bytes).map_err(|_| integrity("manifest is not UTF-8"))?;
        let mut lines = text.split_terminator('\n').enumerate();
        match lines.next() {
            Some((_, l)) if l == format!("edgepatch-manifest {MANIFEST_VERSION}") => {}
            Some((_, l)) => {
                return Err(integrity(format!(
                    "manifest starts with {l:?}; this agent reads version {MANIFEST_VERSION}"
                )))
            }
            None => return Err(integrity("manifest is empty")),
        }
        let mut m = Manifest::default();
        let mut seen = [false; 6];
        for (i, line) in lines {
            let lineno = i + 1;
            let bad = |what: &str| integrity(format!("manifest line {lineno}: {what}"));
            let (key, rest) = line.split_once(' ').ok_or_else(|| bad("no value"))?;
            let once = |slot: usize, seen: &mut [bool; 6]| {
                if std::mem::replace(&mut seen[slot], true) {
                    Err(bad(&format!("{key} given twice")))
                } else {
                    Ok(())
                }
            };
            let num = |s: &str| {
                s.parse::<u64>()
                    .map_err(|_| bad(&format!("bad number {s:?}")))
            };
            match key {
                "variant" => (once(0, &mut seen)?, m.variant = rest.to_string()).1,
                "cycle" => (once(1, &mut seen)?, m.cycle = rest.to_string()).1,
                "sequence" => (once(2, &mut seen)?, m.sequence = num(rest)?).1,
                "created" => (once(3, &mut seen)?, m.created = num(rest)?).1,
                "expires" => (once(4, &mut seen)?, m.expires = num(rest)?).1,
                "key_id" => (once(5, &mut seen)?, m.key_id = rest.to_string()).1,
                "install" => m.install.push(rest.to_string()),
                "delta_base" => {
                    let (seq, sum) = rest.split_once(' ').ok_or_else(|| bad("delta_base"))?;
                    if m.delta_base.is_some() {
                        return Err(bad("delta_base given twice"));
                    }
                    m.delta_base = Some(DeltaBase {
                        sequence: num(seq)?,
                        manifest_sha256: parse_hex(sum).ok_or_else(|| bad("bad sha256"))?,
                    });
                }
                "policy" => {
                    let (k, v) = rest
                        .split_once(' ')
                        .ok_or_else(|| bad("policy needs key and value"))?;
                    m.policy.push((k.to_string(), v.to_string()));
                }
                "entry" => {
                    if m.entries.len() >= MAX_ENTRIES {
                        return Err(bad(&format!("more than {MAX_ENTRIES} entries")));
                    }
                    m.entries.push(parse_entry(rest).map_err(|w| bad(&w))?);
                }
                other => return Err(bad(&format!("unknown key {other:?}"))),
            }
        }
        const NAMES: [&str; 6] = [
            "variant", "cycle", "sequence", "created", "expires", "key_id",
        ];
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(integrity(format!("manifest has no {}", NAMES[i])));
        }
        m.validate()
            .map_err(|w| integrity(format!("manifest: {w}")))?;
        Ok(m)
    }

    /// Bytes the payload must hold after the signatures.
    pub fn payload_len(&self) -> u64 {
        self.entries.iter().map(|e| e.stored).sum()
    }
}

fn parse_entry(rest: &str) -> Result<Entry, String> {
    let f: Vec<&str> = rest.split(' ').collect();
    if f.len() != 6 && f.len() != 8 {
        return Err(format!("entry needs 6 or 8 fields, has {}", f.len()));
    }
    let num = |s: &str| s.parse::<u64>().map_err(|_| format!("bad number {s:?}"));
    let sum = |s: &str| parse_hex::<32>(s).ok_or_else(|| format!("bad sha256 {s:?}"));
    Ok(Entry {
        name: f[0].to_string(),
        kind: match f[1] {
            "file" => EntryKind::File,
            "ref" => EntryKind::Ref,
            "delta" => EntryKind::Delta,
            k => return Err(format!("unknown entry kind {k:?}")),
        },
        encoding: match f[2] {
            "raw" => Encoding::Raw,
            "deflate" => Encoding::Deflate,
            e => return Err(format!("unknown encoding {e:?}")),
        },
        size: num(f[3])?,
        stored: num(f[4])?,
        sha256: sum(f[5])?,
        base_sha256: f.get(6).map(|s| sum(s)).transpose()?,
        patch_sha256: f.get(7).map(|s| sum(s)).transpose()?,
    })
}
