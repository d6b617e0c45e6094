//! Issue 15 item 6, on a real arm64 Debian 12 image from an amd64 host: the image is
//! debootstrapped with `--arch=arm64` (tests/image/build-image.sh registers qemu-user-static's
//! binfmt_misc entry when it is missing, so debootstrap's second stage, the image's apt/dpkg and
//! maintainer scripts, and the agent all run under qemu-user), and the static **aarch64** agent,
//! built here the way cross/build.sh builds it, applies, fails and rolls back inside it. The same
//! cases as tests/restore_image.rs (amd64).
//!
//! Skips are loud, and under CI (env CI set) a skip is a failure (imagebox::skip).

mod imagebox;

use imagebox::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

const TRIPLE: &str = "aarch64-unknown-linux-musl";
/// ELF e_machine of AArch64.
const EM_AARCH64: u16 = 183;

/// The static aarch64 agent: `cargo build --release -p edgepatch --target TRIPLE` from the repo
/// root, so .cargo/config.toml's linker (rust-lld) and flags apply, as in cross/build.sh. Built
/// once per test run into target/TRIPLE/release/ (cargo makes that a no-op when the binary is
/// fresh, and rebuilds it when the agent's source changed, so the test never runs a stale agent).
fn aarch64_agent() -> Option<PathBuf> {
    static AGENT: OnceLock<Option<PathBuf>> = OnceLock::new();
    AGENT.get_or_init(build_aarch64_agent).clone()
}

fn build_aarch64_agent() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target"));
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(repo)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let std_dir = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(TRIPLE)
        .join("lib");
    if sysroot.is_empty() || !std_dir.is_dir() {
        skip(&format!(
            "no Rust std for {TRIPLE} ({} missing): rustup target add {TRIPLE} \
             (scripts/test-deps.sh)",
            std_dir.display()
        ));
        return None;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let start = Instant::now();
    let out = Command::new(&cargo)
        .current_dir(repo)
        .args(["build", "--release", "-p", "edgepatch", "--target", TRIPLE])
        .arg("--target-dir")
        .arg(&target)
        .output()
        .unwrap_or_else(|e| panic!("spawn {cargo:?}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo build --release -p edgepatch --target {TRIPLE} failed:\n{stderr}"
    );
    let bin = target.join(TRIPLE).join("release/edgepatch");
    eprintln!(
        "arm64: {} ready ({:.1} s for cargo build)",
        bin.display(),
        start.elapsed().as_secs_f64()
    );
    Some(bin)
}

fn elf_machine(path: &Path) -> u16 {
    let b = std::fs::read(path).unwrap();
    assert!(
        b.len() > 20 && &b[..4] == b"\x7fELF",
        "{} is not ELF",
        path.display()
    );
    u16::from_le_bytes([b[18], b[19]])
}

/// The arm64 image with the aarch64 agent baked in, after checking that this host really runs
/// it (binfmt_misc → qemu-aarch64) and that it is what it claims to be.
fn arm64_image(tag: &str) -> Option<Image> {
    let agent = aarch64_agent()?;
    assert_eq!(elf_machine(&agent), EM_AARCH64, "{}", agent.display());
    let start = Instant::now();
    let img = image_for(tag, "arm64", &agent)?;
    assert_eq!(img.variant, "debian-12-arm64");
    let r = img.sh("dpkg --print-architecture && uname -m && edgepatch --version");
    if r.code != 0 {
        skip(&format!(
            "this host cannot run arm64 binaries in the image (binfmt_misc entry for \
             qemu-aarch64: see tests/image/build-image.sh): exit {}: {}",
            r.code,
            r.stderr.trim()
        ));
        return None;
    }
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[..2], ["arm64", "aarch64"], "{}", r.stdout);
    assert!(lines[2].starts_with("edgepatch "), "{}", r.stdout);
    eprintln!(
        "arm64 {tag}: image unpacked, agent runs under emulation ({:.1} s)",
        start.elapsed().as_secs_f64()
    );
    Some(img)
}

fn done(tag: &str, start: Instant) {
    eprintln!(
        "arm64 {tag}: passed in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn arm64_apply_then_rollback_brings_back_the_image_versions_and_the_admins_conffile() {
    let start = Instant::now();
    let Some(img) = arm64_image("restore-arm64-rb") else {
        return;
    };
    let conf = img.edit_conffile();
    let before = img.versions();
    assert!(before.iter().all(|v| v.ends_with(" ii")), "{before:?}");
    let debs: Vec<PathBuf> = PKGS.iter().map(|p| img.bump(p, 1, false)).collect();
    // hostname is Architecture: arm64 in this image; the bundle carries the arm64 build.
    assert!(
        debs[0].to_string_lossy().ends_with("_arm64.deb"),
        "{debs:?}"
    );
    let c1 = img.bundle("c1", 1, &debs);

    let r = img.agent(&format!("apply {c1}")).expect(0);
    assert!(r.stdout.contains("2 package(s) changed"), "{}", r.stdout);
    assert!(img.version("hostname").contains("+ep1 ii"));
    assert!(img.version("libsemanage-common").contains("+ep1 ii"));
    assert_eq!(img.conffile(), conf, "apply kept the admin's conffile");
    let st = img.agent("status --json").expect(0).stdout;
    assert!(st.contains("\"variant\":\"debian-12-arm64\""), "{st}");
    assert!(
        st.contains("\"next_rollback\":{\"cycle\":\"c1\",\"packages\":2"),
        "{st}"
    );

    let r = img.agent("rollback").expect(0);
    assert!(r.stdout.contains("cycle c1 rolled back"), "{}", r.stdout);
    assert_eq!(img.versions(), before);
    assert_eq!(img.conffile(), conf, "rollback kept the admin's conffile");
    img.audit_clean();
    let st = img.agent("status --json").expect(0).stdout;
    assert!(st.contains("\"next_rollback\":null"), "{st}");
    assert!(st.contains("\"needs_attention\":null"), "{st}");
    done("apply+rollback", start);
}

#[test]
fn arm64_a_failing_postinst_leaves_every_package_at_the_image_versions() {
    let start = Instant::now();
    let Some(img) = arm64_image("restore-arm64-fail") else {
        return;
    };
    let before = img.versions();
    let debs = vec![
        img.bump("libsemanage-common", 1, false),
        img.bump("hostname", 1, true),
    ];
    let c1 = img.bundle("c1", 1, &debs);
    let r = img.agent(&format!("apply {c1}")).expect(6);
    assert!(r.stderr.contains("install failed"), "{}", r.stderr);
    assert!(!r.stderr.contains("restore incomplete"), "{}", r.stderr);
    assert_eq!(img.versions(), before);
    img.audit_clean();
    let st = img.agent("status").expect(0).stdout;
    assert!(!st.contains("ATTENTION"), "{st}");
    done("failing postinst", start);
}

#[test]
fn arm64_two_cycles_then_two_rollbacks_step_back_to_the_image() {
    let start = Instant::now();
    let Some(img) = arm64_image("restore-arm64-two") else {
        return;
    };
    let image_versions = img.versions();
    let conf = img.edit_conffile();
    let one: Vec<PathBuf> = PKGS.iter().map(|p| img.bump(p, 1, false)).collect();
    let c1 = img.bundle("c1", 1, &one);
    img.agent(&format!("apply {c1}")).expect(0);
    let c1_versions = img.versions();
    assert_ne!(c1_versions, image_versions);
    // Cycle 2 carries hostname again, newer (bumped from the c1 build now installed).
    let c2 = img.bundle("c2", 2, &[img.bump("hostname", 2, false)]);
    img.agent(&format!("apply {c2}")).expect(0);
    assert!(img.version("hostname").contains("+ep1+ep2 ii"));

    let r = img.agent("rollback").expect(0);
    assert!(r.stdout.contains("cycle c2 rolled back"), "{}", r.stdout);
    assert_eq!(img.versions(), c1_versions);
    let st = img.agent("status --json").expect(0).stdout;
    assert!(st.contains("\"installed_cycle\":\"c1\""), "{st}");

    let r = img.agent("rollback").expect(0);
    assert!(r.stdout.contains("cycle c1 rolled back"), "{}", r.stdout);
    assert_eq!(img.versions(), image_versions);
    assert_eq!(img.conffile(), conf);
    img.audit_clean();
    let st = img.agent("status --json").expect(0).stdout;
    assert!(!st.contains("installed_cycle\":\"c"), "{st}");
    done("two cycles, two rollbacks", start);
}
