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
    cases::apply_then_rollback(&img);
    done("apply+rollback", start);
}

#[test]
fn arm64_a_failing_postinst_leaves_every_package_at_the_image_versions() {
    let start = Instant::now();
    let Some(img) = arm64_image("restore-arm64-fail") else {
        return;
    };
    cases::failing_postinst(&img);
    done("failing postinst", start);
}

#[test]
fn arm64_two_cycles_then_two_rollbacks_step_back_to_the_image() {
    let start = Instant::now();
    let Some(img) = arm64_image("restore-arm64-two") else {
        return;
    };
    cases::two_cycles_two_rollbacks(&img);
    done("two cycles, two rollbacks", start);
}
