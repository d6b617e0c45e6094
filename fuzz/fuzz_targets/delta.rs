//! The delta patch reader and applier (`delta::Header::read`, `delta::apply_patch`): a bundle's
//! patch is applied only after its sha256 matched the signed manifest, but a patch the builder
//! got wrong, or one signed with a leaked key, must still be refused cleanly.
//! Input: 2 bytes (little endian) = length of the base, the base, then the patch. Patches that
//! list gzip members to compress back are not applied (that step runs the system's gzip).
#![no_main]
use edgepatch::bundle::delta::{self, DeltaError, Header};
use libfuzzer_sys::fuzz_target;
use std::io::Write;

/// Output cap: bounds the time one input can take (a patch may legitimately produce a lot).
const MAX_OUTPUT: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = (usize::from(u16::from_le_bytes([data[0], data[1]])) % 4096).min(data.len() - 2);
    let (old, patch) = data[2..].split_at(n);
    let Ok(header) = Header::read(&mut &patch[..], MAX_OUTPUT) else {
        return;
    };
    assert!(header.output_len() <= MAX_OUTPUT);
    if header.gz.as_ref().is_some_and(|g| !g.new.is_empty()) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (pp, op) = (dir.path().join("patch"), dir.path().join("old"));
    std::fs::File::create(&pp).unwrap().write_all(patch).unwrap();
    std::fs::write(&op, old).unwrap();
    let pf = std::fs::File::open(&pp).unwrap();
    let mut out = delta::HashingWriter::new(std::io::sink());
    let r = delta::apply_patch(
        &pf,
        &header,
        &mut |_| Ok::<_, DeltaError>(std::fs::File::open(&op)?),
        dir.path(),
        &mut out,
    );
    if r.is_ok() {
        // Whatever a patch claims, it produced exactly what its header said.
        assert_eq!(out.written, header.output_len());
    }
});
