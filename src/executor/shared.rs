//! Asynchronous jobs in PostgreSQL, shared by every replica that names the same database: a job is
//! a row (state, progress, the request as received, the outcome, attempts, a lease). Any replica
//! accepts a submission and answers for any job; each replica's claimer takes the oldest waiting
//! job (`FOR UPDATE SKIP LOCKED`) while it has an idle worker, renews the job's lease while it runs,
//! and writes the outcome back only while the lease is still its own, so every job ends once.
//! Leases are compared with the database's clock, never a replica's.

use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;

use super::board::{rfc3339_ms, JobProgress, JobState, JobView, Refused, Viewer};

/// The NOTIFY channel a submission wakes idle claimers with.
const CHANNEL: &str = "explaind_jobs";

/// The advisory lock key every replica's submission holds while it counts and inserts (any fixed
/// number no other user of the database locks: the ASCII of "xplnjobs").
const SUBMIT_LOCK: i64 = 0x78706c6e6a6f6273;

/// A failure of the jobs database.
#[derive(Debug, thiserror::Error)]
#[error("jobs database: {0}")]
pub struct StoreError(String);

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self(e.to_string())
    }
}

/// Why a submission was not stored.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A job to store.
pub struct NewJob<'a> {
    pub model: &'a str,
    pub model_sha256: &'a str,
    pub method: &'a str,
    pub owner: Option<&'a str>,
    pub request_id: Option<&'a str>,
    /// The body as received.
    pub request: &'a [u8],
}

/// A job this replica has claimed: run it, then `finish` it under the same attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub model: String,
    pub model_sha256: String,
    pub owner: Option<String>,
    pub request_id: Option<String>,
    pub request: Vec<u8>,
    /// Which run this is (1 for the first); a lease is this replica's only while it matches.
    pub attempt: i32,
    /// Most runs the job may have.
    pub max_attempts: i32,
}

/// How far a run got, as its replica reports it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunProgress {
    /// Model rows run.
    pub done: usize,
    /// Model rows planned.
    pub planned: usize,
    /// When a worker started the run (ms since the Unix epoch; `None`: not yet).
    pub started_ms: Option<i64>,
}

impl RunProgress {
    /// The run's progress as its worker records it.
    pub fn of(p: &super::Progress) -> Self {
        use std::sync::atomic::Ordering;
        let started = p.started_ms.load(Ordering::SeqCst);
        Self {
            done: p.done.load(Ordering::Relaxed),
            planned: p.planned.load(Ordering::Relaxed),
            started_ms: (started > 0).then_some(started as i64),
        }
    }
}

/// Sizes and times of the shared store.
#[derive(Debug, Clone)]
pub struct SharedOptions {
    /// Lease length; a running job's lease is renewed well within it.
    pub lease: Duration,
    /// Most runs of one job.
    pub max_attempts: u32,
    /// Finished jobs are removed this long after they end.
    pub ttl: Duration,
    /// Most unfinished jobs in the database (beyond: 503).
    pub max_jobs: usize,
}

/// The jobs table.
pub struct SharedJobs {
    pool: PgPool,
    /// This replica's name in `lease_owner`: host, process, and a random part (a restarted process
    /// with the same pid is someone else).
    me: String,
    options: SharedOptions,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn rfc3339(ms: i64) -> String {
    rfc3339_ms(ms.max(0) as u64)
}

/// The answer, compressed: a 224x224 map's JSON is mostly digits, and gzip keeps about a third.
fn pack(value: &serde_json::Value) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut gz, value);
    gz.finish().unwrap_or_default()
}

fn unpack(bytes: &[u8]) -> Option<serde_json::Value> {
    let mut text = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut text).ok()?;
    serde_json::from_slice(&text).ok()
}

const VIEW: &str = "SELECT id::text, model, method, state, done, planned, owner, attempts, created_ms, finished_ms, \
                    result, error, lease_owner, started_ms FROM explaind_jobs";

fn view(r: &PgRow, with_result: bool) -> Result<JobView, StoreError> {
    let state = match r.try_get::<String, _>(3)?.as_str() {
        "queued" => JobState::Queued,
        "running" => JobState::Running,
        "done" => JobState::Done,
        "failed" => JobState::Failed,
        _ => JobState::Cancelled,
    };
    let done = r.try_get::<i64, _>(4)?.max(0) as usize;
    let planned = r.try_get::<i64, _>(5)?.max(0) as usize;
    let result: Option<Vec<u8>> = if with_result { r.try_get(10)? } else { None };
    let error: Option<String> = r.try_get(11)?;
    Ok(JobView {
        id: r.try_get(0)?,
        model: r.try_get(1)?,
        method: r.try_get(2)?,
        state,
        progress: JobProgress::at(state, done, planned),
        owner: r.try_get(6)?,
        attempts: r.try_get::<i32, _>(7)?.max(0) as u32,
        replica: r.try_get(12)?,
        created: rfc3339(r.try_get(8)?),
        started: r.try_get::<Option<i64>, _>(13)?.map(rfc3339),
        finished: r.try_get::<Option<i64>, _>(9)?.map(rfc3339),
        result: result.as_deref().and_then(unpack),
        error: error.and_then(|e| serde_json::from_str(&e).ok()),
    })
}

impl SharedJobs {
    /// Connects and brings the table up to date.
    pub async fn open(url: &str, options: SharedOptions) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        let mut migrator = sqlx::migrate!("./migrations/jobs");
        // The audit log's migrations may share the database's history table.
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let me = format!(
            "{host}/{}/{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Ok(Self { pool, me, options })
    }

    /// This replica's lease-owner name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Stores a queued job and wakes an idle claimer; refuses past the caller's quota (429) or
    /// `max_jobs` unfinished jobs in all (503).
    pub async fn submit(&self, job: NewJob<'_>, per_caller: usize) -> Result<JobView, SubmitError> {
        // Count and insert under one transaction-scoped advisory lock that every replica's
        // submissions take: under READ COMMITTED a count does not see the rows concurrent
        // submissions have not committed yet, so separate statements (or one INSERT ... SELECT
        // count) let 32 concurrent submissions all pass a quota of 20. The lock serialises only
        // submissions (claims, renewals and reads never take it) for two short statements, and the
        // commit or rollback releases it, also when a replica dies mid-way (its transaction aborts).
        // The next holder's count takes its snapshot after the commit, so it sees the job. A
        // SERIALIZABLE transaction would be correct too, but needs a retry loop on conflicts.
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SUBMIT_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        let counts = sqlx::query(
            "SELECT count(*), count(*) FILTER (WHERE owner IS NOT DISTINCT FROM $1) FROM explaind_jobs \
             WHERE state IN ('queued', 'running')",
        )
        .bind(job.owner)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let (all, mine): (i64, i64) = (
            counts.try_get(0).map_err(StoreError::from)?,
            counts.try_get(1).map_err(StoreError::from)?,
        );
        let refused = if mine.max(0) as usize >= per_caller {
            Some(Refused::CallerLimit(per_caller))
        } else if all.max(0) as usize >= self.options.max_jobs {
            Some(Refused::Full(self.options.max_jobs))
        } else {
            None
        };
        if let Some(refused) = refused {
            // Released now rather than whenever the pool next uses the connection.
            tx.rollback().await.map_err(StoreError::from)?;
            return Err(refused.into());
        }
        let id = uuid::Uuid::new_v4().to_string();
        let row = sqlx::query(&format!(
            "WITH inserted AS (INSERT INTO explaind_jobs (id, owner, request_id, model, model_sha256, method, state, \
             request, max_attempts, created_ms) VALUES ($1::uuid, $2, $3, $4, $5, $6, 'queued', $7, $8, $9) RETURNING *) \
             {}",
            VIEW.replace("explaind_jobs", "inserted")
        ))
        .bind(&id)
        .bind(job.owner)
        .bind(job.request_id)
        .bind(job.model)
        .bind(job.model_sha256)
        .bind(job.method)
        .bind(job.request)
        .bind(self.options.max_attempts as i32)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        self.notify().await?;
        Ok(view(&row, false)?)
    }

    /// Takes the oldest job that is waiting, or whose replica's lease ran out, for this replica.
    /// The caller fails a job whose `attempt` is past its `max_attempts` instead of running it.
    pub async fn claim(&self) -> Result<Option<Claimed>, StoreError> {
        let row = sqlx::query(
            "UPDATE explaind_jobs SET state = 'running', attempts = attempts + 1, lease_owner = $1, \
                 lease_expires = now() + $2 * interval '1 millisecond' \
                 WHERE id = (SELECT id FROM explaind_jobs WHERE state = 'queued' \
                   OR (state = 'running' AND lease_expires < now()) \
                   ORDER BY created_ms LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING id::text, model, model_sha256, owner, request_id, request, attempts, max_attempts",
        )
        .bind(&self.me)
        .bind(self.options.lease.as_millis() as i64)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(Claimed {
            id: r.try_get(0)?,
            model: r.try_get(1)?,
            model_sha256: r.try_get(2)?,
            owner: r.try_get(3)?,
            request_id: r.try_get(4)?,
            request: r.try_get(5)?,
            attempt: r.try_get(6)?,
            max_attempts: r.try_get(7)?,
        }))
    }

    /// Renews a running job's lease and records its progress. `false`: the job is no longer this
    /// run's (cancelled, or its lease expired and another replica took it): stop running it.
    pub async fn renew(&self, id: &str, attempt: i32, run: &RunProgress) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE explaind_jobs SET lease_expires = now() + $1 * interval '1 millisecond', done = $2, planned = $3, \
             started_ms = $7 WHERE id = $4::uuid AND lease_owner = $5 AND attempts = $6 AND state = 'running'",
        )
        .bind(self.options.lease.as_millis() as i64)
        .bind(run.done as i64)
        .bind(run.planned.max(run.done) as i64)
        .bind(id)
        .bind(&self.me)
        .bind(attempt)
        .bind(run.started_ms)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Writes how a run ended and how far it got, if the job is still this run's; `false`: it was
    /// not (cancelled, or taken over), and nothing was written.
    pub async fn finish(
        &self,
        id: &str,
        attempt: i32,
        outcome: Result<serde_json::Value, serde_json::Value>,
        run: &RunProgress,
    ) -> Result<bool, StoreError> {
        let (state, result, error) = match &outcome {
            Ok(answer) => ("done", Some(pack(answer)), None),
            Err(problem) => ("failed", None, Some(problem.to_string())),
        };
        let updated = sqlx::query(
            "UPDATE explaind_jobs SET state = $1, result = $2, error = $3, finished_ms = $4, lease_owner = NULL, \
             lease_expires = NULL, done = $8, planned = CASE WHEN $1 = 'done' THEN $8 ELSE $9 END, started_ms = $10 \
             WHERE id = $5::uuid AND attempts = $6 AND state = 'running' AND lease_owner = $7",
        )
        .bind(state)
        .bind(result)
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .bind(attempt)
        .bind(&self.me)
        .bind(run.done as i64)
        .bind(run.planned.max(run.done) as i64)
        .bind(run.started_ms)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Gives a running job back to the queue (this replica is stopping): the run does not count as
    /// an attempt, and another replica takes it at once.
    pub async fn release(&self, id: &str, attempt: i32) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE explaind_jobs SET state = 'queued', attempts = attempts - 1, lease_owner = NULL, \
             lease_expires = NULL WHERE id = $1::uuid AND attempts = $2 AND lease_owner = $3 AND state = 'running'",
        )
        .bind(id)
        .bind(attempt)
        .bind(&self.me)
        .execute(&self.pool)
        .await?;
        self.notify().await
    }

    /// Wakes the idle claimers of every replica: a job is waiting.
    async fn notify(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The job as it is now (`None`: unknown, expired, or not this viewer's).
    pub async fn get(&self, id: &str, viewer: &Viewer, with_result: bool) -> Result<Option<JobView>, StoreError> {
        let row = sqlx::query(&format!("{VIEW} WHERE id = $1::uuid"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let view = view(&row, with_result)?;
        Ok(viewer.may_see(view.owner.as_deref()).then_some(view))
    }

    /// Cancels a queued or running job (the replica running it sees this at its next renewal and
    /// stops); a finished job is unchanged.
    pub async fn cancel(&self, id: &str, viewer: &Viewer) -> Result<Option<JobView>, StoreError> {
        let Some(job) = self.get(id, viewer, false).await? else {
            return Ok(None);
        };
        if !job.state.is_final() {
            sqlx::query(
                "UPDATE explaind_jobs SET state = 'cancelled', finished_ms = $1, lease_owner = NULL, \
                 lease_expires = NULL WHERE id = $2::uuid AND state IN ('queued', 'running')",
            )
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        }
        self.get(id, viewer, true).await
    }

    /// Removes jobs that ended more than `ttl` ago; returns how many.
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        let cutoff = now_ms() - self.options.ttl.as_millis() as i64;
        let deleted = sqlx::query("DELETE FROM explaind_jobs WHERE finished_ms IS NOT NULL AND finished_ms < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        Ok(deleted.rows_affected())
    }

    /// Jobs waiting for a replica (what an autoscaler scales on).
    pub async fn waiting(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT count(*) FROM explaind_jobs WHERE state = 'queued'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Whether the database answers within a second.
    pub async fn reachable(&self) -> bool {
        let ping = sqlx::query("SELECT 1").execute(&self.pool);
        matches!(tokio::time::timeout(Duration::from_secs(1), ping).await, Ok(Ok(_)))
    }

    /// A connection that hears submissions (and releases).
    pub async fn listener(&self) -> Result<PgListener, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_pack_and_unpack() {
        let map: Vec<f64> = (0..50_176).map(|i| (i as f64 * 0.37).sin() * 1e-3).collect();
        let answer = serde_json::json!({"attributions": [{"values": map}]});
        let text = serde_json::to_vec(&answer).unwrap().len();
        let packed = pack(&answer);
        assert!(unpack(&packed).unwrap() == answer, "the answer comes back exactly");
        assert!(packed.len() * 2 < text, "{} of {text} bytes", packed.len());
    }
}
