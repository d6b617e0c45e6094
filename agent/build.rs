//! The release agent (release profile: panic = "abort"; static musl, linked by rust-lld) drops its unwind
//! tables: 144 KB of the 1.5 MB budget that only a panic backtrace would read (the backtrace is
//! then empty; the panic message is still printed, then the process aborts). Test and debug
//! builds unwind and keep them; GNU ld refuses the discard (crtbegin refers to .eh_frame).
fn main() {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    println!("cargo:rerun-if-changed=no-eh-frame.ld");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let lld = env("RUSTC_LINKER").ends_with("rust-lld");
    // (Build scripts see the target's panic cfg, not the profile's: the release profile is the
    // one with panic = "abort".)
    if env("PROFILE") == "release" && env("CARGO_CFG_TARGET_ENV") == "musl" && lld {
        println!(
            "cargo:rustc-link-arg-bins=-T{}/no-eh-frame.ld",
            env("CARGO_MANIFEST_DIR")
        );
    }
}
