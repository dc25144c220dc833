//! The compliance audit log: every audited prediction or explanation becomes a record, committed
//! before the answer is sent, in a hash chain (each record's hash covers the previous one's), so an
//! edited, deleted or re-ordered record is found by walking the chain. SQLite by default,
//! PostgreSQL when configured.

pub mod checkpoint;
pub mod record;
pub mod seal;
pub mod secret;
pub mod store;
mod upkeep;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::OnceCell;
use utoipa::ToSchema;

pub use checkpoint::{Checkpoint, Keyring, Mark, PublicKey, Signer};
pub use record::{Context, Evidence, Kind};
pub use store::{Filter, StoreError};

use crate::config::{AuditMode, Config};
use store::{chain_hash, Appended, Store, With, GENESIS};

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
    /// The first broken link, if any (a missing or altered record, a refused checkpoint, or records
    /// cut off after the newest checkpoint).
    pub first_broken: Option<Broken>,
    /// Checkpoints whose signature and hash were checked.
    pub checkpoints: i64,
    /// The newest signed checkpoint of the tip, when there is one.
    pub newest_checkpoint: Option<Checkpoint>,
    /// Where the chain starts when retention removed older records (a signed `base` checkpoint).
    pub starts_after: Option<Checkpoint>,
}

/// The answer to an erasure.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Erasure {
    /// How many data keys were destroyed (0: the subject had no sealed record, or was erased before).
    pub keys_destroyed: u64,
    /// The erasure's own record.
    pub audit_record: Receipt,
}

/// The audit log: its policy, and its store (opened at start when the policy records anything,
/// else on first use).
pub struct AuditLog {
    config: Config,
    store: OnceCell<Store>,
    /// Signs checkpoints, when a signing key is configured.
    signer: Option<Signer>,
    /// The keys checkpoints are checked against.
    keyring: Arc<Keyring>,
    /// The highest seq this process has signed (or found signed).
    signed: AtomicI64,
    /// Wakes the upkeep task when `audit_checkpoint_records` records went by unsigned.
    due: tokio::sync::Notify,
    upkeep: std::sync::Mutex<Option<upkeep::Handle>>,
}

impl AuditLog {
    /// A log for `config`; the store opens now when `audit` is not `off` or a database is named (or
    /// a signing key, whose checkpoints live there). A signing or master key that cannot be read
    /// refuses the start, with the reason.
    pub async fn open(config: &Config) -> Result<Self, StoreError> {
        let signer = config
            .audit_signing_key
            .as_deref()
            .map(|source| secret::load("audit_signing_key", source))
            .transpose()?
            .map(|k| Signer::new(&secret::Secret(k)));
        let keyring = Arc::new(Keyring::new(signer.as_ref(), &config.audit_trusted_keys)?);
        let log = Self {
            config: config.clone(),
            store: OnceCell::new(),
            signer,
            keyring,
            signed: AtomicI64::new(0),
            due: tokio::sync::Notify::new(),
            upkeep: std::sync::Mutex::new(None),
        };
        if config.audit != AuditMode::Off
            || config.audit_database_url.is_some()
            || log.signer.is_some()
            || config.audit_master_key.is_some()
        {
            log.store().await?;
        }
        Ok(log)
    }

    /// The public keys checkpoints are checked against (the signing key's first).
    pub fn public_keys(&self) -> Vec<PublicKey> {
        self.keyring.public_keys()
    }

    /// The store, opened on first use.
    pub async fn store(&self) -> Result<&Store, StoreError> {
        self.store.get_or_try_init(|| Store::open(&self.config)).await
    }

    /// Stops the upkeep (signing the tip one last time), then closes the store (its last connection
    /// checkpoints SQLite's write-ahead log into the file).
    pub async fn close(&self) {
        let upkeep = self.upkeep.lock().ok().and_then(|mut u| u.take());
        if let Some(u) = upkeep {
            u.stop().await;
            if let Err(e) = self.checkpoint().await {
                tracing::error!(error = %e, "the audit log's last checkpoint could not be signed");
            }
        }
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
                // So are TCAV and layer information: explanations of the model.
                AuditMode::Explanations => matches!(kind, Kind::Explanation | Kind::Uncertainty | Kind::Concepts),
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
        self.append(columns, body, ctx).await
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
        self.append(columns, body, ctx).await
    }

    /// Records a concept question's answer (`method`: `tcav` or `layer-information`), with the
    /// evidence of the rows it ran on.
    pub async fn concepts(
        &self,
        method: &str,
        ctx: &Context,
        inputs: &[Evidence],
        response: &Value,
    ) -> Result<Receipt, StoreError> {
        let (columns, body) = record::concepts(method, ctx, inputs, response);
        self.append(columns, body, ctx).await
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
        self.append(columns, body, ctx).await
    }

    async fn append(&self, mut columns: store::Columns, mut body: Value, ctx: &Context) -> Result<Receipt, StoreError> {
        let store = self.store().await?;
        // A record id chosen by the caller (a shared job's) is recorded once: a second run gets
        // the first run's receipt.
        let kept = if ctx.record_id.is_some() {
            store.get(&columns.id).await?
        } else {
            None
        };
        if let Some(kept) = kept {
            return Ok(Receipt {
                id: kept.id,
                seq: kept.seq,
                hash: kept.hash,
            });
        }
        // A subject erased on another replica after this one read its key: sealed again, once,
        // under the subject's new key.
        let retry = self.config.audit_encrypt && ctx.subject.is_some();
        for _ in 0..2 {
            let this = if retry { body.clone() } else { std::mem::take(&mut body) };
            let (text, with) = if self.config.audit_encrypt {
                self.sealed(store, &mut columns, this, ctx.subject.as_deref()).await?
            } else {
                // serde_json's maps are sorted by key: this text is canonical.
                (serde_json::to_string(&this)?, With::Nothing)
            };
            if let Appended::Done(seq, hash, _) = store.append(&columns, &text, &with).await? {
                self.appended(seq);
                return Ok(Receipt {
                    id: columns.id,
                    seq,
                    hash,
                });
            }
            if let Some(subject) = &ctx.subject {
                store.forget_subject(&seal::subject_ref(subject, store.master()));
            }
        }
        Err(StoreError::new("the subject's key was destroyed twice while recording"))
    }

    /// The body's private values sealed with the subject's key (or a key of the record's own), as
    /// canonical text, and how the record is written.
    async fn sealed(
        &self,
        store: &Store,
        columns: &mut store::Columns,
        mut body: Value,
        subject: Option<&str>,
    ) -> Result<(String, With), StoreError> {
        let (key_id, key, with) = match subject {
            Some(subject) => {
                let reference = seal::subject_ref(subject, store.master());
                let (id, key) = store.subject_key(&reference, columns.time_ms).await?;
                (id, key, With::SubjectKey)
            }
            None => {
                let (id, key) = store.record_key().await?;
                (id, key, With::Nothing)
            }
        };
        // Done here, as the unsealed body's text is: XChaCha20 runs at over 1 GB/s, so even a
        // megabyte's input costs less than its JSON text, and a hop to the blocking pool costs
        // more than a small record's whole sealing on a busy machine.
        let sealed = seal::seal(&mut body, &columns.id, &key_id, &key)?;
        let text = serde_json::to_string(&body)?;
        if !sealed {
            // Nothing private: the record names no key, and a record's own key stays spare.
            if matches!(with, With::Nothing) {
                store.spare_key(key_id, key);
            }
            return Ok((text, With::Nothing));
        }
        columns.key_id = Some(key_id);
        Ok((text, with))
    }

    /// Erases a subject: destroys its data keys, so its records' sealed inputs and maps can no longer
    /// be read while every hash stays as it was; the erasure is recorded in the same transaction.
    pub async fn erase(&self, subject: &str, ctx: &Context) -> Result<Erasure, StoreError> {
        let store = self.store().await?;
        let reference = seal::subject_ref(subject, store.master());
        let (columns, body) = record::erasure(ctx, &reference);
        let text = serde_json::to_string(&body)?;
        let Appended::Done(seq, hash, destroyed) =
            store.append(&columns, &text, &With::DestroySubject(reference)).await?
        else {
            return Err(StoreError::new("an erasure was not recorded"));
        };
        self.appended(seq);
        Ok(Erasure {
            keys_destroyed: destroyed,
            audit_record: Receipt {
                id: columns.id,
                seq,
                hash,
            },
        })
    }

    /// A record as the API shows it: its body (its sealed inputs and maps decrypted, or marked
    /// `"erased": true` when the subject was erased) plus its place in the chain. The one way to read
    /// a record's contents.
    pub fn to_json(stored: &store::Stored) -> Value {
        let mut v: Value = serde_json::from_str(&stored.body).unwrap_or(Value::Null);
        if v.is_object() {
            seal::open(&mut v, &stored.id, &stored.sealing);
            v["chain"] = serde_json::json!({"seq": stored.seq, "hash": stored.hash, "prev_hash": stored.prev_hash});
        }
        v
    }

    /// Notes an appended record: the upkeep signs the tip once enough records went by.
    fn appended(&self, seq: i64) {
        let every = i64::try_from(self.config.audit_checkpoint_records).unwrap_or(i64::MAX);
        if self.signer.is_some() && seq.saturating_sub(self.signed.load(Ordering::Relaxed)) >= every {
            self.due.notify_one();
        }
    }

    /// Signs the chain's tip (as the database has it, other replicas' records included) unless it
    /// is signed already; returns the new checkpoint.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let store = self.store().await?;
        let (seq, hash) = store.last().await?;
        if seq == 0 || seq <= self.signed.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let c = signer.sign(Mark::Tip, seq, &hash, record::now_ms());
        let added = store.add_checkpoint(&c).await?;
        self.signed.fetch_max(seq, Ordering::Relaxed);
        Ok(added.then_some(c))
    }

    /// Retention: removes the records older than `audit_retention_days`, in whole segments (up to
    /// the newest checkpoint older than the window), leaving a signed `base` checkpoint that carries
    /// the last removed record's hash; returns the records removed.
    pub async fn retain(&self) -> Result<u64, StoreError> {
        let (Some(signer), days) = (&self.signer, self.config.audit_retention_days) else {
            return Ok(0);
        };
        if days == 0 {
            return Ok(0);
        }
        let window = i64::try_from(days)
            .ok()
            .and_then(|d| d.checked_mul(86_400_000))
            .ok_or_else(|| StoreError::new("audit_retention_days is out of range"))?;
        let now = record::now_ms();
        let store = self.store().await?;
        let Some((seq, hash)) = store.retention_point(now.saturating_sub(window)).await? else {
            return Ok(0);
        };
        store.prune(&signer.sign(Mark::Base, seq, &hash, now)).await
    }

    /// Signs checkpoints every `audit_checkpoint_secs` and `audit_checkpoint_records`, and applies
    /// retention, until [`AuditLog::close`] (which signs the tip a last time). Nothing to do without
    /// a signing key.
    pub fn start_upkeep(self: &Arc<Self>) {
        if self.signer.is_none() {
            return;
        }
        let handle = upkeep::start(Arc::downgrade(self), self.config.audit_checkpoint_secs);
        if let Ok(mut u) = self.upkeep.lock() {
            *u = Some(handle);
        }
    }

    /// Walks the whole chain and reports the first broken link: from the genesis, or from the signed
    /// base checkpoint retention left; each checkpoint on the way must be signed by a known key and
    /// name its record's hash, and the chain must reach the newest checkpoint (else it was cut).
    pub async fn verify(&self) -> Result<Verification, StoreError> {
        let store = self.store().await?;
        let base = store.newest_checkpoint(Mark::Base).await?;
        let mut walk = Walk {
            expected_seq: 1,
            prev: GENESIS.to_string(),
            records: 0,
            checkpoints: 0,
            first_broken: None,
            keyring: self.keyring.clone(),
        };
        let checked = |c: &Checkpoint| {
            self.keyring.check(c).err().map(|reason| Broken {
                seq: c.seq,
                id: None,
                reason,
            })
        };
        if let Some(base) = &base {
            walk.first_broken = checked(base);
            walk.expected_seq = base.seq.saturating_add(1);
            walk.prev = base.hash.clone();
            walk.checkpoints += i64::from(walk.first_broken.is_none());
        }
        while walk.first_broken.is_none() {
            let page = store.page(walk.expected_seq - 1, 500).await?;
            let (Some(first), Some(last)) = (page.first(), page.last()) else {
                break;
            };
            let marks = store.checkpoints(first.seq, last.seq, 1000).await?;
            let marks: HashMap<i64, Checkpoint> = marks
                .into_iter()
                .filter(|c| c.mark == Mark::Tip)
                .map(|c| (c.seq, c))
                .collect();
            // Hashing a long chain is CPU work: each page is checked on the blocking pool.
            walk = tokio::task::spawn_blocking(move || walk.check(&page, &marks)).await?;
        }
        let newest = store.newest_checkpoint(Mark::Tip).await?;
        let tip = walk.expected_seq - 1;
        if let Some(c) = newest.as_ref().filter(|c| c.seq > tip && walk.first_broken.is_none()) {
            walk.first_broken = checked(c).or_else(|| {
                Some(Broken {
                    seq: tip + 1,
                    id: None,
                    reason: format!(
                        "the chain ends at seq {tip}, but a checkpoint signed at {} vouches for seq {}: \
                         the records after {tip} were cut off",
                        c.time, c.seq
                    ),
                })
            });
        }
        Ok(Verification {
            ok: walk.first_broken.is_none(),
            records: walk.records,
            tip_hash: walk.prev,
            first_broken: walk.first_broken,
            checkpoints: walk.checkpoints,
            newest_checkpoint: newest,
            starts_after: base,
        })
    }

    /// One piece of an export, from `at`: the public keys, then the records (as [`AuditLog::to_json`]
    /// shows them), then the checkpoints, as JSON Lines; `None` after the last.
    pub async fn export(&self, at: ExportAt) -> Result<(String, Option<ExportAt>), StoreError> {
        let store = self.store().await?;
        let mut text = String::new();
        let line = |text: &mut String, v: Value| {
            text.push_str(&v.to_string());
            text.push('\n');
        };
        let next = match at {
            ExportAt::Start => {
                let keys = self.keyring.public_keys();
                if !keys.is_empty() {
                    line(&mut text, serde_json::json!({ "public_keys": keys }));
                }
                Some(ExportAt::Records(0))
            }
            ExportAt::Records(after) => {
                let page = store.page(after, 200).await?;
                for r in &page {
                    line(&mut text, Self::to_json(r));
                }
                Some(match page.last() {
                    Some(r) => ExportAt::Records(r.seq),
                    None => ExportAt::Checkpoints(i64::MIN),
                })
            }
            ExportAt::Checkpoints(after) => {
                let page = store.checkpoints(after.saturating_add(1), i64::MAX, 500).await?;
                for c in &page {
                    line(&mut text, serde_json::json!({ "checkpoint": c }));
                }
                // Both marks of one seq come in one page, so paging on seq skips none.
                page.last().map(|c| ExportAt::Checkpoints(c.seq))
            }
        };
        Ok((text, next))
    }
}

/// Where an export stands.
#[derive(Debug, Clone, Copy)]
pub enum ExportAt {
    Start,
    /// Records after this seq.
    Records(i64),
    /// Checkpoints after this seq.
    Checkpoints(i64),
}

/// Where a verification of the chain stands.
struct Walk {
    expected_seq: i64,
    prev: String,
    records: i64,
    checkpoints: i64,
    first_broken: Option<Broken>,
    keyring: Arc<Keyring>,
}

impl Walk {
    /// Checks one page of records, in order, and the checkpoints of their seqs, stopping at the
    /// first broken one.
    fn check(mut self, page: &[store::Stored], marks: &HashMap<i64, Checkpoint>) -> Self {
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
            } else if let Some(c) = marks.get(&r.seq) {
                match self.keyring.check(c) {
                    Err(reason) => Some(reason),
                    Ok(()) if c.hash != r.hash => Some(format!(
                        "its hash differs from the one its checkpoint signed at {} (the chain was rewritten)",
                        c.time
                    )),
                    Ok(()) => {
                        self.checkpoints += 1;
                        columns_disagree(r)
                    }
                }
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
        // An erasure concerns no model: its column is empty.
        (
            "model",
            Some(r.model.as_str()).filter(|m| !m.is_empty()),
            body["model"].as_str(),
        ),
        ("method", r.method.as_deref(), body["method"].as_str()),
        ("key_id", r.key_id.as_deref(), body["sealed"]["key_id"].as_str()),
    ];
    for (name, column, in_body) in checks {
        if column != in_body {
            return Some(format!("column `{name}` differs from the hashed record"));
        }
    }
    (body["time_ms"].as_i64() != Some(r.time_ms)).then(|| "column `time_ms` differs from the hashed record".into())
}
