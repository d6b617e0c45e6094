//! The rollout policy as signed into a manifest (`policy <key> <value>` lines) and the window
//! syntax (policy windows and the config's transfer_window).
#![no_main]
use edgepatch::bundle::policy::{Policy, Window};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = Policy::from_lines(&lines);
    for l in text.lines() {
        let _ = Window::parse(l);
    }
});
