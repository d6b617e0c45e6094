//! Downloading one bundle with resume (Range + If-Range), bandwidth limit and a free-space
//! check, then verifying it before it is renamed into incoming/.

use super::*;

pub(super) fn partial_paths(incoming: &Path, file: &str) -> (PathBuf, PathBuf) {
    (
        incoming.join(format!("{file}.partial")),
        incoming.join(format!("{file}.partial.meta")),
    )
}

/// Validators of the partial file, so a resume only continues the same file.
pub(super) struct Meta {
    pub(super) sha256: String,
    pub(super) etag: Option<String>,
    pub(super) last_modified: Option<String>,
}

impl Meta {
    pub(super) fn load(path: &Path) -> Option<Meta> {
        let r = Record::load(path).ok().flatten()?;
        Some(Meta {
            sha256: r.get("sha256")?.to_string(),
            etag: r.get("etag").map(str::to_string),
            last_modified: r.get("last_modified").map(str::to_string),
        })
    }
    pub(super) fn save(&self, path: &Path) -> Result<()> {
        let mut r = Record::new();
        r.set("sha256", &self.sha256);
        if let Some(e) = &self.etag {
            r.set("etag", e);
        }
        if let Some(l) = &self.last_modified {
            r.set("last_modified", l);
        }
        r.save(path).map_err(|e| Error::io(Exit::Usage, path, e))
    }
    /// The If-Range value: a strong ETag, else Last-Modified (weak ETags may not be used).
    pub(super) fn if_range(&self) -> Option<&str> {
        self.etag
            .as_deref()
            .filter(|e| !e.starts_with("W/"))
            .or(self.last_modified.as_deref())
    }
}

/// `bytes START-END/TOTAL` -> (start, total)
pub(super) fn content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

pub(super) struct Download<'a> {
    pub(super) url: String,
    pub(super) part: PathBuf,
    pub(super) meta_path: PathBuf,
    pub(super) want: &'a IndexBundle,
    pub(super) bucket: Option<Bucket>,
    pub(super) started_at: u64,
    pub(super) received: u64,
}

impl Download<'_> {
    pub(super) fn have(&self) -> u64 {
        std::fs::metadata(&self.part).map(|m| m.len()).unwrap_or(0)
    }

    pub(super) fn restart(&self, why: &str) -> std::result::Result<(), Fail> {
        log::warn!("{}: {why}; restarting the download from byte 0", self.url);
        let _ = std::fs::remove_file(&self.meta_path);
        match std::fs::remove_file(&self.part) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Fail::Stop(Error::io(Exit::Usage, &self.part, e))),
        }
    }

    /// One HTTP attempt. Ok(()) when the partial file holds `want.size` bytes.
    pub(super) fn attempt(
        &mut self,
        stop: &Stop,
        progress: &mut bool,
    ) -> std::result::Result<(), Fail> {
        let size = self.want.size;
        let mut have = self.have();
        if have > size {
            self.restart(&format!("partial file has {have} bytes, index says {size}"))?;
            have = 0;
        }
        if have == size {
            return Ok(());
        }
        let meta = Meta::load(&self.meta_path).filter(|m| m.sha256 == hex(&self.want.sha256));
        if have > 0 && meta.is_none() {
            self.restart("partial file has no matching validators")?;
            have = 0;
        }
        let url = &self.url;
        let mut req = http_agent(stop).get(url);
        if have > 0 {
            req = req.header("Range", &format!("bytes={have}-"));
            if let Some(v) = meta.as_ref().and_then(|m| m.if_range()) {
                req = req.header("If-Range", v);
            }
        }
        let mut resp = req
            .call()
            .map_err(|e| Fail::Retry(format!("{url}: {e}"), None))?;
        let status = resp.status().as_u16();
        let offset = match status {
            200 => {
                if have > 0 {
                    self.restart("mirror sent the whole file (changed, or no Range support)")?;
                }
                0
            }
            206 => {
                let cr = header(&resp, "content-range").and_then(|v| content_range(&v));
                match cr {
                    Some((start, total)) if start == have && total.is_none_or(|t| t == size) => {
                        have
                    }
                    _ => {
                        self.restart(&format!(
                            "Content-Range {:?} does not continue byte {have} of {size}",
                            header(&resp, "content-range")
                        ))?;
                        return Err(Fail::Retry(
                            format!("{url}: unusable partial response"),
                            None,
                        ));
                    }
                }
            }
            416 => {
                self.restart("mirror refused the range")?;
                return Err(Fail::Retry(format!("{url}: HTTP 416"), Some(0)));
            }
            _ => return Err(classify(url, status, &resp)),
        };
        if let Some(cl) = header(&resp, "content-length").and_then(|v| v.parse::<u64>().ok()) {
            if cl != size - offset {
                log::warn!(
                    "{url}: declares {cl} bytes, index says {}; reading at most that",
                    size - offset
                );
            }
        }
        let new_meta = Meta {
            sha256: hex(&self.want.sha256),
            etag: header(&resp, "etag"),
            last_modified: header(&resp, "last-modified"),
        };
        if offset == 0 || meta.is_none() {
            new_meta.save(&self.meta_path).map_err(Fail::Stop)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&self.part)
            .and_then(|mut f| {
                f.set_len(offset)?;
                f.seek(SeekFrom::Start(offset))?;
                Ok(f)
            })
            .map_err(|e| Fail::Stop(Error::io(Exit::Usage, &self.part, e)))?;
        if offset > 0 {
            log::info!("{url}: resuming at byte {offset} of {size}");
        }
        // Never read more than the index says, whatever the server declares or sends.
        let mut body = resp.body_mut().as_reader().take(size - offset);
        let chunk = self.bucket.as_ref().map_or(64 * 1024, |b| b.chunk());
        let mut buf = vec![0u8; chunk];
        let mut pos = offset;
        let mut window = (Instant::now(), pos);
        let (min_bytes, span) = min_progress(self.bucket.as_ref());
        let result = loop {
            if pos == size {
                break Ok(());
            }
            // Slow retrieval: a mirror that drips a byte at a time never trips the read timeout,
            // so the pass also ends when a whole window brings less than the minimum.
            if window.0.elapsed() >= span {
                if pos - window.1 < min_bytes {
                    break Err(Fail::Stop(deferred(format!(
                        "{url}: too slow, {} bytes in {} s (minimum {min_bytes}); {pos} of \
                         {size} bytes kept, the next pass resumes",
                        pos - window.1,
                        span.as_secs()
                    ))));
                }
                window = (Instant::now(), pos);
            }
            if let Some(b) = self.bucket.as_mut() {
                if !b.wait_for(chunk, stop.at) {
                    break Err(Fail::Stop(self.stopped(stop, pos)));
                }
            }
            if stop.passed() {
                break Err(Fail::Stop(self.stopped(stop, pos)));
            }
            let n = match body.read(&mut buf) {
                Ok(0) => {
                    break Err(Fail::Retry(
                        format!("{url}: connection ended at byte {pos} of {size}"),
                        None,
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if stop.passed() {
                        break Err(Fail::Stop(self.stopped(stop, pos)));
                    }
                    break Err(Fail::Retry(format!("{url}: at byte {pos}: {e}"), None));
                }
            };
            if let Some(b) = self.bucket.as_mut() {
                b.spend(n);
            }
            if let Err(e) = file.write_all(&buf[..n]) {
                break Err(Fail::Stop(Error::io(Exit::Usage, &self.part, e)));
            }
            pos += n as u64;
            self.received += n as u64;
            *progress = true;
        };
        if let Err(e) = file.sync_data() {
            return Err(Fail::Stop(Error::io(Exit::Usage, &self.part, e)));
        }
        result
    }

    pub(super) fn stopped(&self, stop: &Stop, pos: u64) -> Error {
        deferred(format!(
            "{}: {}; {pos} of {} bytes kept in {}, the next pass resumes",
            self.url,
            stop.why(),
            self.want.size,
            self.part.display()
        ))
    }
}

/// The minimum-progress rule: at least 1 KiB/s (a quarter of `bwlimit` when that is lower) over
/// each 60 s window (`EDGEPATCH_PROGRESS_WINDOW` seconds for tests).
pub(super) fn min_progress(bucket: Option<&Bucket>) -> (u64, Duration) {
    let span = std::env::var("EDGEPATCH_PROGRESS_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|s: &u64| (1..=3600).contains(s))
        .unwrap_or(60);
    let rate = bucket.map_or(1024, |b| ((b.rate / 4.0) as u64).clamp(1, 1024));
    (rate * span, Duration::from_secs(span))
}

/// Reads through while hashing (for the whole-file sha256 next to `verify_stream`).
pub(super) struct Hashing<R> {
    pub(super) inner: R,
    pub(super) hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Why a complete download was refused.
pub(super) enum Refused {
    /// The bytes differ from what the index names: transfer damage or a lying mirror. Deleted.
    Corrupt(Error),
    /// The bytes are what the signed index names, yet the bundle fails: quarantined.
    Bad(Error),
}

/// sha256 of the whole file against the index, then the bundle's own verification, in one read.
pub(super) fn verify_download(
    ctx: &Ctx,
    part: &Path,
    want: &IndexBundle,
    installed: Option<u64>,
) -> std::result::Result<crate::bundle::verify::Verified, Refused> {
    let io_err = |e| Refused::Bad(Error::io(Exit::Usage, part, e));
    let f = File::open(part).map_err(io_err)?;
    let mut r = Hashing {
        inner: io::BufReader::with_capacity(256 * 1024, f),
        hasher: Sha256::new(),
    };
    let ratchet = Ratchet::new(&ctx.config.state_dir);
    let node = crate::bundle::verify::NodeFacts {
        variant: &ctx.config.variant,
        installed_sequence: installed,
        now: ratchet.now(ctx.clock),
    };
    let verified = crate::bundle::verify::verify_stream(
        &mut r,
        ctx.trusted,
        &node,
        &mut crate::bundle::verify::Discard,
    );
    io::copy(&mut r, &mut io::sink()).map_err(io_err)?;
    let sum: [u8; 32] = r.hasher.finalize().into();
    if sum != want.sha256 {
        return Err(Refused::Corrupt(Error::new(
            Exit::Integrity,
            format!(
                "download of {} is corrupt: sha256 {}.., index says {}..; discarded, fetched again next pass",
                want.file,
                &hex(&sum)[..16],
                &hex(&want.sha256)[..16]
            ),
        )));
    }
    let v = verified.map_err(Refused::Bad)?;
    if v.manifest_sha256 != want.manifest_sha256 || v.manifest.sequence != want.sequence {
        return Err(Refused::Bad(Error::new(
            Exit::Integrity,
            format!(
                "{}: manifest (sequence {}) does not match the index (sequence {})",
                want.file, v.manifest.sequence, want.sequence
            ),
        )));
    }
    if let Err(e) = ratchet.observe_signed(v.manifest.created, ctx.clock) {
        log::warn!("cannot record trusted time: {e}");
    }
    Ok(v)
}
