use super::tz::{days_from_civil, ZONEINFO_DIR};
use super::*;

fn utc(y: i64, mo: i64, d: i64, h: i64, mi: i64) -> i64 {
    days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60
}

fn lines(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The example policy in compact form.
fn example() -> Vec<(String, String)> {
    lines(&[
        ("name", "operations/edge-fleet-q4-2024"),
        ("bundle_version", "20241105-build-42"),
        (
            "bundle_checksum",
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
        ("match", "role=edge-node"),
        ("match", "region=us-east"),
        ("window", "Tue 02:00-04:00"),
        ("timezone", "America/New_York"),
        ("batch_size", "100"),
        ("batch_delay_minutes", "15"),
        ("fleet_size", "1000"),
        ("rollout_start", "1730419200"),
        ("halt_failure_percent", "10"),
        ("rollback", "true"),
        ("health_url", "http://localhost:8080/health"),
        ("health_timeout_seconds", "120"),
    ])
}

fn with(key: &str, value: &str) -> Vec<(String, String)> {
    let mut l = example();
    match l.iter_mut().find(|(k, _)| k == key) {
        Some(kv) => kv.1 = value.into(),
        None => l.push((key.into(), value.into())),
    }
    l
}

fn without(key: &str) -> Vec<(String, String)> {
    example().into_iter().filter(|(k, _)| k != key).collect()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    lines(pairs)
}

#[test]
fn example_parses_and_round_trips() {
    let p = Policy::from_lines(&example()).unwrap();
    assert_eq!(p.name.as_deref(), Some("operations/edge-fleet-q4-2024"));
    assert_eq!(p.bundle_version, "20241105-build-42");
    assert_eq!(p.bundle_checksum.unwrap()[0], 0x01);
    assert_eq!(p.match_labels.len(), 2);
    assert_eq!(p.window.to_string(), "Tue 02:00-04:00");
    assert_eq!(p.timezone, "America/New_York");
    assert_eq!(p.batch_size, Some(100));
    assert_eq!(p.batch_delay_minutes, 15);
    assert_eq!(p.fleet_size, Some(1000));
    assert_eq!(p.rollout_start, Some(1_730_419_200));
    assert_eq!(p.halt_failure_percent, Some(10));
    assert!(p.rollback);
    assert_eq!(
        p.health_check_url.as_deref(),
        Some("http://localhost:8080/health")
    );
    assert_eq!(p.health_check_timeout_seconds, 120);
    assert_eq!(p.waves(), 10);
    assert_eq!(p.to_lines(), example());
    assert_eq!(Policy::from_lines(&p.to_lines()).unwrap(), p);
}

#[test]
fn minimal_policy_and_defaults() {
    let l = lines(&[
        ("bundle_version", "c1"),
        ("window", "Sat,Sun 00:00-24:00"),
        ("timezone", "UTC"),
    ]);
    let p = Policy::from_lines(&l).unwrap();
    assert!(p.rollback);
    assert_eq!(p.health_check_timeout_seconds, DEFAULT_HEALTH_TIMEOUT);
    assert!(p.match_labels.is_empty() && p.batch_size.is_none() && p.name.is_none());
    assert_eq!(p.waves(), 1);
    assert_eq!(Policy::from_lines(&p.to_lines()).unwrap(), p);
}

#[test]
fn good_values() {
    for (k, v) in [
        ("name", "edge-fleet"),
        ("name", "ops.eu/fleet-1"),
        ("bundle_version", "x"),
        (
            "bundle_checksum",
            "sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
        ("window", "Mon-Fri 22:00-02:00; Sat,Sun 00:00-24:00"),
        ("timezone", "Europe/Berlin"),
        ("timezone", "UTC"),
        ("batch_size", "1"),
        ("batch_size", "1000000"),
        ("batch_delay_minutes", "0"),
        ("batch_delay_minutes", "10080"),
        ("fleet_size", "1"),
        ("fleet_size", "10000"),
        ("rollout_start", "0"),
        ("halt_failure_percent", "1"),
        ("halt_failure_percent", "100"),
        ("rollback", "false"),
        ("health_url", "https://127.0.0.1:8443/healthz?deep=1"),
        ("health_timeout_seconds", "1"),
        ("health_timeout_seconds", "3600"),
    ] {
        Policy::from_lines(&with(k, v)).unwrap_or_else(|e| panic!("{k} {v}: {e}"));
    }
    let mut l = example();
    l.push(("match".into(), "tier=".into()));
    l.push(("match".into(), "kubernetes.io/arch=amd64".into()));
    assert_eq!(Policy::from_lines(&l).unwrap().match_labels.len(), 4);
}

#[test]
fn bad_values() {
    for (k, v, want) in [
        ("name", "Edge_Fleet", "policy name"),
        ("name", "a/b/c", "policy name"),
        ("bundle_version", "has space", "policy bundle_version"),
        ("bundle_checksum", "md5:0123", "sha256: followed by 64 hex"),
        (
            "bundle_checksum",
            "sha256:0123",
            "sha256: followed by 64 hex",
        ),
        ("match", "role", "want key=value"),
        ("match", "=x", "label key"),
        ("match", "role=edge node", "label value"),
        ("match", "role=a,b", "label value"),
        ("window", "Tuesday 02:00-04:00", "policy window"),
        ("window", "Tue 02:00-02:00", "start equals end"),
        ("timezone", "../etc/passwd", "policy timezone"),
        ("timezone", "/usr/share/zoneinfo/UTC", "policy timezone"),
        ("batch_size", "0", "policy batch_size"),
        ("batch_size", "-1", "policy batch_size"),
        ("batch_size", "1000001", "policy batch_size"),
        ("batch_size", "ten", "policy batch_size"),
        ("batch_delay_minutes", "10081", "policy batch_delay_minutes"),
        ("batch_delay_minutes", "1.5", "policy batch_delay_minutes"),
        ("fleet_size", "0", "policy fleet_size"),
        ("fleet_size", "10000001", "policy fleet_size"),
        ("rollout_start", "-5", "policy rollout_start"),
        ("halt_failure_percent", "0", "policy halt_failure_percent"),
        ("halt_failure_percent", "101", "policy halt_failure_percent"),
        ("rollback", "yes", "policy rollback"),
        ("health_url", "ftp://x/health", "policy health_url"),
        ("health_url", "http://", "policy health_url"),
        ("health_url", "http:///x", "policy health_url"),
        ("health_url", "localhost:8080/health", "policy health_url"),
        (
            "health_timeout_seconds",
            "0",
            "policy health_timeout_seconds",
        ),
        (
            "health_timeout_seconds",
            "3601",
            "policy health_timeout_seconds",
        ),
        ("colour", "blue", "unknown to this agent"),
    ] {
        let e = Policy::from_lines(&with(k, v)).unwrap_err();
        assert!(e.contains(want), "{k} {v:?}: {e}");
    }
    // More waves than allowed.
    let mut l = with("fleet_size", "10000000");
    l.retain(|(k, _)| k != "batch_size");
    l.push(("batch_size".into(), "1".into()));
    assert!(Policy::from_lines(&l).unwrap_err().contains("waves"));
}

#[test]
fn missing_and_repeated_keys() {
    for key in ["bundle_version", "window", "timezone", "rollout_start"] {
        let e = Policy::from_lines(&without(key)).unwrap_err();
        assert!(e.contains(key) && e.contains("missing"), "{e}");
    }
    let e = Policy::from_lines(&without("batch_delay_minutes")).unwrap_err();
    assert!(e.contains("go together"), "{e}");
    let e = Policy::from_lines(&without("batch_size")).unwrap_err();
    assert!(e.contains("go together"), "{e}");
    let mut l = example();
    l.push(("window".into(), "Wed 02:00-04:00".into()));
    assert!(Policy::from_lines(&l).unwrap_err().contains("twice"));
    let mut l = example();
    l.push(("match".into(), "role=other".into()));
    assert!(Policy::from_lines(&l).unwrap_err().contains("twice"));
    assert!(Policy::from_lines(&[]).unwrap_err().contains("missing"));
}

#[test]
fn targeting() {
    let p = Policy::from_lines(&example()).unwrap();
    assert!(p.targets(&labels(&[("role", "edge-node"), ("region", "us-east")])));
    assert!(p.targets(&labels(&[
        ("site", "17"),
        ("region", "us-east"),
        ("role", "edge-node")
    ])));
    assert!(!p.targets(&labels(&[("role", "edge-node")])));
    assert!(!p.targets(&labels(&[("role", "kiosk"), ("region", "us-east")])));
    assert!(!p.targets(&[]));
    let mut all = p.clone();
    all.match_labels.clear();
    assert!(all.targets(&[]), "empty selector matches every node");
}

fn new_york() -> Tz {
    Tz::load(std::path::Path::new(ZONEINFO_DIR), "America/New_York").unwrap()
}

#[test]
fn decide_not_targeted() {
    let p = Policy::from_lines(&example()).unwrap();
    let tz = new_york();
    let ok = labels(&[("role", "edge-node"), ("region", "us-east")]);
    let now = utc(2024, 11, 5, 8, 0);
    match decide(&p, &tz, "n1", &ok, "20241203-build-43", now) {
        Decision::NotTargeted { reason } => assert!(reason.contains("20241105-build-42")),
        d => panic!("{d:?}"),
    }
    let west = labels(&[("role", "edge-node"), ("region", "us-west")]);
    match decide(&p, &tz, "n1", &west, "20241105-build-42", now) {
        Decision::NotTargeted { reason } => {
            assert_eq!(
                reason,
                "policy wants label region=us-east, node has region=us-west"
            )
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn usb_bundle_outside_window_defers_then_applies() {
    // One wave: the node defers until Tuesday 02:00 New York time, then applies.
    let mut p = Policy::from_lines(&example()).unwrap();
    p.fleet_size = None;
    let tz = new_york();
    let l = labels(&[("role", "edge-node"), ("region", "us-east")]);
    let cycle = "20241105-build-42";
    let friday = utc(2024, 11, 1, 15, 0);
    // 2024-11-05 02:00 EST = 07:00Z.
    let open = utc(2024, 11, 5, 7, 0);
    assert_eq!(
        decide(&p, &tz, "till-1", &l, cycle, friday),
        Decision::Defer {
            reason: "outside window Tue 02:00-04:00; next opens 2024-11-05 02:00 America/New_York"
                .into(),
            next_start: open
        }
    );
    assert_eq!(decide(&p, &tz, "till-1", &l, cycle, open), Decision::Apply);
    assert_eq!(
        decide(&p, &tz, "till-1", &l, cycle, open + 7199),
        Decision::Apply
    );
    assert!(matches!(
        decide(&p, &tz, "till-1", &l, cycle, open + 7200),
        Decision::Defer { next_start, .. } if next_start == open + 7 * 86400
    ));
}

#[test]
fn decide_waves_over_a_fleet() {
    // 1000 nodes, 100 per wave every 15 min, 2-hour window: 8 waves on the first Tuesday,
    // 2 carried over to the next one. Rollout starts Friday 2024-11-01.
    let p = Policy::from_lines(&example()).unwrap();
    let tz = new_york();
    let l = labels(&[("role", "edge-node"), ("region", "us-east")]);
    let cycle = "20241105-build-42";
    let open = utc(2024, 11, 5, 7, 0);
    let week = 7 * 86400;
    let mut started_by_quarter = [0usize; 8];
    let mut next_week = 0;
    for i in 0..1000 {
        let node = format!("till-{i}");
        let wave = wave::wave_of(&node, cycle, 10);
        // Exactly one first quarter hour in which the node applies.
        let first = (0..8)
            .find(|q| decide(&p, &tz, &node, &l, cycle, open + q * 900 + 60) == Decision::Apply);
        match first {
            Some(q) => {
                assert_eq!(q as u64, wave);
                started_by_quarter[q as usize] += 1;
                // Before its slot it is told exactly when to come back.
                if q > 0 {
                    match decide(&p, &tz, &node, &l, cycle, open) {
                        Decision::Defer { next_start, reason } => {
                            assert_eq!(next_start, open + q * 900);
                            assert!(reason.starts_with(&format!("wave {} of 10", q + 1)));
                        }
                        d => panic!("{d:?}"),
                    }
                }
            }
            None => {
                assert!(wave >= 8);
                next_week += 1;
                let due = open + week + (wave as i64 - 8) * 900;
                assert_eq!(decide(&p, &tz, &node, &l, cycle, due), Decision::Apply);
                assert!(matches!(
                    decide(&p, &tz, &node, &l, cycle, due - 1),
                    Decision::Defer { next_start, .. } if next_start == due
                ));
            }
        }
    }
    assert_eq!(started_by_quarter.iter().sum::<usize>() + next_week, 1000);
    for n in started_by_quarter {
        assert!((60..=140).contains(&n), "{started_by_quarter:?}");
    }
    // A node that missed its slot (switched off) applies in any later window at once.
    let late = (0..1000)
        .map(|i| format!("till-{i}"))
        .find(|n| wave::wave_of(n, cycle, 10) == 0)
        .unwrap();
    assert_eq!(
        decide(&p, &tz, &late, &l, cycle, open + 2 * week + 60),
        Decision::Apply
    );
    assert!(matches!(
        decide(&p, &tz, &late, &l, cycle, open + week - 3600),
        Decision::Defer { next_start, .. } if next_start == open + week
    ));
}

#[test]
fn decide_on_spring_forward_night() {
    // A Sunday 02:00-04:00 window in New York on 2024-03-10: it opens at 03:00 EDT (07:00Z).
    let mut p = Policy::from_lines(&example()).unwrap();
    p.window = Window::parse("Sun 02:00-04:00").unwrap();
    p.fleet_size = None;
    let tz = new_york();
    let l = labels(&[("role", "edge-node"), ("region", "us-east")]);
    let c = "20241105-build-42";
    let at = |h, m| decide(&p, &tz, "till-9", &l, c, utc(2024, 3, 10, h, m));
    assert!(
        matches!(at(6, 59), Decision::Defer { next_start, .. } if next_start == utc(2024, 3, 10, 7, 0))
    );
    assert_eq!(at(7, 0), Decision::Apply);
    assert_eq!(at(7, 59), Decision::Apply);
    assert!(matches!(at(8, 0), Decision::Defer { .. }));
}

#[test]
fn decide_in_berlin_across_midnight() {
    let mut p = Policy::from_lines(&example()).unwrap();
    p.window = Window::parse("Sat 23:00-03:00").unwrap();
    p.timezone = "Europe/Berlin".into();
    p.fleet_size = None;
    let tz = p.load_zone(std::path::Path::new(ZONEINFO_DIR)).unwrap();
    let l = labels(&[("role", "edge-node"), ("region", "us-east")]);
    let c = "20241105-build-42";
    // Fall-back night 2024-10-26/27: Sat 23:00 CEST (21:00Z) to Sun 03:00 CET (02:00Z).
    let at = |t| decide(&p, &tz, "n", &l, c, t);
    assert!(matches!(
        at(utc(2024, 10, 26, 20, 59)),
        Decision::Defer { .. }
    ));
    assert_eq!(at(utc(2024, 10, 26, 21, 0)), Decision::Apply);
    assert_eq!(at(utc(2024, 10, 27, 1, 30)), Decision::Apply);
    assert!(
        matches!(at(utc(2024, 10, 27, 2, 0)), Decision::Defer { next_start, .. }
        if next_start == utc(2024, 11, 2, 22, 0))
    );
}
