//! One ONNX Runtime session shared by every worker, and cross-request batching on it: a worker that
//! wants a pass queues its rows; whichever worker holds the session next runs every compatible
//! queued request as one batch (up to `max_batch` rows) and hands each its rows back (flat
//! combining). Requests pile up exactly while a pass is running, so a busy model batches and a
//! lone request runs at once, with no window to wait out unless `batch_wait` asks for one.
//!
//! A request arrives as one pass, already sized by the worker's runtime (`sessions`): this layer
//! only combines requests, never cuts one. A request that runs alone is read in place; one that
//! waits has its rows copied once, into the buffers its combined run reads.

use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ort::session::Session;
use ort::value::{TensorRef, ValueType};

use super::kept::{Kept, Output};
use super::tensor::{Tensor, TensorData, Values};
use super::RuntimeError;

/// Named tensors: a pass's feeds or outputs.
pub type Named = Vec<(String, Tensor)>;

/// How requests on one session are combined.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Combine concurrent requests at all.
    pub enabled: bool,
    /// Most rows in one pass.
    pub max_batch: usize,
    /// How long the worker about to run a pass waits for more requests when it has fewer than
    /// `max_batch` rows (0: never waits).
    pub wait: Duration,
}

/// Runs made and the requests they served, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct PassCounters {
    /// ONNX Runtime runs.
    pub runs: prometheus_client::metrics::counter::Counter,
    /// Requests served by them.
    pub requests: prometheus_client::metrics::counter::Counter,
    /// Of the runs, those run on the caller's thread rather than the intra-op pool.
    pub inline: prometheus_client::metrics::counter::Counter,
}

impl PassCounters {
    fn served(&self, requests: usize) {
        self.runs.inc();
        self.requests.inc_by(requests as u64);
    }
}

/// One input of a pass, borrowed from the caller: its name, shape and values.
#[derive(Debug, Clone)]
pub struct Feed<'a> {
    /// The graph input.
    pub name: &'a str,
    /// Its shape, rows first when `per_row`.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub data: Values<'a>,
    /// True when the first axis is the pass's batch (combined requests' rows go side by side);
    /// false for a constant fed whole to every pass (a model's side input without a batch axis).
    pub per_row: bool,
}

impl<'a> Feed<'a> {
    /// Rows `start..end` of `data`, whose rows are each `row_shape` (`len` values).
    pub fn rows_of(name: &'a str, data: Values<'a>, len: usize, row_shape: &[usize], start: usize, end: usize) -> Self {
        let mut shape = Vec::with_capacity(row_shape.len() + 1);
        shape.push(end - start);
        shape.extend_from_slice(row_shape);
        Feed {
            name,
            shape,
            data: data.slice(start * len, end * len),
            per_row: true,
        }
    }

    /// A constant fed whole to every pass.
    pub fn whole(name: &'a str, shape: Vec<usize>, data: Values<'a>) -> Self {
        Feed {
            name,
            shape,
            data,
            per_row: false,
        }
    }

    fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// The shape beside the batch: a per-row feed's row shape, a whole feed's shape.
    fn row_shape(&self) -> &[usize] {
        match self.per_row {
            true => self.shape.get(1..).unwrap_or(&[]),
            false => &self.shape,
        }
    }
}

/// The pass's rows: those of its first per-row feed.
fn pass_rows(feeds: &[Feed]) -> usize {
    feeds.iter().find(|f| f.per_row).map_or(0, Feed::rows)
}

/// Requests waiting for one combined run: their rows copied once, side by side, into one buffer per
/// feed, which the run then reads in place.
struct Group {
    names: Vec<String>,
    /// Each feed's shape without its batch axis (a whole feed's shape).
    row_shapes: Vec<Vec<usize>>,
    /// Per feed: true when its rows follow the batch; a whole feed is held once.
    per_row: Vec<bool>,
    data: Vec<TensorData>,
    rows: usize,
    /// Each request's rows and where its answer goes, in the order its rows were added.
    requests: Vec<(usize, SyncSender<Result<Named, RuntimeError>>)>,
}

impl Group {
    /// True when `feeds` can join: the same inputs, row shapes and element types, and the same
    /// values of every whole feed (a constant).
    fn fits(&self, feeds: &[Feed]) -> bool {
        self.names.len() == feeds.len()
            && self
                .names
                .iter()
                .zip(&self.row_shapes)
                .zip(&self.per_row)
                .zip(&self.data)
                .zip(feeds)
                .all(|((((n, shape), per_row), data), f)| {
                    n == f.name
                        && *per_row == f.per_row
                        && shape.as_slice() == f.row_shape()
                        && std::mem::discriminant(&data.view()) == std::mem::discriminant(&f.data)
                        && (f.per_row || data.view() == f.data)
                })
    }

    fn add(&mut self, feeds: &[Feed], rows: usize, reply: SyncSender<Result<Named, RuntimeError>>) {
        let first = self.requests.is_empty();
        for ((buffer, f), per_row) in self.data.iter_mut().zip(feeds).zip(&self.per_row) {
            if *per_row || first {
                buffer.extend_from(f.data);
            }
        }
        self.rows += rows;
        self.requests.push((rows, reply));
    }

    /// The feeds of rows `start..end`, borrowed from the buffers.
    fn feeds(&self, start: usize, end: usize) -> Vec<Feed<'_>> {
        self.names
            .iter()
            .zip(&self.row_shapes)
            .zip(&self.data)
            .zip(&self.per_row)
            .map(|(((name, row_shape), data), per_row)| match per_row {
                true => {
                    let len: usize = row_shape.iter().product();
                    Feed::rows_of(name, data.view(), len, row_shape, start, end)
                }
                false => Feed::whole(name, row_shape.clone(), data.view()),
            })
            .collect()
    }
}

/// Where a pass runs ([`SharedSession::route`]).
enum Route<'a> {
    /// On this session, locked for the caller.
    Here(MutexGuard<'a, Session>),
    /// In a run shared with other requests: this request's rows of its outputs.
    Shared(Result<Named, RuntimeError>),
}

/// A session behind its lock, with the requests waiting for it.
pub struct SharedSession {
    session: Mutex<Session>,
    /// The same graph in a session that runs on the caller's thread, and the most rows a pass
    /// run there may hold: small passes go there when it is free.
    inline: Option<(Mutex<Session>, usize)>,
    waiting: Mutex<VecDeque<Group>>,
    batching: Batching,
    counters: PassCounters,
}

impl SharedSession {
    /// Shares `session`.
    pub fn new(session: Session, batching: Batching, counters: PassCounters) -> Self {
        Self {
            session: Mutex::new(session),
            inline: None,
            waiting: Mutex::new(VecDeque::new()),
            batching,
            counters,
        }
    }

    /// Shares `session` too, for passes of at most `rows` rows, run on the caller's thread.
    pub fn with_inline(mut self, session: Session, rows: usize) -> Self {
        self.inline = Some((Mutex::new(session), rows));
        self
    }

    /// Runs `feeds` (all with the same first, batch, axis: one pass, sized by the caller) and
    /// returns every tensor output, from a run of its own, on the caller's values in place, or
    /// from one shared with other requests, its rows copied once into the shared run's input.
    pub fn run(&self, model: &str, feeds: &[Feed]) -> Result<Named, RuntimeError> {
        let mut named = Named::new();
        self.run_into(model, feeds, &mut |name, shape, values| {
            named.push((name.to_string(), owned(shape, values)));
            Ok(())
        })?;
        Ok(named)
    }

    /// [`Self::run`], each output handed to `sink` as ONNX Runtime holds it (name, shape,
    /// values) rather than copied out: a caller gathering many passes' rows copies each output
    /// once, into its destination. Outputs of a run shared with other requests come as copies
    /// (the rows of this request).
    pub fn run_into(&self, model: &str, feeds: &[Feed], sink: &mut Sink) -> Result<(), RuntimeError> {
        match self.route(model, feeds) {
            Route::Here(mut session) => run_session_into(&mut session, model, feeds, sink),
            Route::Shared(done) => hand_over(done, sink),
        }
    }

    /// [`Self::run`], the outputs `keep` accepts kept where ONNX Runtime made them (no copy), so
    /// a caller holding many passes' outputs never gathers them into one buffer. Outputs of a run
    /// shared with other requests come as copies of this request's rows.
    pub fn run_kept(&self, model: &str, feeds: &[Feed], keep: &dyn Fn(&str) -> bool) -> Result<Kept, RuntimeError> {
        match self.route(model, feeds) {
            Route::Here(mut session) => run_session_kept(&mut session, model, feeds, keep),
            Route::Shared(done) => Ok(done?
                .into_iter()
                .filter(|(name, _)| keep(name))
                .map(|(name, t)| (name, Output::Copied(t)))
                .collect()),
        }
    }

    /// Where a pass of `feeds` runs: a session of this caller's own to run it on (counted as
    /// served), or the answer of a run shared with other requests.
    fn route(&self, model: &str, feeds: &[Feed]) -> Route<'_> {
        let rows = pass_rows(feeds);
        // A small pass runs on this thread when that session is free: no pool to wake. Not when
        // passes wait for company (`wait`), nor past requests already waiting to be combined.
        let alone = !self.batching.enabled
            || (self.batching.wait.is_zero() && self.waiting.lock().unwrap_or_else(|p| p.into_inner()).is_empty());
        if let Some((inline, _)) = self.inline.as_ref().filter(|(_, most)| rows <= *most && alone) {
            let free = match inline.try_lock() {
                Ok(session) => Some(session),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            if let Some(session) = free {
                self.counters.served(1);
                self.counters.inline.inc();
                return Route::Here(session);
            }
        }
        if !self.batching.enabled || rows >= self.batching.max_batch {
            let session = self.session.lock().unwrap_or_else(|p| p.into_inner());
            self.counters.served(1);
            return Route::Here(session);
        }
        // Nobody waiting and the session free: nothing to combine with, so no copy to make (with
        // a `wait`, the request waits for company instead).
        if self.batching.wait.is_zero() {
            let free = match self.session.try_lock() {
                Ok(session) => Some(session),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            if let Some(session) = free {
                if self.waiting.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
                    self.counters.served(1);
                    return Route::Here(session);
                }
            }
        }
        let (reply, answer) = sync_channel(1);
        self.enqueue(feeds, rows, reply);
        loop {
            // Another worker's batch may have carried this request already.
            if let Ok(done) = answer.try_recv() {
                return Route::Shared(done);
            }
            let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
            if let Ok(done) = answer.try_recv() {
                return Route::Shared(done);
            }
            if !self.batching.wait.is_zero() && self.queued_rows() < self.batching.max_batch {
                std::thread::sleep(self.batching.wait);
            }
            let group = self.waiting.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            if let Some(group) = group {
                run_group(&mut session, model, group, &self.counters);
            }
        }
    }

    /// Adds the request to the oldest waiting group it fits beside (same feed names and row
    /// shapes, at most `max_batch` rows together), or to a new one.
    fn enqueue(&self, feeds: &[Feed], rows: usize, reply: SyncSender<Result<Named, RuntimeError>>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let max = self.batching.max_batch;
        if let Some(group) = waiting.iter_mut().find(|g| g.rows + rows <= max && g.fits(feeds)) {
            group.add(feeds, rows, reply);
            return;
        }
        let mut group = Group {
            names: feeds.iter().map(|f| f.name.to_string()).collect(),
            row_shapes: feeds.iter().map(|f| f.row_shape().to_vec()).collect(),
            per_row: feeds.iter().map(|f| f.per_row).collect(),
            data: feeds.iter().map(|f| f.data.empty_like(f.data.len())).collect(),
            rows: 0,
            requests: Vec::new(),
        };
        group.add(feeds, rows, reply);
        waiting.push_back(group);
    }

    fn queued_rows(&self) -> usize {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|g| g.rows)
            .sum()
    }
}

/// Runs the group's requests as one pass and answers each with its rows; when an output cannot be
/// split by rows (it has no batch axis), each request runs alone instead.
fn run_group(session: &mut Session, model: &str, group: Group, counters: &PassCounters) {
    if group.requests.len() == 1 {
        counters.served(1);
        let answer = run_session(session, model, &group.feeds(0, group.rows));
        if let Some((_, reply)) = group.requests.first() {
            let _ = reply.send(answer);
        }
        return;
    }
    counters.served(group.requests.len());
    let outputs = match run_session(session, model, &group.feeds(0, group.rows)) {
        Ok(o) => o,
        Err(e) => {
            let message = match e {
                RuntimeError::Inference { message, .. } => message,
                other => other.to_string(),
            };
            for (_, reply) in &group.requests {
                let _ = reply.send(Err(RuntimeError::Inference {
                    model: model.to_string(),
                    message: message.clone(),
                }));
            }
            return;
        }
    };
    if outputs
        .iter()
        .any(|(_, t)| t.rows() != group.rows || t.shape.is_empty())
    {
        return run_each(session, model, &group, counters);
    }
    let mut start = 0;
    for (rows, reply) in &group.requests {
        let end = start + rows;
        let mine = outputs
            .iter()
            .map(|(n, t)| (n.clone(), t.slice_rows(start, end)))
            .collect();
        let _ = reply.send(Ok(mine));
        start = end;
    }
}

fn run_each(session: &mut Session, model: &str, group: &Group, counters: &PassCounters) {
    let mut start = 0;
    for (rows, reply) in &group.requests {
        counters.served(1);
        let _ = reply.send(run_session(session, model, &group.feeds(start, start + rows)));
        start += rows;
    }
}

/// Takes each output of a pass: its name, shape and values, borrowed from where they are.
pub type Sink<'s> = dyn FnMut(&str, &[usize], Values<'_>) -> Result<(), RuntimeError> + 's;

/// An owned copy of an output.
fn owned(shape: &[usize], values: Values<'_>) -> Tensor {
    let mut data = values.empty_like(values.len());
    data.extend_from(values);
    Tensor {
        shape: shape.to_vec(),
        data,
    }
}

/// Hands the outputs of a run shared with other requests (this request's rows) to `sink`.
fn hand_over(done: Result<Named, RuntimeError>, sink: &mut Sink) -> Result<(), RuntimeError> {
    for (name, t) in done? {
        sink(&name, &t.shape, t.data.view())?;
    }
    Ok(())
}

/// One ONNX Runtime run, every tensor output copied out.
fn run_session(session: &mut Session, model: &str, feeds: &[Feed]) -> Result<Named, RuntimeError> {
    let mut named = Named::new();
    run_session_into(session, model, feeds, &mut |name, shape, values| {
        named.push((name.to_string(), owned(shape, values)));
        Ok(())
    })?;
    Ok(named)
}

/// One ONNX Runtime run; the feeds are borrowed, not copied, and each float32 or int64 output is
/// handed to `sink` where ONNX Runtime holds it.
fn run_session_into(session: &mut Session, model: &str, feeds: &[Feed], sink: &mut Sink) -> Result<(), RuntimeError> {
    let fail = |message: String| RuntimeError::Inference {
        model: model.to_string(),
        message,
    };
    let values = session_inputs(feeds).map_err(fail)?;
    let outputs = session.run(values).map_err(|e| fail(e.to_string()))?;
    for (name, value) in outputs.iter() {
        match value.dtype() {
            ValueType::Tensor {
                ty: ort::value::TensorElementType::Float32,
                ..
            } => {
                let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| fail(e.to_string()))?;
                sink(name, &dims(shape), Values::F32(data))?;
            }
            ValueType::Tensor {
                ty: ort::value::TensorElementType::Int64,
                ..
            } => {
                let (shape, data) = value.try_extract_tensor::<i64>().map_err(|e| fail(e.to_string()))?;
                sink(name, &dims(shape), Values::I64(data))?;
            }
            // Sequences of maps (ZipMap) and other element types are not read back.
            _ => continue,
        }
    }
    Ok(())
}

/// The feeds as ONNX Runtime inputs, borrowed, not copied.
fn session_inputs<'f>(feeds: &[Feed<'f>]) -> Result<Vec<(String, ort::session::SessionInputValue<'f>)>, String> {
    let mut values = Vec::with_capacity(feeds.len());
    for feed in feeds {
        let shape = feed.shape.clone();
        let value: ort::session::SessionInputValue<'_> = match feed.data {
            Values::F32(v) => TensorRef::from_array_view((shape, v)).map(Into::into),
            Values::I64(v) => TensorRef::from_array_view((shape, v)).map(Into::into),
            Values::I32(v) => TensorRef::from_array_view((shape, v)).map(Into::into),
            Values::Bool(v) => TensorRef::from_array_view((shape, v)).map(Into::into),
            Values::U8(v) => TensorRef::from_array_view((shape, v)).map(Into::into),
        }
        .map_err(|e| e.to_string())?;
        values.push((feed.name.to_string(), value));
    }
    Ok(values)
}

/// One ONNX Runtime run; the feeds are borrowed, and the outputs `keep` accepts are kept as ONNX
/// Runtime made them.
fn run_session_kept(
    session: &mut Session,
    model: &str,
    feeds: &[Feed],
    keep: &dyn Fn(&str) -> bool,
) -> Result<Kept, RuntimeError> {
    let fail = |message: String| RuntimeError::Inference {
        model: model.to_string(),
        message,
    };
    let values = session_inputs(feeds).map_err(fail)?;
    let mut outputs = session.run(values).map_err(|e| fail(e.to_string()))?;
    let names: Vec<String> = outputs.keys().filter(|n| keep(n)).map(str::to_string).collect();
    Ok(names
        .into_iter()
        .filter_map(|name| outputs.remove(&name).map(|v| (name, Output::Ort(v))))
        .collect())
}

pub(super) fn dims(shape: &ort::value::Shape) -> Vec<usize> {
    shape.iter().map(|&d| d.max(0) as usize).collect()
}
