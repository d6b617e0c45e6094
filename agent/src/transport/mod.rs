//! What moves bundles and reports: the mirror fetch, USB/rsync import, the `run` pass that cron
//! or the timer calls, and report delivery and export.

pub mod fetch;
pub mod import;
pub mod keysync;
pub mod report;
pub mod reporter;
pub mod run;
