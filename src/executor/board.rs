//! Asynchronous jobs' board: each job's state, live progress, and (once finished) its result,
//! kept for a configured time and bounded in number. The work itself runs on the executor like any
//! other job; the board only remembers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use utoipa::ToSchema;

use super::{Control, Progress};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Cancelled)
    }
}

/// Model rows run, of those planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct JobProgress {
    /// Model rows run so far.
    pub done: usize,
    /// Model rows planned (an estimate for `auto` sample counts; 0 until known).
    pub planned: usize,
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// Model name.
    pub model: String,
    /// Method.
    pub method: String,
    /// State.
    pub state: JobState,
    /// Progress.
    pub progress: JobProgress,
    /// When it was submitted (RFC 3339).
    pub created: String,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// The explanation, when done (the explain endpoint's JSON answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// The problem, when failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
}

struct Entry {
    view: JobView,
    control: Control,
    ended: Option<Instant>,
}

impl Entry {
    /// Stops an unfinished job: its worker sees the flag at its next pass.
    fn cancel(&mut self) {
        if !self.view.state.is_final() {
            self.control.cancelled.store(true, Ordering::SeqCst);
            self.view.state = JobState::Cancelled;
            self.view.finished = Some(now_rfc3339());
            self.ended = Some(Instant::now());
        }
    }

    /// The view with live progress read from the worker's counters.
    fn current(&self) -> JobView {
        let mut v = self.view.clone();
        let p = &self.control.progress;
        v.progress = JobProgress {
            done: p.done.load(Ordering::Relaxed),
            planned: p.planned.load(Ordering::Relaxed),
        };
        if v.state == JobState::Queued && p.started.load(Ordering::SeqCst) {
            v.state = JobState::Running;
        }
        v
    }
}

/// The board is full of unexpired jobs.
#[derive(Debug, thiserror::Error)]
#[error("{0} asynchronous jobs are remembered already (max_jobs); retry when some expire")]
pub struct BoardFull(pub usize);

/// All asynchronous jobs the service remembers.
pub struct JobBoard {
    jobs: Mutex<HashMap<String, Entry>>,
    ttl: Duration,
    max: usize,
    deadline: Duration,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl JobBoard {
    /// A board keeping finished jobs for `ttl`, at most `max` jobs, each with `deadline` to run.
    pub fn new(ttl: Duration, max: usize, deadline: Duration) -> Self {
        Self {
            jobs: Mutex::new(HashMap::new()),
            ttl,
            max,
            deadline,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets finished jobs older than the time to keep them.
    pub fn sweep(&self) {
        let ttl = self.ttl;
        self.lock().retain(|_, e| e.ended.is_none_or(|t| t.elapsed() < ttl));
    }

    /// Registers a new queued job; returns its id and the control its run uses.
    pub fn create(&self, model: &str, method: &str) -> Result<(String, Control), BoardFull> {
        self.sweep();
        let mut jobs = self.lock();
        if jobs.len() >= self.max {
            return Err(BoardFull(self.max));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let control = Control {
            deadline: self.deadline,
            cancelled: Arc::new(AtomicBool::new(false)),
            progress: Arc::new(Progress::default()),
        };
        let view = JobView {
            id: id.clone(),
            model: model.into(),
            method: method.into(),
            state: JobState::Queued,
            progress: JobProgress { done: 0, planned: 0 },
            created: now_rfc3339(),
            finished: None,
            result: None,
            error: None,
        };
        jobs.insert(
            id.clone(),
            Entry {
                view,
                control: control.clone(),
                ended: None,
            },
        );
        Ok((id, control))
    }

    /// Records how a job ended (unless it was cancelled first).
    pub fn finish(&self, id: &str, outcome: Result<serde_json::Value, serde_json::Value>) {
        if let Some(e) = self.lock().get_mut(id) {
            if e.view.state.is_final() {
                return;
            }
            match outcome {
                Ok(result) => {
                    e.view.state = JobState::Done;
                    e.view.result = Some(result);
                }
                Err(problem) => {
                    e.view.state = JobState::Failed;
                    e.view.error = Some(problem);
                }
            }
            e.view.finished = Some(now_rfc3339());
            e.ended = Some(Instant::now());
        }
    }

    /// Cancels a queued or running job: its worker stops at the next pass and is freed.
    pub fn cancel(&self, id: &str) -> Option<JobView> {
        let mut jobs = self.lock();
        let e = jobs.get_mut(id)?;
        e.cancel();
        Some(e.current())
    }

    /// Cancels every unfinished job (at shutdown: the board lives in memory, so they could not be
    /// finished for anyone anyway, and the workers are freed at once).
    pub fn cancel_all(&self) -> usize {
        let mut cancelled = 0;
        for e in self.lock().values_mut().filter(|e| !e.view.state.is_final()) {
            e.cancel();
            cancelled += 1;
        }
        cancelled
    }

    /// The job as it is now (`None`: unknown or expired).
    pub fn get(&self, id: &str) -> Option<JobView> {
        let ttl = self.ttl;
        let jobs = self.lock();
        let e = jobs.get(id)?;
        e.ended.is_none_or(|t| t.elapsed() < ttl).then(|| e.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_move_through_their_states_and_expire() {
        let board = JobBoard::new(Duration::from_millis(50), 2, Duration::from_secs(1));
        let (a, control) = board.create("m", "saliency").unwrap();
        let (b, _) = board.create("m", "saliency").unwrap();
        assert!(board.create("m", "saliency").is_err(), "bounded");
        assert_eq!(board.get(&a).unwrap().state, JobState::Queued);
        control.progress.started.store(true, Ordering::SeqCst);
        control.progress.planned.store(10, Ordering::Relaxed);
        control.progress.done.store(4, Ordering::Relaxed);
        let v = board.get(&a).unwrap();
        assert_eq!(
            (v.state, v.progress),
            (JobState::Running, JobProgress { done: 4, planned: 10 })
        );
        board.finish(&a, Ok(serde_json::json!({"x": 1})));
        assert_eq!(board.get(&a).unwrap().state, JobState::Done);
        assert_eq!(board.cancel(&b).unwrap().state, JobState::Cancelled);
        board.finish(&b, Ok(serde_json::json!({})));
        assert_eq!(
            board.get(&b).unwrap().state,
            JobState::Cancelled,
            "a late result does not revive it"
        );
        std::thread::sleep(Duration::from_millis(80));
        assert!(board.get(&a).is_none(), "expired");
        let (c, _) = board.create("m", "saliency").expect("expired jobs free their places");
        assert_eq!(board.cancel_all(), 1, "at shutdown every unfinished job is cancelled");
        assert_eq!(board.get(&c).unwrap().state, JobState::Cancelled);
    }
}
