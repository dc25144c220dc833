//! One connection's state, shared by its socket, its requests and its watchdog, and the set of
//! open connections that eviction chooses from.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use hyper::body::{Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::ConnectionLimits;

/// Why the watchdog closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closing {
    /// Chosen to make room for a new connection at `max_connections`.
    Evicted,
    /// Nothing sent for `idle_timeout`.
    Idle,
    /// A head begun and not finished within `header_read_timeout`.
    HeadTimedOut,
}

/// The open connections.
pub(super) struct Open {
    pub(super) conns: Mutex<HashMap<u64, Arc<Conn>>>,
    pub(super) next_id: AtomicU64,
    pub(super) emptied: Notify,
    /// Connection times are milliseconds after this.
    pub(super) epoch: Instant,
}

impl Open {
    pub(super) fn new() -> Self {
        Self {
            conns: Mutex::default(),
            next_id: AtomicU64::new(0),
            emptied: Notify::new(),
            epoch: Instant::now(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    pub(super) fn insert(&self) -> Arc<Conn> {
        let conn = Arc::new(Conn::new(self.next_id.fetch_add(1, Ordering::Relaxed), self.epoch));
        if let Ok(mut conns) = self.conns.lock() {
            conns.insert(conn.id, conn.clone());
        }
        conn
    }

    pub(super) fn remove(&self, id: u64) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.remove(&id);
            if conns.is_empty() {
                self.emptied.notify_waiters();
            }
        }
    }

    /// Closes the connection idle the longest; false when every connection has a request in flight.
    pub(super) fn evict_longest_idle(&self) -> bool {
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

    pub(super) async fn wait_empty(&self) {
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
pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) epoch: Instant,
    /// Requests whose response has not yet been handed to hyper in full.
    pub(super) in_flight: AtomicUsize,
    /// Milliseconds after `epoch` when the connection last became idle.
    pub(super) idle_since: AtomicU64,
    /// Milliseconds after `epoch` (plus one, so 0 means none) of the first byte of a head that
    /// has not yet become a request.
    pub(super) head_since: AtomicU64,
    /// Chosen to make room for a new connection.
    pub(super) evicted: AtomicBool,
    /// Wakes the watchdog when any of the above changes.
    pub(super) changed: Notify,
}

impl Conn {
    pub(super) fn new(id: u64, epoch: Instant) -> Self {
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

    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Resolves when the connection should be closed, with the reason.
    pub(super) async fn watchdog(&self, limits: &ConnectionLimits) -> Closing {
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

    pub(super) fn deadline_passed(&self, limits: &ConnectionLimits) -> bool {
        let now = self.now_ms();
        match self.head_since.load(Ordering::Acquire) {
            0 => now >= self.idle_since.load(Ordering::Acquire) + limits.idle_timeout.as_millis() as u64,
            started => now >= started - 1 + limits.header_read_timeout.as_millis() as u64,
        }
    }

    /// Bytes arrived: with no request in flight they start a head.
    pub(super) fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 && self.head_since.load(Ordering::Acquire) == 0 {
            self.head_since.store(self.now_ms() + 1, Ordering::Release);
            self.changed.notify_one();
        }
    }
}

/// A request in flight on its connection, until its response body is done.
pub(super) struct InFlight(Arc<Conn>);

impl InFlight {
    pub(super) fn start(conn: Arc<Conn>) -> Self {
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
pub(super) struct Tracked {
    pub(super) body: Body,
    pub(super) _in_flight: InFlight,
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
