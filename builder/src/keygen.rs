use anyhow::{Context, Result};
use edgepatch::bundle::keys::{public_text, secret_text};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub fn run(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let kp = ed25519_compact::KeyPair::generate();
    let key_path = out.join("edgepatch.key");
    let pub_path = out.join("edgepatch.pub");
    // create_new: never overwrite a key; losing a release key means re-baking every image.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .with_context(|| {
            format!(
                "{} (refusing to overwrite an existing key)",
                key_path.display()
            )
        })?;
    f.write_all(secret_text(&kp.sk).as_bytes())?;
    f.sync_all()?;
    edgepatch::support::fsutil::write_atomic(&pub_path, public_text(&kp.pk).as_bytes(), false)
        .with_context(|| format!("writing {}", pub_path.display()))?;
    let id = edgepatch::bundle::format::hex(&edgepatch::bundle::keys::key_id(&kp.pk));
    println!("key id {id}");
    println!("secret {} (mode 0600, keep offline)", key_path.display());
    println!("public {} (bake into node images)", pub_path.display());
    Ok(())
}
