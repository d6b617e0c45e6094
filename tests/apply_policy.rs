//! End-to-end: a PatchPolicy sealed into the bundle is honoured by `apply` on the node itself:
//! label targeting (exit 4), the maintenance window in the policy's time zone (exit 5 with the
//! next start in the status file), then the install inside the window. The clock is injected
//! with EDGEPATCH_TEST_NOW; times are computed with GNU date in America/New_York.

use edgepatch_e2e::*;
use std::process::Command;

fn ny_time(spec: &str) -> String {
    let out = Command::new("date")
        .env("TZ", "America/New_York")
        .args(["-d", spec, "+%s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "date -d {spec}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

const POLICY: &str = r#"apiVersion: patchmgmt.io/v1
kind: PatchPolicy
metadata: {name: kiosks, namespace: operations}
spec:
  bundleRef: {version: "c1"}
  targets: {selector: {matchLabels: {role: kiosk}}}
  schedule:
    maintenanceWindow: "Tue 02:00-04:00"
    timezone: "America/New_York"
  rollback: {enabled: true, healthCheckTimeoutSeconds: 60}
"#;

#[test]
fn usb_bundle_outside_window_defers_then_applies_inside_it() {
    let dir = Scratch::new("policy-apply");
    let (key, public) = keygen(&dir.join("keys"));
    let pkgs = dir.join("pkgs");
    Deb::new("ep-kiosk", "1.0").build(&pkgs);
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let bundle = dir.join("c1.epb");
    let extra = [
        "--install",
        "ep-kiosk",
        "--policy",
        policy.to_str().unwrap(),
    ];
    build_bundle(&key, "debian-12-amd64", "c1", 1, &bundle, &[&pkgs], &extra);

    // A node that is not a kiosk is not targeted: exit 4, nothing installed.
    let other = Node::new(
        &dir.join("till"),
        "debian-12-amd64",
        &public,
        "labels = [\"role=till\"]\npackage_manager = \"apt\"\n",
    );
    deb_root(&other.root);
    let r = other.agent(&["apply", bundle.to_str().unwrap()]).expect(4);
    assert!(r.stderr.contains("role"), "{}", r.stderr);

    // The kiosk, with the bundle dropped into incoming/ as `import` from a USB stick would.
    let node = Node::new(
        &dir.join("kiosk"),
        "debian-12-amd64",
        &public,
        "labels = [\"role=kiosk\", \"store=42\"]\npackage_manager = \"apt\"\n",
    );
    deb_root(&node.root);
    std::fs::create_dir_all(node.state_dir.join("incoming")).unwrap();
    std::fs::copy(&bundle, node.state_dir.join("incoming/c1.epb")).unwrap();

    let monday_noon = ny_time("next monday 12:00");
    let r = run(node
        .command(&["apply"])
        .env("EDGEPATCH_TEST_NOW", &monday_noon))
    .expect(5);
    assert!(r.stderr.contains("next opens"), "{}", r.stderr);
    let st = node.agent(&["status", "--json"]).expect(0).stdout;
    assert!(st.contains("\"next_window\""), "{st}");
    assert_eq!(deb_version(&node.root, "ep-kiosk"), None);

    // Tuesday 02:30 New York time is inside the window (the day after that Monday).
    // (DST changes happen on Sundays, so Monday 12:00 + 14.5 h is Tuesday 02:30 local.)
    let tuesday = (monday_noon.parse::<u64>().unwrap() + 14 * 3600 + 1800).to_string();
    let r = run(node.command(&["apply"]).env("EDGEPATCH_TEST_NOW", &tuesday)).expect(0);
    assert!(r.stdout.contains("applied"), "{}", r.stdout);
    assert_eq!(
        deb_version(&node.root, "ep-kiosk").as_deref(),
        Some("1.0 ii")
    );
}

#[test]
fn reissued_signed_policy_widens_the_window_without_rebuilding() {
    let dir = Scratch::new("policy-reissue");
    let (key, public) = keygen(&dir.join("keys"));
    let pkgs = dir.join("pkgs");
    Deb::new("ep-kiosk", "1.0").build(&pkgs);
    let sealed = dir.join("policy.yaml");
    std::fs::write(&sealed, POLICY).unwrap();
    let bundle = dir.join("c1.epb");
    let extra = [
        "--install",
        "ep-kiosk",
        "--policy",
        sealed.to_str().unwrap(),
    ];
    build_bundle(&key, "debian-12-amd64", "c1", 1, &bundle, &[&pkgs], &extra);

    // The operator widens the window to every day, pinned to this bundle's sha256.
    let sum = {
        let out = Command::new("sha256sum").arg(&bundle).output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    };
    let wide = POLICY
        .replace("Tue 02:00-04:00", "Mon-Sun 00:00-24:00")
        .replace(
            "{version: \"c1\"}",
            &format!("{{version: \"c1\", checksum: \"sha256:{sum}\"}}"),
        );
    let wide_yaml = dir.join("wide.yaml");
    std::fs::write(&wide_yaml, &wide).unwrap();
    let issued = dir.join("c1-wide.policy");
    let b = bundle.to_str().unwrap();
    let k = key.to_str().unwrap();
    let (y, o) = (wide_yaml.to_str().unwrap(), issued.to_str().unwrap());
    builder(&["policy", "issue", y, "--bundle", b, "--key", k, "--out", o]).expect(0);
    // A wrong pin is refused at issue time.
    let bad_yaml = dir.join("bad.yaml");
    std::fs::write(&bad_yaml, wide.replace(&sum, &"0".repeat(64))).unwrap();
    let bad = bad_yaml.to_str().unwrap();
    builder(&[
        "policy",
        "issue",
        bad,
        "--bundle",
        b,
        "--key",
        k,
        "--out",
        "/dev/null",
    ])
    .expect(2);

    let conf = "labels = [\"role=kiosk\"]\npackage_manager = \"apt\"\n";
    let node = Node::new(&dir.join("kiosk"), "debian-12-amd64", &public, conf);
    deb_root(&node.root);
    let incoming = node.state_dir.join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    std::fs::copy(&bundle, incoming.join("c1.epb")).unwrap();
    let monday_noon = ny_time("next monday 12:00");

    // A re-issued policy signed by a key the node does not trust changes nothing.
    let (rogue, _) = keygen(&dir.join("rogue"));
    let rogue_out = incoming.join("rogue.policy");
    let (r, ro) = (rogue.to_str().unwrap(), rogue_out.to_str().unwrap());
    builder(&["policy", "issue", y, "--bundle", b, "--key", r, "--out", ro]).expect(0);
    run(node
        .command(&["apply"])
        .env("EDGEPATCH_TEST_NOW", &monday_noon))
    .expect(5);

    std::fs::copy(&issued, incoming.join("c1-wide.policy")).unwrap();
    run(node
        .command(&["apply"])
        .env("EDGEPATCH_TEST_NOW", &monday_noon))
    .expect(0);
    assert_eq!(
        deb_version(&node.root, "ep-kiosk").as_deref(),
        Some("1.0 ii")
    );
}
