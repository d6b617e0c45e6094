//! The manifest parser: any bytes in, an error or a manifest out; a parsed manifest serialises
//! back to bytes that parse to the same manifest.
#![no_main]
use edgepatch::bundle::format::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        let bytes = m.to_bytes().expect("a parsed manifest serialises");
        assert_eq!(Manifest::parse(&bytes).expect("and parses back"), m);
        let _ = m.payload_len();
        for e in &m.entries {
            edgepatch::bundle::format::check_entry_name(&e.name).expect("parser checked names");
        }
    }
});
