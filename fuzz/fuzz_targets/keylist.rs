//! The key list: self-signed opening (`open_self`: unverified body, then roots), the successor
//! check against a fixed root, and the body parser, with a render round trip.
#![no_main]
use edgepatch::support::kv::Record;
use edgepatch::bundle::keylist::{check_successor, KeyList};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7; 32]));
    let roots = vec![
        edgepatch::bundle::keys::parse_public(&edgepatch::bundle::keys::public_text(&kp.pk), "fuzz").expect("key"),
    ];
    let _ = KeyList::open_self(data);
    let _ = check_successor(&roots, 1, Some(1), data, 1_000);
    if let Ok(text) = std::str::from_utf8(data) {
        let body = text.split_once('\n').map_or(text, |(_, b)| b);
        if let Ok(list) = KeyList::from_record(&Record::parse(body)) {
            let again = list.render();
            let again = again.split_once('\n').map_or("", |(_, b)| b);
            assert_eq!(
                KeyList::from_record(&Record::parse(again)).expect("round trip"),
                list
            );
            let _ = list.release_set(1_000, 1);
        }
    }
});
