//! `key`: the root key and the signed key list (format and node rules: `edgepatch::bundle::keylist`).
//!
//! The root secret stays on an offline machine. Every command that changes the list reads the
//! current signed list, applies one change, bumps the version, signs with the given root key(s),
//! checks the result exactly as a node would (the old list's roots must vouch for it, and so must
//! its own), and only then replaces the file. `publish` needs no secret: it copies the signed
//! list into a mirror tree or onto a USB stick as `keylist`.

use anyhow::{anyhow, bail, Context, Result};
use edgepatch::bundle::format::hex;
use edgepatch::bundle::keylist::{self as trust, KeyList, ReleaseKey};
use edgepatch::bundle::keys::{self, key_id};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// Create a root key pair: DIR/root.key (0600, keep offline) and DIR/root.pub (bake into
    /// node images as root_keys)
    InitRoot {
        #[arg(long)]
        out: PathBuf,
    },
    /// Add a release key to the key list (creating the list if FILE does not exist), or renew
    /// its expiry
    Add {
        #[command(flatten)]
        common: Common,
        /// Release public key (from keygen)
        #[arg(long = "pub", value_name = "RELEASE.pub")]
        public: PathBuf,
        /// Name shown by `edgepatch keys` ([A-Za-z0-9._+-@]; default: the key id)
        #[arg(long)]
        name: Option<String>,
        /// How long the release key may sign: a number with s, m, h or d
        #[arg(long, default_value = "365d", value_parser = crate::build::parse_duration)]
        expires_in: u64,
    },
    /// Revoke a release key: nodes refuse its signatures from then on, even on old bundles
    Revoke {
        #[command(flatten)]
        common: Common,
        /// Key id (16 hex digits, see `key show`)
        #[arg(long, required_unless_present = "public", conflicts_with = "public")]
        id: Option<String>,
        /// Or the release public key file
        #[arg(long = "pub", value_name = "RELEASE.pub")]
        public: Option<PathBuf>,
    },
    /// Re-sign the list with a new version and expiry; optionally change the bundle threshold
    Sign {
        #[command(flatten)]
        common: Common,
        /// Distinct release signatures every bundle needs (k of n)
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=16))]
        threshold: Option<u64>,
    },
    /// Replace the root key(s): the new list is signed by the current and the new roots
    RotateRoot {
        #[command(flatten)]
        common: Common,
        /// New root secret key; repeatable
        #[arg(long = "new-root", value_name = "KEY", required = true)]
        new_roots: Vec<PathBuf>,
        /// Root signatures the list after this one needs (default 1)
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
        root_threshold: u64,
    },
    /// Print the key list and check it is signed by its own roots
    Show {
        #[arg(long)]
        keylist: PathBuf,
    },
    /// Copy the signed list to DIR/keylist (a mirror tree or a USB stick); no secret needed
    Publish {
        #[arg(long)]
        keylist: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct Common {
    /// Current root secret key; repeat for k-of-n roots
    #[arg(long = "root", value_name = "KEY", required = true)]
    roots: Vec<PathBuf>,
    /// The signed key list file (read, then replaced)
    #[arg(long)]
    keylist: PathBuf,
    /// Lifetime of the new list; nodes refuse every release key once it lapses
    #[arg(long, default_value = "365d", value_parser = crate::build::parse_duration)]
    list_expires_in: u64,
    /// Current time in unix seconds (tests)
    #[arg(long, hide = true)]
    now: Option<u64>,
}

pub fn run(cmd: &KeyCommand) -> Result<()> {
    match cmd {
        KeyCommand::InitRoot { out } => init_root(out),
        KeyCommand::Add {
            common,
            public,
            name,
            expires_in,
        } => {
            let pk = read_public(public)?;
            change(common, false, |list, now| {
                let id = key_id(&pk);
                let name = name.clone().unwrap_or_else(|| hex(&id));
                match list.keys.iter_mut().find(|k| k.id == id) {
                    Some(k) if k.revoked => bail!("key {} is revoked; make a new key", hex(&id)),
                    Some(k) => {
                        k.expires = now + expires_in;
                        k.name = name;
                    }
                    None => list.keys.push(ReleaseKey {
                        id,
                        key: pk,
                        expires: now + expires_in,
                        revoked: false,
                        name,
                    }),
                }
                Ok(format!(
                    "release key {} valid until {}",
                    hex(&id),
                    now + expires_in
                ))
            })
        }
        KeyCommand::Revoke { common, id, public } => {
            let want = match (id, public) {
                (Some(id), _) => id.to_ascii_lowercase(),
                (None, Some(p)) => hex(&key_id(&read_public(p)?)),
                (None, None) => bail!("give --id or --pub"),
            };
            change(common, true, |list, _| {
                let k = list
                    .keys
                    .iter_mut()
                    .find(|k| hex(&k.id) == want)
                    .ok_or_else(|| anyhow!("key {want} is not in the key list"))?;
                k.revoked = true;
                let usable = list.keys.iter().filter(|k| !k.revoked).count();
                if list.threshold > usable.max(1) {
                    bail!(
                        "revoking {want} leaves {usable} usable key(s), below the threshold {}; \
                         add a key first, or lower it with `key sign --threshold`",
                        list.threshold
                    );
                }
                Ok(format!("release key {want} revoked"))
            })
        }
        KeyCommand::Sign { common, threshold } => change(common, true, |list, _| {
            if let Some(t) = threshold {
                list.threshold = *t as usize;
            }
            Ok(format!("threshold {}", list.threshold))
        }),
        KeyCommand::RotateRoot {
            common,
            new_roots,
            root_threshold,
        } => {
            let new: Vec<_> = new_roots
                .iter()
                .map(|p| read_secret(p))
                .collect::<Result<_>>()?;
            rotate(common, &new, *root_threshold as usize)
        }
        KeyCommand::Show { keylist } => show(keylist),
        KeyCommand::Publish { keylist, out } => publish(keylist, out),
    }
}

fn unix_now(common: &Common) -> u64 {
    common.now.unwrap_or_else(|| {
        edgepatch::support::clock::Clock::now(&edgepatch::support::clock::SystemClock)
    })
}

fn read_secret(p: &Path) -> Result<ed25519_compact::SecretKey> {
    let text = std::fs::read_to_string(p).with_context(|| format!("key {}", p.display()))?;
    keys::parse_secret(&text, &p.display().to_string()).map_err(anyhow::Error::msg)
}

fn read_public(p: &Path) -> Result<ed25519_compact::PublicKey> {
    let text = std::fs::read_to_string(p).with_context(|| format!("key {}", p.display()))?;
    Ok(keys::parse_public(&text, &p.display().to_string())
        .map_err(anyhow::Error::msg)?
        .key)
}

fn read_list(path: &Path) -> Result<(KeyList, Vec<u8>)> {
    let doc = std::fs::read(path).with_context(|| format!("key list {}", path.display()))?;
    let list = KeyList::open_self(&doc).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok((list, doc))
}

/// Sign `next` with `signers`, check it as a node holding `current` (or baked with `signers`'
/// public keys when there is no list yet) would, and replace the file.
fn sign_and_write(
    path: &Path,
    current: Option<&KeyList>,
    next: &KeyList,
    signers: &[ed25519_compact::SecretKey],
    now: u64,
) -> Result<()> {
    next.validate().map_err(anyhow::Error::msg)?;
    let refs: Vec<&ed25519_compact::SecretKey> = signers.iter().collect();
    let doc = next.seal(&refs);
    let checked = match current {
        Some(cur) => trust::check_successor(
            &cur.root_set(),
            cur.root_threshold,
            Some(cur.version),
            doc.as_bytes(),
            now,
        ),
        None => trust::check_successor(
            &next.root_set(),
            next.root_threshold,
            None,
            doc.as_bytes(),
            now,
        ),
    };
    let checked = checked.map_err(|e| anyhow!("a node would refuse this key list: {e}"))?;
    anyhow::ensure!(&checked == next, "key list does not read back as written");
    edgepatch::support::fsutil::write_atomic(path, doc.as_bytes(), false)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Load (or with `must_exist` false, start) the list, apply `edit`, bump and sign.
fn change(
    common: &Common,
    must_exist: bool,
    edit: impl FnOnce(&mut KeyList, u64) -> Result<String>,
) -> Result<()> {
    let now = unix_now(common);
    let roots: Vec<_> = common
        .roots
        .iter()
        .map(|p| read_secret(p))
        .collect::<Result<_>>()?;
    let current = if common.keylist.exists() || must_exist {
        Some(read_list(&common.keylist)?.0)
    } else {
        None
    };
    let mut next = current.clone().unwrap_or_else(|| KeyList {
        version: 0,
        issued: now,
        expires: now,
        threshold: 1,
        root_threshold: 1,
        roots: roots.iter().map(|sk| sk.public_key()).collect(),
        keys: Vec::new(),
    });
    let what = edit(&mut next, now)?;
    next.version += 1;
    next.issued = now;
    next.expires = now + common.list_expires_in;
    sign_and_write(&common.keylist, current.as_ref(), &next, &roots, now)?;
    println!(
        "key list {} version {}: {what}",
        common.keylist.display(),
        next.version
    );
    Ok(())
}

fn rotate(
    common: &Common,
    new: &[ed25519_compact::SecretKey],
    root_threshold: usize,
) -> Result<()> {
    let now = unix_now(common);
    let old: Vec<_> = common
        .roots
        .iter()
        .map(|p| read_secret(p))
        .collect::<Result<_>>()?;
    let (current, _) = read_list(&common.keylist)?;
    let mut next = current.clone();
    next.roots = new.iter().map(|sk| sk.public_key()).collect();
    next.root_threshold = root_threshold;
    next.version += 1;
    next.issued = now;
    next.expires = now + common.list_expires_in;
    let mut signers = old;
    signers.extend(new.iter().cloned());
    sign_and_write(&common.keylist, Some(&current), &next, &signers, now)?;
    let ids: Vec<String> = next.roots.iter().map(|r| hex(&key_id(r))).collect();
    println!(
        "key list {} version {}: root is now {} (signed by the old and the new root)",
        common.keylist.display(),
        next.version,
        ids.join(",")
    );
    println!("keep old root.key offline until every node has imported this version");
    Ok(())
}

fn show(path: &Path) -> Result<()> {
    let (list, _) = read_list(path)?;
    let now = edgepatch::support::clock::Clock::now(&edgepatch::support::clock::SystemClock);
    println!(
        "key list version {}, issued {}, expires {}{}",
        list.version,
        list.issued,
        list.expires,
        if list.expires <= now {
            " (EXPIRED)"
        } else {
            ""
        }
    );
    println!(
        "threshold {} release signature(s) per bundle",
        list.threshold
    );
    for r in &list.roots {
        println!(
            "root {} (need {} for the next list)",
            hex(&key_id(r)),
            list.root_threshold
        );
    }
    for k in &list.keys {
        let state = if k.revoked {
            "revoked"
        } else if k.expires <= now {
            "expired"
        } else {
            "ok"
        };
        println!(
            "key {}  {}  expires {}  {state}",
            hex(&k.id),
            k.name,
            k.expires
        );
    }
    Ok(())
}

fn publish(path: &Path, out: &Path) -> Result<()> {
    let (list, doc) = read_list(path)?;
    let now = edgepatch::support::clock::Clock::now(&edgepatch::support::clock::SystemClock);
    if list.expires <= now {
        bail!(
            "{}: version {} expired at {}; re-sign it with `key sign` first",
            path.display(),
            list.version,
            list.expires
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let dest = out.join(trust::KEYLIST_FILE);
    edgepatch::support::fsutil::write_atomic(&dest, &doc, false)
        .with_context(|| format!("writing {}", dest.display()))?;
    println!(
        "published key list version {} to {}",
        list.version,
        dest.display()
    );
    Ok(())
}

fn init_root(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let kp = ed25519_compact::KeyPair::generate();
    let key_path = out.join("root.key");
    let pub_path = out.join("root.pub");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .with_context(|| format!("{} (refusing to overwrite a root key)", key_path.display()))?;
    f.write_all(keys::secret_text(&kp.sk).as_bytes())?;
    f.sync_all()?;
    edgepatch::support::fsutil::write_atomic(
        &pub_path,
        keys::public_text(&kp.pk).as_bytes(),
        false,
    )
    .with_context(|| format!("writing {}", pub_path.display()))?;
    println!("root key id {}", hex(&key_id(&kp.pk)));
    println!("secret {} (mode 0600, keep OFFLINE)", key_path.display());
    println!(
        "public {} (bake into node images; root_keys in agent.conf)",
        pub_path.display()
    );
    Ok(())
}
