//! Third attack on the RHEL-family handling: MULTILIB packages (one name installed for two
//! arches) in apply, failed-install restore and rollback. Each test asserts the README's
//! promise; a failing assertion is a finding.
use edgepatch_e2e::*;
use std::path::Path;
use std::process::Command;

use edgepatch_e2e::rpm_attack::*;

/// A bare 32-bit i386 ELF header (52 bytes), mode 755, at `$d/elf` (see restore_rpm.rs).
const ELF32: &str = concat!(
    "printf '\\177\\105\\114\\106\\001\\001\\001\\000\\000\\000\\000\\000\\000\\000\\000\\000\\002\\000\\003\\000\\001\\000\\000\\000\\000\\200'",
    " > $d/elf; printf '\\004\\010\\000\\000\\000\\000\\000\\000\\000\\000\\000\\000\\000\\000\\064\\000\\040\\000\\000\\000\\050\\000\\000\\000\\000\\000' >> $d/elf; chmod 755 $d/elf"
);

/// A multilib-able package NAME-V.ARCH: an ELF file of its class in /opt/NAME/ARCH, a per-arch
/// `lib` text; the shared /usr/share/edgepatch-test/NAME is made version-independent (so two
/// versions of two arches can coexist). `install`/`files` add more; `head` preamble lines.
fn ml(
    name: &'static str,
    v: &'static str,
    arch: &'static str,
    head: &'static str,
    install: &str,
    files: &str,
) -> Rpm<'static> {
    let elf = if arch == "x86_64" {
        "cp /usr/bin/true $d/elf".to_string()
    } else {
        ELF32.to_string()
    };
    Rpm::new(name, v)
        .arch(arch)
        .head(leak(format!("AutoReqProv: no\n{head}")))
        .files(
            leak(format!(
                "d=$RPM_BUILD_ROOT/opt/{name}/{arch}; mkdir -p $d; echo '{v} {arch}' > $d/lib\n{elf}\n\
                 echo '{name} common' > $RPM_BUILD_ROOT/usr/share/edgepatch-test/{name}\n{install}\n"
            )),
            leak(format!("/opt/{name}/{arch}\n{files}")),
        )
}

fn m(name: &'static str, v: &'static str, arch: &'static str) -> Rpm<'static> {
    ml(name, v, arch, "", "", "")
}

/// `rpm -q` rows (sorted), full NEVRA.
fn q(root: &Path, names: &[&str]) -> Vec<String> {
    let r = run(Command::new("rpm")
        .arg("--root")
        .arg(root)
        .args([
            "-q",
            "--qf",
            "%{NAME}-%{EPOCHNUM}:%{VERSION}-%{RELEASE}.%{ARCH}\n",
        ])
        .args(names));
    let mut v: Vec<String> = r
        .stdout
        .lines()
        .filter(|l| !l.contains("is not installed"))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// `rpm -q` rows in database order (unsorted), to see which arch rpm lists first.
fn q_raw(root: &Path, name: &str) -> String {
    rpmq(root, name)
}

fn image_each(f: &Fleet, node: &Node, rpms: &[Rpm]) {
    // One `rpm -i` per package: database order = this order.
    for (i, r) in rpms.iter().enumerate() {
        let dir = f.dir.join(format!("image{i}"));
        let file = r.build(&dir);
        run(Command::new("rpm")
            .arg("--root")
            .arg(&node.root)
            .args(["-i", "--oldpackage"])
            .arg(file))
        .expect(0);
    }
}

fn lib(node: &Node, name: &str, arch: &str) -> String {
    read(&node.root.join(format!("opt/{name}/{arch}/lib")))
}

/// M1, M1b: versions differ per arch before the patch, one arch already at the bundle's 2.0
/// (first or second in the rpm database). rpm -U of the other arch to 2.0 would erase the one
/// at 2.0 (rpm #2837): refused, nothing changed.
fn skew_at_the_target_is_refused(tag: &str, image: [(&'static str, &'static str); 2]) {
    let f = fleet(tag);
    let node = f.node("n");
    image_each(&f, &node, &image.map(|(v, arch)| m("ep-ml", v, arch)));
    let before = q(&node.root, &["ep-ml"]);
    let c1 = f.rpms(
        "c1",
        1,
        &[m("ep-ml", "2.0", "x86_64"), m("ep-ml", "2.0", "i686")],
        &[],
    );
    let r = apply(&node, &c1);
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(
        r.stderr.contains("different versions for its arches"),
        "{}",
        r.stderr
    );
    assert_eq!(q(&node.root, &["ep-ml"]), before);
}

#[test]
fn m1_arch_skew_x86_at_the_target_is_refused() {
    skew_at_the_target_is_refused("m1", [("2.0", "x86_64"), ("1.0", "i686")]);
}

#[test]
fn m1b_arch_skew_i686_at_the_target_is_refused() {
    skew_at_the_target_is_refused("m1b", [("2.0", "i686"), ("1.0", "x86_64")]);
}

/// M1c: skew, both upgraded by the cycle (x86_64 1.1, i686 1.0 -> 2.0), then rollback: each
/// arch back at its own pre-patch version.
#[test]
fn m1c_arch_skew_rollback_restores_each_arch_version() {
    let f = fleet("m1c");
    let node = f.node("n");
    image_each(
        &f,
        &node,
        &[m("ep-ml", "1.1", "x86_64"), m("ep-ml", "1.0", "i686")],
    );
    let before = q(&node.root, &["ep-ml"]);
    let c1 = f.rpms(
        "c1",
        1,
        &[m("ep-ml", "2.0", "x86_64"), m("ep-ml", "2.0", "i686")],
        &[],
    );
    apply(&node, &c1).expect(0);
    assert_eq!(
        q(&node.root, &["ep-ml"]),
        ["ep-ml-0:2.0-1.i686", "ep-ml-0:2.0-1.x86_64"]
    );
    let r = rollback(&node);
    eprintln!(
        "after rollback exit {}: {:?} (before {before:?})",
        r.code,
        q(&node.root, &["ep-ml"])
    );
    eprintln!("rpm -q order:\n{}", q_raw(&node.root, "ep-ml"));
    assert_eq!(q(&node.root, &["ep-ml"]), before);
    assert_eq!(r.code, 0);
    assert_eq!(lib(&node, "ep-ml", "x86_64"), "1.1 x86_64\n");
    assert_eq!(lib(&node, "ep-ml", "i686"), "1.0 i686\n");
}

/// M2: both arches installed, the bundle offers only x86_64 2.0. Either all arches upgrade or
/// the apply refuses with nothing changed (and says why).
#[test]
fn m2_bundle_lacks_i686() {
    let f = fleet("m2");
    let node = f.node("n");
    image(
        &f,
        &node,
        &[m("ep-ml", "1.0", "x86_64"), m("ep-ml", "1.0", "i686")],
    );
    let c1 = f.rpms("c1", 1, &[m("ep-ml", "2.0", "x86_64")], &[]);
    let r = apply(&node, &c1);
    let now = q(&node.root, &["ep-ml"]);
    eprintln!("after apply exit {}: {now:?}", r.code);
    assert!(
        r.code != 0 && now == ["ep-ml-0:1.0-1.i686", "ep-ml-0:1.0-1.x86_64"]
            || r.code == 0 && now == ["ep-ml-0:2.0-1.i686", "ep-ml-0:2.0-1.x86_64"],
        "exit {} with {now:?}",
        r.code
    );
    if r.code == 0 {
        rollback(&node).expect(0);
    }
}

/// M3: the cycle newly installs the i686 arch of a name installed for x86_64 only (a 32-bit
/// application needs the 32-bit library). Rollback must remove ep-lib.i686 and ep-app32 and
/// keep ep-lib.x86_64 at 1.0 with its files.
#[test]
fn m3_new_i686_beside_installed_x86_64_rollback() {
    let f = fleet("m3");
    let node = f.node("n");
    image(
        &f,
        &node,
        &[ml(
            "ep-lib",
            "1.0",
            "x86_64",
            "Provides: ep-lib-64\n",
            "",
            "",
        )],
    );
    let c1 = f.rpms(
        "c1",
        1,
        &[
            ml("ep-lib", "1.0", "i686", "Provides: ep-lib-32\n", "", ""),
            ml("ep-app32", "1.0", "i686", "Requires: ep-lib-32\n", "", ""),
        ],
        &["ep-app32"],
    );
    let r = apply(&node, &c1);
    eprintln!("after apply: {:?}", q(&node.root, &["ep-lib", "ep-app32"]));
    assert_eq!(r.code, 0);
    let set = ls(&node.state_dir.join("rollback"));
    for s in set.iter().filter(|s| s.ends_with(".set")) {
        eprintln!("{s}:\n{}", read(&node.state_dir.join("rollback").join(s)));
    }
    let r = rollback(&node);
    let now = q(&node.root, &["ep-lib", "ep-app32"]);
    eprintln!("after rollback exit {}: {now:?}", r.code);
    assert!(
        now.contains(&"ep-lib-0:1.0-1.x86_64".to_string()),
        "ep-lib.x86_64 (pre-patch) is gone: {now:?}, exit {}",
        r.code
    );
    assert_eq!(lib(&node, "ep-lib", "x86_64"), "1.0 x86_64\n");
    assert_eq!(r.code, 0, "rollback not complete");
    assert_eq!(now, ["ep-lib-0:1.0-1.x86_64"]);
}

/// M3b: as M3 but ep-lib.x86_64 is upgraded too (1.0 -> 2.0) while i686 2.0 is new.
#[test]
fn m3b_upgrade_x86_and_new_i686_rollback() {
    let f = fleet("m3b");
    let node = f.node("n");
    image(
        &f,
        &node,
        &[ml(
            "ep-lib",
            "1.0",
            "x86_64",
            "Provides: ep-lib-64\n",
            "",
            "",
        )],
    );
    let c1 = f.rpms(
        "c1",
        1,
        &[
            ml("ep-lib", "2.0", "x86_64", "Provides: ep-lib-64\n", "", ""),
            ml("ep-lib", "2.0", "i686", "Provides: ep-lib-32\n", "", ""),
            ml("ep-app32", "1.0", "i686", "Requires: ep-lib-32\n", "", ""),
        ],
        &["ep-app32"],
    );
    let r = apply(&node, &c1);
    eprintln!("after apply: {:?}", q(&node.root, &["ep-lib", "ep-app32"]));
    assert_eq!(r.code, 0);
    let r = rollback(&node);
    let now = q(&node.root, &["ep-lib", "ep-app32"]);
    eprintln!("after rollback exit {}: {now:?}", r.code);
    assert_eq!(now, ["ep-lib-0:1.0-1.x86_64"]);
    assert_eq!(lib(&node, "ep-lib", "x86_64"), "1.0 x86_64\n");
    assert!(!node.root.join("opt/ep-lib/i686").exists());
    assert_eq!(r.code, 0);
}

/// M3c: as M3, but the install fails (ep-app32's %post): the restore must leave ep-lib.x86_64.
#[test]
fn m3c_new_i686_beside_x86_failed_install_restore() {
    let f = fleet("m3c");
    let node = f.node("n");
    image(
        &f,
        &node,
        &[
            rpm_shell(),
            ml("ep-lib", "1.0", "x86_64", "Provides: ep-lib-64\n", "", ""),
        ],
    );
    let c1 = f.rpms(
        "c1",
        1,
        &[
            ml("ep-lib", "1.0", "i686", "Provides: ep-lib-32\n", "", ""),
            ml("ep-app32", "1.0", "i686", "Requires: ep-lib-32\n", "", "").post("exit 1"),
        ],
        &["ep-app32"],
    );
    let r = apply(&node, &c1);
    let now = q(&node.root, &["ep-lib", "ep-app32"]);
    eprintln!("after failed apply exit {}: {now:?}", r.code);
    assert!(
        now.contains(&"ep-lib-0:1.0-1.x86_64".to_string()),
        "ep-lib.x86_64 (pre-patch) is gone: {now:?}"
    );
    assert_eq!(now, ["ep-lib-0:1.0-1.x86_64"], "exit {}", r.code);
    assert_eq!(r.code, 6);
}

/// M3d: after M3's incomplete rollback (exit 6: `ep-lib (at 1.0-1, want none)`), the admin
/// removes what the cycle added by hand (ep-app32, ep-lib.i686) and runs rollback again. The
/// pre-patch ep-lib.x86_64 must survive.
#[test]
fn m3d_rollback_again_after_manual_cleanup_removes_the_image_x86_64() {
    let f = fleet("m3d");
    let node = f.node("n");
    image(
        &f,
        &node,
        &[ml(
            "ep-lib",
            "1.0",
            "x86_64",
            "Provides: ep-lib-64\n",
            "",
            "",
        )],
    );
    let c1 = f.rpms(
        "c1",
        1,
        &[
            ml("ep-lib", "1.0", "i686", "Provides: ep-lib-32\n", "", ""),
            ml("ep-app32", "1.0", "i686", "Requires: ep-lib-32\n", "", ""),
        ],
        &["ep-app32"],
    );
    apply(&node, &c1).expect(0);
    // The new i686 is a change of ep-lib.i686: the rollback removes it and ep-app32 only.
    let r = rollback(&node);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("removed ep-app32 ep-lib.i686"),
        "{}",
        r.stdout
    );
    assert_eq!(
        q(&node.root, &["ep-lib", "ep-app32"]),
        ["ep-lib-0:1.0-1.x86_64"]
    );
    let r = rollback(&node);
    let now = q(&node.root, &["ep-lib", "ep-app32"]);
    eprintln!("after second rollback exit {}: {now:?}", r.code);
    assert_eq!(
        now,
        ["ep-lib-0:1.0-1.x86_64"],
        "the image's ep-lib.x86_64 was removed by rollback (exit {})",
        r.code
    );
}

/// M4a: the image's x86_64 has a failing %preun; the upgrade leaves two x86_64 entries; the
/// failed install's restore must end with exactly one entry per arch at 1.0.
#[test]
fn m4a_failing_preun_in_one_arch_failed_install_restore() {
    let f = fleet("m4a");
    let node = f.node("n");
    image(
        &f,
        &node,
        &[
            rpm_shell(),
            ml("ep-ml", "1.0", "x86_64", "%preun\nexit 1\n", "", ""),
            m("ep-ml", "1.0", "i686"),
        ],
    );
    let c1 = f.rpms(
        "c1",
        1,
        &[m("ep-ml", "2.0", "x86_64"), m("ep-ml", "2.0", "i686")],
        &[],
    );
    let r = apply(&node, &c1);
    let now = q(&node.root, &["ep-ml"]);
    eprintln!("after apply exit {}: {now:?}", r.code);
    // Not repaired for multilib (an rpm -U of one arch would erase the other, rpm #2837):
    // the restore says so, exit 6, and the node needs attention.
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(r.stderr.contains("restore incomplete"), "{}", r.stderr);
    assert!(now.contains(&"ep-ml-0:1.0-1.i686".to_string()), "{now:?}");
}

/// M4b: the cycle's x86_64 2.0 has a failing %preun: rollback's rpm -U leaves two x86_64
/// entries; the repair should drop the 2.0 entry and exit 0 ("dropped the undone").
#[test]
fn m4b_failing_preun_in_one_arch_rollback_repair() {
    let f = fleet("m4b");
    let node = f.node("n");
    image(
        &f,
        &node,
        &[
            rpm_shell(),
            m("ep-ml", "1.0", "x86_64"),
            m("ep-ml", "1.0", "i686"),
        ],
    );
    let c1 = f.rpms(
        "c1",
        1,
        &[
            ml("ep-ml", "2.0", "x86_64", "%preun\nexit 1\n", "", ""),
            m("ep-ml", "2.0", "i686"),
        ],
        &[],
    );
    apply(&node, &c1).expect(0);
    eprintln!("after apply: {:?}", q(&node.root, &["ep-ml"]));
    let r = rollback(&node);
    let now = q(&node.root, &["ep-ml"]);
    eprintln!("after rollback exit {}: {now:?}", r.code);
    eprintln!(
        "files: {:?} {:?}",
        ls(&node.root.join("opt/ep-ml")),
        ls(&node.root.join("opt/ep-ml/i686"))
    );
    // Not repaired for multilib (see M4a): exit 6 naming the duplicate, each time, and the
    // other arch is never erased by a retry.
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(
        r.stderr.contains("rpmdb holds two versions of ep-ml"),
        "{}",
        r.stderr
    );
    assert!(now.contains(&"ep-ml-0:1.0-1.i686".to_string()), "{now:?}");
    let r2 = rollback(&node);
    assert_eq!(r2.code, 6, "{}", r2.stderr);
    assert!(q(&node.root, &["ep-ml"]).contains(&"ep-ml-0:1.0-1.i686".to_string()));
}

/// M5: a %config(noreplace) shared by both arch packages, edited by the admin before the
/// cycle and again after it. Rollback: the pre-patch edit live, the later edit kept (once),
/// no .rpmnew left.
#[test]
fn m5_shared_config_in_both_arches() {
    let f = fleet("m5");
    let node = f.node("n");
    let c = |v: &'static str, a: &'static str| {
        ml(
            "ep-ml",
            v,
            a,
            "",
            &format!(
                "mkdir -p $RPM_BUILD_ROOT/etc; echo 'default {v}' > $RPM_BUILD_ROOT/etc/ep-ml.conf"
            ),
            "%config(noreplace) /etc/ep-ml.conf\n",
        )
    };
    image(&f, &node, &[c("1.0", "x86_64"), c("1.0", "i686")]);
    let etc = node.root.join("etc");
    let conf = etc.join("ep-ml.conf");
    std::fs::write(&conf, "admin before the cycle, longer\n").unwrap();
    let before = ls(&etc);
    let c1 = f.rpms("c1", 1, &[c("2.0", "x86_64"), c("2.0", "i686")], &[]);
    apply(&node, &c1).expect(0);
    eprintln!("after apply etc {:?}", ls(&etc));
    let set: Vec<String> = ls(&node.state_dir.join("rollback"))
        .into_iter()
        .filter(|s| s.ends_with(".set"))
        .collect();
    eprintln!("{}", read(&node.state_dir.join("rollback").join(&set[0])));
    std::fs::write(&conf, "admin AFTER the cycle\n").unwrap();
    let r = rollback(&node);
    let now = ls(&etc);
    eprintln!("after rollback exit {} etc {now:?}", r.code);
    for n in &now {
        eprintln!("  {n}: {:?}", read(&etc.join(n)));
    }
    assert_eq!(r.code, 0);
    assert_eq!(read(&conf), "admin before the cycle, longer\n");
    let saved: Vec<&String> = now
        .iter()
        .filter(|n| n.contains("edgepatch-saved"))
        .collect();
    assert!(!saved.is_empty(), "later edit lost");
    assert!(saved
        .iter()
        .all(|s| read(&etc.join(s)) == "admin AFTER the cycle\n"));
    let extra: Vec<&String> = now
        .iter()
        .filter(|n| !before.contains(n) && !n.contains("edgepatch-saved") && *n != "dnf")
        .collect();
    assert!(extra.is_empty(), "left behind: {extra:?}");
    assert_eq!(saved.len(), 1, "the later edit is kept twice: {saved:?}");
}

/// M6: a cycle newly installs both arches of a new name; rollback removes both.
#[test]
fn m6_new_multilib_both_arches_then_rollback() {
    let f = fleet("m6");
    let node = f.node("n");
    image(&f, &node, &[m("ep-base", "1.0", "x86_64")]);
    let c1 = f.rpms(
        "c1",
        1,
        &[
            ml("ep-nm", "1.0", "x86_64", "Provides: ep-nm-64\n", "", ""),
            ml("ep-nm", "1.0", "i686", "Provides: ep-nm-32\n", "", ""),
            ml("ep-app32", "1.0", "i686", "Requires: ep-nm-32\n", "", ""),
        ],
        &["ep-nm", "ep-app32"],
    );
    let r = apply(&node, &c1);
    let now = q(&node.root, &["ep-nm", "ep-app32"]);
    eprintln!("after apply: {now:?}");
    assert_eq!(r.code, 0);
    let r = rollback(&node);
    let now = q(&node.root, &["ep-nm", "ep-app32", "ep-base"]);
    eprintln!("after rollback exit {}: {now:?}", r.code);
    assert_eq!(r.code, 0);
    assert_eq!(now, ["ep-base-0:1.0-1.x86_64"]);
    assert!(!node.root.join("opt/ep-nm/i686").exists());
    assert!(!node.root.join("opt/ep-nm/x86_64").exists());
}

/// M7: epochs on a multilib package.
#[test]
fn m7_multilib_with_epoch() {
    let f = fleet("m7");
    let node = f.node("n");
    let e = |v: &'static str, a: &'static str| ml("ep-ml", v, a, "Epoch: 1\n", "", "");
    image(&f, &node, &[e("1.0", "x86_64"), e("1.0", "i686")]);
    let c1 = f.rpms("c1", 1, &[e("2.0", "x86_64"), e("2.0", "i686")], &[]);
    let r = apply(&node, &c1);
    eprintln!("after apply: {:?}", q(&node.root, &["ep-ml"]));
    assert_eq!(r.code, 0);
    assert_eq!(
        q(&node.root, &["ep-ml"]),
        ["ep-ml-1:2.0-1.i686", "ep-ml-1:2.0-1.x86_64"]
    );
    rollback(&node).expect(0);
    assert_eq!(
        q(&node.root, &["ep-ml"]),
        ["ep-ml-1:1.0-1.i686", "ep-ml-1:1.0-1.x86_64"]
    );
}

/// M8: a name with dots ("ep3.11-libs", like python3.11-libs), multilib.
#[test]
fn m8_dotted_multilib_name() {
    let f = fleet("m8");
    let node = f.node("n");
    image(
        &f,
        &node,
        &[
            m("ep3.11-libs", "1.0", "x86_64"),
            m("ep3.11-libs", "1.0", "i686"),
        ],
    );
    let c1 = f.rpms(
        "c1",
        1,
        &[
            m("ep3.11-libs", "2.0", "x86_64"),
            m("ep3.11-libs", "2.0", "i686"),
        ],
        &[],
    );
    let r = apply(&node, &c1);
    eprintln!("after apply: {:?}", q(&node.root, &["ep3.11-libs"]));
    assert_eq!(r.code, 0);
    assert_eq!(
        q(&node.root, &["ep3.11-libs"]),
        ["ep3.11-libs-0:2.0-1.i686", "ep3.11-libs-0:2.0-1.x86_64"]
    );
    rollback(&node).expect(0);
    assert_eq!(
        q(&node.root, &["ep3.11-libs"]),
        ["ep3.11-libs-0:1.0-1.i686", "ep3.11-libs-0:1.0-1.x86_64"]
    );
}

/// M9: a new noarch package obsoletes a multilib one (both arches go); rollback brings both.
#[test]
fn m9_obsoletes_multilib() {
    for obs_arch in ["noarch", "x86_64"] {
        let f = fleet(&format!("m9-{obs_arch}"));
        let node = f.node("n");
        image(
            &f,
            &node,
            &[m("ep-old", "1.0", "x86_64"), m("ep-old", "1.0", "i686")],
        );
        let new = if obs_arch == "noarch" {
            Rpm::new("ep-new", "1.0").head("Obsoletes: ep-old < 2\n")
        } else {
            ml("ep-new", "1.0", "x86_64", "Obsoletes: ep-old < 2\n", "", "")
        };
        let c1 = f.rpms("c1", 1, &[new], &["ep-new"]);
        let r = apply(&node, &c1);
        eprintln!(
            "[{obs_arch}] after apply: {:?}",
            q(&node.root, &["ep-old", "ep-new"])
        );
        assert_eq!(r.code, 0);
        let r = rollback(&node);
        let now = q(&node.root, &["ep-old", "ep-new"]);
        eprintln!("[{obs_arch}] after rollback exit {}: {now:?}", r.code);
        assert_eq!(r.code, 0, "[{obs_arch}]");
        assert_eq!(
            now,
            ["ep-old-0:1.0-1.i686", "ep-old-0:1.0-1.x86_64"],
            "[{obs_arch}]"
        );
        assert_eq!(lib(&node, "ep-old", "i686"), "1.0 i686\n");
    }
}

/// M10: three cycles then three rollbacks with a multilib package.
#[test]
fn m10_three_cycles_three_rollbacks() {
    let f = fleet("m10");
    let node = f.node_with("n", "rollback_keep = 3\n");
    image(
        &f,
        &node,
        &[m("ep-ml", "1.0", "x86_64"), m("ep-ml", "1.0", "i686")],
    );
    let vs = ["2.0", "3.0", "4.0"];
    for (i, v) in vs.iter().enumerate() {
        let c = f.rpms(
            leak(format!("c{}", i + 1)),
            (i + 1) as u64,
            &[m("ep-ml", v, "x86_64"), m("ep-ml", v, "i686")],
            &[],
        );
        apply(&node, &c).expect(0);
        let st = node.agent(&["status"]);
        eprintln!("status after c{}:\n{}", i + 1, st.stdout);
    }
    for want in ["3.0", "2.0", "1.0"] {
        let r = rollback(&node);
        assert_eq!(r.code, 0);
        assert_eq!(
            q(&node.root, &["ep-ml"]),
            [
                format!("ep-ml-0:{want}-1.i686"),
                format!("ep-ml-0:{want}-1.x86_64")
            ]
        );
        assert_eq!(lib(&node, "ep-ml", "i686"), format!("{want} i686\n"));
    }
    let st = node.agent(&["status", "--json"]);
    eprintln!("final status {}", st.stdout);
}

/// M11: kill -9 at points of apply and rollback with a multilib package; the next runs end
/// consistent, and a final rollback brings the image back.
#[test]
fn m11_kill9_multilib() {
    for (cmd, point) in [
        ("apply", "preserving"),
        ("apply", "preserved-one"),
        ("apply", "installing"),
        ("apply", "health"),
        ("apply", "committing"),
        ("rollback", "packages-restored"),
    ] {
        let f = fleet(&format!("m11-{point}"));
        let node = f.node("n");
        let c = |v: &'static str, a: &'static str| {
            ml(
                "ep-ml",
                v,
                a,
                "",
                &format!("mkdir -p $RPM_BUILD_ROOT/etc; echo 'default {v}' > $RPM_BUILD_ROOT/etc/ep-ml-{a}.conf"),
                leak(format!("%config(noreplace) /etc/ep-ml-{a}.conf\n")),
            )
        };
        image(&f, &node, &[c("1.0", "x86_64"), c("1.0", "i686")]);
        std::fs::write(node.root.join("etc/ep-ml-i686.conf"), "admin i686 longer\n").unwrap();
        let c1 = f.rpms("c1", 1, &[c("2.0", "x86_64"), c("2.0", "i686")], &[]);
        if cmd == "rollback" {
            apply(&node, &c1).expect(0);
        }
        let marker = f.dir.join(format!("paused-{point}"));
        let mut command = if cmd == "apply" {
            node.command(&["apply", c1.to_str().unwrap()])
        } else {
            node.command(&["rollback"])
        };
        command
            .env("EDGEPATCH_PAUSE_AT", point)
            .env("EDGEPATCH_PAUSE_FILE", &marker);
        let mut child = spawn_group(command);
        assert!(wait_for_file(&marker, 120), "{point}");
        kill_group(&mut child);
        let st = node.agent(&["status"]);
        eprintln!(
            "[{point}] killed; status {} {}{}; q {:?}",
            st.code,
            st.stdout,
            st.stderr,
            q(&node.root, &["ep-ml"])
        );
        if cmd == "apply" {
            let r = apply(&node, &c1);
            eprintln!(
                "[{point}] apply again exit {} q {:?}",
                r.code,
                q(&node.root, &["ep-ml"])
            );
        }
        let r = rollback(&node);
        let now = q(&node.root, &["ep-ml"]);
        eprintln!("[{point}] rollback exit {}: {now:?}", r.code);
        assert_eq!(r.code, 0, "[{point}]");
        assert_eq!(
            now,
            ["ep-ml-0:1.0-1.i686", "ep-ml-0:1.0-1.x86_64"],
            "[{point}]"
        );
        assert_eq!(
            read(&node.root.join("etc/ep-ml-i686.conf")),
            "admin i686 longer\n",
            "[{point}]"
        );
        assert_eq!(lib(&node, "ep-ml", "i686"), "1.0 i686\n");
    }
}

/// M12: status/report counts after a multilib cycle.
#[test]
fn m12_status_counts() {
    let f = fleet("m12");
    let node = f.node("n");
    image(
        &f,
        &node,
        &[
            m("ep-ml", "1.0", "x86_64"),
            m("ep-ml", "1.0", "i686"),
            Rpm::new("ep-one", "1.0"),
        ],
    );
    let c1 = f.rpms(
        "c1",
        1,
        &[
            m("ep-ml", "2.0", "x86_64"),
            m("ep-ml", "2.0", "i686"),
            Rpm::new("ep-one", "2.0"),
        ],
        &[],
    );
    let r = apply(&node, &c1).expect(0);
    let st = node.agent(&["status", "--json"]);
    eprintln!("status --json: {}", st.stdout);
    let st2 = node.agent(&["status"]);
    eprintln!("status: {}", st2.stdout);
    assert!(r.stdout.contains("3 package(s) changed"), "{}", r.stdout);
    let r = rollback(&node).expect(0);
    eprintln!("rollback said: {}", r.stdout);
    let st = node.agent(&["status", "--json"]);
    eprintln!("status --json after rollback: {}", st.stdout);
}

/// M13: a failing %post in the i686 build only: the failed install's restore brings both arches
/// back at 1.0 (exit 6, install failed).
#[test]
fn m13_failing_post_in_one_arch() {
    let f = fleet("m13");
    let node = f.node("n");
    image(
        &f,
        &node,
        &[
            rpm_shell(),
            m("ep-ml", "1.0", "x86_64"),
            m("ep-ml", "1.0", "i686"),
        ],
    );
    let c1 = f.rpms(
        "c1",
        1,
        &[
            m("ep-ml", "2.0", "x86_64"),
            m("ep-ml", "2.0", "i686").post("exit 1"),
        ],
        &[],
    );
    let r = apply(&node, &c1);
    let now = q(&node.root, &["ep-ml"]);
    eprintln!("after apply exit {}: {now:?}", r.code);
    assert_eq!(r.code, 6);
    assert_eq!(now, ["ep-ml-0:1.0-1.i686", "ep-ml-0:1.0-1.x86_64"]);
    assert_eq!(lib(&node, "ep-ml", "i686"), "1.0 i686\n");
    assert_eq!(lib(&node, "ep-ml", "x86_64"), "1.0 x86_64\n");
    assert!(!r.stderr.contains("restore incomplete"), "{}", r.stderr);
}
