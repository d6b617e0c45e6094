//! edgepatch node agent library. The binary in `main.rs` only parses arguments and calls `cli`.
//! `format` is the bundle format shared with the builder; everything else is the node's side.

pub mod apply;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod delta;
pub mod doctor;
pub mod error;
pub mod fetch;
pub mod format;
pub mod fsutil;
pub mod health;
pub mod import;
pub mod index;
pub mod json;
pub mod keys;
pub mod kv;
pub mod lock;
pub mod logger;
pub mod pkg;
pub mod policy;
pub mod preserve;
pub mod report;
pub mod rollback;
pub mod run;
pub mod signed;
pub mod snapshot;
pub mod stage;
pub mod state;
pub mod status;
pub mod store;
pub mod testhook;
pub mod trust;
pub mod verify;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
