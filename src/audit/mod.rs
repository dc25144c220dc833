//! The compliance audit log: every audited prediction or explanation becomes a record, committed
//! before the answer is sent, in a hash chain (each record's hash covers the previous one's), so an
//! edited, deleted or re-ordered record is found by walking the chain. SQLite by default,
//! PostgreSQL when configured.

pub mod record;
pub mod store;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::OnceCell;
use utoipa::ToSchema;

pub use record::{Context, Evidence, Kind};
pub use store::{Filter, StoreError};

use crate::config::{AuditMode, Config};
use store::{chain_hash, Store, GENESIS};

/// What an append returns to the caller.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Receipt {
    /// Record id.
    pub id: String,
    /// Position in the chain.
    pub seq: i64,
    /// The record's chain hash.
    pub hash: String,
}

/// Where the chain first breaks.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Broken {
    /// Position of the first record that does not verify (or where one is missing).
    pub seq: i64,
    /// Its id, when the record exists.
    pub id: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// The outcome of walking the chain.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Verification {
    /// True when every record verifies.
    pub ok: bool,
    /// Records walked.
    pub records: i64,
    /// The last record's hash (anchor it elsewhere to detect truncation later).
    pub tip_hash: String,
    /// The first broken link, if any.
    pub first_broken: Option<Broken>,
}

/// The audit log: its policy, and its store (opened at start when the policy records anything,
/// else on first use).
pub struct AuditLog {
    config: Config,
    store: OnceCell<Store>,
}

impl AuditLog {
    /// A log for `config`; the store opens now when `audit` is not `off` or a database is named.
    pub async fn open(config: &Config) -> Result<Self, StoreError> {
        let log = Self {
            config: config.clone(),
            store: OnceCell::new(),
        };
        if config.audit != AuditMode::Off || config.audit_database_url.is_some() {
            log.store().await?;
        }
        Ok(log)
    }

    /// The store, opened on first use.
    pub async fn store(&self) -> Result<&Store, StoreError> {
        self.store.get_or_try_init(|| Store::open(&self.config)).await
    }

    /// Closes the store (its last connection checkpoints SQLite's write-ahead log into the file).
    pub async fn close(&self) {
        if let Some(store) = self.store.get() {
            store.close().await;
        }
    }

    /// Whether a request of `kind` is recorded (`asked`: the request's `"audit": true`).
    pub fn wants(&self, kind: Kind, asked: bool) -> bool {
        asked
            || match self.config.audit {
                AuditMode::Off => false,
                // An uncertainty estimate is decision rationale, as an explanation is.
                AuditMode::Explanations => matches!(kind, Kind::Explanation | Kind::Uncertainty),
                AuditMode::All => true,
            }
    }

    /// Whether records keep the inputs themselves.
    pub fn keeps_inputs(&self) -> bool {
        self.config.audit_store_inputs
    }

    /// Records an explanation answer.
    pub async fn explanation(&self, ctx: &Context, input: Evidence, response: &Value) -> Result<Receipt, StoreError> {
        let (columns, body) = record::explanation(ctx, input, response, self.config.audit_store_maps);
        self.append(columns, body, ctx.record_id.is_some()).await
    }

    /// Records a prediction answer (`Kind::Prediction`) or an uncertainty answer (`Kind::Uncertainty`).
    pub async fn prediction(
        &self,
        kind: Kind,
        ctx: &Context,
        inputs: Vec<Evidence>,
        response: &Value,
    ) -> Result<Receipt, StoreError> {
        let (columns, body) = record::prediction(kind, ctx, inputs, response, self.config.audit_store_maps);
        self.append(columns, body, ctx.record_id.is_some()).await
    }

    /// Records a replay of the record `original` (as [`Self::to_json`] shows it): the replayed
    /// explanation's answer (`response`, an `ExplainResponse` as JSON) and the comparison's `outcome`.
    pub async fn replay(
        &self,
        ctx: &Context,
        original: &Value,
        inputs: &[Evidence],
        response: &Value,
        outcome: Value,
    ) -> Result<Receipt, StoreError> {
        let (columns, body) = record::replay(ctx, original, inputs, response, outcome);
        self.append(columns, body, false).await
    }

    async fn append(&self, columns: store::Columns, body: Value, once: bool) -> Result<Receipt, StoreError> {
        // serde_json's maps are sorted by key: this text is canonical.
        let text = serde_json::to_string(&body)?;
        let store = self.store().await?;
        // A record id chosen by the caller (a shared job's) is recorded once: a second run gets
        // the first run's receipt.
        let kept = if once { store.get(&columns.id).await? } else { None };
        if let Some(kept) = kept {
            return Ok(Receipt {
                id: kept.id,
                seq: kept.seq,
                hash: kept.hash,
            });
        }
        let (seq, hash) = store.append(&columns, &text).await?;
        Ok(Receipt {
            id: columns.id,
            seq,
            hash,
        })
    }

    /// A record as the API shows it: its body plus its place in the chain.
    pub fn to_json(stored: &store::Stored) -> Value {
        let mut v: Value = serde_json::from_str(&stored.body).unwrap_or(Value::Null);
        if v.is_object() {
            v["chain"] = serde_json::json!({"seq": stored.seq, "hash": stored.hash, "prev_hash": stored.prev_hash});
        }
        v
    }

    /// Walks the whole chain and reports the first broken link.
    pub async fn verify(&self) -> Result<Verification, StoreError> {
        let store = self.store().await?;
        let mut walk = Walk {
            expected_seq: 1,
            prev: GENESIS.to_string(),
            records: 0,
            first_broken: None,
        };
        while walk.first_broken.is_none() {
            let page = store.page(walk.expected_seq - 1, 500).await?;
            if page.is_empty() {
                break;
            }
            // Hashing a long chain is CPU work: each page is checked on the blocking pool.
            walk = tokio::task::spawn_blocking(move || walk.check(&page)).await?;
        }
        Ok(Verification {
            ok: walk.first_broken.is_none(),
            records: walk.records,
            tip_hash: walk.prev,
            first_broken: walk.first_broken,
        })
    }
}

/// Where a verification of the chain stands.
struct Walk {
    expected_seq: i64,
    prev: String,
    records: i64,
    first_broken: Option<Broken>,
}

impl Walk {
    /// Checks one page of records, in order, stopping at the first broken one.
    fn check(mut self, page: &[store::Stored]) -> Self {
        let broken = |seq: i64, id: Option<&str>, reason: String| Broken {
            seq,
            id: id.map(String::from),
            reason,
        };
        for r in page {
            if r.seq != self.expected_seq {
                let expected = self.expected_seq;
                self.first_broken = Some(broken(
                    expected,
                    None,
                    format!("record {expected} is missing (the next one is {})", r.seq),
                ));
                return self;
            }
            let problem = if r.prev_hash != self.prev {
                Some("its prev_hash is not the previous record's hash (a record was removed or re-ordered)".into())
            } else if chain_hash(&r.prev_hash, &r.body) != r.hash {
                Some("its hash does not match its contents (the record was edited)".to_string())
            } else {
                columns_disagree(r)
            };
            if let Some(reason) = problem {
                self.first_broken = Some(broken(r.seq, Some(&r.id), reason));
                return self;
            }
            self.prev = r.hash.clone();
            self.expected_seq += 1;
            self.records += 1;
        }
        self
    }
}

/// The indexed columns must say what the hashed body says.
fn columns_disagree(r: &store::Stored) -> Option<String> {
    let body: Value = serde_json::from_str(&r.body).ok()?;
    let checks = [
        ("id", Some(r.id.as_str()), body["id"].as_str()),
        ("kind", Some(r.kind.as_str()), body["kind"].as_str()),
        ("model", Some(r.model.as_str()), body["model"].as_str()),
        ("method", r.method.as_deref(), body["method"].as_str()),
    ];
    for (name, column, in_body) in checks {
        if column != in_body {
            return Some(format!("column `{name}` differs from the hashed record"));
        }
    }
    (body["time_ms"].as_i64() != Some(r.time_ms)).then(|| "column `time_ms` differs from the hashed record".into())
}
