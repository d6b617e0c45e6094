//! A real Debian 12 image for the node tests (issue 15): debootstrapped once per architecture
//! (tests/image/build-image.sh, cached under target/images/), unpacked per test, the static agent
//! baked in at /usr/local/bin, run inside with chroot + `unshare --net` and /proc mounted.
//! Shared by tests/restore_image*.rs (`mod imagebox;`).
#![allow(dead_code)]

use edgepatch_e2e::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Small packages of the minbase image; libsemanage-common has a conffile.
pub const PKGS: [&str; 2] = ["hostname", "libsemanage-common"];
pub const CONF: &str = "etc/selinux/semanage.conf";

pub struct Image {
    _s: Scratch,
    pub root: PathBuf,
    pub dir: PathBuf,
    pub key: PathBuf,
    /// `debian-12-<arch>`
    pub variant: String,
}

/// Say loudly that a test did not run, and why. Under CI (the env var CI is set) a skip is a
/// failure: the CI machine is a fresh Debian 12 with everything scripts/test-deps.sh installs,
/// so a test that cannot run there is broken, not excused. Written to stderr directly, not with
/// `eprintln!`, so the line shows even when the test harness captures a passing test's output.
pub fn skip(why: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("\n*** SKIPPED: {why}\n\n").as_bytes());
    if std::env::var_os("CI").is_some() {
        panic!("SKIPPED under CI (env CI is set), which counts as a failure: {why}");
    }
}

fn image_tarball(arch: &str) -> Option<PathBuf> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" || !have("unshare") || !have("chroot") {
        skip("the image tests need root, unshare and chroot");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/image/build-image.sh");
    let out = match Command::new("bash").arg(&script).arg(arch).output() {
        Ok(out) => out,
        Err(e) => {
            skip(&format!("cannot run bash {}: {e}", script.display()));
            return None;
        }
    };
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && path.is_file() {
        return Some(path);
    }
    skip(&format!(
        "no Debian 12 {arch} image ({}): {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    ));
    None
}

/// The amd64 image with the agent this test run built.
pub fn image(tag: &str) -> Option<Image> {
    if cfg!(not(target_arch = "x86_64")) {
        return None;
    }
    image_for(tag, "amd64", &agent_bin())
}

/// Unpack the `arch` image (Debian's name: amd64, arm64, armhf), bake `agent` in, configure it
/// for root "/".
pub fn image_for(tag: &str, arch: &str, agent: &Path) -> Option<Image> {
    let tarball = image_tarball(arch)?;
    let variant = format!("debian-12-{arch}");
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
    std::fs::copy(agent, &bin).unwrap();
    let (key, public) = keygen(&dir.join("keys"));
    let etc = root.join("etc/edgepatch");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::copy(&public, etc.join("release.pub")).unwrap();
    std::fs::write(
        etc.join("agent.conf"),
        format!(
            "node_id = \"image-node\"\nvariant = \"{variant}\"\ntrusted_keys = \"/etc/edgepatch/release.pub\"\n\
             state_dir = \"/var/lib/edgepatch\"\nroot = \"/\"\npackage_manager = \"apt\"\nsnapshot = \"packages\"\n"
        ),
    )
    .unwrap();
    Some(Image {
        _s: s,
        root,
        dir,
        key,
        variant,
    })
}

impl Image {
    /// Run a shell command inside the image: own mount namespace with /proc, no network.
    pub fn sh(&self, script: &str) -> Run {
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

    pub fn agent(&self, args: &str) -> Run {
        self.sh(&format!(
            "edgepatch --config /etc/edgepatch/agent.conf {args}"
        ))
    }

    pub fn version(&self, pkg: &str) -> String {
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

    pub fn versions(&self) -> Vec<String> {
        PKGS.iter().map(|p| self.version(p)).collect()
    }

    pub fn audit_clean(&self) {
        let r = self.sh("dpkg --audit").expect(0);
        assert!(r.stdout.trim().is_empty(), "dpkg --audit: {}", r.stdout);
    }

    /// A newer build of an image package: the installed one repacked, Version + "+epN".
    pub fn bump(&self, pkg: &str, n: u32, failing_postinst: bool) -> PathBuf {
        self.bump_tree(pkg, n, failing_postinst, |_| {})
    }

    /// [`Image::bump`], with `edit` changing the unpacked package tree before it is rebuilt.
    pub fn bump_tree(
        &self,
        pkg: &str,
        n: u32,
        failing_postinst: bool,
        edit: impl Fn(&Path),
    ) -> PathBuf {
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
        edit(&tree);
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
    pub fn bundle(&self, cycle: &str, seq: u64, debs: &[PathBuf]) -> String {
        self.bundle_with(cycle, seq, debs, &[])
    }

    /// [`Image::bundle`] with more `edgepatch-builder build` arguments (e.g. `--install NAME`).
    pub fn bundle_with(&self, cycle: &str, seq: u64, debs: &[PathBuf], extra: &[&str]) -> String {
        let out = self.dir.join(format!("{cycle}.epb"));
        let inputs: Vec<&Path> = debs.iter().map(|d| d.as_path()).collect();
        build_bundle(&self.key, &self.variant, cycle, seq, &out, &inputs, extra);
        std::fs::copy(&out, self.root.join(format!("tmp/{cycle}.epb"))).unwrap();
        format!("/tmp/{cycle}.epb")
    }

    pub fn edit_conffile(&self) -> String {
        let p = self.root.join(CONF);
        let text = std::fs::read_to_string(&p).unwrap() + "# edited by the admin\n";
        std::fs::write(&p, &text).unwrap();
        text
    }

    pub fn conffile(&self) -> String {
        std::fs::read_to_string(self.root.join(CONF)).unwrap()
    }
}

impl Image {
    /// dpkg's Conffiles record of `pkg` (paths and the md5s it judges admin edits by).
    pub fn conffiles_record(&self, pkg: &str) -> String {
        let out = Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                self.root.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f", "${Conffiles}", pkg])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Image {
    /// Append `key = value` to the agent's config (TOML value text as given).
    pub fn set_config(&self, key: &str, value: &str) {
        let p = self.root.join("etc/edgepatch/agent.conf");
        let text = std::fs::read_to_string(&p).unwrap() + &format!("{key} = {value}\n");
        std::fs::write(&p, text).unwrap();
    }
}

impl Image {
    /// Start `edgepatch ARGS` inside the image paused at `point` (the crash-test hook), wait
    /// until it is there, and SIGKILL it with all its children, as a power cut would.
    pub fn kill_at(&self, point: &str, args: &str) {
        let flag = self.root.join("tmp/paused");
        let _ = std::fs::remove_file(&flag);
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--net", "--fork", "chroot"])
            .arg(&self.root)
            .args([
                "/bin/sh",
                "-c",
                &format!(
                    "mount -t proc proc /proc && EDGEPATCH_PAUSE_AT={point} \
                     EDGEPATCH_PAUSE_FILE=/tmp/paused exec edgepatch \
                     --config /etc/edgepatch/agent.conf {args}"
                ),
            ])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        let mut child = spawn_group(cmd);
        let paused = wait_for_file(&flag, 60);
        kill_group(&mut child);
        assert!(paused, "edgepatch {args} never reached {point}");
    }
}

/// The cases both architectures run (tests/restore_image.rs, tests/restore_image_arm64.rs).
pub mod cases {
    use super::*;

    /// apply, then rollback: the image's exact versions and the admin's conffile come back.
    pub fn apply_then_rollback(img: &Image) {
        let conf = img.edit_conffile();
        let before = img.versions();
        assert!(before.iter().all(|v| v.ends_with(" ii")), "{before:?}");
        let debs: Vec<PathBuf> = PKGS.iter().map(|p| img.bump(p, 1, false)).collect();
        // hostname is Architecture: <image arch>; the bundle carries that build.
        let arch = img.variant.rsplit('-').next().unwrap();
        assert!(
            debs[0].to_string_lossy().ends_with(&format!("_{arch}.deb")),
            "{debs:?}"
        );
        let c1 = img.bundle("c1", 1, &debs);

        let r = img.agent(&format!("apply {c1}")).expect(0);
        assert!(r.stdout.contains("2 package(s) changed"), "{}", r.stdout);
        assert!(img.version("hostname").contains("+ep1 ii"));
        assert!(img.version("libsemanage-common").contains("+ep1 ii"));
        assert_eq!(img.conffile(), conf, "apply kept the admin's conffile");
        let st = img.agent("status --json").expect(0).stdout;
        assert!(
            st.contains(&format!("\"variant\":\"{}\"", img.variant)),
            "{st}"
        );
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

    /// A failing postinst in the first cycle after imaging leaves every package at the image's versions.
    pub fn failing_postinst(img: &Image) {
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

    /// Two cycles, then two rollbacks step back to c1's and then the image's versions.
    pub fn two_cycles_two_rollbacks(img: &Image) {
        let image_versions = img.versions();
        let conf = img.edit_conffile();
        let one: Vec<PathBuf> = PKGS.iter().map(|p| img.bump(p, 1, false)).collect();
        let c1 = img.bundle("c1", 1, &one);
        img.agent(&format!("apply {c1}")).expect(0);
        let c1_versions = img.versions();
        assert_ne!(c1_versions, image_versions);
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
}
