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
    log::warn!("paused at {point} (EDGEPATCH_PAUSE_AT); waiting to be killed");
    std::thread::sleep(std::time::Duration::from_secs(120));
}
