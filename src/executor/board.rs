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

/// Model rows run, of those planned: one unit for every method, and `done` never above `planned`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct JobProgress {
    /// Model rows run so far.
    pub done: usize,
    /// Model rows planned (0 until known; raised when a method runs more than it planned, and
    /// equal to `done` once the job is done).
    pub planned: usize,
}

impl JobProgress {
    /// A job in `state` that has run `done` rows of `planned`: the plan raised to what ran when a
    /// method went past its estimate, and equal to it once the job is done.
    pub fn at(state: JobState, done: usize, planned: usize) -> Self {
        let planned = if state == JobState::Done {
            done
        } else {
            planned.max(done)
        };
        Self { done, planned }
    }
}

/// Who is asking about a job: with API keys on, a job belongs to the key that submitted it, and only
/// that key (or one with the `admin` scope) sees it; to others it does not exist.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    /// The caller's key name (`None` without keys).
    pub caller: Option<String>,
    /// The key has the `admin` scope.
    pub admin: bool,
}

impl Viewer {
    /// Whether a job owned by `owner` is visible to this viewer.
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        self.admin || owner == self.caller.as_deref()
    }
}

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Too many jobs are remembered already.
    #[error("{0} asynchronous jobs are remembered already (max_jobs); retry when some expire")]
    Full(usize),
    /// The caller has as many unfinished jobs as it may.
    #[error("this caller has {0} unfinished jobs already (max_jobs_per_caller); retry when one ends")]
    CallerLimit(usize),
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
    /// The API key that submitted it (with keys on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Runs started (more than 1 when a replica stopped mid-job and another ran it again).
    pub attempts: u32,
    /// The replica running it (jobs shared through PostgreSQL): host, process id, and a random part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// When it was submitted (RFC 3339).
    pub created: String,
    /// When a worker started its (last) run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
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
        v.progress = JobProgress::at(
            v.state,
            p.done.load(Ordering::Relaxed),
            p.planned.load(Ordering::Relaxed),
        );
        if p.started.load(Ordering::SeqCst) {
            v.attempts = 1;
            v.started = Some(rfc3339_ms(p.started_ms.load(Ordering::SeqCst)));
            if v.state == JobState::Queued {
                v.state = JobState::Running;
            }
        }
        v
    }
}

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

/// RFC 3339 of a time in milliseconds since the Unix epoch.
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
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

    /// Registers a new queued job of `owner`, who may have at most `per_caller` unfinished ones;
    /// returns its id and the control its run uses.
    pub fn create(
        &self,
        model: &str,
        method: &str,
        owner: Option<&str>,
        per_caller: usize,
    ) -> Result<(String, Control), Refused> {
        self.sweep();
        let mut jobs = self.lock();
        if jobs.len() >= self.max {
            return Err(Refused::Full(self.max));
        }
        let unfinished = jobs
            .values()
            .filter(|e| !e.view.state.is_final() && e.view.owner.as_deref() == owner)
            .count();
        if unfinished >= per_caller {
            return Err(Refused::CallerLimit(per_caller));
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
            owner: owner.map(String::from),
            attempts: 0,
            replica: None,
            created: now_rfc3339(),
            started: None,
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
    pub fn cancel(&self, id: &str, viewer: &Viewer) -> Option<JobView> {
        let mut jobs = self.lock();
        let e = jobs.get_mut(id).filter(|e| viewer.may_see(e.view.owner.as_deref()))?;
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

    /// The job as it is now (`None`: unknown, expired, or not this viewer's).
    pub fn get(&self, id: &str, viewer: &Viewer) -> Option<JobView> {
        let ttl = self.ttl;
        let jobs = self.lock();
        let e = jobs.get(id).filter(|e| viewer.may_see(e.view.owner.as_deref()))?;
        e.ended.is_none_or(|t| t.elapsed() < ttl).then(|| e.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_move_through_their_states_and_expire() {
        let board = JobBoard::new(Duration::from_millis(50), 2, Duration::from_secs(1));
        let anyone = Viewer::default();
        let (a, control) = board.create("m", "saliency", None, 10).unwrap();
        let (b, _) = board.create("m", "saliency", None, 10).unwrap();
        assert!(board.create("m", "saliency", None, 10).is_err(), "bounded");
        assert_eq!(board.get(&a, &anyone).unwrap().state, JobState::Queued);
        control.progress.started.store(true, Ordering::SeqCst);
        control.progress.planned.store(10, Ordering::Relaxed);
        control.progress.done.store(4, Ordering::Relaxed);
        let v = board.get(&a, &anyone).unwrap();
        assert_eq!(
            (v.state, v.progress),
            (JobState::Running, JobProgress { done: 4, planned: 10 })
        );
        control.progress.done.store(12, Ordering::Relaxed);
        let v = board.get(&a, &anyone).unwrap();
        assert_eq!(v.progress, JobProgress { done: 12, planned: 12 }, "never past the plan");
        control.progress.done.store(8, Ordering::Relaxed);
        board.finish(&a, Ok(serde_json::json!({"x": 1})));
        let v = board.get(&a, &anyone).unwrap();
        assert_eq!(
            (v.state, v.progress),
            (JobState::Done, JobProgress { done: 8, planned: 8 })
        );
        assert_eq!(board.cancel(&b, &anyone).unwrap().state, JobState::Cancelled);
        board.finish(&b, Ok(serde_json::json!({})));
        assert_eq!(
            board.get(&b, &anyone).unwrap().state,
            JobState::Cancelled,
            "a late result does not revive it"
        );
        std::thread::sleep(Duration::from_millis(80));
        assert!(board.get(&a, &anyone).is_none(), "expired");
        let (c, _) = board
            .create("m", "saliency", None, 10)
            .expect("expired jobs free their places");
        assert_eq!(board.cancel_all(), 1, "at shutdown every unfinished job is cancelled");
        assert_eq!(board.get(&c, &anyone).unwrap().state, JobState::Cancelled);
    }

    #[test]
    fn a_job_is_its_owners_and_each_caller_has_a_quota() {
        let board = JobBoard::new(Duration::from_secs(60), 10, Duration::from_secs(1));
        let alpha = Viewer {
            caller: Some("alpha".into()),
            admin: false,
        };
        let beta = Viewer {
            caller: Some("beta".into()),
            admin: false,
        };
        let admin = Viewer {
            caller: Some("ops".into()),
            admin: true,
        };
        let (a, _) = board.create("m", "rise", Some("alpha"), 2).unwrap();
        board.create("m", "rise", Some("alpha"), 2).unwrap();
        assert!(matches!(
            board.create("m", "rise", Some("alpha"), 2),
            Err(Refused::CallerLimit(2))
        ));
        board
            .create("m", "rise", Some("beta"), 2)
            .expect("another caller's quota is its own");
        assert!(board.get(&a, &beta).is_none() && board.cancel(&a, &beta).is_none());
        assert_eq!(board.get(&a, &alpha).unwrap().state, JobState::Queued);
        assert_eq!(board.get(&a, &admin).unwrap().owner.as_deref(), Some("alpha"));
        assert_eq!(board.cancel(&a, &alpha).unwrap().state, JobState::Cancelled);
        board
            .create("m", "rise", Some("alpha"), 2)
            .expect("a cancelled job frees its place");
    }
}
