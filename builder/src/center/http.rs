//! `edgepatch-builder serve`: the HTTP side of the center (axum on a small tokio runtime).
//! SQLite work runs on blocking threads, so a slow client only ever holds its own task: the
//! request headers, the body and the answer each have a deadline, the body size is capped, and
//! so are connections, in total and per client address. Each connection is its own task: a
//! panic inside one request ends that task, not the center (when built with panic=unwind, see
//! the `center` profile in Cargo.toml).

// Handlers return `Result<_, Response>`: an error *is* the response, built once per request,
// so boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use super::dashboard::{self, View};
use super::db::{self, Db, Filter};
use super::model::{self, MAX_BODY};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tower_http::services::ServeDir;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

/// One verified envelope waiting for the writer thread.
struct Job {
    env: model::Envelope,
    received: i64,
    reply: tokio::sync::oneshot::Sender<Result<(db::Ingested, &'static str), String>>,
}

/// Most envelopes committed in one transaction.
const GROUP_COMMIT: usize = 64;

/// The writer thread: takes every envelope queued meanwhile and stores them in one transaction
/// (group commit; each in its own savepoint), then answers each request.
fn writer(center: Arc<Center>, jobs: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let envs: Vec<(model::Envelope, i64)> = batch
            .iter_mut()
            .map(|j| {
                (
                    std::mem::replace(
                        &mut j.env,
                        model::Envelope {
                            pubkey: String::new(),
                            node_id: None,
                            exported_at: 0,
                            status: None,
                            reports: Vec::new(),
                        },
                    ),
                    j.received,
                )
            })
            .collect();
        let results = center.db.write(|conn| db::ingest_many(conn, &envs, "http"));
        match results {
            Ok(rs) => {
                for (j, r) in batch.into_iter().zip(rs) {
                    let _ = j.reply.send(r.map_err(|e| format!("database: {e}")));
                }
            }
            Err(e) => {
                for j in batch {
                    let _ = j.reply.send(Err(format!("database: {e}")));
                }
            }
        }
    }
}

pub struct Center {
    pub db: Db,
    jobs: Mutex<Option<std::sync::mpsc::SyncSender<Job>>>,
    pub silent_after: i64,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    refused: AtomicU64,
}

type Shared = Arc<Center>;

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": msg.into() }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn json(v: &impl serde::Serialize) -> Response {
    match serde_json::to_string(v) {
        Ok(s) => ([(header::CONTENT_TYPE, "application/json")], s).into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    eprintln!("edgepatch-builder serve: {e}");
    err(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("internal error: {e}"),
    )
}

/// Run blocking database work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Response> + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

async fn post_reports(
    State(c): State<Shared>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let sig = headers
        .get(edgepatch::bundle::report::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let c2 = c.clone();
    let verified = blocking(move || {
        let now = db::now();
        let env = match model::open_envelope(&body, &sig, now) {
            Ok(e) => e,
            Err(e) => {
                c2.refused.fetch_add(1, Ordering::Relaxed);
                let status = match e {
                    model::EnvelopeError::Invalid(_) => StatusCode::BAD_REQUEST,
                    _ => StatusCode::UNAUTHORIZED,
                };
                return Err(err(status, e.to_string()));
            }
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let sender = c2
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| internal("writer stopped"))?;
        sender
            .send(Job {
                env,
                received: now,
                reply,
            })
            .map_err(|_| internal("writer stopped"))?;
        Ok(answer)
    })
    .await;
    let answer = match verified {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (r, state) = match answer.await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return internal(e),
        Err(_) => return internal("writer stopped"),
    };
    c.accepted.fetch_add(r.accepted as u64, Ordering::Relaxed);
    c.duplicates
        .fetch_add(r.duplicates as u64, Ordering::Relaxed);
    json(&serde_json::json!({
        "accepted": r.accepted,
        "duplicates": r.duplicates,
        "counted": r.counted,
        "node": state,
    }))
}

/// `doctor` on the node: the report URL answers GET.
async fn get_reports() -> Response {
    json(&serde_json::json!({
        "ok": true,
        "accepts": "POST of an edgepatch-export/1 envelope signed by the node key",
    }))
}

#[derive(Deserialize, Default)]
struct FilterQuery {
    cycle: Option<String>,
    variant: Option<String>,
    label: Option<String>,
    state: Option<String>,
}

impl FilterQuery {
    fn view(&self) -> Result<View, Response> {
        let filter = Filter::parse(
            self.variant.as_deref(),
            self.label.as_deref(),
            self.state.as_deref(),
        )
        .map_err(|e| err(StatusCode::BAD_REQUEST, e))?;
        Ok(View {
            cycle: self.cycle.clone().filter(|c| !c.is_empty()),
            filter,
        })
    }
}

async fn get_nodes(State(c): State<Shared>, Query(q): Query<FilterQuery>) -> Response {
    let view = match q.view() {
        Ok(v) => v,
        Err(r) => return r,
    };
    if view.filter.state.as_deref() == Some("unaccepted") {
        let r = blocking(move || {
            c.db.read(|conn| db::keys(conn, None, Some("unaccepted")))
                .map_err(internal)
        })
        .await;
        return match r {
            Ok(keys) => json(&serde_json::json!({ "total": keys.len(), "unaccepted": keys })),
            Err(r) => r,
        };
    }
    let r = blocking(move || {
        let cutoff = db::now() - c.silent_after;
        c.db.read(|conn| {
            db::nodes(
                conn,
                view.cycle.as_deref(),
                &view.filter,
                cutoff,
                usize::MAX >> 1,
            )
        })
        .map_err(internal)
    })
    .await;
    match r {
        Ok((nodes, total)) => json(&serde_json::json!({ "total": total, "nodes": nodes })),
        Err(r) => r,
    }
}

async fn get_cycle(
    State(c): State<Shared>,
    UrlPath(cycle): UrlPath<String>,
    Query(q): Query<FilterQuery>,
) -> Response {
    let view = match q.view() {
        Ok(v) => v,
        Err(r) => return r,
    };
    let r = blocking(move || {
        let cutoff = db::now() - c.silent_after;
        c.db.read(|conn| {
            let Some(info) = db::cycle(conn, &cycle)? else {
                return Ok(None);
            };
            let counts = db::counts(conn, Some(&cycle), &view.filter, cutoff)?;
            Ok(Some((info, counts)))
        })
        .map_err(internal)
    })
    .await;
    match r {
        Ok(Some((info, counts))) => json(&serde_json::json!({
            "cycle": info.cycle,
            "first_seen": info.first_seen,
            "last_seen": info.last_seen,
            "nodes": counts.nodes,
            "counts": counts.by_state,
        })),
        Ok(None) => err(StatusCode::NOT_FOUND, "no report names this cycle"),
        Err(r) => r,
    }
}

fn prom_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn get_metrics(State(c): State<Shared>) -> Response {
    let c2 = c.clone();
    let r = blocking(move || {
        let cutoff = db::now() - c2.silent_after;
        c2.db
            .read(|conn| {
                let fleet = db::counts(conn, None, &Filter::default(), cutoff)?;
                let latest = db::cycles(conn, 1)?;
                let cycle = match latest.first() {
                    Some(l) => Some((
                        l.cycle.clone(),
                        db::counts(conn, Some(&l.cycle), &Filter::default(), cutoff)?,
                    )),
                    None => None,
                };
                Ok((fleet, cycle, db::report_count(conn)?))
            })
            .map_err(internal)
    })
    .await;
    let (fleet, cycle, stored) = match r {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut s = String::new();
    s += "# HELP edgepatch_center_nodes Nodes by latest state (silent: not seen recently).\n";
    s += "# TYPE edgepatch_center_nodes gauge\n";
    for st in model::STATES {
        s += &format!(
            "edgepatch_center_nodes{{state=\"{st}\"}} {}\n",
            fleet.get(st)
        );
    }
    if let Some((name, n)) = cycle {
        s += "# HELP edgepatch_center_cycle_nodes Nodes by state in the newest cycle.\n";
        s += "# TYPE edgepatch_center_cycle_nodes gauge\n";
        for st in model::STATES {
            s += &format!(
                "edgepatch_center_cycle_nodes{{cycle=\"{}\",state=\"{st}\"}} {}\n",
                prom_escape(&name),
                n.get(st)
            );
        }
    }
    s += "# HELP edgepatch_center_reports_stored Reports in the database.\n";
    s += "# TYPE edgepatch_center_reports_stored gauge\n";
    s += &format!("edgepatch_center_reports_stored {stored}\n");
    s += "# HELP edgepatch_center_reports_total Reports received since start, by outcome.\n";
    s += "# TYPE edgepatch_center_reports_total counter\n";
    s += &format!(
        "edgepatch_center_reports_total{{outcome=\"accepted\"}} {}\n\
         edgepatch_center_reports_total{{outcome=\"duplicate\"}} {}\n",
        c.accepted.load(Ordering::Relaxed),
        c.duplicates.load(Ordering::Relaxed)
    );
    s += "# HELP edgepatch_center_requests_refused_total Report POSTs refused (4xx) since start.\n";
    s += "# TYPE edgepatch_center_requests_refused_total counter\n";
    s += &format!(
        "edgepatch_center_requests_refused_total {}\n",
        c.refused.load(Ordering::Relaxed)
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s).into_response()
}

async fn get_dashboard(State(c): State<Shared>, Query(q): Query<FilterQuery>) -> Response {
    let view = match q.view() {
        Ok(v) => v,
        Err(r) => return r,
    };
    let r = blocking(move || {
        c.db.read(|conn| {
            let page = dashboard::load(conn, &view, c.silent_after)?;
            Ok((dashboard::render(&view, &page), page.summary_ms))
        })
        .map_err(internal)
    })
    .await;
    match r {
        Ok((html, ms)) => {
            let mut resp = Html(html).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("summary;dur={ms:.2}")) {
                resp.headers_mut().insert("server-timing", v);
            }
            resp
        }
        Err(r) => r,
    }
}

async fn get_node(State(c): State<Shared>, UrlPath(id): UrlPath<String>) -> Response {
    let r = blocking(move || {
        let now = db::now();
        c.db.read(|conn| {
            let Some((node, status)) = db::node(conn, &id, now - c.silent_after)? else {
                return Ok(None);
            };
            let hist = db::history(conn, &id, 200)?;
            let pending = db::pending_history(conn, &id, super::PENDING_SHOWN)?;
            Ok(Some(dashboard::render_node(
                &node,
                status.as_deref(),
                &hist,
                &pending,
                now,
            )))
        })
        .map_err(internal)
    })
    .await;
    match r {
        Ok(Some(html)) => Html(html).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Html("<p>no such node</p>")).into_response(),
        Err(r) => r,
    }
}

/// A panic while handling one request becomes a 500 for that request (with panic=unwind; see
/// the `center` profile). Blocking work panicking is caught by `spawn_blocking` already.
async fn catch_panics(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(r) => r,
        Err(_) => err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error (a bug in the center; the request was dropped, the center runs on)",
        ),
    }
}

async fn not_found() -> Response {
    err(
        StatusCode::NOT_FOUND,
        "no such page; see / and /api/v1/nodes",
    )
}

/// Does the request path (relative to the mirror) stay inside `root` once every symlink is
/// resolved? A path that does not exist passes: ServeDir answers 404 for it.
fn inside_mirror(root: &std::path::Path, url_path: &str) -> bool {
    let Ok(decoded) = percent_encoding::percent_decode_str(url_path).decode_utf8() else {
        return false;
    };
    let mut p = root.to_path_buf();
    for part in decoded.split('/') {
        match part {
            "" | "." => {}
            ".." => return false,
            _ if part.contains('\\') || part.contains('\0') => return false,
            _ => p.push(part),
        }
    }
    match p.canonicalize() {
        Ok(real) => real.starts_with(root),
        // Missing: let ServeDir say 404. Anything else (a loop, no permission): refuse.
        Err(e) => {
            e.kind() == std::io::ErrorKind::NotFound && std::fs::symlink_metadata(&p).is_err()
        }
    }
}

async fn mirror_guard(
    State(root): State<Arc<PathBuf>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path().to_string();
    let root2 = root.clone();
    let ok = tokio::task::spawn_blocking(move || inside_mirror(&root2, &path))
        .await
        .unwrap_or(false);
    if !ok {
        return err(StatusCode::NOT_FOUND, "no such file in the mirror");
    }
    next.run(req).await
}

pub fn router(center: Shared, mirror: Option<PathBuf>) -> Router {
    let mut app = Router::new()
        .route(
            "/api/v1/reports",
            post(post_reports)
                .get(get_reports)
                .layer(DefaultBodyLimit::max(MAX_BODY)),
        )
        .route("/api/v1/nodes", get(get_nodes))
        .route("/api/v1/cycles/{cycle}", get(get_cycle))
        .route("/metrics", get(get_metrics))
        .route("/nodes/{id}", get(get_node))
        .route("/", get(get_dashboard))
        .fallback(not_found)
        .with_state(center);
    if let Some(dir) = mirror {
        // ServeDir refuses `..` and answers Range requests; the guard also refuses anything that
        // resolves (through a symlink) outside the mirror root.
        let root = Arc::new(dir.canonicalize().unwrap_or_else(|_| dir.clone()));
        let mirror = Router::new()
            .fallback_service(ServeDir::new(dir))
            .layer(axum::middleware::from_fn_with_state(root, mirror_guard));
        app = app.nest_service("/mirror", mirror);
    }
    // Test hook (debug builds only, and only when asked for): a handler that panics.
    if cfg!(debug_assertions) && std::env::var_os("EDGEPATCH_CENTER_TEST_PANIC").is_some() {
        app = app.route(
            "/test/panic",
            get(|| async {
                if true {
                    panic!("test panic");
                }
                ""
            }),
        );
    }
    app.layer(axum::middleware::from_fn(catch_panics))
        .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(30)))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(60),
        ))
}

/// Connection limits for `serve`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Whole request head (request line and headers) must arrive within this.
    pub header_timeout: Duration,
    /// Open connections in total; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Open connections per client address; further ones wait briefly, then are closed.
    pub max_per_client: usize,
}

/// Open connections per client address. A slot is held by a [`Slot`] guard, so it is freed the
/// moment the connection's task ends, however it ends.
#[derive(Default)]
struct PerClient {
    open: Mutex<HashMap<IpAddr, usize>>,
    /// Connections waiting for a slot, per address: at most the cap again, so one address
    /// cannot hold the global connection slots by queueing.
    waiting: Mutex<HashMap<IpAddr, usize>>,
    /// Woken whenever a slot is freed.
    freed: tokio::sync::Notify,
}

/// How long a connection over its client's cap waits for one of that client's connections to
/// end before it is closed. A client that closes a connection and opens the next one at once
/// (HTTP/1.0 style, or Python's http.client) is counted twice for the few moments the center
/// takes to see the first close; a client holding all its connections open still is refused.
const PER_CLIENT_GRACE: Duration = Duration::from_secs(2);

struct Slot {
    table: Arc<PerClient>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut m = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = m.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
        self.table.freed.notify_waiters();
    }
}

impl PerClient {
    fn try_enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut m = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            table: self.clone(),
            ip,
        })
    }

    /// A slot for `ip`, waiting up to `grace` for one to be freed.
    async fn enter(self: &Arc<Self>, ip: IpAddr, max: usize, grace: Duration) -> Option<Slot> {
        {
            let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            let n = w.entry(ip).or_insert(0);
            if *n >= max {
                return None;
            }
            *n += 1;
        }
        let got = self.wait(ip, max, grace).await;
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = w.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                w.remove(&ip);
            }
        }
        got
    }

    async fn wait(self: &Arc<Self>, ip: IpAddr, max: usize, grace: Duration) -> Option<Slot> {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            // Register for the wake-up before looking, so a slot freed in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(s) = self.try_enter(ip, max) {
                return Some(s);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return None;
            }
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let per_client = Arc::new(PerClient::default());
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait for connections to close instead of spinning.
                    eprintln!("edgepatch-builder serve: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ip = peer.ip();
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let per_client = per_client.clone();
        tokio::spawn(async move {
            let slot = match per_client.try_enter(ip, limits.max_per_client) {
                Some(s) => s,
                None => {
                    match per_client
                        .enter(ip, limits.max_per_client, PER_CLIENT_GRACE)
                        .await
                    {
                        Some(s) => s,
                        None => return, // drops the stream (and the permit)
                    }
                }
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            let _ = conn.await;
            drop(slot);
            drop(permit);
        });
    }
}

pub fn serve(
    listen: &str,
    db_path: &std::path::Path,
    mirror: Option<PathBuf>,
    silent_after: i64,
    limits: Limits,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(m) = &mirror {
        anyhow::ensure!(m.is_dir(), "--mirror {}: not a directory", m.display());
    }
    if cfg!(panic = "abort") {
        eprintln!(
            "edgepatch-builder serve: warning: built with panic=abort, so a bug hit by one \
             request ends the center; build with 'cargo build --profile center'"
        );
    }
    let (jobs, queue) = std::sync::mpsc::sync_channel(1024);
    let center = Arc::new(Center {
        db: Db::open(db_path)?,
        jobs: Mutex::new(Some(jobs)),
        silent_after,
        accepted: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });
    {
        let c = center.clone();
        std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || writer(c, queue))?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listen on {listen}"))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "edgepatch-builder serve: listening on http://{addr}/ (db {})",
            db_path.display()
        );
        let shutdown = async {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        accept_loop(listener, router(center, mirror), limits, shutdown).await;
        Ok(())
    })
}
