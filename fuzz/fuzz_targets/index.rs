//! The mirror index: the signed-document envelope (`signed::open`, with a fixed key so the
//! signature path runs) and the index body parser behind it.
#![no_main]
use edgepatch::bundle::index::{Index, DOC_TYPE};
use edgepatch::support::kv::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7; 32]));
    let trusted =
        vec![
            edgepatch::bundle::keys::parse_public(&edgepatch::bundle::keys::public_text(&kp.pk), "fuzz")
                .expect("key"),
        ];
    let _ = Index::open(data, &trusted);
    let _ = edgepatch::bundle::signed::open(data, DOC_TYPE, &trusted, 1);
    if let Ok(text) = std::str::from_utf8(data) {
        let body = text.split_once('\n').map_or(text, |(_, b)| b);
        if let Ok(ix) = Index::from_record(&Record::parse(body)) {
            // What publish would write must parse back the same.
            let again = ix.render();
            let again = again.split_once('\n').map_or("", |(_, b)| b);
            assert_eq!(
                Index::from_record(&Record::parse(again)).expect("round trip"),
                ix
            );
        }
    }
});
