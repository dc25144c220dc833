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

mod connection;
mod socket;

use std::convert::Infallible;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use super::error::{ApiError, ProblemKind};
use connection::{Closing, Conn, InFlight, Open, Tracked};
use socket::{problem_response, send_now, Watched};

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
