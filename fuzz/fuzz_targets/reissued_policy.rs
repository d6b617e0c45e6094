//! Re-issued policy files (`incoming/*.policy`, signed `edgepatch-policy` documents): the
//! envelope with a fixed key, and the policy lines behind it as the agent reads them.
#![no_main]
use edgepatch::bundle::policy::Policy;
use edgepatch::support::kv::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7; 32]));
    let key = edgepatch::bundle::keys::public_text(&kp.pk);
    let trusted = vec![edgepatch::bundle::keys::parse_public(&key, "fuzz").expect("key")];
    let _ = edgepatch::bundle::signed::open(data, "edgepatch-policy", &trusted, 1);
    if let Ok(text) = std::str::from_utf8(data) {
        let rec = Record::parse(text);
        let _ = rec.num("issued");
        let _ = Policy::from_lines(&edgepatch::bundle::policy::reissued_lines(&rec));
    }
});
