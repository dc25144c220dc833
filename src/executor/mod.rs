//! The bounded job executor: a fixed pool of blocking worker threads sharing the ONNX Runtime
//! sessions, fed by a queue whose capacity is enforced at admission. A request that finds the
//! queue full is refused at once; a job whose caller went away or whose deadline passed is skipped
//! or cancelled; a job that fails or panics reports an error and the worker lives on.

pub mod board;
mod job;
pub mod shared;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

pub use job::{JobContext, Progress, Task};

use crate::runtime::budget::ByteBudget;
use crate::runtime::sessions::SessionStore;
use crate::runtime::{RuntimeError, WorkerRuntime};
use crate::telemetry::Metrics;

/// Why a job did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The queue is full; retry later.
    #[error("the service is at capacity ({capacity} jobs queued or running); retry shortly")]
    Overloaded { capacity: usize, retry_after_secs: u64 },
    /// The job did not finish before its deadline and was cancelled.
    #[error("the job did not finish within {0:?} and was cancelled")]
    DeadlineExceeded(Duration),
    /// The worker panicked while running the job (a bug); the worker carries on.
    #[error("the job failed unexpectedly: {0}")]
    Panicked(String),
    /// The executor is shutting down.
    #[error("the service is shutting down")]
    ShuttingDown,
    /// The job ran and failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Executor sizes and limits.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// Worker threads.
    pub workers: usize,
    /// Jobs that may wait beyond those running.
    pub queue_capacity: usize,
    /// Deadline of each job from admission.
    pub job_deadline: Duration,
    /// Seconds a refused client is told to wait (`Retry-After`).
    pub retry_after_secs: u64,
    /// Bytes the jobs running at once may plan to hold ([`Task::bytes`]); a job waits for a worker's
    /// turn until its bytes fit beside them (a job alone always runs).
    pub max_running_job_bytes: u64,
}

type BoxedJob = Box<dyn FnOnce(&mut WorkerRuntime) + Send>;

/// The job queue and its workers.
pub struct Executor {
    sender: Mutex<Option<crossbeam_channel::Sender<BoxedJob>>>,
    permits: Arc<Semaphore>,
    capacity: usize,
    retry_after_secs: u64,
    deadline: Duration,
    ready_workers: Arc<AtomicUsize>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    worker_count: usize,
    metrics: Arc<Metrics>,
    running_bytes: Arc<ByteBudget>,
}

impl Executor {
    /// Starts the workers; each creates its sessions on its own thread and then reports ready.
    pub fn start(sessions: Arc<SessionStore>, options: ExecutorOptions, metrics: Arc<Metrics>) -> Self {
        let capacity = options.queue_capacity + options.workers;
        // The channel never blocks a sender: admission (the semaphore) bounds what enters it.
        let (sender, receiver) = crossbeam_channel::bounded::<BoxedJob>(capacity);
        let ready_workers = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for index in 0..options.workers {
            let receiver = receiver.clone();
            let sessions = sessions.clone();
            let ready = ready_workers.clone();
            let handle = std::thread::Builder::new()
                .name(format!("explaind-worker-{index}"))
                .spawn(move || {
                    let mut rt = WorkerRuntime::new(sessions);
                    ready.fetch_add(1, Ordering::SeqCst);
                    while let Ok(job) = receiver.recv() {
                        job(&mut rt);
                    }
                    tracing::debug!(worker = index, "worker stopped");
                })
                .expect("spawning a worker thread");
            handles.push(handle);
        }
        Self {
            sender: Mutex::new(Some(sender)),
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            retry_after_secs: options.retry_after_secs,
            deadline: options.job_deadline,
            ready_workers,
            workers: Mutex::new(handles),
            worker_count: options.workers,
            metrics,
            running_bytes: Arc::new(ByteBudget::new(options.max_running_job_bytes)),
        }
    }

    /// True once every worker has its sessions.
    pub fn is_ready(&self) -> bool {
        self.ready_workers.load(Ordering::SeqCst) == self.worker_count
    }

    /// Waits until every worker is ready, or `timeout` passes.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        while !self.is_ready() {
            if start.elapsed() > timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// True when no queue slot is free: lets a handler refuse before it reads a body.
    pub fn is_full(&self) -> bool {
        self.permits.available_permits() == 0
    }

    /// Jobs queued or running, and the most there may be.
    pub fn load(&self) -> (usize, usize) {
        (self.capacity - self.permits.available_permits(), self.capacity)
    }

    /// Takes a queue slot or refuses at once. Take it before decoding a request, so that a full
    /// service spends nothing on requests it cannot run.
    pub fn admit(self: &Arc<Self>) -> Result<Admission, ExecError> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            self.metrics.jobs_rejected.inc();
            ExecError::Overloaded {
                capacity: self.capacity,
                retry_after_secs: self.retry_after_secs,
            }
        })?;
        Ok(Admission {
            executor: self.clone(),
            permit,
            admitted: Instant::now(),
        })
    }

    /// Admits `task` (or refuses it at once) and waits for its result.
    pub async fn submit<T: Task>(self: &Arc<Self>, task: T) -> Result<T::Output, ExecError> {
        self.admit()?.run(task).await
    }

    /// Stops taking jobs, lets queued and running jobs finish, and joins the workers.
    pub fn shutdown(&self) {
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        let handles = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }
}

/// A held queue slot; the deadline counts from admission.
pub struct Admission {
    executor: Arc<Executor>,
    permit: OwnedSemaphorePermit,
    admitted: Instant,
}

/// How a watched job (an asynchronous one) is run: its own deadline, a cancel switch its owner
/// holds, and a progress record.
#[derive(Debug, Clone)]
pub struct Control {
    pub deadline: Duration,
    pub cancelled: Arc<AtomicBool>,
    pub progress: Arc<Progress>,
}

impl Admission {
    /// Queues `task` on the slot and waits for its result.
    pub async fn run<T: Task>(self, task: T) -> Result<T::Output, ExecError> {
        let deadline = self.executor.deadline;
        self.run_with(task, deadline, Arc::new(AtomicBool::new(false)), None)
            .await
    }

    /// Queues `task` under `control` and waits for its result.
    pub async fn run_controlled<T: Task>(self, task: T, control: Control) -> Result<T::Output, ExecError> {
        self.run_with(task, control.deadline, control.cancelled, Some(control.progress))
            .await
    }

    async fn run_with<T: Task>(
        self,
        task: T,
        limit: Duration,
        cancelled: Arc<AtomicBool>,
        progress: Option<Arc<Progress>>,
    ) -> Result<T::Output, ExecError> {
        let Admission {
            executor,
            permit,
            admitted,
        } = self;
        let deadline = admitted + limit;
        let ctx = JobContext::new(deadline, cancelled.clone(), progress.clone());
        let (reply, result) = oneshot::channel::<Result<T::Output, ExecError>>();
        let metrics = executor.metrics.clone();
        let running_bytes = executor.running_bytes.clone();
        let bytes = task.bytes();
        let span = tracing::Span::current();
        metrics.queue_depth.inc();
        let job: BoxedJob = Box::new(move |rt: &mut WorkerRuntime| {
            let _permit = permit; // frees the queue slot when the job ends, however it ends
            let _entered = span.enter();
            metrics.queue_depth.dec();
            metrics.queue_wait.observe(admitted.elapsed().as_secs_f64());
            if reply.is_closed() {
                metrics.jobs_cancelled.inc();
                tracing::info!("job skipped: the caller went away");
                return;
            }
            if ctx.is_cancelled() {
                metrics.jobs_cancelled.inc();
                let _ = reply.send(Err(ExecError::DeadlineExceeded(deadline - admitted)));
                return;
            }
            if let Some(p) = &progress {
                mark_started(p);
            }
            // Concurrent jobs together hold what one alone could: a big one waits for the others.
            let Some(_lease) = running_bytes.lease_unless(bytes, || ctx.is_cancelled() || reply.is_closed()) else {
                metrics.jobs_cancelled.inc();
                let _ = reply.send(Err(ExecError::DeadlineExceeded(deadline - admitted)));
                return;
            };
            let started = Instant::now();
            rt.run_for(Some(ctx.clone()));
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| task.run(rt, &ctx)));
            rt.run_for(None);
            metrics.job_duration.observe(started.elapsed().as_secs_f64());
            let _ = reply.send(settled(outcome, &metrics, deadline - admitted));
        });
        {
            let sender = executor.sender.lock().unwrap_or_else(|p| p.into_inner());
            let sent = sender.as_ref().map(|s| s.try_send(job).is_ok()).unwrap_or(false);
            if !sent {
                executor.metrics.queue_depth.dec();
                return Err(ExecError::ShuttingDown);
            }
        }
        // Dropping this future (the client went away) marks the job cancelled too.
        let _guard = CancelOnDrop(cancelled);
        match tokio::time::timeout_at(deadline.into(), result).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ExecError::ShuttingDown),
            Err(_) => Err(ExecError::DeadlineExceeded(limit)),
        }
    }
}

/// A job's outcome as its caller gets it: a cancellation counts as the deadline passing after
/// `limit`, a panic is logged and answered (the worker carries on).
fn settled<T>(
    outcome: std::thread::Result<Result<T, RuntimeError>>,
    metrics: &Metrics,
    limit: Duration,
) -> Result<T, ExecError> {
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(RuntimeError::Cancelled)) => {
            metrics.jobs_cancelled.inc();
            Err(ExecError::DeadlineExceeded(limit))
        }
        Ok(Err(e)) => Err(ExecError::Runtime(e)),
        Err(panic) => {
            let message = panic_message(&panic);
            tracing::error!(panic = %message, "job panicked; the worker carries on");
            Err(ExecError::Panicked(message))
        }
    }
}

/// Records that a worker started the job, and when (milliseconds since the Unix epoch).
fn mark_started(p: &Progress) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    p.started_ms
        .store(now.map(|d| d.as_millis() as u64).unwrap_or(0), Ordering::SeqCst);
    p.started.store(true, Ordering::SeqCst);
}

struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}
