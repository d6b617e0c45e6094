//! Signed orders (`bundle::order`): the envelope with a fixed key so the signature path runs, and
//! the field checks behind it.
#![no_main]
use edgepatch::bundle::order::Order;
use edgepatch::support::kv::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7; 32]));
    let key = edgepatch::bundle::keys::public_text(&kp.pk);
    let trusted = vec![edgepatch::bundle::keys::parse_public(&key, "fuzz").expect("key")];
    let _ = Order::open(data, &trusted);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(o) = Order::from_record(&Record::parse(text)) {
            assert!(edgepatch::bundle::order::KINDS.contains(&o.kind.as_str()));
            assert!(!o.cycle.is_empty() && !o.variant.is_empty());
        }
    }
});
