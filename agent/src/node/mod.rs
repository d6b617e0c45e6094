//! What changes the machine: staging a verified bundle, installing it through the package
//! manager, snapshots, health checks, rollback, and the records that make all of it crash-safe
//! (journal, installed state, status file, lock).

pub mod apply;
pub mod ctx;
pub mod health;
pub mod journal;
pub mod lock;
pub mod marks;
pub mod outcome;
pub mod pkg;
pub mod preserve;
pub mod rebuild;
pub mod restore;
pub mod rollback;
pub mod session;
pub mod sets;
pub mod snapshot;
pub mod stage;
pub mod state;
pub mod status;
pub mod store;
pub mod trust;
pub mod whole;
