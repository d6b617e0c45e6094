//! Rebuilding a delta entry on the node while staging: find the base file among the packages the
//! node keeps from earlier bundles (state_dir/cache), apply the patch, and hand the result to the
//! staging sink, which keeps it only if its size and sha256 match the signed manifest.

use crate::bundle::delta::{
    apply_patch, corrupt, deb_member, DeltaError, HashingWriter, Header, Source,
};
use crate::bundle::format::{hex, Entry, EntryKind, Manifest};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::bundle::delta::CHUNK;

/// How much larger than the entry an expanded data.tar (recipe deb-gz) may be: a gzip member
/// expands a few times over on real packages; a patch claiming more is a disk-filling attempt.
pub const MAX_EXPANSION: u64 = 32;
const EXPANSION_SLACK: u64 = 16 << 20;

/// Before a deb-gz patch writes its two scratch streams: each must be within `MAX_EXPANSION`
/// of the signed entry size, and both together must fit in free space next to the output.
fn check_scratch(header: &Header, entry: &Entry, tmp_dir: &Path) -> Result<(), DeltaError> {
    let cap = entry
        .size
        .saturating_mul(MAX_EXPANSION)
        .saturating_add(EXPANSION_SLACK);
    let mut need = entry.size;
    for s in &header.sections {
        // The base's members are unpacked to scratch files (dpkg-deb --ctrl/--fsys-tarfile),
        // deb-gz also writes the expanded new stream: all of it is counted before any is written.
        let base_member = matches!(s.source, Source::DebControl | Source::DebData);
        let streams = [
            ("old", s.old_len, base_member || header.gz.is_some()),
            ("new", s.new_len, header.gz.is_some()),
        ];
        for (what, len, scratch) in streams {
            if !scratch {
                continue;
            }
            if len > cap {
                return Err(corrupt(format!(
                    "{} expands its {what} stream to {len} bytes, over {cap} for a {}-byte entry",
                    entry.name, entry.size
                )));
            }
            need = need.saturating_add(len);
        }
    }
    let free = crate::support::fsutil::free_bytes(tmp_dir)?;
    if free < need {
        // Not the bundle's fault: defer (the node may fetch the full bundle or free space).
        return Err(DeltaError::Base(format!(
            "rebuilding {} needs {} MiB of scratch space in {}, {} MiB free",
            entry.name,
            need.div_ceil(1 << 20),
            tmp_dir.display(),
            free >> 20
        )));
    }
    Ok(())
}

/// Node side: rebuild `entry` from the staged patch file and its base, into `out`. Checks the
/// result's size and sha256 against the signed entry.
pub fn rebuild(
    entry: &Entry,
    patch_path: &Path,
    base: &Path,
    tmp_dir: &Path,
    out: File,
) -> Result<(), DeltaError> {
    let patch = File::open(patch_path)?;
    let header = Header::read(&mut (&patch), entry.size)?;
    if header.output_len() != entry.size {
        return Err(corrupt(format!(
            "produces {} bytes, manifest says {}",
            header.output_len(),
            entry.size
        )));
    }
    check_scratch(&header, entry, tmp_dir)?;
    let mut source = |s: Source| -> Result<File, DeltaError> {
        match s {
            Source::Whole => Ok(File::open(base)?),
            s => deb_member(base, s, tmp_dir),
        }
    };
    let mut w = HashingWriter::new(io::BufWriter::with_capacity(CHUNK, out));
    apply_patch(&patch, &header, &mut source, tmp_dir, &mut w)?;
    let (buf, written, sum) = w.finish();
    let f = buf
        .into_inner()
        .map_err(|e| DeltaError::Io(e.into_error()))?;
    if written != entry.size || sum != entry.sha256 {
        return Err(corrupt(format!(
            "rebuilt {} is {written} bytes sha256 {}, manifest says {} bytes {}",
            entry.name,
            hex(&sum),
            entry.size,
            hex(&entry.sha256)
        )));
    }
    f.sync_all()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Which bases does the node hold?

/// The files of the bundles this node keeps (`cache/current`, `cache/previous`), by sha256,
/// as their staged manifests describe them.
#[derive(Debug, Default)]
pub struct BaseIndex {
    files: Vec<(String, [u8; 32], u64, PathBuf)>,
    /// sha256 of each cached manifest.
    pub manifests: Vec<[u8; 32]>,
}

impl BaseIndex {
    pub fn load(base_dirs: &[PathBuf]) -> BaseIndex {
        let mut idx = BaseIndex::default();
        for dir in base_dirs {
            let Ok(bytes) = std::fs::read(dir.join(crate::node::store::MANIFEST_FILE)) else {
                continue;
            };
            let Ok(m) = Manifest::parse(&bytes) else {
                log::warn!("cache {}: unreadable manifest, ignored", dir.display());
                continue;
            };
            idx.manifests.push(crate::bundle::format::sha256(&bytes));
            for e in m.entries {
                let path = dir.join(&e.name);
                idx.files.push((e.name, e.sha256, e.size, path));
            }
        }
        idx
    }

    /// A cached file with this sha256 (and, when given, this name) that exists with its size.
    pub fn find(&self, sha: &[u8; 32], name: Option<&str>) -> Option<&Path> {
        self.files
            .iter()
            .filter(|(n, s, _, _)| s == sha && name.is_none_or(|want| want == n))
            .find(|(_, _, size, p)| std::fs::metadata(p).is_ok_and(|m| m.len() == *size))
            .map(|(_, _, _, p)| p.as_path())
    }

    /// Names of the entries of `m` this node cannot produce from its cache.
    pub fn missing(&self, m: &Manifest) -> Vec<String> {
        m.entries
            .iter()
            .filter(|e| match e.kind {
                EntryKind::File => false,
                EntryKind::Ref => self.find(&e.sha256, Some(&e.name)).is_none(),
                EntryKind::Delta => e.base_sha256.is_none_or(|b| self.find(&b, None).is_none()),
            })
            .map(|e| e.name.clone())
            .collect()
    }
}

/// For `fetch`: can this node apply the bundle with this manifest from what it holds? True for
/// every full bundle; for a delta bundle only if each `ref` and each delta's base is in the
/// package cache (cheap: manifests and file sizes; staging still checks every sha256). When false,
/// fetch the full bundle of the same cycle instead.
pub fn can_use_delta(state_dir: &Path, manifest: &Manifest) -> bool {
    let dirs = [
        crate::node::store::cache_current(state_dir),
        crate::node::store::cache_previous(state_dir),
    ];
    BaseIndex::load(&dirs).missing(manifest).is_empty()
}

/// Sha256 of a regular file, streaming (a FIFO or device is refused, never blocked on: pool
/// copies and cached packages are checked with it).
pub fn file_sha256(path: &Path) -> io::Result<[u8; 32]> {
    let mut f = crate::support::fsutil::open_regular(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sha256_refuses_a_fifo_without_blocking() {
        let fifo = std::env::temp_dir().join(format!("ep-sha-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&fifo);
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        assert!(file_sha256(&fifo).is_err());
        std::fs::remove_file(&fifo).unwrap();
    }
    use crate::bundle::delta::{GzMap, Recipe, Section};
    use crate::bundle::format::Encoding;

    fn entry(size: u64) -> Entry {
        Entry {
            name: "p_2_all.deb".into(),
            kind: EntryKind::Delta,
            encoding: Encoding::Raw,
            size,
            stored: 5003,
            sha256: [0; 32],
            base_sha256: Some([1; 32]),
            patch_sha256: Some([2; 32]),
        }
    }

    fn header(expanded: u64) -> Header {
        let sec = |old_len, new_len| Section {
            source: Source::DebData,
            old_len,
            new_len,
            streams: [0; 7],
        };
        Header {
            recipe: Recipe::DebGz,
            sections: vec![sec(100, 100), sec(1000, expanded)],
            gz: Some(GzMap::default()),
        }
    }

    /// Regression (hardening item 3): a 5,003-byte signed patch that declares a 10,442-byte
    /// entry but expands its data stream to 512 MiB is refused before anything is written, and
    /// a plausible one that does not fit the free space is refused too.
    #[test]
    fn deb_gz_scratch_is_bounded_by_the_signed_entry_size_and_free_space() {
        let dir = std::env::temp_dir();
        let e = check_scratch(&header(512 << 20), &entry(10_442), &dir).unwrap_err();
        assert!(
            matches!(&e, DeltaError::Corrupt(m) if m.contains("expands its new stream")),
            "{e}"
        );
        let huge = 1u64 << 50;
        let e = check_scratch(&header(huge), &entry(huge / 4), &dir).unwrap_err();
        assert!(
            matches!(&e, DeltaError::Base(m) if m.contains("scratch space")),
            "{e}"
        );
        check_scratch(&header(40_000), &entry(10_442), &dir).unwrap();
    }
}
