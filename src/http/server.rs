//! The accept loop: HTTP/1.1 connections under explaind's own bounds, so that no client, however
//! slow or idle, holds the service.
//!
//! - At most `max_connections` open. At the bound a new connection evicts the connection that has
//!   waited longest without a request in flight (idle keep-alive, or a head that never finished);
//!   when every connection is busy, the new one gets 503 problem+json at once and is closed. New
//!   clients are never left in the kernel's backlog behind idle ones.
//! - A connection with no request in flight is closed `idle_timeout` after its last response (or
//!   its start) if it sends nothing, and `header_read_timeout` after the first byte of a head
//!   that has not become a request by then.
//! - hyper answers a request it cannot parse (400 on a malformed request line or header, 414 on
//!   an over-long URI, 431 on too many or too large headers) with a bare status before any handler
//!   runs; those answers are rewritten here into problem+json with a stable `type`. They are told
//!   apart from the service's own answers by two marks: no request is in flight on the connection
//!   (a request counts as in flight until its response body is handed to hyper), and they carry
//!   no content type, which every answer of the service does.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tower::ServiceExt;

use super::error::{ApiError, ProblemKind};

/// The connection bounds, from the config.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most open client connections.
    pub max_connections: usize,
    /// How long a started request head may take to arrive in full.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open without sending a request.
    pub idle_timeout: Duration,
    /// `Retry-After` on the 503 of a connection refused while every other is busy.
    pub retry_after_secs: u64,
}

impl ConnectionLimits {
    /// The limits `config` sets.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            max_connections: config.max_connections,
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            retry_after_secs: config.retry_after_secs,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` fires, then lets in-flight requests finish (idle
/// connections close at once) and returns when every connection has closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> io::Result<()> {
    let open = Arc::new(Open::new());
    let (draining, _) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors or a transient network error: wait a little rather
                    // than spin, and keep serving the connections already open.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if open.len() >= limits.max_connections && !open.evict_longest_idle() {
            refuse(stream, &limits);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let conn = open.insert();
        tokio::spawn(serve_connection(
            stream,
            app.clone(),
            conn,
            open.clone(),
            limits,
            draining.subscribe(),
        ));
    }
    let _ = draining.send(true);
    open.wait_empty().await;
    Ok(())
}

/// Answers a connection over the bound with 503 problem+json, without waiting: the answer fits
/// the socket's send buffer of a new connection, and whatever does not is dropped with it.
fn refuse(stream: TcpStream, limits: &ConnectionLimits) {
    tracing::warn!(
        max_connections = limits.max_connections,
        "connection refused: every connection is busy"
    );
    let error = ApiError::new(
        ProblemKind::Overloaded,
        format!(
            "the server has {} connections open, each with a request in flight (max_connections); retry shortly",
            limits.max_connections
        ),
    );
    let answer = problem_response(&error, &[("retry-after", limits.retry_after_secs.to_string())]);
    let _ = stream.try_write(&answer);
}

/// A raw HTTP/1.1 problem+json answer that closes its connection.
fn problem_response(error: &ApiError, extra: &[(&str, String)]) -> Vec<u8> {
    let status = error.kind.status();
    let body = serde_json::to_vec(&error.problem()).unwrap_or_default();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut answer = head.into_bytes();
    answer.extend_from_slice(&body);
    answer
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    conn: Arc<Conn>,
    open: Arc<Open>,
    limits: ConnectionLimits,
    mut draining: watch::Receiver<bool>,
) {
    let fd = stream.as_raw_fd();
    let io = TokioIo::new(Watched {
        stream,
        conn: conn.clone(),
        rewritten: None,
    });
    let in_service = conn.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let in_flight = InFlight::start(in_service.clone());
        let app = app.clone();
        async move {
            let response = app.oneshot(request.map(Body::new)).await?;
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(Tracked {
                    body,
                    _in_flight: in_flight,
                })
            }))
        }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(http);
    let mut shutting_down = *draining.borrow();
    if shutting_down {
        http.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = http.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            closing = conn.watchdog(&limits) => {
                if closing == Closing::HeadTimedOut {
                    // A client that began a request is told why it ends; an idle one just closes.
                    let error = ApiError::new(
                        ProblemKind::RequestTimeout,
                        format!(
                            "the request head did not arrive within {} ms (header_read_timeout_ms)",
                            limits.header_read_timeout.as_millis()
                        ),
                    );
                    tracing::info!(problem = error.kind.slug(), detail = %error.detail, "request refused before routing");
                    send_now(fd, &problem_response(&error, &[]));
                }
                tracing::debug!(?closing, "connection closed");
                break;
            }
            _ = draining.changed(), if !shutting_down => {
                shutting_down = true;
                http.as_mut().graceful_shutdown();
            }
        }
    }
    open.remove(conn.id);
}

/// Writes `bytes` to the socket `fd` if its buffer takes them now, else nothing. Used only while
/// hyper, which owns the socket, waits to read and writes nothing.
fn send_now(fd: std::os::fd::RawFd, bytes: &[u8]) {
    // SAFETY: `fd` is open (its TcpStream is alive in the caller) and `bytes` is a valid slice;
    // MSG_DONTWAIT never blocks, MSG_NOSIGNAL never raises SIGPIPE.
    unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
    }
}

/// Why the watchdog closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// Chosen to make room for a new connection at `max_connections`.
    Evicted,
    /// Nothing sent for `idle_timeout`.
    Idle,
    /// A head begun and not finished within `header_read_timeout`.
    HeadTimedOut,
}

/// The open connections.
struct Open {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    emptied: Notify,
    /// Connection times are milliseconds after this.
    epoch: Instant,
}

impl Open {
    fn new() -> Self {
        Self {
            conns: Mutex::default(),
            next_id: AtomicU64::new(0),
            emptied: Notify::new(),
            epoch: Instant::now(),
        }
    }

    fn len(&self) -> usize {
        self.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    fn insert(&self) -> Arc<Conn> {
        let conn = Arc::new(Conn::new(self.next_id.fetch_add(1, Ordering::Relaxed), self.epoch));
        if let Ok(mut conns) = self.conns.lock() {
            conns.insert(conn.id, conn.clone());
        }
        conn
    }

    fn remove(&self, id: u64) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.remove(&id);
            if conns.is_empty() {
                self.emptied.notify_waiters();
            }
        }
    }

    /// Closes the connection idle the longest; false when every connection has a request in flight.
    fn evict_longest_idle(&self) -> bool {
        let Ok(conns) = self.conns.lock() else { return false };
        let victim = conns
            .values()
            .filter(|c| c.in_flight.load(Ordering::Acquire) == 0 && !c.evicted.load(Ordering::Acquire))
            .min_by_key(|c| c.idle_since.load(Ordering::Acquire));
        match victim {
            Some(c) => {
                c.evicted.store(true, Ordering::Release);
                c.changed.notify_one();
                true
            }
            None => false,
        }
    }

    async fn wait_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.len() == 0 {
                return;
            }
            emptied.await;
        }
    }
}

/// One connection's state, shared by its I/O, its requests and its watchdog.
struct Conn {
    id: u64,
    epoch: Instant,
    /// Requests whose response has not yet been handed to hyper in full.
    in_flight: AtomicUsize,
    /// Milliseconds after `epoch` when the connection last became idle.
    idle_since: AtomicU64,
    /// Milliseconds after `epoch` (plus one, so 0 means none) of the first byte of a head that
    /// has not yet become a request.
    head_since: AtomicU64,
    /// Chosen to make room for a new connection.
    evicted: AtomicBool,
    /// Wakes the watchdog when any of the above changes.
    changed: Notify,
}

impl Conn {
    fn new(id: u64, epoch: Instant) -> Self {
        let conn = Self {
            id,
            epoch,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            changed: Notify::new(),
        };
        conn.idle_since.store(conn.now_ms(), Ordering::Release);
        conn
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Resolves when the connection should be closed, with the reason.
    async fn watchdog(&self, limits: &ConnectionLimits) -> Closing {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the state is read, so no change between the two is missed.
            changed.as_mut().enable();
            if self.evicted.load(Ordering::Acquire) {
                return Closing::Evicted;
            }
            if self.in_flight.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            let (since, limit, reason) = match self.head_since.load(Ordering::Acquire) {
                0 => (
                    self.idle_since.load(Ordering::Acquire),
                    limits.idle_timeout,
                    Closing::Idle,
                ),
                started => (started - 1, limits.header_read_timeout, Closing::HeadTimedOut),
            };
            let deadline = self.epoch + Duration::from_millis(since) + limit;
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    // Only if nothing moved meanwhile (a request may have started as time ran out).
                    if self.in_flight.load(Ordering::Acquire) == 0 && self.deadline_passed(limits) {
                        return reason;
                    }
                }
                _ = &mut changed => {}
            }
        }
    }

    fn deadline_passed(&self, limits: &ConnectionLimits) -> bool {
        let now = self.now_ms();
        match self.head_since.load(Ordering::Acquire) {
            0 => now >= self.idle_since.load(Ordering::Acquire) + limits.idle_timeout.as_millis() as u64,
            started => now >= started - 1 + limits.header_read_timeout.as_millis() as u64,
        }
    }

    /// Bytes arrived: with no request in flight they start a head.
    fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 && self.head_since.load(Ordering::Acquire) == 0 {
            self.head_since.store(self.now_ms() + 1, Ordering::Release);
            self.changed.notify_one();
        }
    }
}

/// A request in flight on its connection, until its response body is done.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn start(conn: Arc<Conn>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.head_since.store(0, Ordering::Release);
        conn.changed.notify_one();
        Self(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let conn = &self.0;
        if conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            conn.idle_since.store(conn.now_ms(), Ordering::Release);
            conn.head_since.store(0, Ordering::Release);
            conn.changed.notify_one();
        }
    }
}

/// A response body that keeps its request in flight until hyper drops it (when it is sent).
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's socket: notes when a head starts, and rewrites hyper's own bare answers.
struct Watched {
    stream: TcpStream,
    conn: Arc<Conn>,
    /// The problem+json answer replacing one of hyper's, and how much of it is written.
    rewritten: Option<(Vec<u8>, usize)>,
}

impl Watched {
    /// Replaces `head` when it is one of hyper's bare answers.
    fn check_bare_answer(&mut self, head: &[u8]) {
        if let Some(error) = problem_for_bare_answer(head) {
            tracing::info!(problem = error.kind.slug(), status = error.kind.status().as_u16(), detail = %error.detail,
                "request refused before routing");
            self.rewritten = Some((problem_response(&error, &[]), 0));
        }
    }

    /// Writes what is left of the rewritten answer; Ready once all of it is out.
    fn poll_rewritten(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((answer, written)) = &mut self.rewritten else {
            return Poll::Ready(Ok(()));
        };
        while *written < answer.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &answer[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The problem for hyper's bare answer `head` (the bytes it writes for a request it could not
/// parse), or None when `head` is not one.
fn problem_for_bare_answer(head: &[u8]) -> Option<ApiError> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    // The service's own answers always carry a content type; hyper's bare ones never do. (A
    // handler's answer may be written after its body was handed over, with none in flight.)
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(head.len());
    if head[..end]
        .to_ascii_lowercase()
        .windows(14)
        .any(|w| w == b"\ncontent-type:")
    {
        return None;
    }
    let status = rest.get(..3)?;
    let (kind, detail) = match status {
        b"400" => (
            ProblemKind::MalformedRequest,
            "the request line or a header is not valid HTTP/1.1",
        ),
        b"414" => (
            ProblemKind::UriTooLong,
            "the request's URI is longer than the server reads (65,534 bytes); send large inputs in the body",
        ),
        b"431" => (
            ProblemKind::HeadersTooLarge,
            "the request's headers are too many (over 100) or too large; send large inputs in the body",
        ),
        _ => return None,
    };
    Some(ApiError::new(kind, detail))
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.on_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.rewritten.is_none() && self.conn.in_flight.load(Ordering::Acquire) == 0 {
            self.check_bare_answer(buf);
        }
        if self.rewritten.is_some() {
            // hyper's own bytes are replaced; it closes the connection after them.
            std::task::ready!(self.poll_rewritten(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.rewritten.is_none() && self.conn.in_flight.load(Ordering::Acquire) == 0 {
            // hyper writes a head as one slice; a bare answer has no other.
            if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                self.check_bare_answer(first);
            }
        }
        if self.rewritten.is_some() {
            std::task::ready!(self.poll_rewritten(cx))?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_rewritten(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_rewritten(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Raises this process's open-file limit to its hard limit: each connection holds a descriptor,
/// and the usual soft limit (1,024) is below `max_connections` plus the models, databases and
/// logs. Warns when even the hard limit leaves too little room.
pub fn raise_open_file_limit(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the one struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    let needed = (max_connections as u64).saturating_add(256);
    if limit.rlim_cur < needed {
        tracing::warn!(
            open_files = limit.rlim_cur,
            max_connections,
            "the open-file limit leaves little room beyond max_connections; lower max_connections or raise the limit"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_answers_become_problems() {
        let cases: [(&[u8], u16, &str); 3] = [
            (
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
                400,
                "malformed-request",
            ),
            (
                b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n",
                414,
                "uri-too-long",
            ),
            (
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n",
                431,
                "headers-too-large",
            ),
        ];
        for (head, status, slug) in cases {
            let error = problem_for_bare_answer(head).expect("a bare answer");
            assert_eq!(error.kind.status().as_u16(), status);
            assert_eq!(error.kind.slug(), slug);
            let answer = String::from_utf8(problem_response(&error, &[])).unwrap();
            let (head, body) = answer.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
            assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(body["type"], format!("/problems/{slug}"));
        }
        assert!(problem_for_bare_answer(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
        // A handler's own 400, written once its body was handed over, stays as it is.
        let own = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 2\r\n\r\n{}";
        assert!(problem_for_bare_answer(own).is_none());
        assert!(problem_for_bare_answer(b"{\"HTTP/1.1 400").is_none());
    }
}
