//! Helpers shared by the end-to-end tests in `tests/`: the built binaries, scratch directories,
//! keys, agent configs, and real .deb packages built with dpkg-deb at test time.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `target/debug` (or wherever cargo put this test binary's siblings).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("target dir").to_path_buf()
}

pub fn agent_bin() -> PathBuf {
    target_dir().join("edgepatch")
}

pub fn builder_bin() -> PathBuf {
    target_dir().join("edgepatch-builder")
}

/// A scratch directory removed on drop (kept when EDGEPATCH_KEEP_SCRATCH is set, for debugging).
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let base = std::env::temp_dir().join("edgepatch-tests");
        std::fs::create_dir_all(&base).unwrap();
        let path = base.join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&path).unwrap();
        Scratch { path }
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("EDGEPATCH_KEEP_SCRATCH").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Result of running one of our binaries.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Assert the exit code, showing both streams when it is wrong.
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

pub fn run(cmd: &mut Command) -> Run {
    Run::from(
        cmd.output()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")),
    )
}

pub fn builder(args: &[&str]) -> Run {
    run(Command::new(builder_bin()).args(args))
}

/// A node: its config file, state dir and scratch root.
pub struct Node {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub root: PathBuf,
}

impl Node {
    /// Write an agent config under `dir`. `extra` is appended verbatim (more keys).
    pub fn new(dir: &Path, variant: &str, trusted: &Path, extra: &str) -> Node {
        let state_dir = dir.join("state");
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let config = dir.join("agent.conf");
        std::fs::write(
            &config,
            format!(
                "node_id = \"test-node\"\nvariant = \"{variant}\"\ntrusted_keys = \"{}\"\nstate_dir = \"{}\"\nroot = \"{}\"\n{extra}",
                trusted.display(),
                state_dir.display(),
                root.display()
            ),
        )
        .unwrap();
        Node {
            config,
            state_dir,
            root,
        }
    }

    pub fn agent(&self, args: &[&str]) -> Run {
        run(&mut self.command(args))
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(agent_bin());
        c.arg("--config").arg(&self.config).args(args);
        c
    }
}

/// Generate a key pair in `dir`; returns (secret, public) paths.
pub fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    builder(&["keygen", "--out", dir.to_str().unwrap()]).expect(0);
    (dir.join("edgepatch.key"), dir.join("edgepatch.pub"))
}

/// Build a bundle; `extra` are more build flags. Panics unless the builder exits 0.
pub fn build_bundle(
    key: &Path,
    variant: &str,
    cycle: &str,
    seq: u64,
    out: &Path,
    inputs: &[&Path],
    extra: &[&str],
) -> Run {
    let seq = seq.to_string();
    let mut args = vec![
        "build",
        "--key",
        key.to_str().unwrap(),
        "--variant",
        variant,
        "--cycle",
        cycle,
        "--sequence",
        &seq,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    for i in inputs {
        args.push(i.to_str().unwrap());
    }
    builder(&args).expect(0)
}

/// A test .deb: name, version, dependencies, maintainer scripts and files.
pub struct Deb<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub depends: &'a str,
    pub postinst: Option<&'a str>,
    pub preinst: Option<&'a str>,
    /// More control fields, each line ending in '\n' (e.g. "Conflicts: x\nReplaces: x\n").
    pub control: &'a str,
    /// (absolute path inside the root, contents)
    pub files: Vec<(String, String)>,
    /// Paths of `files` that are conffiles (DEBIAN/conffiles).
    pub conffiles: Vec<String>,
}

impl<'a> Deb<'a> {
    pub fn new(name: &'a str, version: &'a str) -> Deb<'a> {
        Deb {
            name,
            version,
            depends: "",
            postinst: None,
            preinst: None,
            control: "",
            files: vec![(
                format!("/usr/share/edgepatch-test/{name}"),
                format!("{name} {version}\n"),
            )],
            conffiles: Vec::new(),
        }
    }

    /// Ship `path` with `contents` as a conffile.
    pub fn conffile(mut self, path: &str, contents: &str) -> Self {
        self.files.push((path.to_string(), contents.to_string()));
        self.conffiles.push(path.to_string());
        self
    }

    pub fn depends(mut self, d: &'a str) -> Self {
        self.depends = d;
        self
    }

    pub fn control(mut self, fields: &'a str) -> Self {
        self.control = fields;
        self
    }

    pub fn preinst(mut self, script: &'a str) -> Self {
        self.preinst = Some(script);
        self
    }

    pub fn postinst(mut self, script: &'a str) -> Self {
        self.postinst = Some(script);
        self
    }

    /// Build `NAME_VERSION_all.deb` into `out_dir` with dpkg-deb; returns its path.
    pub fn build(&self, out_dir: &Path) -> PathBuf {
        let work = out_dir.join(format!(".build-{}-{}", self.name, self.version));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(work.join("DEBIAN")).unwrap();
        let mut control = format!(
            "Package: {}\nVersion: {}\nArchitecture: all\nMaintainer: edgepatch tests <t@example.invalid>\nDescription: edgepatch test package\n",
            self.name, self.version
        );
        if !self.depends.is_empty() {
            control += &format!("Depends: {}\n", self.depends);
        }
        control += self.control;
        std::fs::write(work.join("DEBIAN/control"), control).unwrap();
        for (name, script) in [("preinst", self.preinst), ("postinst", self.postinst)] {
            let Some(script) = script else { continue };
            use std::os::unix::fs::PermissionsExt;
            let p = work.join("DEBIAN").join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        if !self.conffiles.is_empty() {
            let list: String = self.conffiles.iter().map(|c| format!("{c}\n")).collect();
            std::fs::write(work.join("DEBIAN/conffiles"), list).unwrap();
        }
        for (path, contents) in &self.files {
            let p = work.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, contents).unwrap();
        }
        std::fs::create_dir_all(out_dir).unwrap();
        let deb = out_dir.join(format!("{}_{}_all.deb", self.name, self.version));
        run(Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "--build"])
            .arg(&work)
            .arg(&deb))
        .expect(0);
        std::fs::remove_dir_all(&work).unwrap();
        deb
    }
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Flip one byte of a file at `offset` (negative: from the end).
pub fn flip_byte(path: &Path, offset: i64) {
    let mut data = std::fs::read(path).unwrap();
    let i = if offset < 0 {
        (data.len() as i64 + offset) as usize
    } else {
        offset as usize
    };
    data[i] ^= 0x01;
    std::fs::write(path, data).unwrap();
}

/// Make `root` a scratch Debian root: the host's dpkg status is copied so base packages count as
/// installed, plus the dirs dpkg needs.
pub fn deb_root(root: &Path) {
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/var/lib/dpkg/status", root.join("var/lib/dpkg/status")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/available"), "").unwrap();
}

/// Version of a package in a scratch Debian root, if present.
pub fn deb_version(root: &Path, name: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", "${Version} ${db:Status-Abbrev}", name])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// Start a command in its own process group, so a test can SIGKILL it with all its children,
/// as a power cut would.
pub fn spawn_group(mut cmd: Command) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd.spawn().unwrap()
}

pub fn kill_group(child: &mut std::process::Child) {
    let pgid = child.id() as i32;
    Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    let _ = child.wait();
}

/// Wait up to `secs` for a file to appear.
pub fn wait_for_file(path: &Path, secs: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

/// A test .rpm built with rpmbuild: noarch, one file, optional Requires and scriptlets; more
/// preamble lines (`head`), files (`install` shell + `files` lines) and a payload compressor
/// (`payload`, an rpmbuild `_binary_payload` such as `w6.xzdio`) when set.
pub struct Rpm<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub requires: &'a str,
    pub pre: Option<&'a str>,
    pub post: Option<&'a str>,
    pub head: &'a str,
    pub install: &'a str,
    pub files: &'a str,
    pub payload: &'a str,
    /// `noarch` unless set (`x86_64`, `i686`: one name for two arches is multilib).
    pub arch: &'a str,
}

impl<'a> Rpm<'a> {
    pub fn new(name: &'a str, version: &'a str) -> Rpm<'a> {
        Rpm {
            name,
            version,
            requires: "",
            pre: None,
            post: None,
            head: "",
            install: "",
            files: "",
            payload: "",
            arch: "noarch",
        }
    }

    pub fn arch(mut self, arch: &'a str) -> Self {
        self.arch = arch;
        self
    }

    /// More preamble lines (`Obsoletes: x`, `Provides: y`, `AutoReqProv: no`).
    pub fn head(mut self, lines: &'a str) -> Self {
        self.head = lines;
        self
    }

    /// More files: shell for %install (`$RPM_BUILD_ROOT` is the buildroot) and %files lines.
    pub fn files(mut self, install: &'a str, files: &'a str) -> Self {
        self.install = install;
        self.files = files;
        self
    }

    /// A %config(noreplace) file `path` holding `text` (a line).
    pub fn config(self, path: &'a str, text: &'a str, noreplace: bool) -> Self {
        let install = Box::leak(
            format!("mkdir -p \"$RPM_BUILD_ROOT$(dirname {path})\"\necho '{text}' > \"$RPM_BUILD_ROOT{path}\"\n")
                .into_boxed_str(),
        );
        let kind = if noreplace {
            "%config(noreplace)"
        } else {
            "%config"
        };
        let files = Box::leak(format!("{kind} {path}\n").into_boxed_str());
        self.files(install, files)
    }

    /// The payload compressor, as rpmbuild's `_binary_payload` (`w9.gzdio`, `w6.xzdio`, `w19.zstdio`).
    pub fn payload(mut self, p: &'a str) -> Self {
        self.payload = p;
        self
    }

    pub fn requires(mut self, r: &'a str) -> Self {
        self.requires = r;
        self
    }

    pub fn pre(mut self, script: &'a str) -> Self {
        self.pre = Some(script);
        self
    }

    pub fn post(mut self, script: &'a str) -> Self {
        self.post = Some(script);
        self
    }

    /// Build `NAME-VERSION-1.noarch.rpm` into `out_dir`; returns its path.
    pub fn build(&self, out_dir: &Path) -> PathBuf {
        let top = out_dir.join(format!(".rpmbuild-{}-{}", self.name, self.version));
        let _ = std::fs::remove_dir_all(&top);
        std::fs::create_dir_all(top.join("SPECS")).unwrap();
        let mut spec = format!(
            "Name: {n}\nVersion: {v}\nRelease: 1\nSummary: edgepatch test\nLicense: MIT\n{a}",
            n = self.name,
            v = self.version,
            // (An arch package is built with --target: this rpm refuses BuildArch: i686.)
            a = if self.arch == "noarch" {
                "BuildArch: noarch\n"
            } else {
                ""
            }
        );
        if !self.requires.is_empty() {
            spec += &format!("Requires: {}\n", self.requires);
        }
        spec += self.head;
        spec += &format!(
            "\n%description\nedgepatch test package\n%install\nmkdir -p %{{buildroot}}/usr/share/edgepatch-test\necho '{n} {v}' > %{{buildroot}}/usr/share/edgepatch-test/{n}\n{i}\n%files\n/usr/share/edgepatch-test/{n}\n{f}\n",
            n = self.name,
            v = self.version,
            i = self.install,
            f = self.files,
        );
        if let Some(s) = self.pre {
            spec += &format!("%pre\n{s}\n");
        }
        if let Some(s) = self.post {
            spec += &format!("%post\n{s}\n");
        }
        let spec_path = top.join("SPECS/t.spec");
        std::fs::write(&spec_path, spec).unwrap();
        let mut cmd = Command::new("rpmbuild");
        cmd.arg("--define")
            .arg(format!("_topdir {}", top.display()))
            // Host binaries in a noarch test package (the scratch root's /bin/sh): keep as is.
            .args(["--define", "_binaries_in_noarch_packages_terminate_build 0"])
            .args(["--define", "__os_install_post %{nil}"])
            // File names that are not UTF-8 (an attack test builds one).
            .args(["--define", "_invalid_encoding_terminates_build 0"]);
        if !self.payload.is_empty() {
            cmd.arg("--define")
                .arg(format!("_binary_payload {}", self.payload));
        }
        if self.arch != "noarch" {
            cmd.args(["--target", self.arch]);
        }
        run(cmd.args(["--quiet", "-bb"]).arg(&spec_path)).expect(0);
        let name = format!("{}-{}-1.{}.rpm", self.name, self.version, self.arch);
        std::fs::create_dir_all(out_dir).unwrap();
        let out = out_dir.join(&name);
        std::fs::copy(top.join("RPMS").join(self.arch).join(&name), &out).unwrap();
        std::fs::remove_dir_all(&top).unwrap();
        out
    }
}

/// `ep-sh`: the host's dash as `/bin/sh` (with its loader and libc), so scriptlets really run
/// in a scratch rpm root (rpm runs them chrooted there).
pub fn rpm_shell<'a>() -> Rpm<'a> {
    Rpm::new("ep-sh", "1.0")
        .head("AutoReqProv: no\nProvides: /bin/sh\n")
        .files(
            "for f in /usr/bin/dash /lib/x86_64-linux-gnu/libc.so.6 /lib64/ld-linux-x86-64.so.2; do\n\
             mkdir -p \"$RPM_BUILD_ROOT$(dirname $f)\"; cp -L $f \"$RPM_BUILD_ROOT$f\"; done\n\
             mkdir -p \"$RPM_BUILD_ROOT/bin\"; ln -s /usr/bin/dash \"$RPM_BUILD_ROOT/bin/sh\"\n",
            "/usr/bin/dash\n/bin/sh\n/lib/x86_64-linux-gnu/libc.so.6\n/lib64/ld-linux-x86-64.so.2\n",
        )
}

/// `rpm --root ROOT -i` of these packages (installed before any bundle: no cache has them).
pub fn rpm_install(root: &Path, pkgs: &[PathBuf]) {
    std::fs::create_dir_all(root).unwrap();
    run(Command::new("rpm")
        .arg("--root")
        .arg(root)
        .arg("-i")
        .args(pkgs))
    .expect(0);
}

/// Version-release of a package in a scratch rpm root, if installed.
pub fn rpm_version(root: &Path, name: &str) -> Option<String> {
    let out = Command::new("rpm")
        .arg("--root")
        .arg(root)
        .args(["-q", "--qf", "%{VERSION}-%{RELEASE}", name])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
pub mod faulty_http;

/// A test fleet: a scratch dir, a release key pair, and nodes of one variant and package manager.
pub struct Fleet {
    pub dir: Scratch,
    pub key: PathBuf,
    pub public: PathBuf,
    pub variant: &'static str,
    /// `apt` nodes get a scratch Debian root (deb_root); `dnf` roots start empty.
    pub package_manager: &'static str,
}

impl Fleet {
    pub fn new(tag: &str, variant: &'static str, package_manager: &'static str) -> Fleet {
        let dir = Scratch::new(tag);
        let (key, public) = keygen(&dir.join("keys"));
        Fleet {
            dir,
            key,
            public,
            variant,
            package_manager,
        }
    }

    /// A node in `dir/name` with `extra` config lines.
    pub fn node_with(&self, name: &str, extra: &str) -> Node {
        let conf = format!("package_manager = \"{}\"\n{extra}", self.package_manager);
        let node = Node::new(&self.dir.join(name), self.variant, &self.public, &conf);
        if self.package_manager == "apt" {
            deb_root(&node.root);
        }
        node
    }

    pub fn node(&self, name: &str) -> Node {
        self.node_with(name, "")
    }

    /// Build `dir/CYCLE.epb` from the packages in `pkgs` with extra build flags.
    pub fn build_dir(&self, cycle: &str, seq: u64, pkgs: &Path, extra: &[&str]) -> (PathBuf, Run) {
        let out = self.dir.join(format!("{cycle}.epb"));
        let r = build_bundle(&self.key, self.variant, cycle, seq, &out, &[pkgs], extra);
        (out, r)
    }

    /// Make the packages with `make` into `dir/pkgs-CYCLE`, then build the bundle installing
    /// `install`.
    pub fn bundle_with(
        &self,
        cycle: &str,
        seq: u64,
        install: &[&str],
        make: impl FnOnce(&Path),
    ) -> PathBuf {
        let pkgs = self.dir.join(format!("pkgs-{cycle}"));
        make(&pkgs);
        let extra: Vec<&str> = install.iter().flat_map(|i| ["--install", i]).collect();
        self.build_dir(cycle, seq, &pkgs, &extra).0
    }

    /// A bundle of test .debs.
    pub fn debs(&self, cycle: &str, seq: u64, debs: &[Deb], install: &[&str]) -> PathBuf {
        self.bundle_with(cycle, seq, install, |p| {
            for d in debs {
                d.build(p);
            }
        })
    }

    /// A bundle of test .rpms.
    pub fn rpms(&self, cycle: &str, seq: u64, rpms: &[Rpm], install: &[&str]) -> PathBuf {
        self.bundle_with(cycle, seq, install, |p| {
            for r in rpms {
                r.build(p);
            }
        })
    }
}

/// Helpers of the attack tests on the RHEL-family rollback (tests/attack_rpm.rs,
/// tests/attack2_rpm.rs): a dnf fleet, an rpm "image", logged apply / rollback, small readers.
pub mod rpm_attack {
    use super::*;

    pub const VARIANT: &str = "rhel-9-x86_64";

    pub fn fleet(tag: &str) -> Fleet {
        assert!(
            have("dnf") && have("rpmbuild") && have("createrepo_c"),
            "dnf, rpmbuild or createrepo_c missing; run scripts/test-deps.sh"
        );
        Fleet::new(tag, VARIANT, "dnf")
    }
    pub fn image(f: &Fleet, node: &Node, rpms: &[Rpm]) {
        let dir = f.dir.join("image");
        let files: Vec<PathBuf> = rpms.iter().map(|r| r.build(&dir)).collect();
        rpm_install(&node.root, &files);
    }
    pub fn apply(node: &Node, bundle: &Path) -> Run {
        let r = node.agent(&["apply", bundle.to_str().unwrap()]);
        eprintln!("== apply exit {}\n{}{}", r.code, r.stdout, r.stderr);
        r
    }
    pub fn rollback(node: &Node) -> Run {
        let r = node.agent(&["rollback"]);
        eprintln!("== rollback exit {}\n{}{}", r.code, r.stdout, r.stderr);
        r
    }
    pub fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_else(|e| format!("<{}: {e}>", p.display()))
    }
    pub fn ls(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
    pub fn rpmq(root: &Path, name: &str) -> String {
        let q = run(Command::new("rpm")
            .arg("--root")
            .arg(root)
            .args(["-q", name]));
        q.stdout + &q.stderr
    }
    pub fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }
}
