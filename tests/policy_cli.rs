//! End-to-end: `edgepatch-builder policy check` and `build --policy` with the real builder
//! binary, a real .deb made by dpkg-deb, a real key and bundle. Self-contained on purpose.
//! Needs `cargo build -p edgepatch-builder` first (cargo does not build another package's
//! binary for this crate's tests).

use std::path::{Path, PathBuf};
use std::process::Command;

const CYCLE: &str = "20241105-build-42";

fn builder() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = target.join("edgepatch-builder");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p edgepatch-builder` first",
        bin.display()
    );
    bin
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/policy")
        .join(name)
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!(
            "ep-policy-cli-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run the builder; (exit code, stdout, stderr).
fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (i32, String, String) {
    let out = Command::new(builder())
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .expect("running edgepatch-builder");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A tiny .deb, a key pair and a bundle of it for CYCLE, optionally with a policy inside.
fn make_bundle(dir: &Dir, policy: Option<&Path>) -> PathBuf {
    let root = dir.join("pkg");
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join("usr/share/ep-policy-hello")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        "Package: ep-policy-hello\nVersion: 1.0\nArchitecture: all\n\
         Maintainer: edgepatch tests <tests@example.invalid>\nDescription: policy test package\n",
    )
    .unwrap();
    std::fs::write(root.join("usr/share/ep-policy-hello/hello"), "hello\n").unwrap();
    let deb = dir.join("ep-policy-hello_1.0_all.deb");
    let st = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&root)
        .arg(&deb)
        .output()
        .expect("dpkg-deb");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let keys = dir.join("keys");
    let (code, _, err) = run(&[&"keygen", &"--out", &keys]);
    assert_eq!(code, 0, "{err}");
    let bundle = dir.join("hello.bundle");
    let key = keys.join("edgepatch.key");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"build",
        &"--key",
        &key,
        &"--variant",
        &"debian-12-amd64",
        &"--cycle",
        &CYCLE,
        &"--sequence",
        &"1",
        &"--out",
        &bundle,
    ];
    if let Some(p) = &policy {
        args.push(&"--policy");
        args.push(p);
    }
    args.push(&deb);
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "build: {out}{err}");
    bundle
}

fn policy_text(version: &str, checksum: Option<&str>) -> String {
    let sum = checksum.map_or(String::new(), |c| format!(", checksum: \"{c}\""));
    format!(
        "apiVersion: patchmgmt.io/v1\nkind: PatchPolicy\n\
         metadata: {{name: edge-fleet-q4-2024, namespace: operations}}\n\
         spec:\n  bundleRef: {{version: \"{version}\"{sum}}}\n\
         \x20 targets: {{selector: {{matchLabels: {{role: edge-node}}}}}}\n\
         \x20 schedule:\n    maintenanceWindow: \"Mon-Fri 22:00-02:00\"\n\
         \x20   timezone: \"Europe/Berlin\"\n\
         \x20   rolloutStrategy: {{type: RollingUpdate, batchSize: 100, batchDelayMinutes: 15}}\n"
    )
}

fn sha256_file(p: &Path) -> String {
    let bytes = std::fs::read(p).unwrap();
    format!(
        "sha256:{}",
        edgepatch::bundle::format::hex(&edgepatch::bundle::format::sha256(&bytes))
    )
}

#[test]
fn checksum_pin_matches_and_mismatches() {
    let dir = Dir::new("pin");
    let bundle = make_bundle(&dir, None);
    let sum = sha256_file(&bundle);
    let file = dir.join("policy.yaml");

    // The right pin: exit 0.
    std::fs::write(&file, policy_text(CYCLE, Some(&sum))).unwrap();
    let (code, out, err) = run(&[&"policy", &"check", &file, &"--bundle", &bundle]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("ok: policy operations/edge-fleet-q4-2024"),
        "{out}"
    );
    assert!(out.contains("cycle and sha256 match"), "{out}");

    // One digit off: exit 2, one line naming both sums.
    let mut wrong = sum.clone().into_bytes();
    let last = wrong.len() - 1;
    wrong[last] = if wrong[last] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    std::fs::write(&file, policy_text(CYCLE, Some(&wrong))).unwrap();
    let (code, out, err) = run(&[&"policy", &"check", &file, &"--bundle", &bundle]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("bundleRef.checksum") && err.contains("does not match"),
        "{err}"
    );
    assert!(err.contains(&sum), "shows the actual sum: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    // Another cycle: exit 2.
    std::fs::write(&file, policy_text("20241203-build-43", Some(&sum))).unwrap();
    let (code, _, err) = run(&[&"policy", &"check", &file, &"--bundle", &bundle]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is cycle 20241105-build-42"), "{err}");

    // No pin at all for an existing bundle: invalid policy, exit 1.
    std::fs::write(&file, policy_text(CYCLE, None)).unwrap();
    let (code, _, err) = run(&[&"policy", &"check", &file, &"--bundle", &bundle]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bundleRef.checksum missing"), "{err}");
    // ... but fine on its own.
    let (code, out, err) = run(&[&"policy", &"check", &file]);
    assert_eq!(code, 0, "{out}{err}");

    // The bundle changes after the policy pinned it: exit 2.
    std::fs::write(&file, policy_text(CYCLE, Some(&sum))).unwrap();
    let mut bytes = std::fs::read(&bundle).unwrap();
    let n = bytes.len() - 1;
    bytes[n] ^= 1;
    std::fs::write(&bundle, bytes).unwrap();
    let (code, _, err) = run(&[&"policy", &"check", &file, &"--bundle", &bundle]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn fixtures() {
    for (name, code, want) in [
        ("example.yaml", 0, "10 waves of about 100 every 15 min"),
        ("unknown-field.yaml", 1, "unknown field `maxUnavailable`"),
        ("bad-window.yaml", 1, "maintenanceWindow: day \"Tuesday\""),
        ("bad-timezone.yaml", 1, "Europe/Atlantis not found"),
        (
            "bad-api-version.yaml",
            1,
            "must be patchmgmt.io/v1 (line 1)",
        ),
    ] {
        let (got, out, err) = run(&[&"policy", &"check", &fixture(name)]);
        assert_eq!(got, code, "{name}: {out}{err}");
        assert!(
            out.contains(want) || err.contains(want),
            "{name}: {out}{err}"
        );
        if code != 0 {
            assert_eq!(err.trim_end().lines().count(), 1, "{name}: {err}");
        }
    }
    let (_, _, err) = run(&[&"policy", &"check", &fixture("unknown-field.yaml")]);
    assert!(err.contains("line 9"), "{err}");
}

#[test]
fn build_signs_policy_into_manifest() {
    let dir = Dir::new("build");
    let file = dir.join("policy.yaml");
    std::fs::write(&file, policy_text(CYCLE, None)).unwrap();
    let bundle = make_bundle(&dir, Some(&file));
    let (code, out, err) = run(&[&"inspect", &"--json", &bundle]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rollout_start"), "{out}");
    // Read the manifest with the agent's own parser and policy reader.
    let mut r = std::fs::File::open(&bundle).unwrap();
    let head = edgepatch::bundle::format::read_head(&mut r).unwrap();
    let m = edgepatch::bundle::format::Manifest::parse(&head.manifest_bytes).unwrap();
    let p = edgepatch::bundle::policy::Policy::from_lines(&m.policy).unwrap();
    assert_eq!(p.bundle_version, CYCLE);
    assert_eq!(p.window.to_string(), "Mon-Fri 22:00-02:00");
    assert_eq!(p.timezone, "Europe/Berlin");
    assert_eq!(p.match_labels, vec![("role".into(), "edge-node".into())]);
    assert_eq!(p.rollout_start, Some(m.created as i64));
    // A policy for another cycle, or one pinning a checksum, is refused at build time.
    std::fs::write(&file, policy_text("other-cycle", None)).unwrap();
    let dir2 = Dir::new("build-bad");
    let keys = dir.join("keys");
    let (code, _, err) = run(&[
        &"build",
        &"--key",
        &keys.join("edgepatch.key"),
        &"--variant",
        &"debian-12-amd64",
        &"--cycle",
        &CYCLE,
        &"--sequence",
        &"2",
        &"--out",
        &dir2.join("b.bundle"),
        &"--policy",
        &file,
        &dir.join("ep-policy-hello_1.0_all.deb"),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not the --cycle"), "{err}");
    assert!(!dir2.join("b.bundle").exists());
}
