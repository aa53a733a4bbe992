//! `slipway serve DIR`: HTTP for network boot, straight from a build's output directory.
//!
//! Its job is to answer exactly three kinds of request and nothing else:
//! - `GET /boot.ipxe`: `DIR/pxe/boot.ipxe` with `slipway-base` set to the address the client
//!   used to reach us (its Host header), so one build works behind any address or port;
//! - `GET /pxe/...`: files under `DIR/pxe` (kernels, initramfs, role disks, per-node iPXE
//!   scripts), with Range support so a node can resume a disk of hundreds of MB;
//! - `GET /nodes/MAC/config.ign`: one node's Ignition config, found through `DIR/pxe/macs.json`.
//!
//! Boundaries: it only reads what `slipway build` laid down, and it owns its own tokio runtime
//! (the rest of slipway is synchronous). Everything else in DIR (node disks, `files/`,
//! `admin.conf`, `secrets/`) holds private keys and is unreachable: no route maps to it,
//! `/pxe/` paths are checked component by component and again after resolving symlinks, and
//! a node name from macs.json must be a plain file name. Error bodies are fixed strings that
//! carry nothing from the directory.
//!
//! Anyone on the network who knows a node's MAC gets that node's config, secrets included:
//! that is the trust model of PXE plus Ignition, so serve on a provisioning network only.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path as UrlPath, Request, State};
use axum::http::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body::{Frame, SizeHint};
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tower_http::services::ServeFile;

use super::BASE_PLACEHOLDER;

/// The media type Ignition's own HTTP fetcher documents for configs.
const IGNITION_CONTENT_TYPE: &str = "application/vnd.coreos.ignition+json";
/// How long a stop (SIGINT/SIGTERM, or dropping a [`ServerHandle`]) waits for transfers in
/// flight before cutting them off: long enough for a config or a script, not for a disk.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A whole rack powering on connects at once; the kernel's queue of not yet accepted
/// connections should hold them all (std's `TcpListener::bind` uses 128).
const LISTEN_BACKLOG: u32 = 1024;
/// A DNS name is at most 253 characters; with a port or an IPv6 literal this is ample.
const MAX_HOST_LEN: usize = 255;
/// Paths longer than this are shortened in the log: a request line is the client's to choose.
const MAX_LOGGED_PATH: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "{} is not a slipway build output ({} is missing); run `slipway build --out {}` first",
        dir.display(),
        missing.display(),
        dir.display()
    )]
    NotBuildOutput { dir: PathBuf, missing: PathBuf },
    #[error("reading {}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("--keep-state {name}: no node of that name in {}", macs.display())]
    UnknownNode { name: String, macs: PathBuf },
    #[error("binding {addr}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("starting the server's runtime")]
    Runtime(#[source] io::Error),
    #[error("installing the SIGINT and SIGTERM handlers")]
    Signal(#[source] io::Error),
    #[error("serving HTTP")]
    Serve(#[source] io::Error),
}

pub struct ServeOptions {
    /// A `slipway build` output directory.
    pub dir: PathBuf,
    pub listen: SocketAddr,
    /// Nodes whose next install keeps their state partition (reimaging with data): their
    /// iPXE scripts are served with `slipway.install.state=keep` instead of `wipe`.
    pub keep_state: Vec<String>,
}

/// Binds, prints "slipway serve: listening on http://ADDR (serving DIR)" on stderr, serves
/// until SIGINT/SIGTERM.
pub fn serve(opts: &ServeOptions) -> Result<(), ServeError> {
    let site = Site::open(&opts.dir, &opts.keep_state)?;
    let rt = runtime()?;
    let listener = bind(&rt, opts.listen)?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: opts.listen,
        source,
    })?;
    eprintln!(
        "slipway serve: listening on http://{addr} (serving {})",
        opts.dir.display()
    );
    let result = rt.block_on(async move {
        let stop = stop_signal().map_err(ServeError::Signal)?;
        run(listener, site, stop).await
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// For tests: binds (port 0 allowed) and serves on a background thread; returns the bound
/// address and a handle whose Drop stops the server.
pub fn spawn(opts: &ServeOptions) -> Result<(SocketAddr, ServerHandle), ServeError> {
    let (dir, listen) = (&opts.dir, opts.listen);
    let site = Site::open(dir, &opts.keep_state)?;
    let rt = runtime()?;
    let listener = bind(&rt, listen)?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: listen,
        source,
    })?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("slipway-serve".into())
        .spawn(move || {
            let result = rt.block_on(run(listener, site, async move {
                // A dropped sender stops the server just as a sent () does.
                let _ = stop_rx.await;
            }));
            rt.shutdown_timeout(Duration::from_secs(1));
            result
        })
        .map_err(ServeError::Runtime)?;
    Ok((
        addr,
        ServerHandle {
            stop: Some(stop_tx),
            thread: Some(thread),
        },
    ))
}

/// A server started by [`spawn`]; dropping it stops the server and waits for its thread.
pub struct ServerHandle {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ServeError>>>,
}

impl ServerHandle {
    /// Stops the server and returns how serving ended.
    pub fn stop(mut self) -> Result<(), ServeError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ServeError::Serve(io::Error::other(
                "the server thread panicked",
            ))),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            eprintln!("slipway serve: {e}");
        }
    }
}

/// The directory being served, resolved once at start. Paths below it are resolved again on
/// every request: a rebuild swaps `nodes/` and replaces files in place while we run.
struct Site {
    root: PathBuf,
    /// Node names whose script says `state=keep` (`--keep-state`).
    keep: Vec<String>,
}

impl Site {
    fn open(dir: &Path, keep: &[String]) -> Result<Arc<Site>, ServeError> {
        let boot = dir.join("pxe").join("boot.ipxe");
        match std::fs::metadata(&boot) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(not_build_output(dir, boot)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Err(not_build_output(dir, boot));
            }
            Err(source) => return Err(ServeError::Read { path: boot, source }),
        }
        let root = std::fs::canonicalize(dir).map_err(|source| ServeError::Read {
            path: dir.to_owned(),
            source,
        })?;
        // A name that is not a node would silently keep nothing: refuse it now.
        let macs = root.join("pxe").join("macs.json");
        if !keep.is_empty() {
            let known: BTreeMap<String, String> = std::fs::read(&macs)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            for name in keep {
                if !known.values().any(|n| n == name) {
                    return Err(ServeError::UnknownNode {
                        name: name.clone(),
                        macs,
                    });
                }
            }
        }
        Ok(Arc::new(Site {
            root,
            keep: keep.to_vec(),
        }))
    }
}

fn not_build_output(dir: &Path, missing: PathBuf) -> ServeError {
    ServeError::NotBuildOutput {
        dir: dir.to_owned(),
        missing,
    }
}

fn runtime() -> Result<Runtime, ServeError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("slipway-serve")
        .build()
        .map_err(ServeError::Runtime)
}

fn bind(rt: &Runtime, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    // The listener registers with the runtime's reactor, which needs the runtime entered.
    let _entered = rt.enter();
    let err = |source| ServeError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    // A restarted server binds again while the last one's connections sit in TIME_WAIT.
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

/// Resolves on the first SIGINT or SIGTERM.
fn stop_signal() -> io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// Serves until `stop` resolves, then lets transfers in flight finish for [`SHUTDOWN_GRACE`].
async fn run(
    listener: TcpListener,
    site: Arc<Site>,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (drain_tx, drain_rx) = oneshot::channel::<()>();
    let app = router(site).into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = drain_rx.await;
        })
        .into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map_err(ServeError::Serve),
        () = stop => {}
    }
    eprintln!(
        "slipway serve: stopping (transfers in flight get {} s to finish)",
        SHUTDOWN_GRACE.as_secs()
    );
    let _ = drain_tx.send(());
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(result) => result.map_err(ServeError::Serve),
        Err(_) => Ok(()),
    }
}

fn router(site: Arc<Site>) -> Router {
    Router::new()
        .route("/boot.ipxe", get(boot_script))
        .route("/pxe/{*path}", get(pxe_file))
        .route("/nodes/{mac}/config.ign", get(node_config))
        .fallback(|| async { not_found() })
        // The last layer added runs first: every answer, 405s included, is logged.
        .layer(middleware::from_fn(only_get_and_head))
        .layer(middleware::from_fn(access_log))
        .with_state(site)
}

async fn boot_script(State(site): State<Arc<Site>>, headers: HeaderMap) -> Response {
    let Some(host) = request_host(&headers) else {
        return plain(StatusCode::BAD_REQUEST, "bad or missing Host header\n");
    };
    let path = site.root.join("pxe").join("boot.ipxe");
    match tokio::fs::read_to_string(&path).await {
        Ok(script) => (
            [
                (CONTENT_TYPE, "text/plain; charset=utf-8"),
                // The body depends on the Host header; a cache must not hand it to another.
                (CACHE_CONTROL, "no-store"),
            ],
            set_base(&script, host),
        )
            .into_response(),
        Err(e) => {
            eprintln!("slipway serve: reading {}: {e}", path.display());
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    }
}

async fn pxe_file(
    State(site): State<Arc<Site>>,
    rel: Result<UrlPath<String>, PathRejection>,
    req: Request,
) -> Response {
    let Some(rel) = rel.ok().and_then(|UrlPath(rel)| safe_relative(&rel)) else {
        return plain(StatusCode::BAD_REQUEST, "bad path\n");
    };
    let Some(file) = resolve_beneath(&site.root.join("pxe"), &rel).await else {
        return not_found();
    };
    if let Some(resp) = keep_state_script(&site, &rel, &file).await {
        return resp;
    }
    // mime_guess does not know iPXE scripts; browsers and curl show text/plain.
    let content_type = (rel.extension().is_some_and(|e| e == "ipxe")).then_some("text/plain");
    send_file(&file, req, content_type).await
}

/// A node script (`nodes/MAC.ipxe`) of a node named in `--keep-state`, with its install
/// told to keep the state partition; None for every other file.
async fn keep_state_script(site: &Site, rel: &Path, file: &Path) -> Option<Response> {
    if site.keep.is_empty() || rel.parent() != Some(Path::new("nodes")) {
        return None;
    }
    let mac = normalize_mac(rel.file_stem()?.to_str()?)?;
    let name = node_for_mac(site, &mac).await?;
    if !site.keep.contains(&name) {
        return None;
    }
    let script = tokio::fs::read_to_string(file).await.ok()?;
    let mut resp = (
        [(CONTENT_TYPE, "text/plain"), (CACHE_CONTROL, "no-store")],
        script.replace(super::state_param(false), super::state_param(true)),
    )
        .into_response();
    resp.extensions_mut()
        .insert(NodeName(format!("{name} (state kept)")));
    Some(resp)
}

async fn node_config(
    State(site): State<Arc<Site>>,
    mac: Result<UrlPath<String>, PathRejection>,
    req: Request,
) -> Response {
    let Some(mac) = mac.ok().and_then(|UrlPath(mac)| normalize_mac(&mac)) else {
        return not_found();
    };
    let Some(name) = node_for_mac(&site, &mac).await else {
        return not_found();
    };
    let rel = Path::new(&name).join("config.ign");
    let mut resp = match resolve_beneath(&site.root.join("nodes"), &rel).await {
        Some(file) => {
            let mut resp = send_file(&file, req, Some(IGNITION_CONTENT_TYPE)).await;
            resp.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        None => not_found(),
    };
    resp.extensions_mut().insert(NodeName(name));
    resp
}

/// The node named for `mac` (normalized) in `DIR/pxe/macs.json`, read afresh each time: a
/// rebuild replaces it by rename, and it is small.
async fn node_for_mac(site: &Site, mac: &str) -> Option<String> {
    let path = site.root.join("pxe").join("macs.json");
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("slipway serve: reading {}: {e}", path.display());
            return None;
        }
    };
    let macs: BTreeMap<String, String> = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("slipway serve: parsing {}: {e}", path.display());
            return None;
        }
    };
    let name = macs
        .into_iter()
        .find(|(k, _)| normalize_mac(k).as_deref() == Some(mac))?
        .1;
    if !is_plain_name(&name) {
        eprintln!(
            "slipway serve: {} maps {mac} to a name that is not a plain file name",
            path.display()
        );
        return None;
    }
    Some(name)
}

/// `base.join(rel)` with every symlink resolved, if it is a regular file that is still
/// beneath `base` (itself resolved now: a rebuild may have swapped it).
async fn resolve_beneath(base: &Path, rel: &Path) -> Option<PathBuf> {
    let base = tokio::fs::canonicalize(base).await.ok()?;
    let file = tokio::fs::canonicalize(base.join(rel)).await.ok()?;
    if !file.starts_with(&base) {
        return None;
    }
    let meta = tokio::fs::metadata(&file).await.ok()?;
    meta.is_file().then_some(file)
}

/// Streams `file` (Range, If-Modified-Since and HEAD handled by tower-http's ServeFile).
async fn send_file(file: &Path, req: Request, content_type: Option<&'static str>) -> Response {
    match ServeFile::new(file).try_call(req).await {
        Ok(resp) => {
            let mut resp = resp.map(Body::new);
            if let Some(ct) = content_type
                && resp.status().is_success()
            {
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            }
            resp
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            not_found()
        }
        Err(e) => {
            eprintln!("slipway serve: reading {}: {e}", file.display());
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    }
}

async fn only_get_and_head(req: Request, next: Next) -> Response {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return next.run(req).await;
    }
    let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    resp
}

/// Logs each request once its body has been sent (or the client went away): the bytes and
/// the time are then those of the transfer, not of the headers.
async fn access_log(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    // hyper stops polling once Content-Length bytes are out, without waiting for the body to
    // say it has ended: having sent that many is what "complete" means.
    let length = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| resp.body().size_hint().exact());
    let pending = PendingLog {
        remote,
        head: method == Method::HEAD,
        method,
        path,
        status: resp.status().as_u16(),
        node: resp.extensions().get::<NodeName>().map(|n| n.0.clone()),
        start,
        length,
    };
    resp.map(|inner| {
        Body::new(LoggedBody {
            inner,
            log: Some(pending),
            sent: 0,
            ended: false,
        })
    })
}

/// Set by the config route so the log names the node a MAC resolved to.
#[derive(Clone)]
struct NodeName(String);

struct PendingLog {
    remote: Option<SocketAddr>,
    method: Method,
    path: String,
    status: u16,
    node: Option<String>,
    start: Instant,
    head: bool,
    /// The body's length, when the headers or the body said it.
    length: Option<u64>,
}

/// A response body that counts what it hands to hyper and writes the log line when dropped.
struct LoggedBody {
    inner: Body,
    log: Option<PendingLog>,
    sent: u64,
    ended: bool,
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let Some(log) = self.log.take() else { return };
        let line = log_line(&LogEntry {
            remote: log.remote,
            method: log.method.as_str(),
            path: &log.path,
            status: log.status,
            // A HEAD's body is dropped unsent by design; its size says nothing.
            bytes: (!log.head).then_some(self.sent),
            complete: log.head
                || self.ended
                || self.inner.is_end_stream()
                || log.length.is_some_and(|l| self.sent >= l),
            duration: log.start.elapsed(),
            node: log.node.as_deref(),
        });
        eprintln!("{line}");
    }
}

/// What one access-log line says. Never a body, a header value or anything read from DIR
/// beyond the node's name.
pub struct LogEntry<'a> {
    pub remote: Option<SocketAddr>,
    pub method: &'a str,
    /// The request path as received (percent-encoded, so free of control characters).
    pub path: &'a str,
    pub status: u16,
    /// Body bytes sent, if known.
    pub bytes: Option<u64>,
    /// False when the client went away (or the server stopped) before the body was sent.
    pub complete: bool,
    pub duration: Duration,
    /// The node a config request's MAC resolved to.
    pub node: Option<&'a str>,
}

/// One access-log line, e.g.
/// `slipway serve: 10.0.0.5:40112 GET /nodes/52-54-00-00-00-11/config.ign 200 5120 B 3 ms node=master1`.
pub fn log_line(e: &LogEntry) -> String {
    let remote = e.remote.map_or_else(|| "-".to_owned(), |r| r.to_string());
    let path: String = e
        .path
        .chars()
        .take(MAX_LOGGED_PATH)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    let ellipsis = if e.path.chars().count() > MAX_LOGGED_PATH {
        "..."
    } else {
        ""
    };
    let bytes = e.bytes.map_or_else(|| "-".to_owned(), |b| b.to_string());
    let mut line = format!(
        "slipway serve: {remote} {} {path}{ellipsis} {} {bytes} B {} ms",
        e.method,
        e.status,
        e.duration.as_millis()
    );
    if let Some(node) = e.node {
        line.push_str(" node=");
        line.push_str(node);
    }
    if !e.complete {
        line.push_str(" (cut off)");
    }
    line
}

/// `script` with the [`BASE_PLACEHOLDER`] line replaced by `set slipway-base http://HOST`,
/// line endings kept.
pub fn set_base(script: &str, host: &str) -> String {
    let mut out = String::with_capacity(script.len() + host.len());
    for line in script.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        if body.trim() == BASE_PLACEHOLDER {
            out.push_str("set slipway-base http://");
            out.push_str(host);
            out.push_str(&line[body.len()..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The Host header, if it is a plausible `name[:port]` or `[v6]:port` and nothing that could
/// break out of the iPXE `set` line it is pasted into.
fn request_host(headers: &HeaderMap) -> Option<&str> {
    let host = headers.get(HOST)?.to_str().ok()?;
    let ok = !host.is_empty()
        && host.len() <= MAX_HOST_LEN
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '[' | ']'));
    ok.then_some(host)
}

/// A URL path below `/pxe/` (already percent-decoded) as a relative path of plain
/// components, or None if it could name anything outside: `..`, `.`, empty components (so
/// no leading `/`), backslashes or NUL.
fn safe_relative(path: &str) -> Option<PathBuf> {
    if path.is_empty() || path.contains(['\\', '\0']) {
        return None;
    }
    let mut rel = PathBuf::new();
    for part in path.split('/') {
        let mut comps = Path::new(part).components();
        match (comps.next(), comps.next()) {
            (Some(Component::Normal(c)), None) if c == part => rel.push(c),
            _ => return None,
        }
    }
    Some(rel)
}

/// A node name as a single directory name: what macs.json holds, checked so that a damaged
/// file cannot send us elsewhere in DIR.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// `52:54:00:00:00:11` or `52-54-00-00-00-11`, any case, as `52-54-00-00-00-11` (the form
/// in macs.json and in pxe/nodes/ file names); None for anything else.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let b = mac.as_bytes();
    if b.len() != 17 {
        return None;
    }
    let sep = b[2];
    if sep != b':' && sep != b'-' {
        return None;
    }
    let mut out = String::with_capacity(17);
    for (i, &c) in b.iter().enumerate() {
        if i % 3 == 2 {
            if c != sep {
                return None;
            }
            out.push('-');
        } else if c.is_ascii_hexdigit() {
            out.push(char::from(c.to_ascii_lowercase()));
        } else {
            return None;
        }
    }
    Some(out)
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    (status, [(CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn not_found() -> Response {
    plain(StatusCode::NOT_FOUND, "not found\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_line_is_replaced_and_endings_kept() {
        let script = format!("#!ipxe\r\n{BASE_PLACEHOLDER}\r\nchain ${{slipway-base}}/x\n");
        assert_eq!(
            set_base(&script, "10.0.0.1:8080"),
            "#!ipxe\r\nset slipway-base http://10.0.0.1:8080\r\nchain ${slipway-base}/x\n"
        );
        let script = format!("#!ipxe\n{BASE_PLACEHOLDER}");
        assert_eq!(
            set_base(&script, "[fd00::1]:80"),
            "#!ipxe\nset slipway-base http://[fd00::1]:80"
        );
        assert_eq!(set_base("#!ipxe\nboot\n", "h"), "#!ipxe\nboot\n");
    }

    #[test]
    fn hosts() {
        let host = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(HOST, HeaderValue::from_str(v).unwrap());
            request_host(&h).map(str::to_owned)
        };
        for ok in ["10.0.0.1:8080", "boot.example", "[fd00::1]:8080", "a-b"] {
            assert_eq!(host(ok).as_deref(), Some(ok));
        }
        for bad in ["", "a b", "a;b", "a/b", "x\"y", "a${b}", &"a".repeat(256)] {
            assert_eq!(host(bad), None, "{bad:?}");
        }
        assert_eq!(request_host(&HeaderMap::new()), None);
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            safe_relative("worker/vmlinuz"),
            Some(PathBuf::from("worker/vmlinuz"))
        );
        for bad in [
            "",
            "..",
            "../admin.conf",
            "a/../b",
            "./a",
            "a/.",
            "/etc/passwd",
            "a//b",
            "a/",
            "a\\b",
            "a\0b",
        ] {
            assert_eq!(safe_relative(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn macs() {
        for ok in [
            "52-54-00-00-00-11",
            "52:54:00:00:00:11",
            "52:54:00:00:00:11".to_uppercase().as_str(),
        ] {
            assert_eq!(normalize_mac(ok).as_deref(), Some("52-54-00-00-00-11"));
        }
        for bad in [
            "52-54-00-00-00",
            "52-54:00-00-00-11",
            "52.54.00.00.00.11",
            "52-54-00-00-00-1g",
            "525400000011",
            "master1",
            "52-54-00-00-00-111",
        ] {
            assert_eq!(normalize_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn node_names() {
        assert!(is_plain_name("master1"));
        assert!(is_plain_name("worker-2.rack_a"));
        for bad in ["", "..", ".hidden", "a/b", "../x", "a b"] {
            assert!(!is_plain_name(bad), "{bad}");
        }
    }

    #[test]
    fn log_lines() {
        let remote: SocketAddr = "10.0.0.5:40112".parse().unwrap();
        let entry = LogEntry {
            remote: Some(remote),
            method: "GET",
            path: "/nodes/52-54-00-00-00-11/config.ign",
            status: 200,
            bytes: Some(5120),
            complete: true,
            duration: Duration::from_micros(3_400),
            node: Some("master1"),
        };
        assert_eq!(
            log_line(&entry),
            "slipway serve: 10.0.0.5:40112 GET /nodes/52-54-00-00-00-11/config.ign 200 5120 B 3 ms node=master1"
        );
        let long = format!("/pxe/{}", "a".repeat(300));
        let entry = LogEntry {
            remote: None,
            method: "HEAD",
            path: &long,
            status: 404,
            bytes: None,
            complete: false,
            duration: Duration::ZERO,
            node: None,
        };
        let line = log_line(&entry);
        assert!(line.starts_with("slipway serve: - HEAD /pxe/aaa"), "{line}");
        assert!(line.ends_with("a... 404 - B 0 ms (cut off)"), "{line}");
        assert!(line.len() < 260, "{line}");
    }
}
