//! Crash-test hook. With `EDGEPATCH_PAUSE_AT=<point>` in the environment the agent stops at that
//! named point, creates the file named by `EDGEPATCH_PAUSE_FILE`, and sleeps, so a test can
//! deliver a real SIGKILL at an exact step. Unset (always, in production), it does nothing.

pub fn pause_point(point: &str) {
    let Some(wanted) = std::env::var_os("EDGEPATCH_PAUSE_AT") else {
        return;
    };
    if wanted != point {
        return;
    }
    if let Some(f) = std::env::var_os("EDGEPATCH_PAUSE_FILE") {
        let _ = std::fs::write(f, point);
    }
    // EDGEPATCH_PAUSE_SECS: how long (default 120 s, long enough to be killed); a test that
    // changes something under a running agent sets a short pause and lets it go on.
    let secs = std::env::var("EDGEPATCH_PAUSE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    log::warn!("paused at {point} (EDGEPATCH_PAUSE_AT) for {secs} s");
    std::thread::sleep(std::time::Duration::from_secs(secs));
}
