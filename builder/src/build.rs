//! `build`: hash the packages, write repository metadata, sign the manifest, write the bundle,
//! then read it back with the agent's own reader before saying "done".

use crate::repo::{self, Family, Package};
use anyhow::{bail, Context, Result};
use edgepatch::bundle::format::{self, hex, Encoding, Entry, EntryKind, Manifest};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Secret key file (from keygen); repeat to add several signatures (k of n thresholds)
    #[arg(long = "key", required = true)]
    pub key: Vec<PathBuf>,
    /// OS variant, e.g. debian-12-amd64 or rhel-9-x86_64
    #[arg(long)]
    pub variant: String,
    /// Patch cycle id, e.g. 20261124-build-42
    #[arg(long)]
    pub cycle: String,
    /// Must be greater than the sequence of every earlier bundle of this variant
    #[arg(long)]
    pub sequence: u64,
    /// Lifetime: a number with s, m, h or d
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    pub expires_in: u64,
    /// Package to install (not only upgrade) on nodes; repeatable
    #[arg(long = "install", value_name = "NAME")]
    pub install: Vec<String>,
    /// Output bundle file
    #[arg(long)]
    pub out: PathBuf,
    /// PatchPolicy YAML to sign into the bundle (bundleRef.version must be --cycle)
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Build a delta bundle against this earlier bundle (which the nodes hold): unchanged
    /// packages become references, changed .debs binary deltas
    #[arg(long, value_name = "BUNDLE")]
    pub base: Option<PathBuf>,
    /// With --base: directories holding the base's packages that the base bundle itself does
    /// not carry (it was a delta bundle too); files are matched by name and sha256
    #[arg(long = "base-pool", value_name = "DIR", requires = "base")]
    pub base_pool: Vec<PathBuf>,
    /// With --base: references only, no binary deltas (package-level dedup; for comparisons)
    #[arg(long, requires = "base")]
    pub refs_only: bool,
    /// .deb or .rpm files, or directories holding them
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

pub fn parse_duration(s: &str) -> Result<u64, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: want a number with s, m, h or d"))?;
    let mult = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{s:?}: out of range"))
}

fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let meta =
            std::fs::metadata(input).with_context(|| format!("input {}", input.display()))?;
        if meta.is_dir() {
            let mut stack = vec![input.clone()];
            while let Some(dir) = stack.pop() {
                for d in
                    std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
                {
                    let p = d?.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if repo::family_of(&p).is_some() {
                        files.push(p);
                    }
                }
            }
        } else if repo::family_of(input).is_some() {
            files.push(input.clone());
        } else {
            bail!("{}: not a .deb or .rpm package", input.display());
        }
    }
    if files.is_empty() {
        bail!("no .deb or .rpm packages found in the inputs");
    }
    Ok(files)
}

pub fn hash_file(path: &Path) -> Result<(u64, [u8; 32])> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, h.finalize().into()))
}

/// Hash every file on all cores (sha2 uses SHA-NI where the CPU has it).
fn hash_all(files: &[PathBuf]) -> Result<Vec<(u64, [u8; 32])>> {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(files.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, (u64, [u8; 32]))> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= files.len() {
                            return Ok(mine);
                        }
                        mine.push((i, hash_file(&files[i])?));
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            let part: Result<Vec<_>> = h.join().unwrap_or_else(|_| bail!("hash worker panicked"));
            all.extend(part?);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    done.sort_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, r)| r).collect())
}

const COMPRESSED_SUFFIXES: [&str; 6] = [".gz", ".xz", ".zst", ".bz2", ".deb", ".rpm"];

/// What goes into the payload for one entry.
pub(crate) enum Source {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// In a delta bundle, a metadata file the base also has (`Packages`: the same stanzas with new
/// versions and sums) travels as a raw delta when that is smaller than deflating it.
fn meta_delta_or_file(
    base: &crate::delta::Base,
    name: String,
    data: Vec<u8>,
) -> Result<(Entry, Source)> {
    let (entry, source) = meta_entry(name, data);
    let Some((old, old_bytes)) = base.file_bytes(&entry.name) else {
        return Ok((entry, source));
    };
    let new_bytes = match &source {
        Source::Bytes(b) if entry.encoding == Encoding::Raw => b.clone(),
        Source::Bytes(b) => {
            miniz_oxide::inflate::decompress_to_vec(b).map_err(|e| anyhow::anyhow!("{e:?}"))?
        }
        Source::File(_) => return Ok((entry, source)),
    };
    let mut patch = Vec::new();
    crate::delta::raw_patch(&old_bytes, &new_bytes, &mut patch)?;
    if patch.len() as u64 >= entry.stored {
        return Ok((entry, source));
    }
    let delta = Entry {
        name: entry.name.clone(),
        kind: EntryKind::Delta,
        encoding: Encoding::Raw,
        size: entry.size,
        stored: patch.len() as u64,
        sha256: entry.sha256,
        base_sha256: Some(old.sha256),
        patch_sha256: Some(format::sha256(&patch)),
    };
    Ok((delta, Source::Bytes(patch)))
}

fn meta_entry(name: String, data: Vec<u8>) -> (Entry, Source) {
    let sha = format::sha256(&data);
    let size = data.len() as u64;
    let packed = (!COMPRESSED_SUFFIXES.iter().any(|s| name.ends_with(s)))
        .then(|| format::deflate(&data))
        .filter(|p| p.len() < data.len());
    let (encoding, stored, bytes) = match packed {
        Some(p) => (Encoding::Deflate, p.len() as u64, p),
        None => (Encoding::Raw, size, data),
    };
    let entry = Entry {
        name,
        kind: EntryKind::File,
        encoding,
        size,
        stored,
        sha256: sha,
        base_sha256: None,
        patch_sha256: None,
    };
    (entry, Source::Bytes(bytes))
}

/// A package carried whole: stored raw, never recompressed.
pub(crate) fn package_part(p: &Package) -> (Entry, Source) {
    let entry = Entry {
        name: p.name.clone(),
        kind: EntryKind::File,
        encoding: Encoding::Raw,
        size: p.size,
        stored: p.size,
        sha256: p.sha256,
        base_sha256: None,
        patch_sha256: None,
    };
    (entry, Source::File(p.path.clone()))
}

fn full_parts(packages: &[Package]) -> Vec<(Entry, Source)> {
    packages.iter().map(package_part).collect()
}

pub fn run(args: &BuildArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let mut sks: Vec<ed25519_compact::SecretKey> = Vec::new();
    for path in &args.key {
        let key_text =
            std::fs::read_to_string(path).with_context(|| format!("key {}", path.display()))?;
        let sk = edgepatch::bundle::keys::parse_secret(&key_text, &path.display().to_string())
            .map_err(anyhow::Error::msg)?;
        if sks.iter().any(|k| k.public_key() == sk.public_key()) {
            bail!("{}: the same key is given twice", path.display());
        }
        sks.push(sk);
    }
    if sks.len() > format::MAX_SIGNATURES as usize {
        bail!("at most {} --key", format::MAX_SIGNATURES);
    }
    let sk = &sks[0];
    let files = collect_inputs(&args.inputs)?;
    let families: Vec<Family> = files.iter().filter_map(|f| repo::family_of(f)).collect();
    let family = families[0];
    if families.iter().any(|f| *f != family) {
        bail!("inputs mix .deb and .rpm packages; build one bundle per variant");
    }
    let sums = hash_all(&files)?;
    let mut packages: Vec<Package> = Vec::new();
    for (path, (size, sha256)) in files.iter().zip(sums) {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = format!("pool/{file_name}");
        format::check_entry_name(&name).map_err(|m| anyhow::anyhow!("{}: {m}", path.display()))?;
        if let Some(dup) = packages.iter().find(|p| p.name == name) {
            if dup.sha256 == sha256 {
                continue; // the same file given twice
            }
            bail!(
                "{} and {} have the same file name but differ",
                dup.path.display(),
                path.display()
            );
        }
        packages.push(Package {
            name,
            path: path.clone(),
            size,
            sha256,
        });
    }
    packages.sort_by(|a, b| a.name.cmp(&b.name));

    // With --base, package entries are planned first: a rebuilt .deb changes Packages.
    let base = match &args.base {
        Some(b) => Some(crate::delta::Base::load(b, &args.base_pool)?),
        None => None,
    };
    let (pkg_parts, delta_base) = match &base {
        Some(base) => {
            let (parts, db, s) = crate::delta::plan(base, family, &mut packages, !args.refs_only)?;
            println!(
                "delta against sequence {}: {} ref(s), {} delta(s) {} bytes, {} file(s) {} bytes (full: {} bytes)",
                db.sequence, s.refs, s.deltas, s.delta_bytes, s.files, s.file_bytes, s.full_bytes
            );
            (parts, Some(db))
        }
        None => (full_parts(&packages), None),
    };
    let mut parts: Vec<(Entry, Source)> = repo::metadata(family, &packages)?
        .into_iter()
        .map(|m| match &base {
            Some(b) if !args.refs_only => meta_delta_or_file(b, m.name, m.data),
            _ => Ok(meta_entry(m.name, m.data)),
        })
        .collect::<Result<_>>()?;
    parts.extend(pkg_parts);

    let created = edgepatch::support::clock::Clock::now(&edgepatch::support::clock::SystemClock);
    let manifest = Manifest {
        variant: args.variant.clone(),
        cycle: args.cycle.clone(),
        sequence: args.sequence,
        created,
        expires: created + args.expires_in,
        key_id: hex(&edgepatch::bundle::keys::key_id(&sk.public_key())),
        install: args.install.clone(),
        delta_base,
        policy: crate::policy::lines_for_build(args.policy.as_deref(), &args.cycle, created)?,
        entries: parts.iter().map(|(e, _)| e.clone()).collect(),
    };
    write_bundle(&args.out, &manifest, &sks, &parts)?;

    // Read back what we wrote with the agent's reader: the builder never ships a bundle the
    // agent would refuse.
    // With several keys, every one of them must have signed.
    let trusted = sks
        .iter()
        .map(|sk| {
            edgepatch::bundle::keys::parse_public(
                &edgepatch::bundle::keys::public_text(&sk.public_key()),
                "build key",
            )
            .map(|mut k| {
                k.threshold = sks.len();
                k
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let v = crate::verify::verify_file(&args.out, &trusted, created).with_context(|| {
        format!(
            "re-reading {} failed; the bundle is not usable",
            args.out.display()
        )
    })?;
    let total = std::fs::metadata(&args.out)?.len();
    println!(
        "built {} ({} bytes): {} cycle {} sequence {}, {} packages + {} metadata",
        args.out.display(),
        total,
        args.variant,
        args.cycle,
        args.sequence,
        packages.len(),
        manifest.entries.len() - packages.len()
    );
    println!(
        "manifest sha256 {}  in {:.2}s",
        hex(&v.manifest_sha256),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub(crate) fn write_bundle(
    out: &Path,
    manifest: &Manifest,
    sks: &[ed25519_compact::SecretKey],
    parts: &[(Entry, Source)],
) -> Result<()> {
    let manifest_bytes = manifest
        .to_bytes()
        .map_err(|m| anyhow::anyhow!("manifest: {m}"))?;
    let sigs: Vec<format::Signature> = sks
        .iter()
        .map(|sk| edgepatch::bundle::keys::sign(sk, &manifest_bytes))
        .collect();
    let tmp = out.with_extension("partial");
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = (|| -> Result<()> {
        let mut head = Vec::new();
        format::write_head(&mut head, &manifest_bytes, &sigs)?;
        f.write_all(&head)?;
        for (entry, source) in parts {
            let written = match source {
                // File to file: std uses copy_file_range, so the kernel moves the bytes.
                Source::File(p) => std::io::copy(&mut File::open(p)?, &mut f)?,
                Source::Bytes(b) => {
                    f.write_all(b)?;
                    b.len() as u64
                }
            };
            if written != entry.stored {
                bail!(
                    "{} changed while building ({} bytes, expected {})",
                    entry.name,
                    written,
                    entry.stored
                );
            }
        }
        f.sync_all()?;
        std::fs::rename(&tmp, out)?;
        edgepatch::support::fsutil::sync_dir(
            out.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", out.display()))
}
