//! End-to-end: the real builder seals a bundle, the real agent verifies it, and every kind of
//! damage or misuse gets its documented exit code and a one-line reason.

use edgepatch_e2e::*;
use std::path::{Path, PathBuf};

struct Fixture {
    _dir: Scratch,
    key: PathBuf,
    bundle: PathBuf,
    node: Node,
    pkgs: PathBuf,
    root: PathBuf,
}

fn fixture(tag: &str) -> Fixture {
    let dir = Scratch::new(tag);
    let (key, public) = keygen(&dir.join("keys"));
    let pkgs = dir.join("pkgs");
    Deb::new("ep-alpha", "1.0").build(&pkgs);
    Deb::new("ep-beta", "2.0").depends("ep-alpha").build(&pkgs);
    let bundle = dir.join("c1.epb");
    build_bundle(&key, "debian-12-amd64", "c1", 1, &bundle, &[&pkgs], &[]);
    let node = Node::new(&dir.join("node"), "debian-12-amd64", &public, "");
    let root = dir.path.clone();
    Fixture {
        _dir: dir,
        key,
        bundle,
        node,
        pkgs,
        root,
    }
}

fn manifest_len(bundle: &Path) -> usize {
    let b = std::fs::read(bundle).unwrap();
    u32::from_le_bytes([b[10], b[11], b[12], b[13]]) as usize
}

fn verify(f: &Fixture, bundle: &Path) -> Run {
    f.node.agent(&["verify", bundle.to_str().unwrap()])
}

#[test]
fn good_bundle_verifies_with_agent_and_builder() {
    let f = fixture("good");
    let r = verify(&f, &f.bundle).expect(0);
    assert!(
        r.stdout
            .starts_with("ok: debian-12-amd64 cycle c1 sequence 1"),
        "{}",
        r.stdout
    );
    let public = f.key.with_extension("pub");
    builder(&[
        "verify",
        "--pub",
        public.to_str().unwrap(),
        f.bundle.to_str().unwrap(),
    ])
    .expect(0);
    let r = builder(&["inspect", "--json", f.bundle.to_str().unwrap()]).expect(0);
    assert!(
        r.stdout.contains("\"pool/ep-alpha_1.0_all.deb\""),
        "{}",
        r.stdout
    );
}

#[test]
fn tampered_manifest_byte_is_authenticity_failure() {
    let f = fixture("manifest");
    // A byte inside the sequence line of the manifest text.
    let text = std::fs::read(&f.bundle).unwrap();
    let pos = text.windows(9).position(|w| w == b"sequence ").unwrap() + 9;
    flip_byte(&f.bundle, pos as i64);
    let r = verify(&f, &f.bundle).expect(3);
    assert!(
        r.stderr.contains("does not match the manifest"),
        "{}",
        r.stderr
    );
}

#[test]
fn tampered_signature_byte_is_authenticity_failure() {
    let f = fixture("sig");
    let sig_start = 14 + manifest_len(&f.bundle) + 1 + 8;
    flip_byte(&f.bundle, (sig_start + 10) as i64);
    verify(&f, &f.bundle).expect(3);
}

#[test]
fn tampered_payload_byte_is_integrity_failure() {
    let f = fixture("payload");
    flip_byte(&f.bundle, -100);
    let r = verify(&f, &f.bundle).expect(2);
    assert!(r.stderr.contains("sha256 is"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
}

#[test]
fn truncated_bundle_is_integrity_failure() {
    let f = fixture("trunc");
    let data = std::fs::read(&f.bundle).unwrap();
    for keep in [5, 20, data.len() / 2, data.len() - 1] {
        std::fs::write(&f.bundle, &data[..keep]).unwrap();
        let r = verify(&f, &f.bundle);
        assert!(r.code == 2, "keep {keep}: exit {} {}", r.code, r.stderr);
        assert!(r.stderr.contains("truncated"), "keep {keep}: {}", r.stderr);
    }
}

#[test]
fn appended_garbage_is_integrity_failure() {
    let f = fixture("append");
    let mut data = std::fs::read(&f.bundle).unwrap();
    data.extend_from_slice(b"extra bytes from a malicious mirror");
    std::fs::write(&f.bundle, data).unwrap();
    let r = verify(&f, &f.bundle).expect(2);
    assert!(r.stderr.contains("after its last entry"), "{}", r.stderr);
}

#[test]
fn bundle_signed_by_another_key_is_refused() {
    let f = fixture("otherkey");
    let (other, _) = keygen(&f.root.join("other-keys"));
    let b = f.root.join("other.epb");
    build_bundle(&other, "debian-12-amd64", "c1", 1, &b, &[&f.pkgs], &[]);
    let r = verify(&f, &b).expect(3);
    assert!(r.stderr.contains("need 1"), "{}", r.stderr);
}

#[test]
fn wrong_variant_is_not_applicable() {
    let f = fixture("variant");
    let b = f.root.join("rhel.epb");
    build_bundle(&f.key, "debian-11-amd64", "c1", 1, &b, &[&f.pkgs], &[]);
    let r = verify(&f, &b).expect(4);
    assert!(r.stderr.contains("variant debian-11-amd64"), "{}", r.stderr);
}

#[test]
fn expired_bundle_is_not_applicable() {
    let f = fixture("expired");
    let b = f.root.join("short.epb");
    build_bundle(
        &f.key,
        "debian-12-amd64",
        "c1",
        1,
        &b,
        &[&f.pkgs],
        &["--expires-in", "1s"],
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let r = verify(&f, &b).expect(4);
    assert!(r.stderr.contains("expired"), "{}", r.stderr);
}

#[test]
fn clock_ratchet_defeats_a_reset_clock() {
    // The node once saw a trusted time far in the future; a bundle that the (reset) system clock
    // would call fresh is expired by that time.
    let f = fixture("ratchet");
    std::fs::create_dir_all(&f.node.state_dir).unwrap();
    std::fs::write(f.node.state_dir.join("trusted-time"), "4102444800\n").unwrap();
    verify(&f, &f.bundle).expect(4);
}

#[test]
fn missing_bundle_is_deferred_and_bad_config_is_usage() {
    let f = fixture("missing");
    verify(&f, &f.root.join("nope.epb")).expect(5);
    std::fs::write(&f.node.config, "node_id = \"x\"\nbogus = 1\n").unwrap();
    let r = verify(&f, &f.bundle).expect(1);
    assert!(
        r.stderr.contains(":2: unknown key \"bogus\""),
        "{}",
        r.stderr
    );
}

#[test]
fn not_a_bundle_is_integrity_failure() {
    let f = fixture("junk");
    let junk = f.root.join("junk.epb");
    std::fs::write(&junk, vec![0x41u8; 100_000]).unwrap();
    let r = verify(&f, &junk).expect(2);
    assert!(r.stderr.contains("bad magic"), "{}", r.stderr);
}
