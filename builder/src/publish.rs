//! `publish`: lay out a static mirror tree that any web server, CDN, object store or rsync can
//! serve, with one signed index per variant (format: `edgepatch::bundle::index`).
//!
//! ```text
//! MIRROR/<variant>/index               signed; names every bundle below with its sha256
//! MIRROR/<variant>/bundles/<file>.epb  full bundles (and delta bundles)
//! MIRROR/<variant>/orders/<file>       signed rollback/halt orders given with --order
//! ```
//!
//! Order of writes, so a reader (nginx, rsync, a CDN pull) never sees an index naming a file that
//! is not complete: each bundle is copied to a dot-temp file, fsynced and renamed into place; the
//! index is written last (temp, fsync, rename, fsync dir); pruned files are removed only after the
//! new index no longer names them. `published` strictly increases with every publish, so a node
//! can refuse an older index (replay by a stale mirror) even when two publishes share a second.
//! Running `publish` with no bundles re-signs the indexes found under --out with a fresh expiry:
//! do that from cron well within --index-expires-in.

use anyhow::{anyhow, bail, Context, Result};
use edgepatch::bundle::format::Manifest;
use edgepatch::bundle::index::{
    check_file_name, check_variant, Index, IndexBundle, Order, DOC_TYPE,
};
use edgepatch::bundle::keys::TrustedKey;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct PublishArgs {
    /// Secret key that signs the index (from keygen)
    #[arg(long)]
    pub key: PathBuf,
    /// Mirror directory (created if missing)
    #[arg(long)]
    pub out: PathBuf,
    /// Keep only the N highest sequences per variant (older bundles are pruned)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: Option<u64>,
    /// Index lifetime; nodes refuse an index older than this (s, m, h or d)
    #[arg(long, default_value = "7d", value_parser = crate::build::parse_duration)]
    pub index_expires_in: u64,
    /// Public key file or directory that bundles must be signed by (default: the --key's own)
    #[arg(long, value_name = "PUB")]
    pub trusted: Option<PathBuf>,
    /// Signed rollback/halt order file to copy and list in the index; repeatable
    #[arg(long = "order", value_name = "FILE")]
    pub orders: Vec<PathBuf>,
    /// Variant whose index gets the --order files (default: the bundles' variants)
    #[arg(long)]
    pub variant: Vec<String>,
    /// Publish time in unix seconds (tests)
    #[arg(long, hide = true)]
    pub now: Option<u64>,
    /// Bundles to publish
    pub bundles: Vec<PathBuf>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads through to a writer while hashing everything read.
struct Tee<R, W> {
    inner: R,
    out: W,
    hasher: Sha256,
    len: u64,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Copy `src` to `dest` atomically while verifying it as a bundle; returns (manifest, size,
/// sha256 of the file, manifest sha256).
fn copy_verified(
    src: &Path,
    dest: &Path,
    trusted: &[TrustedKey],
    now: u64,
) -> Result<(Manifest, u64, [u8; 32], [u8; 32])> {
    let dir = dest.parent().context("destination has no directory")?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        dest.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let input = File::open(src).with_context(|| format!("bundle {}", src.display()))?;
        let out = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut tee = Tee {
            inner: std::io::BufReader::with_capacity(1 << 20, input),
            out: std::io::BufWriter::with_capacity(1 << 20, out),
            hasher: Sha256::new(),
            len: 0,
        };
        // The variant is not known before the head is read: authenticate first, then check.
        let head = {
            let f = File::open(src).with_context(|| format!("bundle {}", src.display()))?;
            edgepatch::bundle::verify::authenticate(&mut std::io::BufReader::new(f), trusted)
                .map_err(|e| anyhow!("{}: {e}", src.display()))?
        };
        let node = edgepatch::bundle::verify::NodeFacts {
            variant: &head.manifest.variant,
            installed_sequence: None,
            now,
        };
        let v = edgepatch::bundle::verify::verify_stream(
            &mut tee,
            trusted,
            &node,
            &mut edgepatch::bundle::verify::Discard,
        )
        .map_err(|e| anyhow!("{}: {e}; not published", src.display()))?;
        let file = tee
            .out
            .into_inner()
            .map_err(|e| anyhow!("writing {}: {e}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("fsync {}", tmp.display()))?;
        std::fs::rename(&tmp, dest).with_context(|| format!("renaming into {}", dest.display()))?;
        edgepatch::support::fsutil::sync_dir(dir)
            .with_context(|| format!("fsync {}", dir.display()))?;
        Ok((
            v.manifest,
            tee.len,
            tee.hasher.finalize().into(),
            v.manifest_sha256,
        ))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The index now in the mirror, read without checking its signature (it is our own output;
/// the key may have been rotated since). None when there is none.
fn read_old_index(path: &Path) -> Result<Option<Index>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow!("{}: {e}", path.display())),
    };
    let text = String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8", path.display()))?;
    let body = text.split("\n--- signatures\n").next().unwrap_or("");
    let rest = body
        .strip_prefix(&format!("{DOC_TYPE} 1\n"))
        .ok_or_else(|| anyhow!("{}: not an edgepatch index; move it away", path.display()))?;
    let ix = Index::from_record(&edgepatch::support::kv::Record::parse(rest))
        .map_err(|m| anyhow!("{}: {m}; fix or remove it", path.display()))?;
    Ok(Some(ix))
}

fn bundle_file_name(m: &Manifest) -> String {
    let base = match &m.delta_base {
        Some(b) => format!("{}-from-{}", m.sequence, b.sequence),
        None => format!("{}-{}", m.sequence, m.cycle),
    };
    let name = format!("{base}.epb");
    if check_file_name(&name).is_ok() {
        name
    } else {
        format!("{}.epb", m.sequence)
    }
}

pub fn run(args: &PublishArgs) -> Result<()> {
    let key_text = std::fs::read_to_string(&args.key)
        .with_context(|| format!("key {}", args.key.display()))?;
    let sk = edgepatch::bundle::keys::parse_secret(&key_text, &args.key.display().to_string())
        .map_err(anyhow::Error::msg)?;
    let trusted = match &args.trusted {
        Some(p) => edgepatch::bundle::keys::load_trusted(p).map_err(anyhow::Error::msg)?,
        None => {
            let text = edgepatch::bundle::keys::public_text(&sk.public_key());
            vec![edgepatch::bundle::keys::parse_public(&text, "--key")
                .map_err(anyhow::Error::msg)?]
        }
    };
    let now = args.now.unwrap_or_else(unix_now);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    // 1. Copy every bundle into its variant's bundles/ dir (verified while copying).
    let mut added: Vec<(String, IndexBundle)> = Vec::new();
    for src in &args.bundles {
        let head = {
            let f = File::open(src).with_context(|| format!("bundle {}", src.display()))?;
            edgepatch::bundle::verify::authenticate(&mut std::io::BufReader::new(f), &trusted)
                .map_err(|e| anyhow!("{}: {e}", src.display()))?
        };
        let m = &head.manifest;
        check_variant(&m.variant).map_err(|e| anyhow!("{}: {e}", src.display()))?;
        let dir = args.out.join(&m.variant).join("bundles");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = bundle_file_name(m);
        let (m, size, sha256, manifest_sha256) =
            copy_verified(src, &dir.join(&name), &trusted, now)?;
        println!(
            "bundle {} sequence {} cycle {} -> {}/bundles/{name} ({size} bytes)",
            src.display(),
            m.sequence,
            m.cycle,
            m.variant
        );
        added.push((
            m.variant.clone(),
            IndexBundle {
                cycle: m.cycle.clone(),
                sequence: m.sequence,
                size,
                sha256,
                manifest_sha256,
                expires: m.expires,
                file: name,
                delta_base: m.delta_base.as_ref().map(|b| b.sequence),
            },
        ));
    }

    // 2. Which variants get a new index.
    let mut variants: BTreeSet<String> = added.iter().map(|(v, _)| v.clone()).collect();
    for v in &args.variant {
        check_variant(v).map_err(anyhow::Error::msg)?;
        variants.insert(v.clone());
    }
    if variants.is_empty() {
        if !args.orders.is_empty() {
            bail!("--order needs a bundle or --variant to say which index lists it");
        }
        for d in std::fs::read_dir(&args.out).with_context(|| format!("{}", args.out.display()))? {
            let d = d?;
            if d.path().join("index").is_file() {
                variants.insert(d.file_name().to_string_lossy().into_owned());
            }
        }
        if variants.is_empty() {
            bail!(
                "nothing to publish: give bundles, or --out a mirror that has indexes to re-sign"
            );
        }
    }

    for variant in &variants {
        publish_variant(args, &sk, variant, &added, now)?;
    }
    Ok(())
}

fn publish_variant(
    args: &PublishArgs,
    sk: &ed25519_compact::SecretKey,
    variant: &str,
    added: &[(String, IndexBundle)],
    now: u64,
) -> Result<()> {
    let vdir = args.out.join(variant);
    let index_path = vdir.join("index");
    let old = read_old_index(&index_path)?;
    let mut bundles: Vec<IndexBundle> = old.as_ref().map(|o| o.bundles.clone()).unwrap_or_default();
    // Entries of the old index whose file is gone are dropped (someone cleaned up by hand).
    bundles.retain(|b| vdir.join("bundles").join(&b.file).is_file());
    for (_, b) in added.iter().filter(|(v, _)| v == variant) {
        if let Some(same) = bundles
            .iter()
            .find(|x| x.sequence == b.sequence && x.delta_base == b.delta_base)
        {
            if same.manifest_sha256 != b.manifest_sha256 {
                bail!(
                    "{variant}: sequence {} is already published as {} with another manifest; \
                     build the new bundle with a higher --sequence",
                    b.sequence,
                    same.file
                );
            }
        }
        bundles.retain(|x| x.file != b.file);
        bundles.push(b.clone());
    }
    bundles.sort_by_key(|b| (b.sequence, b.delta_base));

    // Orders: the old ones stay listed; new ones are copied in (atomically) and listed.
    let mut orders: Vec<Order> = old.as_ref().map(|o| o.orders.clone()).unwrap_or_default();
    for src in &args.orders {
        let name = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        check_file_name(&name).map_err(|e| anyhow!("--order {}: {e}", src.display()))?;
        let data = std::fs::read(src).with_context(|| format!("--order {}", src.display()))?;
        if data.len() > edgepatch::bundle::signed::MAX_DOC {
            bail!(
                "--order {}: larger than {} bytes",
                src.display(),
                edgepatch::bundle::signed::MAX_DOC
            );
        }
        let odir = vdir.join("orders");
        std::fs::create_dir_all(&odir).with_context(|| format!("creating {}", odir.display()))?;
        edgepatch::support::fsutil::write_atomic(&odir.join(&name), &data, false)
            .with_context(|| format!("writing {}", odir.join(&name).display()))?;
        orders.retain(|o| o.file != name);
        orders.push(Order {
            file: name.clone(),
            sha256: edgepatch::bundle::format::sha256(&data),
        });
        println!("order {} -> {variant}/orders/{name}", src.display());
    }

    // Pruning: keep the N highest full-bundle sequences, and deltas that lead to one of them.
    let mut pruned = Vec::new();
    if let Some(keep) = args.keep {
        let mut seqs: Vec<u64> = bundles
            .iter()
            .filter(|b| b.delta_base.is_none())
            .map(|b| b.sequence)
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        let cut = seqs.len().saturating_sub(keep as usize);
        let floor = seqs.get(cut).copied().unwrap_or(0);
        let (kept, gone): (Vec<_>, Vec<_>) = bundles.into_iter().partition(|b| b.sequence >= floor);
        bundles = kept;
        pruned = gone;
    }

    let index = Index {
        variant: variant.to_string(),
        published: old.as_ref().map_or(now, |o| now.max(o.published + 1)),
        expires: now + args.index_expires_in,
        bundles,
        orders,
    };
    // What the index names must still be there at the size it says (sizes only: re-hashing
    // every kept 500 MB bundle on each cron re-sign is not worth it; nodes check every byte).
    for b in &index.bundles {
        let path = vdir.join("bundles").join(&b.file);
        let size = std::fs::metadata(&path)
            .with_context(|| format!("{}", path.display()))?
            .len();
        if size != b.size {
            bail!(
                "{}: does not match the old index (size {size}, index says {}); remove it or republish it",
                path.display(),
                b.size
            );
        }
    }
    let doc = edgepatch::bundle::signed::seal(&index.render(), &[sk]);
    std::fs::create_dir_all(&vdir).with_context(|| format!("creating {}", vdir.display()))?;
    edgepatch::support::fsutil::write_atomic(&index_path, doc.as_bytes(), false)
        .with_context(|| format!("writing {}", index_path.display()))?;
    for b in &pruned {
        let p = vdir.join("bundles").join(&b.file);
        match std::fs::remove_file(&p) {
            Ok(()) => println!(
                "pruned {variant}/bundles/{} (sequence {})",
                b.file, b.sequence
            ),
            Err(e) => eprintln!(
                "edgepatch-builder: warning: cannot prune {}: {e}",
                p.display()
            ),
        }
    }
    println!(
        "index {} published {} expires {}: {} bundle(s), {} order(s), newest sequence {}",
        index_path.display(),
        edgepatch::support::clock::iso_utc(index.published),
        edgepatch::support::clock::iso_utc(index.expires),
        index.bundles.len(),
        index.orders.len(),
        index
            .bundles
            .iter()
            .map(|b| b.sequence)
            .max()
            .map_or("-".to_string(), |s| s.to_string())
    );
    if index.bundles.is_empty() {
        eprintln!("edgepatch-builder: warning: {variant} index lists no bundles");
    }
    Ok(())
}
