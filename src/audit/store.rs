//! Where records live: SQLite (a file under the data directory, write-ahead log) or PostgreSQL,
//! through one code path (sqlx's `Any` driver) and one set of versioned migrations. Appends are
//! serialised so the chain has one tip; each is committed before `append` returns.

use std::collections::HashMap;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, ConnectOptions, Executor, Row};

use super::checkpoint::{Checkpoint, Mark};
use super::seal::{self, Master, Sealing};
use super::secret::{self, Secret};
use crate::config::{AuditSync, Config};

/// The hash before the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[error("audit store: {0}")]
pub struct StoreError(String);

impl StoreError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<tokio::task::JoinError> for StoreError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self(format!("a blocking task stopped: {e}"))
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self(e.to_string())
    }
}

/// A stored record.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: i64,
    pub id: String,
    pub time_ms: i64,
    pub kind: String,
    pub model: String,
    pub method: Option<String>,
    pub target: Option<String>,
    /// Canonical JSON, exactly as hashed.
    pub body: String,
    pub prev_hash: String,
    pub hash: String,
    /// The data key of its sealed part (a column, checked against the hashed body).
    pub key_id: Option<String>,
    /// The key of the record's sealed part, as read with it (read it through `AuditLog::to_json`).
    pub sealing: Sealing,
}

/// The indexed fields of a new record.
#[derive(Debug, Clone)]
pub struct Columns {
    pub id: String,
    pub time_ms: i64,
    pub kind: String,
    pub model: String,
    pub method: Option<String>,
    pub target: Option<String>,
    /// The data key its sealed part is encrypted with.
    pub key_id: Option<String>,
}

/// What is written with a record.
#[derive(Debug, Clone)]
pub enum With {
    Nothing,
    /// The record's key is a subject's: written only while that key exists (another replica may
    /// have erased the subject since this one read the key).
    SubjectKey,
    /// An erasure: the subject's keys are destroyed in the same transaction (the count is returned).
    DestroySubject(String),
}

/// How an append went.
#[derive(Debug)]
pub enum Appended {
    /// The record's (seq, hash), and the keys destroyed with it.
    Done(i64, String, u64),
    /// Not written: its subject's key was destroyed meanwhile (seal it again with a new one).
    KeyGone,
}

/// Per-record keys are made this many at a time, in one statement, so that a record costs no
/// write of its own key.
const SPARE_KEYS: usize = 32;

/// Subjects' keys kept in memory, at most.
const CACHED_SUBJECTS: usize = 10_000;

/// Filters of a listing; all optional.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub model: Option<String>,
    pub method: Option<String>,
    pub target: Option<String>,
    pub kind: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// The chain's hash of a record.
pub fn chain_hash(prev_hash: &str, body: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(body.as_bytes());
    hex::encode(h.finalize())
}

/// The audit database.
pub struct Store {
    pool: AnyPool,
    /// (seq, hash) of the last record: the chain's tip, held while appending.
    tip: tokio::sync::Mutex<(i64, String)>,
    /// Wraps data keys at rest.
    master: Option<Master>,
    /// Per-record keys already in the keys table, not yet used.
    spare: std::sync::Mutex<Vec<(String, Secret)>>,
    /// Subjects' keys by reference (dropped at an erasure; a stale one is caught by the guarded insert).
    subjects: std::sync::Mutex<HashMap<String, (String, Secret)>>,
}

impl Store {
    /// Opens (creating when needed) the configured database and brings its schema up to date.
    pub async fn open(config: &Config) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        if config.audit_database_url.is_none() {
            std::fs::create_dir_all(&config.data_dir)
                .map_err(|e| StoreError(format!("cannot create data_dir {}: {e}", config.data_dir.display())))?;
        }
        let url = config.audit_url();
        let sqlite = url.starts_with("sqlite:");
        let url = if sqlite && !url.contains('?') {
            format!("{url}?mode=rwc")
        } else {
            url
        };
        let options = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
        let sync = match config.audit_sync {
            AuditSync::Normal => "NORMAL",
            AuditSync::Full => "FULL",
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 8 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if conn.backend_name() == "SQLite" {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute(format!("PRAGMA synchronous = {sync}").as_str()).await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let mut migrator = sqlx::migrate!("./migrations/audit");
        // Shared jobs' migrations (1001 on) may share the database's history table.
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        let master = config
            .audit_master_key
            .as_deref()
            .map(|source| super::secret::load("audit_master_key", source))
            .transpose()?
            .map(|k| Master::new(super::secret::Secret(k)));
        let store = Self {
            pool,
            tip: tokio::sync::Mutex::new((0, GENESIS.to_string())),
            master,
            spare: std::sync::Mutex::new(Vec::new()),
            subjects: std::sync::Mutex::new(HashMap::new()),
        };
        *store.tip.lock().await = store.last().await?;
        Ok(store)
    }

    /// The chain's tip in the database: the last record, else where retention left the chain (its
    /// base checkpoint), else the genesis.
    pub async fn last(&self) -> Result<(i64, String), StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => (r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?),
            None => match self.newest_checkpoint(Mark::Base).await? {
                Some(base) => (base.seq, base.hash),
                None => (0, GENESIS.to_string()),
            },
        })
    }

    /// Appends a record after the tip, with `with`, and commits it.
    pub async fn append(&self, columns: &Columns, body: &str, with: &With) -> Result<Appended, StoreError> {
        let mut tip = self.tip.lock().await;
        for attempt in 0..3 {
            let seq = tip.0 + 1;
            let hash = chain_hash(&tip.1, body);
            match self.insert(seq, &tip.1, &hash, columns, body, with).await {
                Ok(None) => return Ok(Appended::KeyGone),
                Ok(Some(destroyed)) => {
                    *tip = (seq, hash.clone());
                    return Ok(Appended::Done(seq, hash, destroyed));
                }
                // Another writer (a second instance on the same PostgreSQL) took the seq: re-read the tip.
                Err(e) if attempt < 2 && is_conflict(&e) => *tip = self.last().await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError("could not append after three tries".into()))
    }

    /// Writes the record; `None` when its subject's key is gone. Only an erasure takes a
    /// transaction: every other record is one statement.
    async fn insert(
        &self,
        seq: i64,
        prev_hash: &str,
        hash: &str,
        columns: &Columns,
        body: &str,
        with: &With,
    ) -> Result<Option<u64>, sqlx::Error> {
        let sql = match with {
            With::SubjectKey => {
                "INSERT INTO audit_records (seq, id, time_ms, kind, model, method, target, body, prev_hash, hash, key_id) \
                 SELECT CAST($1 AS BIGINT), $2, CAST($3 AS BIGINT), $4, $5, $6, $7, $8, $9, $10, $11 \
                 WHERE EXISTS (SELECT 1 FROM audit_keys WHERE id = $11)"
            }
            _ => {
                "INSERT INTO audit_records (seq, id, time_ms, kind, model, method, target, body, prev_hash, hash, key_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            }
        };
        let record = sqlx::query(sql)
            .bind(seq)
            .bind(&columns.id)
            .bind(columns.time_ms)
            .bind(&columns.kind)
            .bind(&columns.model)
            .bind(columns.method.clone())
            .bind(columns.target.clone())
            .bind(body)
            .bind(prev_hash)
            .bind(hash)
            .bind(columns.key_id.clone());
        match with {
            With::Nothing => {
                record.execute(&self.pool).await?;
                Ok(Some(0))
            }
            With::SubjectKey => Ok((record.execute(&self.pool).await?.rows_affected() > 0).then_some(0)),
            // An erasure and its record: both or neither.
            With::DestroySubject(subject) => {
                let mut tx = self.pool.begin().await?;
                let destroyed = sqlx::query("DELETE FROM audit_keys WHERE subject = $1")
                    .bind(subject)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                record.execute(&mut *tx).await?;
                tx.commit().await?;
                if let Ok(mut cache) = self.subjects.lock() {
                    cache.remove(subject);
                }
                Ok(Some(destroyed))
            }
        }
    }

    /// A fresh per-record key, already in the keys table.
    pub async fn record_key(&self) -> Result<(String, Secret), StoreError> {
        if let Some(k) = self.spare.lock().ok().and_then(|mut s| s.pop()) {
            return Ok(k);
        }
        let now = super::record::now_ms();
        let mut made = Vec::with_capacity(SPARE_KEYS);
        let mut rows = Vec::with_capacity(SPARE_KEYS);
        for _ in 0..SPARE_KEYS {
            let id = uuid::Uuid::new_v4().to_string();
            let key = Secret(secret::random());
            rows.push((id.clone(), seal::wrap(&key, &id, self.master.as_ref())?));
            made.push((id, key));
        }
        let values: Vec<String> = (0..SPARE_KEYS)
            .map(|i| format!("(${}, NULL, ${}, ${}, ${})", 4 * i + 1, 4 * i + 2, 4 * i + 3, 4 * i + 4))
            .collect();
        let sql = format!(
            "INSERT INTO audit_keys (id, subject, key, wrap, created_ms) VALUES {}",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (id, (key, wrap)) in rows {
            q = q.bind(id).bind(key).bind(wrap).bind(now);
        }
        q.execute(&self.pool).await?;
        let first = made.pop().ok_or_else(|| StoreError::new("no key was made"))?;
        if let Ok(mut spare) = self.spare.lock() {
            spare.extend(made);
        }
        Ok(first)
    }

    /// Puts back a per-record key no record used.
    pub fn spare_key(&self, id: String, key: Secret) {
        if let Ok(mut spare) = self.spare.lock() {
            spare.push((id, key));
        }
    }

    /// Removes the spare keys no record used (at close).
    async fn drop_spares(&self) {
        let spare: Vec<(String, Secret)> = self
            .spare
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        for (id, _) in spare {
            let _ = sqlx::query("DELETE FROM audit_keys WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await;
        }
    }

    /// Forgets a subject's key this process holds (the database no longer has it).
    pub fn forget_subject(&self, subject: &str) {
        if let Ok(mut cache) = self.subjects.lock() {
            cache.remove(subject);
        }
    }

    /// The master key, when one is configured.
    pub fn master(&self) -> Option<&Master> {
        self.master.as_ref()
    }

    /// The data key of a subject (by its reference), created on its first record.
    pub async fn subject_key(&self, subject: &str, now_ms: i64) -> Result<(String, Secret), StoreError> {
        if let Some(k) = self.subjects.lock().ok().and_then(|c| c.get(subject).cloned()) {
            return Ok(k);
        }
        for _ in 0..2 {
            let row = sqlx::query("SELECT id, key, wrap FROM audit_keys WHERE subject = $1")
                .bind(subject)
                .fetch_optional(&self.pool)
                .await?;
            if let Some(r) = row {
                let id: String = r.try_get(0)?;
                let key = match seal::unwrap(
                    &r.try_get::<String, _>(1)?,
                    &r.try_get::<String, _>(2)?,
                    &id,
                    self.master(),
                ) {
                    Sealing::Key(key) => key,
                    Sealing::Unreadable(why) => return Err(StoreError(format!("a subject's data key: {why}"))),
                    Sealing::None | Sealing::Erased => {
                        return Err(StoreError("a subject's data key is missing".into()))
                    }
                };
                if let Ok(mut cache) = self.subjects.lock() {
                    if cache.len() >= CACHED_SUBJECTS {
                        cache.clear();
                    }
                    cache.insert(subject.to_string(), (id.clone(), key.clone()));
                }
                return Ok((id, key));
            }
            let id = uuid::Uuid::new_v4().to_string();
            let (stored, wrap) = seal::wrap(&Secret(secret::random()), &id, self.master.as_ref())?;
            // Two requests of one new subject at once: the first key stays, the other reads it.
            sqlx::query(
                "INSERT INTO audit_keys (id, subject, key, wrap, created_ms) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (subject) DO NOTHING",
            )
            .bind(&id)
            .bind(subject)
            .bind(&stored)
            .bind(&wrap)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        }
        Err(StoreError(
            "the subject's key was destroyed while it was being created".into(),
        ))
    }

    /// Stores a checkpoint; false when one with its mark and seq was there (another replica's).
    pub async fn add_checkpoint(&self, c: &Checkpoint) -> Result<bool, StoreError> {
        insert_checkpoint(&self.pool, c).await
    }

    /// The checkpoint of `mark` with the highest seq.
    pub async fn newest_checkpoint(&self, mark: Mark) -> Result<Option<Checkpoint>, StoreError> {
        let row = sqlx::query(&format!("{CHECKPOINTS} WHERE mark = $1 ORDER BY seq DESC LIMIT 1"))
            .bind(mark.name())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| checkpoint(&r)).transpose()
    }

    /// Checkpoints (both marks) with seq in `from..=to`, in seq order, at most `limit`.
    pub async fn checkpoints(&self, from: i64, to: i64, limit: i64) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = sqlx::query(&format!(
            "{CHECKPOINTS} WHERE seq >= $1 AND seq <= $2 ORDER BY seq, mark LIMIT $3"
        ))
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(checkpoint).collect()
    }

    /// The newest tip checkpoint whose record is older than `cutoff_ms`, with its record's hash:
    /// where retention may cut (whole segments only).
    pub async fn retention_point(&self, cutoff_ms: i64) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT r.seq, r.hash FROM audit_checkpoints c JOIN audit_records r ON r.seq = c.seq \
             WHERE c.mark = 'tip' AND r.time_ms < $1 ORDER BY c.seq DESC LIMIT 1",
        )
        .bind(cutoff_ms)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// Removes the records up to `base.seq`, their per-record keys and the checkpoints they make
    /// obsolete, and stores `base`, in one transaction; returns the records removed.
    pub async fn prune(&self, base: &Checkpoint) -> Result<u64, StoreError> {
        // Appends wait: the tip may be the record the base names.
        let _tip = self.tip.lock().await;
        let mut tx = self.pool.begin().await?;
        insert_checkpoint(&mut *tx, base).await?;
        sqlx::query(
            "DELETE FROM audit_keys WHERE subject IS NULL AND id IN \
             (SELECT key_id FROM audit_records WHERE seq <= $1 AND key_id IS NOT NULL)",
        )
        .bind(base.seq)
        .execute(&mut *tx)
        .await?;
        let removed = sqlx::query("DELETE FROM audit_records WHERE seq <= $1")
            .bind(base.seq)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM audit_checkpoints WHERE (mark = 'tip' AND seq <= $1) OR (mark = 'base' AND seq < $1)")
            .bind(base.seq)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(removed)
    }

    /// The record with this id.
    pub async fn get(&self, id: &str) -> Result<Option<Stored>, StoreError> {
        let row = sqlx::query(&format!("{SELECT} WHERE r.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| self.stored(&r)).transpose()
    }

    /// Records matching `filter` with seq above `after`, in chain order, at most `limit`.
    pub async fn list(&self, filter: &Filter, after: i64, limit: i64) -> Result<Vec<Stored>, StoreError> {
        let mut sql = format!("{SELECT} WHERE r.seq > $1");
        let mut args: Vec<String> = Vec::new();
        let mut n = 1;
        for (column, value) in [
            ("model", &filter.model),
            ("method", &filter.method),
            ("target", &filter.target),
            ("kind", &filter.kind),
        ] {
            if let Some(v) = value {
                n += 1;
                sql.push_str(&format!(" AND r.{column} = ${n}"));
                args.push(v.clone());
            }
        }
        let mut times = Vec::new();
        for (op, value) in [(">=", filter.since_ms), ("<", filter.until_ms)] {
            if let Some(v) = value {
                n += 1;
                sql.push_str(&format!(" AND r.time_ms {op} ${n}"));
                times.push(v);
            }
        }
        n += 1;
        sql.push_str(&format!(" ORDER BY r.seq LIMIT ${n}"));
        let mut q = sqlx::query(&sql).bind(after);
        for a in args {
            q = q.bind(a);
        }
        for t in times {
            q = q.bind(t);
        }
        let rows = q.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(|r| self.stored(r)).collect()
    }

    /// Records in chain order from seq `after` on, a page at a time (for walking the whole log).
    pub async fn page(&self, after: i64, limit: i64) -> Result<Vec<Stored>, StoreError> {
        self.list(&Filter::default(), after, limit).await
    }

    /// Closes the pool (after removing the spare keys).
    pub async fn close(&self) {
        self.drop_spares().await;
        self.pool.close().await;
    }

    /// A record row, with its data key unwrapped (or the key's absence: erased).
    fn stored(&self, r: &AnyRow) -> Result<Stored, StoreError> {
        let key_id: Option<String> = r.try_get(10)?;
        let key: Option<String> = r.try_get(11)?;
        let wrap: Option<String> = r.try_get(12)?;
        let sealing = match (&key_id, key, wrap) {
            (None, _, _) => Sealing::None,
            (Some(id), Some(key), Some(wrap)) => seal::unwrap(&key, &wrap, id, self.master()),
            (Some(_), _, _) => Sealing::Erased,
        };
        Ok(Stored {
            seq: r.try_get(0)?,
            id: r.try_get(1)?,
            time_ms: r.try_get(2)?,
            kind: r.try_get(3)?,
            model: r.try_get(4)?,
            method: r.try_get(5)?,
            target: r.try_get(6)?,
            body: r.try_get(7)?,
            prev_hash: r.try_get(8)?,
            hash: r.try_get(9)?,
            key_id,
            sealing,
        })
    }
}

const SELECT: &str = "SELECT r.seq, r.id, r.time_ms, r.kind, r.model, r.method, r.target, r.body, r.prev_hash, \
                      r.hash, r.key_id, k.key, k.wrap FROM audit_records r LEFT JOIN audit_keys k ON k.id = r.key_id";

const CHECKPOINTS: &str = "SELECT mark, seq, hash, time_ms, key_id, signature FROM audit_checkpoints";

/// Stores `c` unless a checkpoint with its mark and seq is there (another replica's); true when
/// stored. `add_checkpoint` runs it alone, `prune` inside its transaction.
async fn insert_checkpoint<'c>(
    db: impl Executor<'c, Database = sqlx::Any>,
    c: &Checkpoint,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO audit_checkpoints (mark, seq, hash, time_ms, key_id, signature) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (mark, seq) DO NOTHING",
    )
    .bind(c.mark.name())
    .bind(c.seq)
    .bind(&c.hash)
    .bind(c.time_ms)
    .bind(&c.key_id)
    .bind(&c.signature)
    .execute(db)
    .await?;
    Ok(done.rows_affected() > 0)
}

fn checkpoint(r: &AnyRow) -> Result<Checkpoint, StoreError> {
    let mark: String = r.try_get(0)?;
    let time_ms: i64 = r.try_get(3)?;
    Ok(Checkpoint {
        // An unknown mark is kept as a tip, whose signature (over the real mark) then fails.
        mark: Mark::parse(&mark).unwrap_or(Mark::Tip),
        seq: r.try_get(1)?,
        hash: r.try_get(2)?,
        time_ms,
        time: super::checkpoint::rfc3339(time_ms),
        key_id: r.try_get(4)?,
        signature: r.try_get(5)?,
    })
}

fn is_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}
