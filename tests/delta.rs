//! Delta bundles end to end: `build --base`, then `apply` with real apt-get and dpkg into scratch
//! roots. Synthetic .debs (xz-compressed, as upstream builds them) always; real Debian packages
//! (jq, libjq1, libonig5, hello, tree): scripts/test.sh fetches them (scripts/test-deps.sh) and sets
//! `EDGEPATCH_CORPUS`, which makes that test required; plain `cargo test` uses /tmp/corpus if present.

use edgepatch_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const VARIANT: &str = "debian-12-amd64";

/// A synthetic package with enough content for a delta to be worth it: a "binary" of mostly
/// stable bytes, and a text file that changes a little between versions.
fn deb(out: &Path, name: &str, version: &str, depends: &str, seed: u32) -> PathBuf {
    let work = out.join(format!(".w-{name}-{version}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("DEBIAN")).unwrap();
    let mut control = format!(
        "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@example.invalid>\nDescription: delta test\n"
    );
    if !depends.is_empty() {
        control += &format!("Depends: {depends}\n");
    }
    std::fs::write(work.join("DEBIAN/control"), control).unwrap();
    let dir = work.join("usr/share/edgepatch-test");
    std::fs::create_dir_all(&dir).unwrap();
    // 400 KB of pseudo-random bytes, the same for every version, with the version stamped in.
    let mut x = 0x9e37_79b9u32 ^ name.len() as u32;
    let mut blob: Vec<u8> = (0..400_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    for (i, b) in version.bytes().enumerate() {
        blob[1000 + i] = b;
        blob[300_000 + i * 7] = b.wrapping_add(seed as u8);
    }
    std::fs::write(dir.join(format!("{name}.bin")), blob).unwrap();
    std::fs::write(dir.join(name), format!("{name} {version}\n")).unwrap();
    let deb = out.join(format!("{name}_{version}_all.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&work)
        .arg(&deb))
    .expect(0);
    std::fs::remove_dir_all(&work).unwrap();
    deb
}

fn fleet(tag: &str) -> Fleet {
    Fleet::new(tag, VARIANT, "apt")
}

fn apply(node: &Node, bundle: &Path) -> Run {
    node.agent(&["apply", bundle.to_str().unwrap()])
}

fn ver(node: &Node, name: &str) -> Option<String> {
    deb_version(&node.root, name)
}

/// The payload offset of the first delta entry (to tamper with its bytes).
fn first_delta_offset(bundle: &Path) -> u64 {
    let bytes = std::fs::read(bundle).unwrap();
    let mut r = &bytes[..];
    let head = edgepatch::bundle::format::read_head(&mut r).unwrap();
    let m = edgepatch::bundle::format::Manifest::parse(&head.manifest_bytes).unwrap();
    let mut off =
        edgepatch::bundle::format::head_len(head.manifest_bytes.len(), head.signatures.len());
    for e in &m.entries {
        if e.kind == edgepatch::bundle::format::EntryKind::Delta {
            return off + e.stored / 2;
        }
        off += e.stored;
    }
    panic!("no delta entry in {}", bundle.display());
}

#[test]
fn synthetic_delta_applies_end_to_end() {
    let f = fleet("delta-synth");
    let (p1, p2) = (f.dir.join("p1"), f.dir.join("p2"));
    deb(&p1, "ep-lib", "1.0", "", 1);
    deb(&p1, "ep-app", "1.0", "ep-lib (>= 1.0)", 1);
    deb(&p1, "ep-same", "1.0", "", 1);
    deb(&p2, "ep-lib", "2.0", "", 2);
    deb(&p2, "ep-app", "2.0", "ep-lib (>= 2.0), ep-extra", 2);
    deb(&p2, "ep-extra", "1.0", "", 3);
    std::fs::copy(
        p1.join("ep-same_1.0_all.deb"),
        p2.join("ep-same_1.0_all.deb"),
    )
    .unwrap();
    let (c1, _) = f.build_dir(
        "c1",
        1,
        &p1,
        &["--install", "ep-app", "--install", "ep-same"],
    );
    let (c2, r) = f.build_dir(
        "c2",
        2,
        &p2,
        &["--install", "ep-app", "--base", c1.to_str().unwrap()],
    );
    assert!(
        r.stdout.contains("1 ref(s), 2 delta(s)") && r.stdout.contains("1 file(s)"),
        "{}",
        r.stdout
    );
    let (full2, _) = f.build_dir("c2-full", 2, &p2, &["--install", "ep-app"]);
    let (d, full) = (
        std::fs::metadata(&c2).unwrap().len(),
        std::fs::metadata(&full2).unwrap().len(),
    );
    assert!(d * 3 < full, "delta {d} bytes, full {full}");
    let shown = builder(&["inspect", c2.to_str().unwrap()]).expect(0).stdout;
    assert!(shown.contains("delta of  sequence 1"), "{shown}");

    // The node that applied c1 rebuilds c2 and installs it with apt.
    let node = f.node("n");
    apply(&node, &c1).expect(0);
    assert_eq!(ver(&node, "ep-app").as_deref(), Some("1.0 ii"));
    assert!(edgepatch::node::rebuild::can_use_delta(
        &node.state_dir,
        &manifest(&c2)
    ));
    let r = apply(&node, &c2).expect(0);
    assert!(
        r.stdout.contains("cycle c2 sequence 2 applied"),
        "{}",
        r.stdout
    );
    assert_eq!(ver(&node, "ep-app").as_deref(), Some("2.0 ii"));
    assert_eq!(ver(&node, "ep-lib").as_deref(), Some("2.0 ii"));
    assert_eq!(ver(&node, "ep-extra").as_deref(), Some("1.0 ii"));
    let file = node.root.join("usr/share/edgepatch-test/ep-app");
    assert_eq!(std::fs::read_to_string(file).unwrap(), "ep-app 2.0\n");
    // The rebuilt packages are the cache now: uncompressed members, still a valid .deb.
    let cached = node.state_dir.join("cache/current/pool/ep-lib_2.0_all.deb");
    let members = run(Command::new("ar").arg("t").arg(&cached))
        .expect(0)
        .stdout;
    assert_eq!(members, "debian-binary\ncontrol.tar\ndata.tar\n");
    run(Command::new("dpkg-deb").arg("--info").arg(&cached)).expect(0);

    // A node that never applied c1 cannot use the delta: deferred, nothing installed.
    let fresh = f.node("fresh");
    assert!(!edgepatch::node::rebuild::can_use_delta(
        &fresh.state_dir,
        &manifest(&c2)
    ));
    let r = apply(&fresh, &c2).expect(5);
    assert!(r.stderr.contains("fetch the full bundle"), "{}", r.stderr);
    assert_eq!(ver(&fresh, "ep-app"), None);
    let st = fresh.agent(&["status", "--json"]).expect(0).stdout;
    assert!(st.contains("\"result\":\"deferred\""), "{st}");
    // ... and the full bundle of the same cycle works there.
    apply(&fresh, &full2).expect(0);
    assert_eq!(ver(&fresh, "ep-app").as_deref(), Some("2.0 ii"));
}

fn manifest(bundle: &Path) -> edgepatch::bundle::format::Manifest {
    let bytes = std::fs::read(bundle).unwrap();
    let head = edgepatch::bundle::format::read_head(&mut &bytes[..]).unwrap();
    edgepatch::bundle::format::Manifest::parse(&head.manifest_bytes).unwrap()
}

#[test]
fn tampered_delta_is_an_integrity_error() {
    let f = fleet("delta-tamper");
    let (p1, p2) = (f.dir.join("p1"), f.dir.join("p2"));
    deb(&p1, "ep-lib", "1.0", "", 1);
    deb(&p2, "ep-lib", "2.0", "", 2);
    let (c1, _) = f.build_dir("c1", 1, &p1, &["--install", "ep-lib"]);
    let (c2, _) = f.build_dir("c2", 2, &p2, &["--base", c1.to_str().unwrap()]);
    let node = f.node("n");
    apply(&node, &c1).expect(0);
    flip_byte(&c2, first_delta_offset(&c2) as i64);
    let r = apply(&node, &c2).expect(2);
    // A bundle the operator named is never moved: its reason is recorded, the file stays.
    assert!(r.stderr.contains("file left in place"), "{}", r.stderr);
    assert!(c2.exists());
    assert_eq!(ver(&node, "ep-lib").as_deref(), Some("1.0 ii"));
}

#[test]
fn rotten_cache_defers_instead_of_blaming_the_bundle() {
    let f = fleet("delta-rot");
    let (p1, p2) = (f.dir.join("p1"), f.dir.join("p2"));
    deb(&p1, "ep-lib", "1.0", "", 1);
    deb(&p2, "ep-lib", "2.0", "", 2);
    let (c1, _) = f.build_dir("c1", 1, &p1, &["--install", "ep-lib"]);
    let (c2, _) = f.build_dir("c2", 2, &p2, &["--base", c1.to_str().unwrap()]);
    let node = f.node("n");
    apply(&node, &c1).expect(0);
    flip_byte(
        &node.state_dir.join("cache/current/pool/ep-lib_1.0_all.deb"),
        -100,
    );
    let r = apply(&node, &c2).expect(5);
    assert!(
        r.stderr.contains("changed on disk") && r.stderr.contains("fetch the full bundle"),
        "{}",
        r.stderr
    );
}

/// Real Debian packages that are safe in a scratch root: jq + libjq1 (+ libonig5 when the corpus
/// has it), hello, tree. Cycle 1 installs them; the delta bundle of cycle 2 upgrades them.
#[test]
fn real_packages_from_the_corpus() {
    // scripts/test.sh sets EDGEPATCH_CORPUS (test-deps.sh fetched it): then it must be there.
    let required = std::env::var_os("EDGEPATCH_CORPUS").is_some();
    let corpus = std::env::var_os("EDGEPATCH_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/corpus"));
    if !corpus.join("cycle-1").is_dir() || !corpus.join("cycle-2").is_dir() {
        assert!(
            !required,
            "EDGEPATCH_CORPUS={} has no cycle-1/cycle-2: run scripts/test-deps.sh",
            corpus.display()
        );
        eprintln!(
            "skipped: no corpus at {} (set EDGEPATCH_CORPUS; ../shared/corpus/debian-cycles.sh makes one)",
            corpus.display()
        );
        return;
    }
    let f = fleet("delta-real");
    let mut picked = Vec::new();
    for (i, cycle) in ["cycle-1", "cycle-2"].iter().enumerate() {
        let dir = f.dir.join(format!("p{}", i + 1));
        std::fs::create_dir_all(&dir).unwrap();
        for d in std::fs::read_dir(corpus.join(cycle)).unwrap() {
            let p = d.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if ["jq_", "libjq1_", "libonig5_", "hello_", "tree_"]
                .iter()
                .any(|pre| name.starts_with(pre))
            {
                std::fs::copy(&p, dir.join(&name)).unwrap();
                if i == 0 {
                    picked.push(name);
                }
            }
        }
    }
    if !picked.iter().any(|n| n.starts_with("jq_")) {
        assert!(!required, "corpus {} has no jq", corpus.display());
        eprintln!("skipped: corpus has no jq");
        return;
    }
    let has_onig = picked.iter().any(|n| n.starts_with("libonig5_"));
    let node = f.node("n");
    // The scratch root copies the host's dpkg status; when the host has jq & co. they would look
    // installed there without any of their files, and the preserve step rightly refuses to repack
    // a package whose dpkg file list is missing. This test installs them fresh.
    let status = node.root.join("var/lib/dpkg/status");
    let ours = ["jq", "libjq1", "libonig5", "hello", "tree"];
    let kept: String = std::fs::read_to_string(&status)
        .unwrap()
        .split("\n\n")
        .filter(|s| {
            let name = s.lines().find_map(|l| l.strip_prefix("Package: "));
            // ... and whatever on the host depends on them (yq needs jq, say).
            let needs_ours = s
                .lines()
                .filter(|l| l.starts_with("Depends: ") || l.starts_with("Pre-Depends: "))
                .flat_map(|l| l.split(|c: char| !(c.is_alphanumeric() || c == '-')))
                .any(|w| ours.contains(&w));
            let ours = name.is_some_and(|n| ours.contains(&n)) || needs_ours;
            // Without libonig5 in the corpus, the host's must stay (libjq1 needs it).
            !ours || (!has_onig && name == Some("libonig5"))
        })
        .map(|s| format!("{}\n\n", s.trim_end()))
        .collect();
    std::fs::write(&status, kept).unwrap();
    if !has_onig {
        // libjq1 needs libonig5; take the host's if it has it, else skip the install checks.
        if deb_version(Path::new("/"), "libonig5").is_none() {
            eprintln!("skipped: neither the corpus nor the host has libonig5");
            return;
        }
    }
    let install = ["--install", "jq", "--install", "hello", "--install", "tree"];
    let (c1, _) = f.build_dir("c1", 1, &f.dir.join("p1"), &install);
    let mut extra = install.to_vec();
    let base = c1.to_str().unwrap().to_string();
    extra.extend_from_slice(&["--base", &base]);
    let (c2, r) = f.build_dir("c2", 2, &f.dir.join("p2"), &extra);
    assert!(r.stdout.contains("delta(s)"), "{}", r.stdout);
    apply(&node, &c1).expect(0);
    let jq1 = ver(&node, "jq").unwrap();
    apply(&node, &c2).expect(0);
    let jq2 = ver(&node, "jq").unwrap();
    assert!(jq2.ends_with(" ii"), "{jq2}");
    let want = std::fs::read_dir(f.dir.join("p2"))
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("jq_"))
        .unwrap();
    let want_version = want.split('_').nth(1).unwrap().to_string();
    assert!(
        jq2.starts_with(&want_version),
        "jq {jq1} -> {jq2}, want {want_version}"
    );
    assert!(ver(&node, "hello").is_some() && ver(&node, "tree").is_some());
}

/// `collect` against a baseline: apt resolves as a node with that dpkg status would, from a local
/// copy: repository (no network; file: would leave the packages in place), and downloads only what the baseline lacks.
#[test]
fn collect_downloads_what_the_baseline_lacks() {
    let dir = Scratch::new("collect-apt");
    let repo = dir.join("repo");
    deb(&repo, "ep-a", "1.0", "ep-b", 1);
    deb(&repo, "ep-b", "1.0", "ep-c", 1);
    deb(&repo, "ep-c", "1.0", "", 1);
    let scan = run(Command::new("dpkg-scanpackages")
        .args(["-m", "."])
        .current_dir(&repo))
    .expect(0);
    std::fs::write(repo.join("Packages"), scan.stdout).unwrap();
    let sources = dir.join("sources.list");
    std::fs::write(
        &sources,
        format!("deb [trusted=yes] copy:{} ./\n", repo.display()),
    )
    .unwrap();
    // The baseline: a node image that has ep-c already (agent `packages` prints it from root).
    let node = Node::new(&dir.join("node"), VARIANT, &dir.join("none.pub"), "");
    deb_root(&node.root);
    let status = node.root.join("var/lib/dpkg/status");
    let mut text = std::fs::read_to_string(&status).unwrap();
    text += "\nPackage: ep-c\nStatus: install ok installed\nPriority: optional\nMaintainer: t <t@example.invalid>\nArchitecture: all\nVersion: 1.0\nDescription: delta test\n";
    std::fs::write(&status, text).unwrap();
    let baseline = dir.join("baseline.status");
    std::fs::write(&baseline, node.agent(&["packages"]).expect(0).stdout).unwrap();
    let out = dir.join("out");
    let r = builder(&[
        "collect",
        "--variant",
        VARIANT,
        "--baseline",
        baseline.to_str().unwrap(),
        "--sources",
        sources.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "ep-a",
    ])
    .expect(0);
    let mut got: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    got.sort();
    assert_eq!(
        got,
        ["ep-a_1.0_all.deb", "ep-b_1.0_all.deb"],
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("collected 2 package(s)"), "{}", r.stdout);
}
