//! Issue 15 on a real Debian 12 image: the agent runs inside the image (chroot, no network,
//! root "/"), bundles upgrade packages that came with the image, and failed installs and
//! rollbacks put back the image's exact versions from the rollback sets (packages repacked
//! before the install), the admin's conffile included.

mod imagebox;

use imagebox::*;
use std::path::PathBuf;

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
