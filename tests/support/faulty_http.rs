//! A small HTTP/1.1 file server with fault injection, for the distribution tests and the fleet
//! benchmark (`faulty-mirror` binary). std::net only, one thread per connection, loopback only,
//! `Connection: close` on every response.
//!
//! It serves a directory (a published mirror tree) with `Range: bytes=N-`, strong ETags and
//! `If-Range`, and can misbehave on demand: cut a bundle body after N bytes, stall, answer 503
//! with Retry-After, send more bytes than it declared, declare and send a bigger file than the
//! index says, flip a byte, serve another index body (an old one, another variant's), ignore
//! Range, or cut a random share of bundle connections at random offsets (benchmark).
//! Every request is logged with its Range header and status; body bytes are counted in total
//! and per second (for peak throughput).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to do wrong. Counters (`*_count`, `busy`) are decremented as faults fire.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Close the connection after this many body bytes of a bundle response...
    pub cut_after: Option<u64>,
    /// ...for this many responses.
    pub cut_count: u32,
    /// Stop sending for `stall_for` after this many body bytes of a bundle response...
    pub stall_after: Option<u64>,
    pub stall_for: Duration,
    pub stall_count: u32,
    /// Slow retrieval: send bundle bodies one byte per `drip` (never stalls long enough for a
    /// read timeout).
    pub drip: Option<Duration>,
    /// Answer the next N requests with 503 and `Retry-After: retry_after`.
    pub busy: u32,
    pub retry_after: u64,
    /// Send this many garbage bytes after the declared body (Content-Length stays the file's).
    pub overrun: u64,
    /// Declare and send this many garbage bytes more than the file has (an endless-ish body).
    pub pad: u64,
    /// Flip the byte at this file offset in bundle bodies...
    pub flip_at: Option<u64>,
    pub flip_count: u32,
    /// Serve this instead of any `*/index` file.
    pub index_override: Option<Vec<u8>>,
    /// Answer every request with the whole file (200), as a server without Range support.
    pub ignore_range: bool,
    /// Benchmark: percent of bundle responses cut at a random offset.
    pub random_cut_percent: u32,
}

#[derive(Debug, Clone)]
pub struct Logged {
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub status: u16,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub requests: Vec<Logged>,
    pub bytes: u64,
    /// Body bytes written per second since the server started.
    pub per_second: Vec<u64>,
}

struct Shared {
    root: PathBuf,
    faults: Mutex<Faults>,
    stats: Mutex<Stats>,
    started: Instant,
    rng: Mutex<u64>,
    stop: AtomicBool,
}

pub struct FaultyServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl FaultyServer {
    /// Serve `root` on 127.0.0.1 (a free port).
    pub fn start(root: &Path) -> FaultyServer {
        FaultyServer::start_on(root, 0)
    }

    pub fn start_on(root: &Path, port: u16) -> FaultyServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            faults: Mutex::new(Faults::default()),
            stats: Mutex::new(Stats::default()),
            started: Instant::now(),
            rng: Mutex::new(0x2545_F491_4F6C_DD1D ^ addr.port() as u64),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let s = s.clone();
                    std::thread::spawn(move || {
                        let _ = handle(&s, conn);
                    });
                }
            }
        });
        FaultyServer {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Change the faults.
    pub fn set(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.shared.faults.lock().unwrap());
    }

    pub fn clear(&self) {
        *self.shared.faults.lock().unwrap() = Faults::default();
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.shared.stats.lock().unwrap().requests.clone()
    }

    pub fn bytes_served(&self) -> u64 {
        self.shared.stats.lock().unwrap().bytes
    }

    pub fn per_second(&self) -> Vec<u64> {
        self.shared.stats.lock().unwrap().per_second.clone()
    }
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn next_random(s: &Shared) -> u64 {
    let mut r = s.rng.lock().unwrap();
    *r ^= *r << 13;
    *r ^= *r >> 7;
    *r ^= *r << 17;
    *r
}

fn count(s: &Shared, n: u64) {
    let sec = s.started.elapsed().as_secs() as usize;
    let mut st = s.stats.lock().unwrap();
    st.bytes += n;
    if st.per_second.len() <= sec {
        st.per_second.resize(sec + 1, 0);
    }
    st.per_second[sec] += n;
}

fn log(s: &Shared, path: &str, range: &Option<String>, if_range: &Option<String>, status: u16) {
    s.stats.lock().unwrap().requests.push(Logged {
        path: path.to_string(),
        range: range.clone(),
        if_range: if_range.clone(),
        status,
    });
}

fn etag(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "\"{:x}-{:x}-{:x}\"",
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

fn simple(conn: &mut TcpStream, status: u16, reason: &str, extra: &str) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n{extra}\r\n"
    )
}

fn handle(s: &Shared, mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let (mut range, mut if_range) = (None, None);
    let mut header_bytes = 0;
    loop {
        let mut h = String::new();
        let n = reader.read_line(&mut h)?;
        header_bytes += n;
        if n == 0 || h == "\r\n" || h == "\n" || header_bytes > 16384 {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "if-range" => if_range = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let path = target.split('?').next().unwrap_or("/").to_string();
    if method != "GET" && method != "HEAD" {
        log(s, &path, &range, &if_range, 405);
        return simple(&mut conn, 405, "Method Not Allowed", "");
    }
    let faults = {
        let mut f = s.faults.lock().unwrap();
        let snapshot = f.clone();
        if f.busy > 0 {
            f.busy -= 1;
        }
        snapshot
    };
    if faults.busy > 0 {
        log(s, &path, &range, &if_range, 503);
        return simple(
            &mut conn,
            503,
            "Service Unavailable",
            &format!("Retry-After: {}\r\n", faults.retry_after),
        );
    }
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        log(s, &path, &range, &if_range, 400);
        return simple(&mut conn, 400, "Bad Request", "");
    }
    let is_index = path.ends_with("/index");
    let is_bundle = path.contains("/bundles/");
    let file = s.root.join(rel);
    let (data_len, tag, override_body) = match (&faults.index_override, is_index) {
        (Some(body), true) => (
            body.len() as u64,
            "\"override\"".to_string(),
            Some(body.clone()),
        ),
        _ => match std::fs::metadata(&file) {
            Ok(m) if m.is_file() => (m.len(), etag(&m), None),
            _ => {
                log(s, &path, &range, &if_range, 404);
                return simple(&mut conn, 404, "Not Found", "");
            }
        },
    };
    // Range: bytes=N- only (what the agent sends); If-Range must match the ETag.
    let mut start = 0u64;
    let mut status = 200;
    if let Some(r) = range.as_deref().filter(|_| !faults.ignore_range) {
        let usable = if_range.as_deref().is_none_or(|v| v == tag);
        if let Some(n) = r
            .strip_prefix("bytes=")
            .and_then(|x| x.strip_suffix('-'))
            .and_then(|x| x.parse::<u64>().ok())
        {
            if usable {
                if n >= data_len {
                    log(s, &path, &range, &if_range, 416);
                    return simple(
                        &mut conn,
                        416,
                        "Range Not Satisfiable",
                        &format!("Content-Range: bytes */{data_len}\r\n"),
                    );
                }
                start = n;
                status = 206;
            }
        }
    }
    let pad = if is_bundle { faults.pad } else { 0 };
    let total = data_len + pad;
    let declared = total - start;
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {declared}\r\nETag: {tag}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
        if status == 206 { "Partial Content" } else { "OK" }
    );
    if status == 206 {
        head += &format!("Content-Range: bytes {start}-{}/{total}\r\n", total - 1);
    }
    head += "\r\n";
    log(s, &path, &range, &if_range, status);
    conn.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return Ok(());
    }

    // Decide this response's body faults.
    let mut cut = None;
    let mut stall = None;
    let mut flip = None;
    if is_bundle {
        let mut f = s.faults.lock().unwrap();
        if f.cut_count > 0 {
            if let Some(n) = f.cut_after {
                f.cut_count -= 1;
                cut = Some(n);
            }
        }
        if f.stall_count > 0 {
            if let Some(n) = f.stall_after {
                f.stall_count -= 1;
                stall = Some((n, f.stall_for));
            }
        }
        if f.flip_count > 0 {
            if let Some(n) = f.flip_at {
                f.flip_count -= 1;
                flip = Some(n);
            }
        }
        let pct = f.random_cut_percent as u64;
        drop(f);
        if cut.is_none() && pct > 0 && next_random(s) % 100 < pct {
            cut = Some(next_random(s) % declared.max(1));
        }
    }

    let mut source: Box<dyn Read> = match override_body {
        Some(b) => Box::new(std::io::Cursor::new(b)),
        None => Box::new(std::fs::File::open(&file)?),
    };
    let mut skip = start.min(data_len);
    let mut buf = vec![0u8; 16 * 1024];
    while skip > 0 {
        let len = skip.min(buf.len() as u64) as usize;
        let n = source.read(&mut buf[..len])?;
        if n == 0 {
            break;
        }
        skip -= n as u64;
    }
    let mut pos = start; // offset in the (possibly padded) body
    let mut sent = 0u64;
    let to_send = declared + if is_bundle { faults.overrun } else { 0 };
    while sent < to_send {
        let want = (to_send - sent).min(buf.len() as u64) as usize;
        let n = if pos < data_len {
            let n = source.read(&mut buf[..want.min((data_len - pos) as usize)])?;
            if n == 0 {
                break;
            }
            n
        } else {
            buf[..want].fill(0xA5);
            want
        };
        if let Some(at) = flip {
            if at >= pos && at < pos + n as u64 {
                buf[(at - pos) as usize] ^= 0x01;
            }
        }
        let mut n = n;
        if let Some(c) = cut {
            if sent + n as u64 >= c {
                n = (c - sent) as usize;
                conn.write_all(&buf[..n])?;
                count(s, n as u64);
                return Ok(()); // drop: the connection is cut
            }
        }
        if let Some((at, dur)) = stall {
            if sent + n as u64 >= at {
                let first = (at - sent) as usize;
                conn.write_all(&buf[..first])?;
                count(s, first as u64);
                conn.flush()?;
                std::thread::sleep(dur);
                stall = None;
                conn.write_all(&buf[first..n])?;
                count(s, (n - first) as u64);
                sent += n as u64;
                pos += n as u64;
                continue;
            }
        }
        if let (Some(every), true) = (faults.drip, is_bundle) {
            for b in &buf[..n] {
                conn.write_all(std::slice::from_ref(b))?;
                conn.flush()?;
                count(s, 1);
                std::thread::sleep(every);
            }
            sent += n as u64;
            pos += n as u64;
            continue;
        }
        conn.write_all(&buf[..n])?;
        count(s, n as u64);
        sent += n as u64;
        pos += n as u64;
    }
    conn.flush()
}
