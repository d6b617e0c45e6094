//! The signed artifact and its documents, with no I/O beyond a `Read`: the container format and
//! manifest, signatures and keys, the signed index, orders, key list and policy, and the delta
//! patch codec. Shared with the builder, which writes bundles with it and reads them back.

pub mod delta;
pub mod format;
pub mod index;
pub mod keylist;
pub mod keys;
pub mod order;
pub mod policy;
pub mod report;
pub mod signed;
pub mod verify;
