//! One replica's claimer of shared jobs: while this replica has an idle worker, it takes the oldest
//! waiting job from PostgreSQL and runs it as a job submitted here would run; it renews the leases
//! of the jobs it runs (writing their progress) and writes each outcome back. A submission wakes it
//! (NOTIFY); without one it looks every POLL, which is also how a dead replica's expired leases
//! are found. Stopped, it claims nothing more and gives its running jobs back to the queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::error::{ApiError, ProblemKind};
use super::AppState;
use crate::audit::Context;
use crate::executor::shared::{Claimed, RunProgress, SharedJobs};
use crate::executor::{Control, Progress};

/// How often an idle claimer looks for work without being woken.
const POLL: Duration = Duration::from_millis(250);
/// How often, at most, finished jobs past their time are removed (by an idle replica); more often
/// when they are kept for less.
const SWEEP: Duration = Duration::from_secs(10);
/// How often the waiting jobs are counted for the autoscaler's metric (busy or not).
const COUNT: Duration = Duration::from_secs(5);

struct Running {
    attempt: i32,
    control: Control,
}

type RunningJobs = Arc<Mutex<HashMap<String, Running>>>;

fn lock(running: &RunningJobs) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
    running.lock().unwrap_or_else(|p| p.into_inner())
}

/// The jobs running now: (id, attempt, control), copied out of the lock.
fn snapshot(running: &RunningJobs) -> Vec<(String, i32, Control)> {
    lock(running)
        .iter()
        .map(|(id, r)| (id.clone(), r.attempt, r.control.clone()))
        .collect()
}

/// A started claimer; `stop` it before the executor.
pub struct Claimer {
    stop: watch::Sender<bool>,
    running: RunningJobs,
    shared: Arc<SharedJobs>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts claiming shared jobs for this replica.
pub fn start(state: Arc<AppState>, shared: Arc<SharedJobs>) -> Claimer {
    let (stop, stopped) = watch::channel(false);
    let running: RunningJobs = Arc::default();
    let ended = Arc::new(Notify::new());
    let renew_every = (Duration::from_millis(state.config.job_lease_ms) / 3).min(Duration::from_millis(200));
    let tasks = vec![
        tokio::spawn(claim_loop(
            state.clone(),
            shared.clone(),
            running.clone(),
            ended,
            stopped.clone(),
        )),
        tokio::spawn(renew_loop(shared.clone(), running.clone(), renew_every, stopped)),
    ];
    Claimer {
        stop,
        running,
        shared,
        tasks,
    }
}

impl Claimer {
    /// Claims nothing more, gives every running job back to the queue (another replica takes it at
    /// once, and the run does not count as an attempt), and stops those runs.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        for (id, attempt, control) in snapshot(&self.running) {
            if let Err(e) = self.shared.release(&id, attempt).await {
                tracing::warn!(job = %id, error = %e, "could not give the job back; its lease will expire");
            }
            control.cancelled.store(true, Ordering::SeqCst);
            tracing::info!(job = %id, "shared job given back to the queue at shutdown");
        }
        // The runs see their cancel flag at their next pass; their outcomes are not written.
        let waited = Instant::now();
        while !lock(&self.running).is_empty() && waited.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Claims a shared job whenever a worker is idle, sweeps expired jobs now and then, and otherwise
/// waits for a notification, a poll tick or the stop.
async fn claim_loop(
    state: Arc<AppState>,
    shared: Arc<SharedJobs>,
    running: RunningJobs,
    ended: Arc<Notify>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut listener = shared.listener().await.ok();
    let mut last_sweep: Option<Instant> = None;
    let sweep_every = (Duration::from_secs(state.config.job_ttl_secs) / 2).clamp(Duration::from_secs(1), SWEEP);
    let mut last_count: Option<Instant> = None;
    while !*stopped.borrow() {
        if last_count.is_none_or(|t| t.elapsed() > COUNT) {
            last_count = Some(Instant::now());
            if let Ok(n) = shared.waiting().await {
                state.metrics.jobs_waiting.set(n);
            }
        }
        let idle_worker = lock(&running).len() < state.config.workers && !state.executor.is_full();
        if !idle_worker {
            tokio::select! {
                _ = ended.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = stopped.changed() => {}
            }
            continue;
        }
        match shared.claim().await {
            Ok(Some(job)) => {
                start_run(&state, &shared, &running, &ended, job);
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not claim a shared job"),
        }
        if last_sweep.is_none_or(|t| t.elapsed() > sweep_every) {
            last_sweep = Some(Instant::now());
            sweep_expired(&shared).await;
        }
        match listener.as_mut() {
            Some(l) => tokio::select! {
                heard = l.recv() => if heard.is_err() { listener = None },
                _ = tokio::time::sleep(POLL) => {}
                _ = stopped.changed() => {}
            },
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = stopped.changed() => {}
                }
                listener = shared.listener().await.ok();
            }
        }
    }
}

/// Records a claimed job as running here and runs it on its own task.
fn start_run(
    state: &Arc<AppState>,
    shared: &Arc<SharedJobs>,
    running: &RunningJobs,
    ended: &Arc<Notify>,
    job: Claimed,
) {
    let control = Control {
        deadline: Duration::from_millis(state.config.async_job_deadline_ms),
        cancelled: Arc::new(AtomicBool::new(false)),
        progress: Arc::new(Progress::default()),
    };
    lock(running).insert(
        job.id.clone(),
        Running {
            attempt: job.attempt,
            control: control.clone(),
        },
    );
    tracing::info!(job = %job.id, attempt = job.attempt, model = %job.model, "shared job claimed");
    let (state, shared, running, ended) = (state.clone(), shared.clone(), running.clone(), ended.clone());
    tokio::spawn(async move {
        let outcome = execute(&state, &job, control.clone()).await;
        let run = RunProgress::of(&control.progress);
        let written = match outcome {
            Some(outcome) => shared.finish(&job.id, job.attempt, outcome, &run).await,
            None => shared.release(&job.id, job.attempt).await.map(|_| false),
        };
        match written {
            Ok(true) => tracing::info!(job = %job.id, "shared job finished"),
            Ok(false) => {
                tracing::info!(job = %job.id, "shared job ended elsewhere: cancelled, given back or taken over")
            }
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "could not write the job's outcome; its lease will expire and it runs again")
            }
        }
        lock(&running).remove(&job.id);
        ended.notify_one();
    });
}

/// Removes the shared jobs past their time to live.
async fn sweep_expired(shared: &SharedJobs) {
    match shared.sweep().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "expired shared jobs removed"),
        Err(e) => tracing::warn!(error = %e, "could not remove expired shared jobs"),
    }
}

/// Renews the lease of every job this replica runs and records its progress; a job that is no
/// longer this run's (cancelled, or taken over after a stall) is stopped.
async fn renew_loop(
    shared: Arc<SharedJobs>,
    running: RunningJobs,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    while !*stopped.borrow() {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => break,
        }
        for (id, attempt, control) in snapshot(&running) {
            match shared.renew(&id, attempt, &RunProgress::of(&control.progress)).await {
                Ok(true) => {}
                Ok(false) => {
                    control.cancelled.store(true, Ordering::SeqCst);
                    tracing::info!(job = %id, "shared job cancelled or taken over: stopping its run");
                }
                Err(e) => tracing::warn!(job = %id, error = %e, "could not renew the job's lease"),
            }
        }
    }
}

/// Runs a claimed job; `None`: no worker slot after all (synchronous requests took them), so the
/// job goes back to the queue.
async fn execute(
    state: &Arc<AppState>,
    job: &Claimed,
    control: Control,
) -> Option<Result<serde_json::Value, serde_json::Value>> {
    let started = Instant::now();
    if job.attempt > job.max_attempts {
        tracing::warn!(job = %job.id, attempts = job.max_attempts, "job failed: its replicas kept stopping mid-run");
        return Some(Err(ApiError::new(
            ProblemKind::Internal,
            format!(
                "the job was started {} times (job_max_attempts) and each time its replica stopped before it finished",
                job.max_attempts
            ),
        )
        .problem_json()));
    }
    let Some(model) = state.registry.get(&job.model) else {
        return Some(Err(super::error::model_not_found(&job.model).problem_json()));
    };
    // Never run a request on a model other than the one it was checked against.
    if model.sha256 != job.model_sha256 {
        return Some(Err(ApiError::new(
            ProblemKind::InvalidRequest,
            format!(
                "model `{}` changed after the job was submitted (sha256 {} then, {} now); submit it again",
                job.model, job.model_sha256, model.sha256
            ),
        )
        .problem_json()));
    }
    let ready = match super::jobs::check(state, job.request.clone().into(), true).await {
        Ok(ready) => ready,
        Err(e) => return Some(Err(e.problem_json())),
    };
    let admission = state.executor.admit().ok()?;
    let ctx = Context {
        request_id: job.request_id.clone(),
        caller: job.owner.clone(),
        record_id: Some(job.id.clone()),
        // Refused at submission: a shared job stores no subject.
        subject: None,
    };
    Some(super::jobs::run(state, ready, admission, control, ctx, started).await)
}
