//! Shared support at the bottom of the agent: nothing here imports a higher layer.

pub mod clock;
pub mod cmd;
pub mod config;
pub mod error;
pub mod fsutil;
pub mod json;
pub mod kv;
pub mod logger;
pub mod testhook;
pub mod text;
pub mod tz;
pub mod window;
pub mod xattr;
