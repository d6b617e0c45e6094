//! Issue 15 on a real Debian 12 image: the agent runs inside the image (chroot, no network,
//! root "/"), bundles upgrade packages that came with the image, and failed installs and
//! rollbacks put back the image's exact versions from the rollback sets (packages repacked
//! before the install), the admin's conffile included.

use edgepatch_e2e::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const VARIANT: &str = "debian-12-amd64";
/// Small packages of the minbase image; libsemanage-common has a conffile.
const PKGS: [&str; 2] = ["hostname", "libsemanage-common"];
const CONF: &str = "etc/selinux/semanage.conf";

struct Image {
    _s: Scratch,
    root: PathBuf,
    dir: PathBuf,
    key: PathBuf,
}

fn image_tarball() -> Option<PathBuf> {
    if cfg!(not(target_arch = "x86_64")) {
        return None;
    }
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" || !have("unshare") || !have("chroot") {
        eprintln!("\n*** SKIPPED: the image tests need root, unshare and chroot\n");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/image/build-image.sh");
    let out = Command::new("bash").arg(&script).output().ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && path.is_file() {
        return Some(path);
    }
    eprintln!(
        "\n*** SKIPPED: no Debian 12 image ({}): {}\n",
        script.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    None
}

/// Unpack the image, bake the agent in, configure it for root "/".
fn image(tag: &str) -> Option<Image> {
    let tarball = image_tarball()?;
    let s = Scratch::new(tag);
    let root = s.join("root");
    let dir = s.join("work");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    run(Command::new("tar")
        .args(["--numeric-owner", "-xf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&root))
    .expect(0);
    let bin = root.join("usr/local/bin/edgepatch");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(agent_bin(), &bin).unwrap();
    let (key, public) = keygen(&dir.join("keys"));
    let etc = root.join("etc/edgepatch");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::copy(&public, etc.join("release.pub")).unwrap();
    std::fs::write(
        etc.join("agent.conf"),
        format!(
            "node_id = \"image-node\"\nvariant = \"{VARIANT}\"\ntrusted_keys = \"/etc/edgepatch/release.pub\"\n\
             state_dir = \"/var/lib/edgepatch\"\nroot = \"/\"\npackage_manager = \"apt\"\nsnapshot = \"packages\"\n"
        ),
    )
    .unwrap();
    Some(Image {
        _s: s,
        root,
        dir,
        key,
    })
}

impl Image {
    /// Run a shell command inside the image: own mount namespace with /proc, no network.
    fn sh(&self, script: &str) -> Run {
        run(Command::new("unshare")
            .args(["--mount", "--net", "--fork", "chroot"])
            .arg(&self.root)
            .args([
                "/bin/sh",
                "-c",
                &format!("mount -t proc proc /proc && {script}"),
            ])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"))
    }

    fn agent(&self, args: &str) -> Run {
        self.sh(&format!(
            "edgepatch --config /etc/edgepatch/agent.conf {args}"
        ))
    }

    fn version(&self, pkg: &str) -> String {
        let out = Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                self.root.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f", "${Version} ${db:Status-Abbrev}", pkg])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn versions(&self) -> Vec<String> {
        PKGS.iter().map(|p| self.version(p)).collect()
    }

    fn audit_clean(&self) {
        let r = self.sh("dpkg --audit").expect(0);
        assert!(r.stdout.trim().is_empty(), "dpkg --audit: {}", r.stdout);
    }

    /// A newer build of an image package: the installed one repacked, Version + "+epN".
    fn bump(&self, pkg: &str, n: u32, failing_postinst: bool) -> PathBuf {
        let out = self.dir.join(format!("debs-{pkg}-{n}"));
        std::fs::create_dir_all(&out).unwrap();
        let r = edgepatch::node::preserve::repack_deb(&self.root, pkg, None, &out)
            .unwrap_or_else(|e| panic!("repack {pkg}: {e}"));
        let tree = out.join("tree");
        run(Command::new("dpkg-deb").arg("-R").arg(&r.path).arg(&tree)).expect(0);
        let control = tree.join("DEBIAN/control");
        let text = std::fs::read_to_string(&control).unwrap();
        let text = text.replace(
            &format!("Version: {}\n", r.version),
            &format!("Version: {}+ep{n}\n", r.version),
        );
        std::fs::write(&control, text).unwrap();
        if failing_postinst {
            let p = tree.join("DEBIAN/postinst");
            std::fs::write(
                &p,
                "#!/bin/sh\necho postinst fails on purpose >&2\nexit 1\n",
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let deb = self
            .dir
            .join(format!("{pkg}_{}+ep{n}_{}.deb", r.version, r.arch));
        run(Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "--build"])
            .arg(&tree)
            .arg(&deb))
        .expect(0);
        std::fs::remove_dir_all(&out).unwrap();
        deb
    }

    /// Build a signed bundle from `debs` and drop it into the image's /tmp.
    fn bundle(&self, cycle: &str, seq: u64, debs: &[PathBuf]) -> String {
        let out = self.dir.join(format!("{cycle}.epb"));
        let inputs: Vec<&Path> = debs.iter().map(|d| d.as_path()).collect();
        build_bundle(&self.key, VARIANT, cycle, seq, &out, &inputs, &[]);
        std::fs::copy(&out, self.root.join(format!("tmp/{cycle}.epb"))).unwrap();
        format!("/tmp/{cycle}.epb")
    }

    fn edit_conffile(&self) -> String {
        let p = self.root.join(CONF);
        let text = std::fs::read_to_string(&p).unwrap() + "# edited by the admin\n";
        std::fs::write(&p, &text).unwrap();
        text
    }

    fn conffile(&self) -> String {
        std::fs::read_to_string(self.root.join(CONF)).unwrap()
    }
}

#[test]
fn apply_then_rollback_brings_back_the_image_versions_and_the_admins_conffile() {
    let Some(img) = image("restore-image-rb") else {
        return;
    };
    let conf = img.edit_conffile();
    let before = img.versions();
    let debs: Vec<PathBuf> = PKGS.iter().map(|p| img.bump(p, 1, false)).collect();
    let c1 = img.bundle("c1", 1, &debs);

    let r = img.agent(&format!("apply {c1}")).expect(0);
    assert!(r.stdout.contains("2 package(s) changed"), "{}", r.stdout);
    assert!(img.version("hostname").contains("+ep1 ii"));
    assert_eq!(img.conffile(), conf, "apply kept the admin's conffile");
    let st = img.agent("status --json").expect(0).stdout;
    assert!(
        st.contains("\"next_rollback\":{\"cycle\":\"c1\",\"packages\":2"),
        "{st}"
    );

    let r = img.agent("rollback").expect(0);
    assert!(r.stdout.contains("cycle c1 rolled back"), "{}", r.stdout);
    assert_eq!(img.versions(), before);
    assert_eq!(img.conffile(), conf, "rollback kept the admin's conffile");
    img.audit_clean();
    let st = img.agent("status --json").expect(0).stdout;
    assert!(st.contains("\"next_rollback\":null"), "{st}");
    assert!(st.contains("\"needs_attention\":null"), "{st}");
}

#[test]
fn a_failing_postinst_leaves_every_package_at_the_image_versions() {
    let Some(img) = image("restore-image-fail") else {
        return;
    };
    let before = img.versions();
    let debs = vec![
        img.bump("libsemanage-common", 1, false),
        img.bump("hostname", 1, true),
    ];
    let c1 = img.bundle("c1", 1, &debs);
    let r = img.agent(&format!("apply {c1}")).expect(6);
    assert!(r.stderr.contains("install failed"), "{}", r.stderr);
    assert!(!r.stderr.contains("restore incomplete"), "{}", r.stderr);
    assert_eq!(img.versions(), before);
    img.audit_clean();
    let st = img.agent("status").expect(0).stdout;
    assert!(!st.contains("ATTENTION"), "{st}");
}

#[test]
fn two_cycles_then_two_rollbacks_step_back_to_the_image() {
    let Some(img) = image("restore-image-two") else {
        return;
    };
    let image_versions = img.versions();
    let conf = img.edit_conffile();
    let one: Vec<PathBuf> = PKGS.iter().map(|p| img.bump(p, 1, false)).collect();
    let c1 = img.bundle("c1", 1, &one);
    img.agent(&format!("apply {c1}")).expect(0);
    let c1_versions = img.versions();
    // Cycle 2 carries hostname again, newer (bumped from the c1 build now installed).
    let c2 = img.bundle("c2", 2, &[img.bump("hostname", 2, false)]);
    img.agent(&format!("apply {c2}")).expect(0);
    assert!(img.version("hostname").contains("+ep1+ep2 ii"));

    let r = img.agent("rollback").expect(0);
    assert!(r.stdout.contains("cycle c2 rolled back"), "{}", r.stdout);
    assert_eq!(img.versions(), c1_versions);
    let st = img.agent("status --json").expect(0).stdout;
    assert!(st.contains("\"installed_cycle\":\"c1\""), "{st}");

    let r = img.agent("rollback").expect(0);
    assert!(r.stdout.contains("cycle c1 rolled back"), "{}", r.stdout);
    assert_eq!(img.versions(), image_versions);
    assert_eq!(img.conffile(), conf);
    img.audit_clean();
    let st = img.agent("status --json").expect(0).stdout;
    assert!(!st.contains("installed_cycle\":\"c"), "{st}");
}
