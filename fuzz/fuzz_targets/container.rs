//! The container reader: header, manifest length, signature block, then every entry streamed
//! through `EntryReader` (size caps, inflate, sha256) and the end-of-bundle check. Signatures
//! are not checked here (no fuzzer forges Ed25519); everything after them is reached anyway.
#![no_main]
use edgepatch::bundle::format::{self, EntryKind, EntryReader, Manifest};
use libfuzzer_sys::fuzz_target;
use std::io::Read;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    let Ok(head) = format::read_head(&mut r) else {
        return;
    };
    assert!(head.manifest_bytes.len() <= format::MAX_MANIFEST as usize);
    assert!(
        !head.signatures.is_empty() && head.signatures.len() <= format::MAX_SIGNATURES as usize
    );
    let Ok(m) = Manifest::parse(&head.manifest_bytes) else {
        return;
    };
    let mut buf = vec![0u8; 4096];
    for entry in &m.entries {
        if entry.stored == 0 && entry.kind == EntryKind::Ref {
            continue;
        }
        let mut er = EntryReader::new(&mut r, entry);
        let mut total = 0u64;
        loop {
            match er.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    total += n as u64;
                    // Never more than declared, whatever the deflate stream says.
                    assert!(total <= entry.size.max(entry.stored));
                }
                Err(_) => return,
            }
        }
        if er.finish().is_err() {
            return;
        }
    }
    let _ = format::expect_end(&mut r);
});
