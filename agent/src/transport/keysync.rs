//! The key list before the bundles: `fetch`, `import` and `run` first look for a newer
//! root-signed key list on the mirror or the stick, so a key rotation travels the same way bundles
//! do. A missing or refused list never stops the run; the node keeps the list it has.

use crate::bundle::keys::TrustedKey;
use crate::support::config::Config;
use crate::support::error::Result;
use std::time::Duration;

/// The keys fetch, import and run trust. With `root_keys` set, a newer root-signed key list
/// found first is accepted: `DIR/keylist` in each of `dirs` (USB stick, drop dir) and, when
/// `from_mirror`, `MIRROR/keylist`. A missing or refused list never stops the run (it is logged);
/// the node keeps the key list it has.
pub fn trusted_keys(
    config: &Config,
    dirs: &[std::path::PathBuf],
    from_mirror: bool,
) -> Result<Vec<TrustedKey>> {
    if config.root_keys.is_some() {
        let mut docs: Vec<(String, Vec<u8>)> = Vec::new();
        for d in dirs {
            // A stick may hold anything at DIR/keylist: a FIFO, /dev/zero, a huge file.
            let p = d.join("keylist");
            if let Ok(b) = crate::support::fsutil::read_capped(&p, crate::bundle::signed::MAX_DOC) {
                docs.push((p.display().to_string(), b));
            }
        }
        if let (true, Some(mirror)) = (from_mirror, config.mirror.as_deref()) {
            let url = format!("{mirror}/keylist");
            if let Some(b) = get_small(&url) {
                docs.push((url, b));
            }
        }
        for (origin, doc) in docs {
            match crate::node::trust::accept_keylist(config, &doc) {
                Ok(true) => log::warn!("accepted a new key list from {origin}"),
                Ok(false) => {}
                Err(e) => log::warn!("key list from {origin} refused: {e}"),
            }
        }
    }
    crate::node::trust::load(config)
}

/// GET a small document (≤ signed::MAX_DOC), or None on any failure.
fn get_small(url: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(15)))
        .build()
        .into();
    let mut resp = agent.get(url).call().ok()?;
    let mut body = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(crate::bundle::signed::MAX_DOC as u64 + 1)
        .read_to_end(&mut body)
        .ok()?;
    (body.len() <= crate::bundle::signed::MAX_DOC).then_some(body)
}
