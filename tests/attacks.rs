//! The TUF attack list, one fixture per attack, each a test with the exit code and status word the
//! agent must give. Fixtures are built at test time by `Attack::new(name)` into
//! `<scratch>/<name>/` (or `$EDGEPATCH_ATTACK_FIXTURES/<name>/` to keep them for inspection) from
//! the throwaway keys checked in under `tests/attacks/keys/` (marked TEST-ONLY; see
//! tests/attacks/README.md). Raw bundles a builder would refuse to write are crafted here with
//! `format::write_head` + `keys::sign`, signed by the trusted test key, so the agent's checks
//! after the signature are what stops them.
//!
//! Malicious mirror and slow retrieval over HTTP are exercised by the fetch tests in
//! tests/distribution.rs; `mirror_and_slow_retrieval_attacks_are_covered_by_fetch_tests` pins
//! their names so the reference cannot rot.

use edgepatch::bundle::format::{self, hex, Encoding, Entry, EntryKind, Manifest};
use edgepatch_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const VARIANT: &str = "debian-12-amd64";
const DAY: u64 = 86_400;

fn key_file(name: &str, ext: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/attacks/keys")
        .join(format!("{name}-TEST-ONLY.{ext}"))
}

/// A test secret key (a macro, so this crate need not name the ed25519 type).
macro_rules! secret {
    ($name:expr) => {
        edgepatch::bundle::keys::parse_secret(
            &std::fs::read_to_string(key_file($name, "key")).unwrap(),
            "test",
        )
        .unwrap()
    };
}

fn key_id_of(name: &str) -> [u8; 8] {
    let text = std::fs::read_to_string(key_file(name, "pub")).unwrap();
    edgepatch::bundle::keys::parse_public(&text, "test")
        .unwrap()
        .id
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Attack {
    _scratch: Scratch,
    dir: PathBuf,
}

impl Attack {
    fn new(name: &str) -> Attack {
        let scratch = Scratch::new(&format!("attack-{name}"));
        let dir = match std::env::var_os("EDGEPATCH_ATTACK_FIXTURES") {
            Some(d) => PathBuf::from(d).join(name),
            None => scratch.join(name),
        };
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Attack {
            _scratch: scratch,
            dir,
        }
    }

    fn join(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    /// Packages dir with the given debs (name, version).
    fn pkgs(&self, tag: &str, debs: &[(&str, &str)]) -> PathBuf {
        let d = self.join(&format!("pkgs-{tag}"));
        for (n, v) in debs {
            Deb::new(n, v).build(&d);
        }
        d
    }

    /// A real bundle from the builder, signed by the named test keys.
    fn bundle(&self, file: &str, keys: &[&str], seq: u64, pkgs: &Path, extra: &[&str]) -> PathBuf {
        let out = self.join(file);
        let seq = seq.to_string();
        let key_paths: Vec<String> = keys
            .iter()
            .map(|k| key_file(k, "key").display().to_string())
            .collect();
        let mut args = vec!["build"];
        for k in &key_paths {
            args.extend(["--key", k.as_str()]);
        }
        args.extend([
            "--variant",
            VARIANT,
            "--cycle",
            "c",
            "--sequence",
            &seq,
            "--out",
            out.to_str().unwrap(),
        ]);
        args.extend_from_slice(extra);
        args.push(pkgs.to_str().unwrap());
        builder(&args).expect(0);
        out
    }

    /// A node trusting release key A through plain trusted_keys.
    fn node(&self, extra: &str) -> Node {
        let n = Node::new(
            &self.join("node"),
            VARIANT,
            &key_file("release-a", "pub"),
            &format!("package_manager = \"apt\"\nsnapshot = \"packages\"\n{extra}"),
        );
        deb_root(&n.root);
        n
    }

    /// A node baked with the test root key only (no trusted_keys).
    fn root_node(&self) -> Node {
        self.root_node_with("node", "")
    }

    /// The same in `self/name`, with `extra` config lines (a trust floor, say).
    fn root_node_with(&self, name: &str, extra: &str) -> Node {
        let node_dir = self.join(name);
        std::fs::create_dir_all(&node_dir).unwrap();
        let n = Node::new(&node_dir, VARIANT, Path::new("/unused"), "");
        let text = std::fs::read_to_string(&n.config).unwrap();
        let text = text.replace(
            "trusted_keys = \"/unused\"",
            &format!(
                "root_keys = \"{}\"\n{extra}",
                key_file("root", "pub").display()
            ),
        );
        std::fs::write(&n.config, text).unwrap();
        n
    }

    /// `edgepatch-builder key ...` on this fixture's key list, signed by the test root.
    fn key_cmd(&self, args: &[&str]) -> Run {
        let list = self.join("keylist");
        let root = key_file("root", "key");
        let mut all = vec!["key", args[0], "--root", root.to_str().unwrap()];
        all.extend(["--keylist", list.to_str().unwrap()]);
        all.extend_from_slice(&args[1..]);
        builder(&all)
    }

    /// A raw bundle: `manifest` text signed by `signers`, followed by `payload`.
    fn craft(&self, file: &str, manifest: &[u8], signers: &[&str], payload: &[u8]) -> PathBuf {
        let sigs: Vec<format::Signature> = signers
            .iter()
            .map(|s| edgepatch::bundle::keys::sign(&secret!(s), manifest))
            .collect();
        let mut out = Vec::new();
        format::write_head(&mut out, manifest, &sigs).unwrap();
        out.extend_from_slice(payload);
        let p = self.join(file);
        std::fs::write(&p, out).unwrap();
        p
    }
}

fn verify(node: &Node, bundle: &Path) -> Run {
    node.agent(&["verify", bundle.to_str().unwrap()])
}

fn apply(node: &Node, bundle: &Path) -> Run {
    node.agent(&["apply", bundle.to_str().unwrap()])
}

/// Exit code, the status word the agent prints (`edgepatch: <word>: ...`), and a fragment of
/// the one-line reason.
fn refused(r: Run, code: i32, word: &str, fragment: &str) {
    let r = r.expect(code);
    assert!(
        r.stderr.contains(&format!("edgepatch: {word}: ")),
        "want status {word}: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains(fragment),
        "want {fragment:?}: {}",
        r.stderr
    );
}

/// Manifest text for crafted bundles: signed by release-a, fresh, for this variant.
fn manifest_text(entries: &str) -> Vec<u8> {
    let t = now();
    let id = hex(&key_id_of("release-a"));
    format!(
        "edgepatch-manifest 1\nvariant {VARIANT}\ncycle evil\nsequence 9\ncreated {t}\nexpires {}\nkey_id {id}\n{entries}",
        t + DAY
    )
    .into_bytes()
}

fn entry_line(name: &str, data: &[u8]) -> String {
    format!(
        "entry {name} file raw {n} {n} {}\n",
        hex(&format::sha256(data)),
        n = data.len()
    )
}

// ---------------------------------------------------------------- arbitrary software

#[test]
fn arbitrary_software_unsigned_bundle_is_refused() {
    let a = Attack::new("arbitrary-software-unsigned");
    let node = a.node("");
    // Header and manifest, a signature count of 0, then the payload.
    let m = manifest_text(&entry_line("pool/x.deb", b"abc"));
    let mut raw = Vec::new();
    raw.extend_from_slice(format::MAGIC);
    raw.extend_from_slice(&1u16.to_le_bytes());
    raw.extend_from_slice(&(m.len() as u32).to_le_bytes());
    raw.extend_from_slice(&m);
    raw.push(0);
    raw.extend_from_slice(b"abc");
    let b = a.join("unsigned.epb");
    std::fs::write(&b, raw).unwrap();
    refused(verify(&node, &b), 3, "authenticity", "signature count 0");
}

#[test]
fn arbitrary_software_signed_by_an_unknown_key_is_refused() {
    let a = Attack::new("arbitrary-software-wrong-key");
    let node = a.node("");
    let pkgs = a.pkgs("p", &[("ep-alpha", "1.0")]);
    let b = a.bundle("wrong-key.epb", &["release-b"], 1, &pkgs, &[]);
    refused(
        verify(&node, &b),
        3,
        "authenticity",
        "signed by 0 trusted key(s), need 1",
    );
}

#[test]
fn arbitrary_software_forged_signature_under_a_trusted_key_id_is_refused() {
    let a = Attack::new("arbitrary-software-forged");
    let node = a.node("");
    let m = manifest_text(&entry_line("pool/x.deb", b"abc"));
    // Signed by B, but the signature block claims A's key id.
    let mut sig = edgepatch::bundle::keys::sign(&secret!("release-b"), &m);
    sig.key_id = key_id_of("release-a");
    let mut raw = Vec::new();
    format::write_head(&mut raw, &m, &[sig]).unwrap();
    raw.extend_from_slice(b"abc");
    let b = a.join("forged.epb");
    std::fs::write(&b, raw).unwrap();
    refused(
        verify(&node, &b),
        3,
        "authenticity",
        "does not match the manifest",
    );
}

// ---------------------------------------------------------------- rollback, freeze

#[test]
fn rollback_to_an_older_sequence_is_refused() {
    let a = Attack::new("rollback");
    let node = a.node("");
    let p1 = a.pkgs("1", &[("ep-alpha", "1.0")]);
    let p2 = a.pkgs("2", &[("ep-alpha", "2.0")]);
    let old = a.bundle(
        "old.epb",
        &["release-a"],
        1,
        &p1,
        &["--install", "ep-alpha"],
    );
    let new = a.bundle(
        "new.epb",
        &["release-a"],
        2,
        &p2,
        &["--install", "ep-alpha"],
    );
    apply(&node, &new).expect(0);
    refused(
        verify(&node, &old),
        4,
        "not-applicable",
        "not newer than installed 2",
    );
    refused(
        apply(&node, &old),
        4,
        "not-applicable",
        "replay or rollback",
    );
    assert!(deb_version(&node.root, "ep-alpha")
        .unwrap()
        .starts_with("2.0"));
}

#[test]
fn indefinite_freeze_expired_bundle_is_refused() {
    let a = Attack::new("freeze-expired");
    let node = a.node("");
    let pkgs = a.pkgs("p", &[("ep-alpha", "1.0")]);
    let b = a.bundle("b.epb", &["release-a"], 1, &pkgs, &["--expires-in", "1d"]);
    let later = (now() + 2 * DAY).to_string();
    let r = run(node
        .command(&["verify", b.to_str().unwrap()])
        .env("EDGEPATCH_TEST_NOW", &later));
    refused(r, 4, "not-applicable", "expired at");
}

#[test]
fn indefinite_freeze_a_reset_clock_cannot_revive_an_expired_bundle() {
    let a = Attack::new("freeze-clock-reset");
    let node = a.node("");
    let pkgs = a.pkgs("p", &[("ep-alpha", "1.0")]);
    let b = a.bundle("b.epb", &["release-a"], 1, &pkgs, &["--expires-in", "1d"]);
    // The node once saw a trusted time two days ahead; its RTC battery then died.
    std::fs::create_dir_all(&node.state_dir).unwrap();
    std::fs::write(
        node.state_dir.join("trusted-time"),
        format!("{}\n", now() + 2 * DAY),
    )
    .unwrap();
    let r = run(node
        .command(&["verify", b.to_str().unwrap()])
        .env("EDGEPATCH_TEST_NOW", "0"));
    refused(r, 4, "not-applicable", "expired at");
}

#[test]
fn indefinite_freeze_an_expired_key_list_refuses_every_key() {
    let a = Attack::new("freeze-keylist");
    let node = a.root_node();
    let pubkey = key_file("release-a", "pub");
    a.key_cmd(&[
        "add",
        "--pub",
        pubkey.to_str().unwrap(),
        "--list-expires-in",
        "1d",
    ])
    .expect(0);
    node.agent(&["keys", "--import", a.join("keylist").to_str().unwrap()])
        .expect(0);
    let pkgs = a.pkgs("p", &[("ep-alpha", "1.0")]);
    let b = a.bundle("b.epb", &["release-a"], 1, &pkgs, &["--expires-in", "30d"]);
    verify(&node, &b).expect(0);
    let later = (now() + 2 * DAY).to_string();
    let r = run(node
        .command(&["verify", b.to_str().unwrap()])
        .env("EDGEPATCH_TEST_NOW", &later));
    refused(r, 3, "authenticity", "import a newer key list");
    // The stale index half of this attack is the fetch tests' (see the module docs).
}

// ---------------------------------------------------------------- endless data

#[test]
fn endless_data_entry_inflates_past_its_declared_size() {
    let a = Attack::new("endless-data-entry");
    let node = a.node("");
    // A deflate bomb: 8 MiB of zeros declared as 1 KiB.
    let big = vec![0u8; 8 << 20];
    let packed = format::deflate(&big);
    let m = Manifest {
        variant: VARIANT.into(),
        cycle: "evil".into(),
        sequence: 9,
        created: now(),
        expires: now() + DAY,
        key_id: "0".repeat(16),
        install: vec![],
        delta_base: None,
        policy: vec![],
        entries: vec![Entry {
            name: "Packages".into(),
            kind: EntryKind::File,
            encoding: Encoding::Deflate,
            size: 1024,
            stored: packed.len() as u64,
            sha256: format::sha256(&big[..1024]),
            base_sha256: None,
            patch_sha256: None,
        }],
    };
    let b = a.craft("bomb.epb", &m.to_bytes().unwrap(), &["release-a"], &packed);
    refused(
        verify(&node, &b),
        2,
        "integrity",
        "longer than the declared 1024 bytes",
    );
}

#[test]
fn endless_data_bytes_after_the_last_entry_are_refused() {
    let a = Attack::new("endless-data-body");
    let node = a.node("");
    let pkgs = a.pkgs("p", &[("ep-alpha", "1.0")]);
    let b = a.bundle("b.epb", &["release-a"], 1, &pkgs, &[]);
    let mut data = std::fs::read(&b).unwrap();
    data.extend(std::iter::repeat_n(0x5a, 1 << 20));
    std::fs::write(&b, data).unwrap();
    refused(
        verify(&node, &b),
        2,
        "integrity",
        "data after its last entry",
    );
}

#[test]
fn endless_data_manifest_length_over_the_cap_is_refused_before_reading() {
    let a = Attack::new("endless-data-manifest");
    let node = a.node("");
    let mut raw = Vec::new();
    raw.extend_from_slice(format::MAGIC);
    raw.extend_from_slice(&1u16.to_le_bytes());
    raw.extend_from_slice(&(format::MAX_MANIFEST + 1).to_le_bytes());
    let b = a.join("huge-manifest.epb");
    std::fs::write(&b, raw).unwrap();
    refused(verify(&node, &b), 2, "integrity", "manifest length");
}

// ---------------------------------------------------------------- extraneous dependencies

#[test]
fn extraneous_dependency_planted_in_staging_or_incoming_is_not_installed() {
    let a = Attack::new("extraneous-dependencies");
    let node = a.node("");
    let pkgs = a.pkgs("p", &[("ep-alpha", "1.0")]);
    let b = a.bundle(
        "b.epb",
        &["release-a"],
        1,
        &pkgs,
        &["--install", "ep-alpha"],
    );
    // An attacker (or a stale run) leaves a package where the bundle will be staged and in
    // incoming/, with a Packages file that offers it.
    let evil_dir = a.join("evil");
    let evil = Deb::new("ep-evil", "6.6.6").build(&evil_dir);
    let staging = node.state_dir.join("staging/1");
    std::fs::create_dir_all(staging.join("pool")).unwrap();
    std::fs::copy(&evil, staging.join("pool/ep-evil_6.6.6_all.deb")).unwrap();
    std::fs::write(
        staging.join("Packages"),
        "Package: ep-evil\nVersion: 6.6.6\nArchitecture: all\nFilename: ./pool/ep-evil_6.6.6_all.deb\n\n",
    )
    .unwrap();
    std::fs::create_dir_all(node.state_dir.join("incoming")).unwrap();
    std::fs::copy(&evil, node.state_dir.join("incoming/ep-evil_6.6.6_all.deb")).unwrap();

    apply(&node, &b).expect(0);
    assert!(deb_version(&node.root, "ep-alpha").is_some());
    assert_eq!(
        deb_version(&node.root, "ep-evil"),
        None,
        "planted package installed"
    );
    let cache = node.state_dir.join("cache/current");
    assert!(!cache.join("pool/ep-evil_6.6.6_all.deb").exists());

    // A file appearing in a staged directory after verification (the crash-resume path
    // rechecks it) is refused before the package manager sees it.
    let bytes = std::fs::read(cache.join(edgepatch::node::stage::MANIFEST_FILE)).unwrap();
    let manifest = Manifest::parse(&bytes).unwrap();
    edgepatch::node::stage::refuse_extraneous(&cache, &manifest).unwrap();
    std::fs::copy(&evil, cache.join("pool/ep-evil_6.6.6_all.deb")).unwrap();
    let e = edgepatch::node::stage::refuse_extraneous(&cache, &manifest).unwrap_err();
    assert_eq!(e.exit.code(), 2);
    assert!(e.msg.contains("not in the signed manifest"), "{}", e.msg);
}

// ---------------------------------------------------------------- mix and match, variant

#[test]
fn mix_and_match_manifest_of_one_bundle_with_payload_of_another() {
    let a = Attack::new("mix-and-match");
    let node = a.node("");
    let p1 = a.pkgs("1", &[("ep-alpha", "1.0")]);
    let p2 = a.pkgs("2", &[("ep-alpha", "2.0")]);
    let b1 = a.bundle("b1.epb", &["release-a"], 1, &p1, &[]);
    let b2 = a.bundle("b2.epb", &["release-a"], 2, &p2, &[]);
    let head_len = |b: &[u8]| {
        let m = u32::from_le_bytes([b[10], b[11], b[12], b[13]]) as usize;
        14 + m + 1 + b[14 + m] as usize * 72
    };
    let (d1, d2) = (std::fs::read(&b1).unwrap(), std::fs::read(&b2).unwrap());
    let mut mixed = d2[..head_len(&d2)].to_vec();
    mixed.extend_from_slice(&d1[head_len(&d1)..]);
    let m = a.join("mixed.epb");
    std::fs::write(&m, mixed).unwrap();
    let r = verify(&node, &m);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("edgepatch: integrity: "), "{}", r.stderr);
}

#[test]
fn wrong_variant_is_refused() {
    let a = Attack::new("wrong-variant");
    let node = a.node("");
    let pkgs = a.pkgs("p", &[("ep-alpha", "1.0")]);
    let out = a.join("other.epb");
    builder(&[
        "build",
        "--key",
        key_file("release-a", "key").to_str().unwrap(),
        "--variant",
        "rhel-9-x86_64",
        "--cycle",
        "c",
        "--sequence",
        "1",
        "--out",
        out.to_str().unwrap(),
        pkgs.to_str().unwrap(),
    ])
    .expect(0);
    refused(
        verify(&node, &out),
        4,
        "not-applicable",
        "variant rhel-9-x86_64",
    );
}

// ---------------------------------------------------------------- mirror, slow retrieval

#[test]
fn malicious_mirror_tampered_payload_is_refused() {
    let a = Attack::new("malicious-mirror");
    let node = a.node("");
    let pkgs = a.pkgs("p", &[("ep-alpha", "1.0")]);
    let b = a.bundle("b.epb", &["release-a"], 1, &pkgs, &[]);
    flip_byte(&b, -10);
    refused(verify(&node, &b), 2, "integrity", "sha256 is");
}

#[test]
fn mirror_and_slow_retrieval_attacks_are_covered_by_fetch_tests() {
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/distribution.rs"),
    )
    .unwrap_or_default();
    if src.is_empty() {
        eprintln!("tests/distribution.rs not present; skipping the cross-reference");
        return;
    }
    for name in [
        // malicious mirror: stale/foreign/unsigned index, oversized body, flipped bytes, a file
        // changed under a resumed download
        "stale_foreign_expired_or_unsigned_index_is_refused",
        "body_longer_than_declared_or_than_index_is_capped",
        "flipped_byte_is_discarded_reported_and_fetched_again",
        "changed_file_on_mirror_restarts_instead_of_mixing",
        // slow retrieval: stalled transfers time out and resume; a pass has a time budget
        "stalled_transfer_times_out_and_resumes",
    ] {
        assert!(
            src.contains(&format!("fn {name}(")),
            "fetch test {name} is gone"
        );
    }
}

// ---------------------------------------------------------------- key compromise

fn keylist_node(a: &Attack) -> Node {
    let node = a.root_node();
    let pa = key_file("release-a", "pub");
    a.key_cmd(&["add", "--pub", pa.to_str().unwrap(), "--name", "release-a"])
        .expect(0);
    node.agent(&["keys", "--import", a.join("keylist").to_str().unwrap()])
        .expect(0);
    node
}

#[test]
fn key_compromise_revoked_key_is_refused_even_on_an_old_bundle() {
    let a = Attack::new("key-compromise-revoked");
    let node = keylist_node(&a);
    let pkgs = a.pkgs("p", &[("ep-alpha", "1.0")]);
    let old = a.bundle("old.epb", &["release-a"], 1, &pkgs, &[]);
    verify(&node, &old).expect(0);
    let pa = key_file("release-a", "pub");
    a.key_cmd(&["revoke", "--pub", pa.to_str().unwrap()])
        .expect(0);
    let r = node
        .agent(&["keys", "--import", a.join("keylist").to_str().unwrap()])
        .expect(0);
    assert!(r.stdout.contains("REFUSED: is revoked"), "{}", r.stdout);
    refused(verify(&node, &old), 3, "authenticity", "is revoked");
}

#[test]
fn key_compromise_expired_release_key_is_refused() {
    let a = Attack::new("key-compromise-expired");
    let node = a.root_node();
    let pa = key_file("release-a", "pub");
    a.key_cmd(&["add", "--pub", pa.to_str().unwrap(), "--expires-in", "1d"])
        .expect(0);
    node.agent(&["keys", "--import", a.join("keylist").to_str().unwrap()])
        .expect(0);
    let pkgs = a.pkgs("p", &[("ep-alpha", "1.0")]);
    let b = a.bundle("b.epb", &["release-a"], 1, &pkgs, &["--expires-in", "30d"]);
    verify(&node, &b).expect(0);
    let later = (now() + 2 * DAY).to_string();
    let r = run(node
        .command(&["verify", b.to_str().unwrap()])
        .env("EDGEPATCH_TEST_NOW", &later));
    refused(r, 3, "authenticity", "expired at");
}

#[test]
fn key_compromise_threshold_needs_k_distinct_release_keys() {
    let a = Attack::new("key-compromise-threshold");
    let node = keylist_node(&a);
    let pb = key_file("release-b", "pub");
    a.key_cmd(&["add", "--pub", pb.to_str().unwrap(), "--name", "release-b"])
        .expect(0);
    a.key_cmd(&["sign", "--threshold", "2"]).expect(0);
    let r = node
        .agent(&["keys", "--import", a.join("keylist").to_str().unwrap()])
        .expect(0);
    assert!(r.stdout.contains("threshold: 2"), "{}", r.stdout);
    let pkgs = a.pkgs("p", &[("ep-alpha", "1.0")]);
    // One stolen key is not enough.
    let one = a.bundle("one.epb", &["release-a"], 1, &pkgs, &[]);
    refused(verify(&node, &one), 3, "authenticity", "need 2");
    // The same key twice is still one signer.
    let m = manifest_text(&entry_line("pool/x.deb", b"abc"));
    let twice = a.craft("twice.epb", &m, &["release-a", "release-a"], b"abc");
    refused(verify(&node, &twice), 3, "authenticity", "need 2");
    let two = a.bundle("two.epb", &["release-a", "release-b"], 1, &pkgs, &[]);
    verify(&node, &two).expect(0);
}

#[test]
fn key_list_signed_by_a_non_root_or_older_is_refused() {
    let a = Attack::new("key-list-forged");
    let node = keylist_node(&a);
    let list = a.join("keylist");
    let v1 = std::fs::read(&list).unwrap();
    // A release key (not the root) signs a list adding itself: refused.
    let forged = a.join("forged");
    builder(&[
        "key",
        "add",
        "--root",
        key_file("release-b", "key").to_str().unwrap(),
        "--keylist",
        forged.to_str().unwrap(),
        "--pub",
        key_file("release-a", "pub").to_str().unwrap(),
    ])
    .expect(0);
    refused(
        node.agent(&["keys", "--import", forged.to_str().unwrap()]),
        3,
        "authenticity",
        "not signed by the current root",
    );
    // A newer list, then the old one again: a replay is refused.
    a.key_cmd(&["sign"]).expect(0);
    node.agent(&["keys", "--import", list.to_str().unwrap()])
        .expect(0);
    let old = a.join("keylist-v1");
    std::fs::write(&old, v1).unwrap();
    refused(
        node.agent(&["keys", "--import", old.to_str().unwrap()]),
        4,
        "not-applicable",
        "not newer than the current 2",
    );
}

#[test]
fn root_rotation_needs_the_old_and_the_new_root() {
    let a = Attack::new("root-rotation");
    let node = keylist_node(&a);
    let list = a.join("keylist");
    let new_root = a.join("newroot");
    builder(&["key", "init-root", "--out", new_root.to_str().unwrap()]).expect(0);
    let new_key = new_root.join("root.key");
    // Rotation signed by the new root alone: refused.
    let rogue = a.join("rogue");
    std::fs::copy(&list, &rogue).unwrap();
    let r = builder(&[
        "key",
        "rotate-root",
        "--root",
        new_key.to_str().unwrap(),
        "--new-root",
        new_key.to_str().unwrap(),
        "--keylist",
        rogue.to_str().unwrap(),
    ]);
    assert_ne!(
        r.code, 0,
        "the builder refuses to sign what a node would refuse"
    );
    // Rotation signed by both: accepted; afterwards the old root alone is not enough.
    a.key_cmd(&["rotate-root", "--new-root", new_key.to_str().unwrap()])
        .expect(0);
    node.agent(&["keys", "--import", list.to_str().unwrap()])
        .expect(0);
    let stale = a.join("old-root-only");
    std::fs::copy(&list, &stale).unwrap();
    // Hand-sign the next list with the old root only.
    let doc = std::fs::read(&stale).unwrap();
    let current = edgepatch::bundle::keylist::KeyList::open_self(&doc).unwrap();
    let mut next = current.clone();
    next.version += 1;
    let old_root = secret!("root");
    let sealed = next.seal(&[&old_root]);
    std::fs::write(&stale, sealed).unwrap();
    refused(
        node.agent(&["keys", "--import", stale.to_str().unwrap()]),
        3,
        "authenticity",
        "not signed by the current root",
    );
    // The new root carries on.
    builder(&[
        "key",
        "sign",
        "--root",
        new_key.to_str().unwrap(),
        "--keylist",
        list.to_str().unwrap(),
    ])
    .expect(0);
    node.agent(&["keys", "--import", list.to_str().unwrap()])
        .expect(0);
}

// ---------------------------------------------------------------- hostile entries

#[test]
fn path_traversal_entry_names_are_refused() {
    let a = Attack::new("path-traversal");
    let node = a.node("");
    for (i, name) in [
        "../evil",
        "pool/../../evil",
        "pool/./x",
        "..",
        ".edgepatch-manifest",
    ]
    .iter()
    .enumerate()
    {
        let m = manifest_text(&entry_line(name, b"abc"));
        let b = a.craft(&format!("t{i}.epb"), &m, &["release-a"], b"abc");
        refused(verify(&node, &b), 2, "integrity", "entry name");
    }
}

#[test]
fn absolute_entry_names_are_refused() {
    let a = Attack::new("absolute-path");
    let node = a.node("");
    for (i, name) in ["/etc/passwd", "/tmp/x", "//x"].iter().enumerate() {
        let m = manifest_text(&entry_line(name, b"abc"));
        let b = a.craft(&format!("a{i}.epb"), &m, &["release-a"], b"abc");
        refused(verify(&node, &b), 2, "integrity", "entry name");
    }
}

#[test]
fn symlink_at_the_staging_path_is_not_followed() {
    let a = Attack::new("symlinks");
    let node = a.node("");
    let outside = a.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("keep"), "untouched").unwrap();
    let staging = node.state_dir.join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::os::unix::fs::symlink(&outside, staging.join("1")).unwrap();
    let pkgs = a.pkgs("p", &[("ep-alpha", "1.0")]);
    let b = a.bundle(
        "b.epb",
        &["release-a"],
        1,
        &pkgs,
        &["--install", "ep-alpha"],
    );
    apply(&node, &b).expect(0);
    let left: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
    assert_eq!(left.len(), 1, "something was written through the symlink");
    assert_eq!(
        std::fs::read_to_string(outside.join("keep")).unwrap(),
        "untouched"
    );
    // Names cannot express a link either: there is no link kind, and a manifest line that
    // tries to add one (or a mode) does not parse.
    let m = manifest_text("entry pool/x.deb symlink raw 3 3 00 /etc/shadow\n");
    let bad = a.craft("link.epb", &m, &["release-a"], b"abc");
    refused(verify(&node, &bad), 2, "integrity", "manifest line");
}

#[test]
fn device_files_and_setuid_bits_are_never_staged() {
    let a = Attack::new("device-setuid");
    let node = a.node("");
    // The format has no mode or file type: a manifest line carrying one does not parse.
    let sum = hex(&format::sha256(b"abc"));
    for (i, line) in [
        format!("entry pool/x file raw 3 3 {sum} 04755\n"),
        format!("entry dev/sda char raw 3 3 {sum}\n"),
    ]
    .iter()
    .enumerate()
    {
        let b = a.craft(
            &format!("d{i}.epb"),
            &manifest_text(line),
            &["release-a"],
            b"abc",
        );
        refused(verify(&node, &b), 2, "integrity", "manifest line");
    }
    // What staging writes: regular files 0644 in 0700 directories, nothing else.
    let pkgs = a.pkgs("p", &[("ep-alpha", "1.0")]);
    let b = a.bundle(
        "b.epb",
        &["release-a"],
        1,
        &pkgs,
        &["--install", "ep-alpha"],
    );
    apply(&node, &b).expect(0);
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![node.state_dir.join("cache/current")];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        let mode = std::fs::symlink_metadata(&d).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o700, "{}", d.display());
        for item in std::fs::read_dir(&d).unwrap() {
            let p = item.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else {
                assert!(meta.is_file(), "{} is not a regular file", p.display());
                assert_eq!(meta.permissions().mode() & 0o7777, 0o644, "{}", p.display());
                files += 1;
            }
        }
    }
    assert!(files >= 3, "staged files: {files}");
}

// ---------------------------------------------------------------- privilege and space

#[test]
fn an_unprivileged_user_can_verify() {
    let a = Attack::new("unprivileged-verify");
    let pkgs = a.pkgs("p", &[("ep-alpha", "1.0")]);
    let b = a.bundle("b.epb", &["release-a"], 1, &pkgs, &[]);
    let pubkey = a.join("release-a.pub");
    std::fs::copy(key_file("release-a", "pub"), &pubkey).unwrap();
    let node = Node::new(&a.join("node"), VARIANT, &pubkey, "");
    let can_switch = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !can_switch {
        eprintln!("setpriv cannot switch to uid 65534 here (not root?); skipping");
        return;
    }
    // World-readable bundle, config and key; every directory on the way traversable.
    use std::os::unix::fs::PermissionsExt;
    let mut d = Some(a.dir.as_path());
    while let Some(p) = d {
        let m = std::fs::metadata(p).unwrap().permissions().mode();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m | 0o755)).unwrap();
        d = p.parent().filter(|p| *p != Path::new("/"));
    }
    for f in [&b, &pubkey, &node.config] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let r = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(agent_bin())
        .arg("--config")
        .arg(&node.config)
        .args(["verify", b.to_str().unwrap()]))
    .expect(0);
    assert!(r.stdout.starts_with("ok: debian-12-amd64"), "{}", r.stdout);
}

#[test]
fn staging_without_free_space_defers_before_writing() {
    let a = Attack::new("no-space");
    let node = a.node("");
    let pkgs = a.pkgs("p", &[("ep-alpha", "1.0")]);
    let b = a.bundle(
        "b.epb",
        &["release-a"],
        1,
        &pkgs,
        &["--install", "ep-alpha"],
    );
    // A 4 MiB tmpfs as state_dir: less than the staging margin, whatever the bundle.
    std::fs::create_dir_all(&node.state_dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
        .arg(&node.state_dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("cannot mount a tmpfs here; skipping (check_space is unit-tested in stage.rs)");
        return;
    }
    let r = apply(&node, &b);
    let _ = Command::new("umount").arg(&node.state_dir).status();
    refused(r, 5, "deferred", "not enough free space");
    assert_eq!(deb_version(&node.root, "ep-alpha"), None);
}

/// A node baked with only the root key picks up the key list from a USB stick with `import`,
/// and the revocation it carries later, without any `keys --import` by hand.
#[test]
fn key_list_travels_on_the_usb_stick_with_import() {
    let a = Attack::new("keylist-usb");
    let node = a.root_node();
    let pa = key_file("release-a", "pub");
    a.key_cmd(&["add", "--pub", pa.to_str().unwrap(), "--name", "release-a"])
        .expect(0);
    let pkgs = a.pkgs("p", &[("ep-alpha", "1.0")]);
    let usb = a.join("usb");
    std::fs::create_dir_all(&usb).unwrap();
    let bundle = a.bundle("b.epb", &["release-a"], 1, &pkgs, &[]);
    std::fs::copy(&bundle, usb.join("b.epb")).unwrap();
    // Without the key list the bundle's signer is unknown to the node.
    node.agent(&["import", usb.to_str().unwrap()]).expect(3);
    std::fs::copy(a.join("keylist"), usb.join("keylist")).unwrap();
    node.agent(&["import", usb.to_str().unwrap()]).expect(0);
    assert!(node.state_dir.join("keylist").exists());
}

// ------------------------------------------------------- hardening, second round (issue 18)

/// Item 1: a freshly imaged node offered an old key list that still names a revoked key. With
/// the image's trust floor (the current list, or its version and sha256) it is refused, and so
/// is a bundle signed by the revoked key. Without a floor, status and doctor warn.
#[test]
fn first_contact_trust_floor_refuses_an_older_key_list() {
    let a = Attack::new("first-contact");
    let pa = key_file("release-a", "pub");
    let pb = key_file("release-b", "pub");
    a.key_cmd(&["add", "--pub", pa.to_str().unwrap(), "--name", "release-a"])
        .expect(0);
    let v1 = a.join("keylist-v1");
    std::fs::copy(a.join("keylist"), &v1).unwrap();
    a.key_cmd(&["add", "--pub", pb.to_str().unwrap(), "--name", "release-b"])
        .expect(0);
    a.key_cmd(&["revoke", "--pub", pa.to_str().unwrap()])
        .expect(0);
    let current = a.join("keylist");
    let pkgs = a.pkgs("p", &[("ep-alpha", "1.0")]);
    let signed_by_a = a.bundle("a.epb", &["release-a"], 1, &pkgs, &[]);

    // No floor: the old list is taken on first contact, and status says so loudly.
    let open = a.root_node();
    let st = open.agent(&["status"]).expect(0);
    assert!(
        st.stdout.contains("WARNING   no trust_floor"),
        "{}",
        st.stdout
    );
    let doc = open.agent(&["doctor"]);
    assert!(doc.stdout.contains("no trust_floor"), "{}", doc.stdout);

    // The floor as the key list file itself.
    for (tag, floor) in [
        ("file", current.display().to_string()),
        ("digest", {
            let list = std::fs::read(&current).unwrap();
            let v = edgepatch::bundle::keylist::KeyList::open_self(&list)
                .unwrap()
                .version;
            format!(
                "{v}:{}",
                edgepatch::bundle::format::hex(&edgepatch::bundle::format::sha256(&list))
            )
        }),
    ] {
        let n = a.root_node_with(
            &format!("node-{tag}"),
            &format!("trust_floor = \"{floor}\""),
        );
        let r = n.agent(&["keys", "--import", v1.to_str().unwrap()]);
        assert_eq!(r.code, 4, "{tag}: old list must be refused: {}", r.stderr);
        if tag == "file" {
            // The baked list is the node's list: the revoked key signs nothing.
            refused(verify(&n, &signed_by_a), 3, "authenticity", "revoked");
            let st = n.agent(&["status"]).expect(0);
            assert!(!st.stdout.contains("WARNING"), "{}", st.stdout);
        } else {
            n.agent(&["keys", "--import", current.to_str().unwrap()])
                .expect(0);
            refused(verify(&n, &signed_by_a), 3, "authenticity", "revoked");
        }
    }
}

/// Item 2: `apply BUNDLE` reads the file once. A stick that serves c3 for the decision and then
/// c2 (swapped in under the same name while the agent runs) still gets c3 installed: the agent
/// keeps reading the file it opened, and the staged manifest is the one it decided on.
#[test]
fn one_read_a_bundle_swapped_after_the_decision_is_not_what_gets_installed() {
    let a = Attack::new("one-read");
    let node = a.node("");
    let p2 = a.pkgs("p2", &[("ep-alpha", "2.0")]);
    let p3 = a.pkgs("p3", &[("ep-alpha", "3.0")]);
    let c2 = a.bundle("c2.epb", &["release-a"], 2, &p2, &["--install", "ep-alpha"]);
    let c3 = a.bundle("c3.epb", &["release-a"], 3, &p3, &["--install", "ep-alpha"]);
    let stick = a.join("stick.epb");
    std::fs::copy(&c3, &stick).unwrap();
    let marker = a.join("decided");
    let mut cmd = node.command(&["apply", stick.to_str().unwrap()]);
    cmd.env("EDGEPATCH_PAUSE_AT", "decided")
        .env("EDGEPATCH_PAUSE_FILE", &marker)
        .env("EDGEPATCH_PAUSE_SECS", "2");
    let child = spawn_group(cmd);
    assert!(wait_for_file(&marker, 60), "agent never decided");
    // The stick now shows c2 under the same name.
    let tmp = a.join("stick.tmp");
    std::fs::copy(&c2, &tmp).unwrap();
    std::fs::rename(&tmp, &stick).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        deb_version(&node.root, "ep-alpha").as_deref(),
        Some("3.0 ii")
    );
    let st = node.agent(&["status", "--json"]).expect(0);
    assert!(
        st.stdout.contains("\"installed_sequence\":3"),
        "{}",
        st.stdout
    );
}

/// Item 4: a signed rollback order names its cycle. After c1, c2, c3 and a manual rollback (to
/// c2), an order to roll back c2 must not answer "c3 already rolled back": it acts on c2 or says
/// plainly that it cannot, and c2 is refused from then on.
#[test]
fn rollback_order_acts_on_exactly_the_cycle_it_names() {
    let a = Attack::new("order-cycle");
    let node = a.node("");
    for (seq, v) in [(1u64, "1.0"), (2, "2.0"), (3, "3.0")] {
        let p = a.pkgs(&format!("p{seq}"), &[("ep-alpha", v)]);
        let b = a.join(&format!("c{seq}.epb"));
        let key = key_file("release-a", "key");
        builder(&[
            "build",
            "--key",
            key.to_str().unwrap(),
            "--variant",
            VARIANT,
            "--cycle",
            &format!("c{seq}"),
            "--sequence",
            &seq.to_string(),
            "--out",
            b.to_str().unwrap(),
            "--install",
            "ep-alpha",
            p.to_str().unwrap(),
        ])
        .expect(0);
        apply(&node, &b).expect(0);
    }
    node.agent(&["rollback"]).expect(0);
    let order = a.join("rollback-c2.order");
    builder(&[
        "order",
        "--key",
        key_file("release-a", "key").to_str().unwrap(),
        "--kind",
        "rollback",
        "--variant",
        VARIANT,
        "--cycle",
        "c2",
        "--out",
        order.to_str().unwrap(),
    ])
    .expect(0);
    let r = node.agent(&["rollback", "--order", order.to_str().unwrap()]);
    assert!(
        !r.stdout.contains("c3 already rolled back"),
        "order answered for the wrong cycle: {}",
        r.stdout
    );
    if r.code == 0 {
        assert_eq!(
            deb_version(&node.root, "ep-alpha").as_deref(),
            Some("1.0 ii")
        );
    } else {
        assert_eq!(r.code, 6, "{}", r.stderr);
        assert!(r.stderr.contains("cannot roll back c2"), "{}", r.stderr);
    }
    let refused_list = std::fs::read_to_string(node.state_dir.join("refused")).unwrap();
    assert!(refused_list.lines().any(|l| l == "c2"), "{refused_list}");
}

/// Item 5: `apply PATH` never moves what the operator named. A directory is refused before it
/// is opened; a bad file stays where it is and only its reason is recorded.
#[test]
fn apply_path_never_moves_a_file_the_user_named() {
    let a = Attack::new("apply-path");
    let node = a.node("");
    let dir = a.join("some-dir");
    std::fs::create_dir_all(dir.join("inside")).unwrap();
    std::fs::write(dir.join("inside/precious"), b"keep me").unwrap();
    refused(apply(&node, &dir), 1, "usage", "not a regular file");
    assert!(dir.join("inside/precious").exists());
    let junk = a.join("notes.txt");
    std::fs::write(&junk, b"not a bundle at all").unwrap();
    for _ in 0..10 {
        let r = apply(&node, &junk);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains("file left in place"), "{}", r.stderr);
    }
    assert_eq!(std::fs::read(&junk).unwrap(), b"not a bundle at all");
    let q = std::fs::read_dir(node.state_dir.join("quarantine"))
        .unwrap()
        .count();
    assert!(q <= 8, "quarantine pruned to its cap, got {q} files");
}

/// Item 8: a state_dir another user owns (with a planted lock symlink) is refused before root
/// writes anything through it.
#[test]
fn state_dir_not_owned_by_root_is_refused() {
    let a = Attack::new("state-owner");
    let node = a.node("");
    let pkgs = a.pkgs("p", &[("ep-alpha", "1.0")]);
    let b = a.bundle(
        "b.epb",
        &["release-a"],
        1,
        &pkgs,
        &["--install", "ep-alpha"],
    );
    std::fs::create_dir_all(&node.state_dir).unwrap();
    let victim = a.join("victim");
    std::os::unix::fs::symlink(&victim, node.state_dir.join("lock")).unwrap();
    // Planted by root in a root-owned dir: the symlink alone is refused.
    refused(apply(&node, &b), 1, "usage", "is a symlink");
    assert!(!victim.exists(), "lock symlink followed");
    // Owned by nobody: refused, whatever is inside.
    std::fs::remove_file(node.state_dir.join("lock")).unwrap();
    run(Command::new("chown")
        .args(["65534:65534"])
        .arg(&node.state_dir))
    .expect(0);
    refused(apply(&node, &b), 1, "usage", "owned by uid 65534");
    // World-writable: refused too.
    run(Command::new("chown").args(["0:0"]).arg(&node.state_dir)).expect(0);
    run(Command::new("chmod").args(["1777"]).arg(&node.state_dir)).expect(0);
    refused(apply(&node, &b), 1, "usage", "writable by others");
    assert_eq!(deb_version(&node.root, "ep-alpha"), None);
}

/// Item 9: no input aborts the agent: a huge --budget, a closed stdout, an endless --order or
/// --config file. Each is a one-line error or a quiet exit, never SIGABRT.
#[test]
fn aborts_and_unbounded_reads_are_one_line_errors() {
    use std::os::unix::process::ExitStatusExt;
    let a = Attack::new("aborts");
    let node = a.node("mirror = \"http://127.0.0.1:9\"");
    refused(
        node.agent(&["fetch", "--budget", "18446744073709551615"]),
        1,
        "usage",
        "--budget",
    );
    // `edgepatch packages | head`: stdout closes early.
    let mut child = Command::new(agent_bin())
        .args(["--config", node.config.to_str().unwrap(), "packages"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    assert_ne!(status.signal(), Some(6), "SIGABRT on a closed stdout");
    let r = node.agent(&["rollback", "--order", "/dev/zero"]);
    assert!(r.code == 2 || r.code == 1, "{}", r.stderr);
    assert!(r.stderr.contains("/dev/zero"), "{}", r.stderr);
    let r = run(Command::new(agent_bin()).args(["--config", "/dev/zero", "status"]));
    refused(r, 1, "usage", "config /dev/zero");
}
