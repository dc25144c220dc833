//! One ONNX Runtime session shared by every worker, and cross-request batching on it: a worker that
//! wants a pass queues its rows; whichever worker holds the session next runs every compatible
//! queued request as one batch (up to `max_batch` rows) and hands each its rows back (flat
//! combining). Requests pile up exactly while a pass is running, so a busy model batches and a
//! lone request runs at once, with no window to wait out unless `batch_wait` asks for one.

use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Mutex;
use std::time::Duration;

use ort::session::Session;
use ort::value::{TensorRef, ValueType};

use super::tensor::{Tensor, TensorData};
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
}

impl PassCounters {
    fn served(&self, requests: usize) {
        self.runs.inc();
        self.requests.inc_by(requests as u64);
    }
}

struct Pending {
    feeds: Named,
    rows: usize,
    reply: SyncSender<Result<Named, RuntimeError>>,
}

/// A session behind its lock, with the requests waiting for it.
pub struct SharedSession {
    session: Mutex<Session>,
    waiting: Mutex<VecDeque<Pending>>,
    batching: Batching,
    counters: PassCounters,
}

impl SharedSession {
    /// Shares `session`.
    pub fn new(session: Session, batching: Batching, counters: PassCounters) -> Self {
        Self {
            session: Mutex::new(session),
            waiting: Mutex::new(VecDeque::new()),
            batching,
            counters,
        }
    }

    /// Runs `feeds` (all with the same first, batch, axis) and returns every tensor output, from a
    /// pass of its own or from one shared with other requests.
    pub fn run(&self, model: &str, feeds: Named) -> Result<Named, RuntimeError> {
        let rows = feeds.first().map_or(0, |(_, t)| t.rows());
        if !self.batching.enabled || rows >= self.batching.max_batch {
            let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
            self.counters.served(1);
            return run_session(&mut session, model, &feeds);
        }
        let (reply, answer) = sync_channel(1);
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Pending { feeds, rows, reply });
        loop {
            // Another worker's batch may have carried this request already.
            if let Ok(done) = answer.try_recv() {
                return done;
            }
            let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
            if let Ok(done) = answer.try_recv() {
                return done;
            }
            if !self.batching.wait.is_zero() && self.queued_rows() < self.batching.max_batch {
                std::thread::sleep(self.batching.wait);
            }
            let batch = self.take_batch();
            if !batch.is_empty() {
                run_batch(&mut session, model, batch, &self.counters);
            }
        }
    }

    fn queued_rows(&self) -> usize {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|p| p.rows)
            .sum()
    }

    /// The oldest request and every later one that fits beside it (same feed names and row
    /// shapes), up to `max_batch` rows.
    fn take_batch(&self) -> Vec<Pending> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let Some(first) = waiting.pop_front() else {
            return Vec::new();
        };
        let mut rows = first.rows;
        let mut batch = vec![first];
        let mut i = 0;
        while i < waiting.len() {
            if rows + waiting[i].rows <= self.batching.max_batch && fits(&batch[0].feeds, &waiting[i].feeds) {
                rows += waiting[i].rows;
                if let Some(p) = waiting.remove(i) {
                    batch.push(p);
                }
            } else {
                i += 1;
            }
        }
        batch
    }
}

fn fits(a: &Named, b: &Named) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((na, ta), (nb, tb))| {
            na == nb && ta.shape.get(1..) == tb.shape.get(1..) && ta.as_f32().is_some() == tb.as_f32().is_some()
        })
}

/// Runs the requests as one pass and answers each with its rows; when an output cannot be split by
/// rows (it has no batch axis), each request runs alone instead.
fn run_batch(session: &mut Session, model: &str, batch: Vec<Pending>, counters: &PassCounters) {
    if batch.len() == 1 {
        counters.served(1);
        let p = batch.into_iter().next().expect("one request");
        let _ = p.reply.send(run_session(session, model, &p.feeds));
        return;
    }
    let total: usize = batch.iter().map(|p| p.rows).sum();
    let names: Vec<String> = batch[0].feeds.iter().map(|(n, _)| n.clone()).collect();
    let mut joined = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let parts = batch.iter().map(|p| p.feeds[i].1.clone()).collect();
        match Tensor::concat_rows(parts) {
            Some(t) => joined.push((name.clone(), t)),
            None => return run_each(session, model, batch, counters),
        }
    }
    counters.served(batch.len());
    let outputs = match run_session(session, model, &joined) {
        Ok(o) => o,
        Err(e) => {
            let message = match e {
                RuntimeError::Inference { message, .. } => message,
                other => other.to_string(),
            };
            for p in batch {
                let _ = p.reply.send(Err(RuntimeError::Inference {
                    model: model.to_string(),
                    message: message.clone(),
                }));
            }
            return;
        }
    };
    if outputs.iter().any(|(_, t)| t.rows() != total || t.shape.is_empty()) {
        return run_each(session, model, batch, counters);
    }
    let mut start = 0;
    for p in batch {
        let end = start + p.rows;
        let mine = outputs
            .iter()
            .map(|(n, t)| (n.clone(), t.slice_rows(start, end)))
            .collect();
        let _ = p.reply.send(Ok(mine));
        start = end;
    }
}

fn run_each(session: &mut Session, model: &str, batch: Vec<Pending>, counters: &PassCounters) {
    for p in batch {
        counters.served(1);
        let _ = p.reply.send(run_session(session, model, &p.feeds));
    }
}

/// One ONNX Runtime run; the feeds are borrowed, not copied.
fn run_session(session: &mut Session, model: &str, feeds: &Named) -> Result<Named, RuntimeError> {
    let fail = |message: String| RuntimeError::Inference {
        model: model.to_string(),
        message,
    };
    let mut values: Vec<(String, ort::session::SessionInputValue<'_>)> = Vec::with_capacity(feeds.len());
    for (name, tensor) in feeds {
        let data = tensor
            .as_f32()
            .ok_or_else(|| fail("explaind feeds float32 inputs only".into()))?;
        let view = TensorRef::from_array_view((tensor.shape.clone(), data)).map_err(|e| fail(e.to_string()))?;
        values.push((name.clone(), view.into()));
    }
    let outputs = session.run(values).map_err(|e| fail(e.to_string()))?;
    let mut out = Vec::new();
    for (name, value) in outputs.iter() {
        let tensor = match value.dtype() {
            ValueType::Tensor {
                ty: ort::value::TensorElementType::Float32,
                ..
            } => {
                let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| fail(e.to_string()))?;
                Tensor {
                    shape: dims(shape),
                    data: TensorData::F32(data.to_vec()),
                }
            }
            ValueType::Tensor {
                ty: ort::value::TensorElementType::Int64,
                ..
            } => {
                let (shape, data) = value.try_extract_tensor::<i64>().map_err(|e| fail(e.to_string()))?;
                Tensor {
                    shape: dims(shape),
                    data: TensorData::I64(data.to_vec()),
                }
            }
            // Sequences of maps (ZipMap) and other element types are not read back.
            _ => continue,
        };
        out.push((name.to_string(), tensor));
    }
    Ok(out)
}

fn dims(shape: &ort::value::Shape) -> Vec<usize> {
    shape.iter().map(|&d| d.max(0) as usize).collect()
}
