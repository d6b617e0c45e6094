//! Unit tests of the delta codec and the gzip member helpers.

use super::*;
use std::fs::File;
use std::path::PathBuf;

/// A naive diff for tests: common prefix via add (diff zeros), the rest as extra.
fn naive_patch(old: &[u8], new: &[u8]) -> Vec<u8> {
    let common = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let mut controls = vec![];
    if common > 0 || new.len() > common {
        controls.push(Control {
            add: common as u64,
            copy: (new.len() - common) as u64,
            seek: 0,
        });
    }
    let diff = vec![0u8; common];
    let extra = new[common..].to_vec();
    build(
        Recipe::Raw,
        &[(Source::Whole, old.len(), new.len(), controls, diff, extra)],
    )
}

type Parts = (Source, usize, usize, Vec<Control>, Vec<u8>, Vec<u8>);

fn build(recipe: Recipe, parts: &[Parts]) -> Vec<u8> {
    let mut streams = Vec::new();
    let mut sections = Vec::new();
    for (src, old_len, new_len, c, d, e) in parts {
        let (sec, bytes) = encode_section(*src, *old_len as u64, *new_len as u64, c, d, e, 6);
        sections.push(sec);
        streams.extend(bytes);
    }
    let mut out = Header {
        recipe,
        sections,
        gz: None,
    }
    .to_bytes();
    out.extend(streams);
    out
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "edgepatch-delta-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(patch: &[u8], old: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let dir = tmpdir("run");
    std::fs::write(dir.join("p"), patch).unwrap();
    std::fs::write(dir.join("o"), old).unwrap();
    let pf = File::open(dir.join("p")).unwrap();
    let header = Header::read(&mut (&pf), 1 << 30)?;
    let mut out = Vec::new();
    let o = dir.join("o");
    let r = apply_patch(&pf, &header, &mut |_| Ok(File::open(&o)?), &dir, &mut out);
    std::fs::remove_dir_all(&dir).unwrap();
    r.map(|_| out)
}

#[test]
fn varints_round_trip() {
    for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
        let mut b = Vec::new();
        put_varint(&mut b, v);
        assert_eq!(get_varint(&mut &b[..]).unwrap(), Some(v));
    }
    for v in [0i64, -1, 1, i64::MIN, i64::MAX, -123456] {
        assert_eq!(unzigzag(zigzag(v)), v);
    }
    assert!(get_varint(&mut &[0xffu8; 11][..]).is_err());
    assert!(get_varint(&mut &[0x80u8][..]).is_err());
}

#[test]
fn round_trip_with_seeks_adds_and_extra() {
    let old: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    // new = old[..150000] with two bytes changed, "INSERTED", then old[100..1100] again.
    let mut new = old[..150_000].to_vec();
    new[500] ^= 0x55;
    new[70_000] = 0;
    new.extend_from_slice(b"INSERTED");
    new.extend_from_slice(&old[100..1100]);
    let mut diff: Vec<u8> = new[..150_000]
        .iter()
        .zip(&old[..150_000])
        .map(|(n, o)| n.wrapping_sub(*o))
        .collect();
    diff.extend(std::iter::repeat_n(0u8, 1000));
    let ctrl = vec![
        Control {
            add: 150_000,
            copy: 8,
            seek: -150_000 + 100,
        },
        Control {
            add: 1000,
            copy: 0,
            seek: 0,
        },
    ];
    let patch = build(
        Recipe::Raw,
        &[(
            Source::Whole,
            old.len(),
            new.len(),
            ctrl,
            diff,
            b"INSERTED".to_vec(),
        )],
    );
    assert_eq!(run(&patch, &old).unwrap(), new);
}

#[test]
fn naive_round_trip_and_empty_output() {
    let old = b"hello world, this is the old file".to_vec();
    let new = b"hello world, this is the new file, longer".to_vec();
    assert_eq!(run(&naive_patch(&old, &new), &old).unwrap(), new);
    assert_eq!(run(&naive_patch(&old, b""), &old).unwrap(), b"");
    assert_eq!(run(&naive_patch(b"", &new), b"").unwrap(), new);
}

#[test]
fn corrupt_patches_are_errors_never_panics() {
    let old: Vec<u8> = (0..5000u32).map(|i| (i % 13) as u8).collect();
    let mut new = old.clone();
    new[10] = 99;
    new.extend_from_slice(b"tail");
    let good = naive_patch(&old, &new);
    assert_eq!(run(&good, &old).unwrap(), new);
    let mut failures = 0;
    for pos in 0..good.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = good.clone();
            bad[pos] ^= bit;
            match run(&bad, &old) {
                Ok(out) => assert_ne!(out.len(), usize::MAX), // some flips still decode
                Err(_) => failures += 1,
            }
        }
    }
    assert!(failures > good.len(), "most flips must be refused");
    for cut in 1..good.len() {
        assert!(run(&good[..cut], &old).is_err(), "cut at {cut}");
    }
    let mut long = good.clone();
    long.push(0);
    assert!(run(&long, &old).is_err());
    // Base of the wrong length.
    assert!(matches!(run(&good, &old[1..]), Err(DeltaError::Base(_))));
}

#[test]
fn out_of_range_and_no_progress_controls_are_refused() {
    let old = vec![1u8; 100];
    for c in [
        Control {
            add: 101,
            copy: 0,
            seek: 0,
        },
        Control {
            add: 0,
            copy: 0,
            seek: 5,
        },
    ] {
        // A leading control that only places the cursor is allowed; the tested one follows.
        let placing = Control {
            add: 0,
            copy: 0,
            seek: 0,
        };
        let ctrl = vec![placing, c];
        let n = (c.add + c.copy) as usize;
        let patch = build(
            Recipe::Raw,
            &[(Source::Whole, 100, n, ctrl, vec![0; c.add as usize], vec![])],
        );
        let e = run(&patch, &old).unwrap_err();
        assert!(matches!(e, DeltaError::Corrupt(_)), "{e}");
    }
    // A seek before the start, then an add.
    let ctrl = vec![
        Control {
            add: 1,
            copy: 0,
            seek: -5,
        },
        Control {
            add: 1,
            copy: 0,
            seek: 0,
        },
    ];
    let patch = build(
        Recipe::Raw,
        &[(Source::Whole, 100, 2, ctrl, vec![0; 2], vec![])],
    );
    assert!(run(&patch, &old)
        .unwrap_err()
        .to_string()
        .contains("outside"));
}

/// Diff bytes travel as zero runs and literal runs: any mix round-trips, and run pairs that
/// produce nothing or outrun the adds are refused.
#[test]
fn diff_runs_round_trip_and_bad_runs_are_refused() {
    let mut diff = vec![7u8, 0, 0, 0, 9, 9, 0];
    diff.extend(std::iter::repeat_n(0u8, 100_000));
    diff.extend((1..=255u8).cycle().take(70_000));
    diff.extend([0u8, 0, 3]);
    let (sec, bytes) = encode_section(Source::Whole, 0, 0, &[], &diff, &[], 6);
    let mut off = 0usize;
    let streams: Vec<&[u8]> = sec
        .streams
        .iter()
        .map(|&n| {
            off += n as usize;
            &bytes[off - n as usize..off]
        })
        .collect();
    fn inflate(b: &[u8]) -> Box<dyn Read + '_> {
        if b.is_empty() {
            Box::new(io::empty())
        } else {
            Box::new(Inflate::new(b))
        }
    }
    let mut r = DiffReader::new(
        inflate(streams[3]),
        inflate(streams[4]),
        inflate(streams[5]),
    );
    let mut back = Vec::new();
    r.read_to_end(&mut back).unwrap();
    assert_eq!(back, diff);
    assert!(r.between_runs());
    // A pair of empty runs: refused instead of spinning.
    let mut r = DiffReader::new(&[0u8, 1][..], &[0u8, 1][..], &[5u8][..]);
    let e = r.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    // Diff runs longer than the adds: the applier stops at the adds, the check catches it.
    let ctrl = vec![Control {
        add: 4,
        copy: 0,
        seek: 0,
    }];
    let patch = build(
        Recipe::Raw,
        &[(Source::Whole, 10, 4, ctrl, vec![0u8; 5], vec![])],
    );
    let e = run(&patch, &[1u8; 10]).unwrap_err();
    assert!(e.to_string().contains("longer than the adds"), "{e}");
}

#[test]
fn header_limits() {
    let h = Header {
        recipe: Recipe::Raw,
        sections: vec![Section {
            source: Source::Whole,
            old_len: 1,
            new_len: 1000,
            streams: [0; STREAMS],
        }],
        gz: None,
    };
    let b = h.to_bytes();
    assert_eq!(Header::read(&mut &b[..], 1000).unwrap(), h);
    assert!(Header::read(&mut &b[..], 999).is_err());
    let mut bad = b.clone();
    bad[8] = 9;
    assert!(Header::read(&mut &bad[..], 1000)
        .unwrap_err()
        .to_string()
        .contains("recipe"));
    let mut bad = b.clone();
    bad[9] = 2;
    assert!(Header::read(&mut &bad[..], 1000).is_err());
}

#[test]
fn deb_framing_matches_write_deb() {
    for (c, d) in [(3usize, 5usize), (4, 4), (10240, 20481)] {
        let control = vec![b'c'; c];
        let data = vec![b'd'; d];
        let mut whole = Vec::new();
        write_deb(&mut whole, &control, &data).unwrap();
        assert_eq!(whole.len() as u64, deb_len(c as u64, d as u64));
        assert!(whole.starts_with(
            b"!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\n"
        ));
        // A deb patch of two all-extra sections produces the same bytes.
        let ctrl_c = vec![Control {
            add: 0,
            copy: c as u64,
            seek: 0,
        }];
        let ctrl_d = vec![Control {
            add: 0,
            copy: d as u64,
            seek: 0,
        }];
        let patch = build(
            Recipe::Deb,
            &[
                (Source::Empty, 0, c, ctrl_c, vec![], control.clone()),
                (Source::Empty, 0, d, ctrl_d, vec![], data.clone()),
            ],
        );
        assert_eq!(run(&patch, b"").unwrap(), whole);
    }
}

/// A tar (by `tar`) with a `gzip -9n` member: expand_gz then compress_gz gives it back.
#[test]
fn gzip_members_expand_and_compress_back() {
    let dir = tmpdir("gz");
    let text: String = (0..4000)
        .map(|i| format!("line {i} of a man page\n"))
        .collect();
    std::fs::write(dir.join("page.1"), &text).unwrap();
    std::fs::write(dir.join("plain"), b"not compressed").unwrap();
    crate::support::cmd::Cmd::new("gzip")
        .args(["-9n"])
        .arg(dir.join("page.1"))
        .run()
        .unwrap();
    crate::support::cmd::Cmd::new("tar")
        .args(["--format=gnu", "-cf"])
        .arg(dir.join("t.tar"))
        .arg("-C")
        .arg(&dir)
        .args(["plain", "page.1.gz"])
        .run()
        .unwrap();
    let tar = std::fs::read(dir.join("t.tar")).unwrap();
    // The second member's header follows the first's (one block of content).
    let off = 1024u64;
    assert_eq!(&tar[off as usize..off as usize + 9], b"page.1.gz");
    let mut x = Vec::new();
    let outs = expand_gz(&mut io::Cursor::new(&tar), tar.len() as u64, &[off], &mut x).unwrap();
    assert_eq!(outs, vec![off]);
    let l = u64::from_le_bytes(
        x[off as usize + 512..off as usize + 520]
            .try_into()
            .unwrap(),
    );
    assert_eq!(l, text.len() as u64);
    std::fs::write(dir.join("x"), &x).unwrap();
    let mut xf = File::open(dir.join("x")).unwrap();
    let mut back = Vec::new();
    let n = compress_gz(&mut xf, x.len() as u64, &outs, &dir, &mut back).unwrap();
    assert_eq!(n, tar.len() as u64);
    assert_eq!(back, tar);
    // A listed offset that is not a gzip member is refused.
    let e = expand_gz(
        &mut io::Cursor::new(&tar),
        tar.len() as u64,
        &[0],
        &mut Vec::new(),
    );
    assert!(matches!(e, Err(DeltaError::Corrupt(_))));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gz_map_round_trips_in_the_header() {
    let h = Header {
        recipe: Recipe::DebGz,
        sections: vec![
            Section {
                source: Source::DebControl,
                old_len: 10,
                new_len: 10,
                streams: [0; STREAMS],
            },
            Section {
                source: Source::DebData,
                old_len: 5000,
                new_len: 6000,
                streams: [0; STREAMS],
            },
        ],
        gz: Some(GzMap {
            data_len: 3072,
            old: vec![0, 1024],
            new: vec![512, 2048, 100_000],
        }),
    };
    let b = h.to_bytes();
    assert_eq!(b.len() as u64, h.len());
    assert_eq!(Header::read(&mut &b[..], 1 << 20).unwrap(), h);
    // Overlapping offsets are refused.
    let mut bad = h.clone();
    bad.gz.as_mut().unwrap().new = vec![512, 600];
    assert!(Header::read(&mut &bad.to_bytes()[..], 1 << 20).is_err());
}

/// Bounded buffers: a 48 MiB output through the applier allocates nothing that grows with it.
#[test]
fn applier_memory_does_not_grow_with_payload() {
    struct Zeros(u64);
    impl Read for Zeros {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = (buf.len() as u64).min(self.0) as usize;
            buf[..n].fill(0);
            self.0 -= n as u64;
            Ok(n)
        }
    }
    let dir = tmpdir("mem");
    let len = 48u64 << 20;
    let old = File::create(dir.join("old")).unwrap();
    old.set_len(len).unwrap();
    let mut old = File::open(dir.join("old")).unwrap();
    let ctrl = vec![Control {
        add: len,
        copy: 0,
        seek: 0,
    }];
    let sec = Section {
        source: Source::Whole,
        old_len: len,
        new_len: len,
        streams: [0; STREAMS],
    };
    let mut out = HashingWriter::new(io::sink());
    apply_section(
        &sec,
        Some(&mut old),
        &mut ctrl.into_iter().map(Ok),
        &mut Zeros(len),
        &mut io::empty(),
        &mut out,
    )
    .unwrap();
    assert_eq!(out.written, len);
    std::fs::remove_dir_all(&dir).unwrap();
}
