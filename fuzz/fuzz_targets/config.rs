//! The agent config parser (hand-parsed TOML subset).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = edgepatch::support::config::Config::parse(text, "fuzz.conf");
        let _ = edgepatch::support::config::parse_size(text);
        let _ = edgepatch::support::config::parse_duration(text);
    }
});
