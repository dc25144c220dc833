//! Where records live: SQLite (a file under the data directory, write-ahead log) or PostgreSQL,
//! through one code path (sqlx's `Any` driver) and one set of versioned migrations. Appends are
//! serialised so the chain has one tip; each is committed before `append` returns.

use std::str::FromStr;

use sha2::{Digest, Sha256};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, ConnectOptions, Executor, Row};

use crate::config::{AuditSync, Config};

/// The hash before the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[error("audit store: {0}")]
pub struct StoreError(String);

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
}

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
}

impl Store {
    /// Opens (creating when needed) the configured database and brings its schema up to date.
    pub async fn open(config: &Config) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let url = match &config.audit_database_url {
            Some(u) => u.clone(),
            None => {
                std::fs::create_dir_all(&config.data_dir)
                    .map_err(|e| StoreError(format!("cannot create data_dir {}: {e}", config.data_dir.display())))?;
                format!("sqlite://{}", config.data_dir.join("audit.db").display())
            }
        };
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
        let store = Self {
            pool,
            tip: tokio::sync::Mutex::new((0, GENESIS.to_string())),
        };
        *store.tip.lock().await = store.last().await?;
        Ok(store)
    }

    async fn last(&self) -> Result<(i64, String), StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => (r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?),
            None => (0, GENESIS.to_string()),
        })
    }

    /// Appends a record after the tip and commits it; returns its (seq, hash).
    pub async fn append(&self, columns: &Columns, body: &str) -> Result<(i64, String), StoreError> {
        let mut tip = self.tip.lock().await;
        for attempt in 0..3 {
            let seq = tip.0 + 1;
            let hash = chain_hash(&tip.1, body);
            let inserted = sqlx::query(
                "INSERT INTO audit_records (seq, id, time_ms, kind, model, method, target, body, prev_hash, hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(seq)
            .bind(&columns.id)
            .bind(columns.time_ms)
            .bind(&columns.kind)
            .bind(&columns.model)
            .bind(columns.method.clone())
            .bind(columns.target.clone())
            .bind(body)
            .bind(&tip.1)
            .bind(&hash)
            .execute(&self.pool)
            .await;
            match inserted {
                Ok(_) => {
                    *tip = (seq, hash.clone());
                    return Ok((seq, hash));
                }
                // Another writer (a second instance on the same PostgreSQL) took the seq: re-read the tip.
                Err(e) if attempt < 2 && is_conflict(&e) => *tip = self.last().await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError("could not append after three tries".into()))
    }

    /// The record with this id.
    pub async fn get(&self, id: &str) -> Result<Option<Stored>, StoreError> {
        let row = sqlx::query(&format!("{SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| stored(&r)).transpose()
    }

    /// Records matching `filter` with seq above `after`, in chain order, at most `limit`.
    pub async fn list(&self, filter: &Filter, after: i64, limit: i64) -> Result<Vec<Stored>, StoreError> {
        let mut sql = format!("{SELECT} WHERE seq > $1");
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
                sql.push_str(&format!(" AND {column} = ${n}"));
                args.push(v.clone());
            }
        }
        let mut times = Vec::new();
        for (op, value) in [(">=", filter.since_ms), ("<", filter.until_ms)] {
            if let Some(v) = value {
                n += 1;
                sql.push_str(&format!(" AND time_ms {op} ${n}"));
                times.push(v);
            }
        }
        n += 1;
        sql.push_str(&format!(" ORDER BY seq LIMIT ${n}"));
        let mut q = sqlx::query(&sql).bind(after);
        for a in args {
            q = q.bind(a);
        }
        for t in times {
            q = q.bind(t);
        }
        let rows = q.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(stored).collect()
    }

    /// Records in chain order from seq `after` on, a page at a time (for walking the whole log).
    pub async fn page(&self, after: i64, limit: i64) -> Result<Vec<Stored>, StoreError> {
        self.list(&Filter::default(), after, limit).await
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

const SELECT: &str = "SELECT seq, id, time_ms, kind, model, method, target, body, prev_hash, hash FROM audit_records";

fn stored(r: &AnyRow) -> Result<Stored, StoreError> {
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
    })
}

fn is_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}
