//! edgepatch node agent library. The folders tell the story of a bundle, and imports only point
//! downwards (enforced by `tests/layers.rs`):
//!
//! - `support`   shared helpers at the bottom: files, commands, clock, config, errors, logging
//! - `bundle`    the signed artifact: format, manifest, keys, signed documents, delta codec;
//!   pure (`Read` in, values out), and the only layer the builder uses besides `support`
//! - `node`      what changes the machine: stage, install, snapshot, health, rollback, journal
//! - `transport` what moves bundles and reports: fetch, import, run, report
//! - `cli`       arguments, commands, doctor, exit codes; nothing imports it
//!
//! The binary in `main.rs` only calls `cli::main`.

pub mod bundle;
pub mod cli;
pub mod node;
pub mod support;
pub mod transport;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
