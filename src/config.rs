//! One `Config` for the whole service: documented defaults, overlaid by a TOML file, then by
//! `EXPLAIND_*` environment variables, then by command-line flags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Every setting of the service. The serde defaults below are the one source of defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub bind: String,
    /// Directory holding one folder per model (`model.onnx` + `model.toml`).
    pub models_dir: PathBuf,
    /// Refuse to start when any model folder fails to load or any reference set fails to build
    /// (all-or-nothing). Off (the default): a model that fails is listed with its error in `GET
    /// /v1/models`, `/readyz` and the log, and the others serve; a set that fails is listed the
    /// same way and its model serves without it.
    pub strict_models: bool,
    /// Path of the ONNX Runtime shared library; when absent, `ORT_DYLIB_PATH`, the executable's
    /// folder and the set-up script's cache are tried in that order.
    pub onnxruntime_library: Option<PathBuf>,
    /// Worker threads that run jobs. Every worker shares one session per model and graph kind, and
    /// every session shares one intra-op thread pool: more workers overlap jobs (decoding,
    /// drawing, waiting on a session) but do not multiply memory.
    pub workers: usize,
    /// Threads of the one intra-op pool every ONNX Runtime session uses; 0 = one per core. A lone
    /// request uses them all; concurrent requests share them.
    pub intra_op_threads: usize,
    /// Let the pool's threads spin while waiting for work: a little lower latency under constant
    /// load, a busy core when idle and slower alternation between sessions. Off by default.
    pub intra_op_spinning: bool,
    /// `cpu`, or `cuda` (ONNX Runtime's CUDA provider, when the loaded library has it; otherwise
    /// the CPU, with one log line).
    pub execution_provider: ExecutionProvider,
    /// Combine concurrent passes on the same model and graph into one ONNX Runtime run (up to
    /// `max_batch` rows): fewer runs under load (each run's fixed cost paid once), nothing added to
    /// a lone request. On a CPU a convolution costs about the same per row in a batch, so the saving
    /// is the per-run overhead, not the arithmetic.
    pub batching: bool,
    /// How long a pass about to run waits for more requests to join it, in microseconds; 0 (the
    /// default) never waits: requests that arrive while a pass runs join the next one.
    pub batch_wait_us: u64,
    /// Keep ONNX Runtime's CPU memory arena: each session then holds the working memory of its
    /// largest pass for good (IG's 64-row backward batches on a photo model: gigabytes). Off: a
    /// pass's memory is returned when it ends.
    pub memory_arena: bool,
    /// Passes that hold at most this many bytes (by the model's probed activations per row) run on
    /// the worker's own thread, in a session of their own, instead of on the intra-op pool: for
    /// a small model, waking the pool costs more than the threads save (a 28x28 CNN's backward
    /// pass took 0.69x the time on one thread). Only models of at most 16 MiB get the second
    /// session. 0: every pass on the pool.
    pub inline_pass_bytes: u64,
    /// glibc malloc arenas (0: glibc's default, eight per core). Every arena keeps the freed pass
    /// memory of the threads that used it: with one, concurrent workers reuse the same freed
    /// memory (a ResNet-18 service with 4 workers peaked at 1.1-1.4 GiB instead of 2.2 GiB with
    /// two arenas), at no measurable cost in speed (passes allocate few, large blocks).
    pub malloc_arenas: usize,
    /// Give every large buffer (over 256 KiB) back to the system when it is freed, so resident
    /// memory follows the passes running now (a ResNet-18 service peaked at 665 MiB instead of
    /// 869), at the cost of page faults on every pass (15-25% slower backward passes here).
    pub return_pass_memory: bool,
    /// Bytes one backward pass may hold (activations kept for the backward pass, gradients): rows
    /// of IG, SmoothGrad and multi-target gradients are chunked to fit, at most `max_batch`.
    pub max_pass_bytes: u64,
    /// Bytes of backward models kept as live sessions (each model's gradient graphs for other
    /// layers or rule sets are built on first use); past it the least recently used is dropped
    /// and rebuilt when needed again.
    pub max_model_memory: u64,
    /// Jobs that may wait for a worker; beyond this a request is refused at once with 503.
    pub queue_capacity: usize,
    /// A job not finished this many milliseconds after it was accepted is cancelled.
    pub job_deadline_ms: u64,
    /// Most rows one model pass may hold (predict batches, explanation sample batches).
    pub max_batch: usize,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Largest image accepted, in pixels (width x height), checked before decoding.
    pub max_image_pixels: u64,
    /// Longest text accepted by a text model, in bytes of UTF-8 (checked before tokenizing).
    pub max_text_bytes: usize,
    /// Largest `top_k` a request may ask for.
    pub max_top_k: usize,
    /// Most model rows one explanation may run (samples x steps x targets).
    pub max_samples: usize,
    /// Most targets one explanation may ask for.
    pub max_targets: usize,
    /// Most bytes one explanation's plan may hold (batches, masks, regression matrices, maps),
    /// checked before it is queued; predict with `explain` over `instances` counts each one.
    pub max_job_bytes: u64,
    /// Bytes the explanations running at once may plan to hold together (each counted as
    /// `max_job_bytes` counts it); one that does not fit beside those running waits for them, so
    /// more workers overlap small jobs without multiplying the memory of large ones. An
    /// explanation alone always runs.
    pub max_running_job_bytes: u64,
    /// A request body not fully received this many milliseconds after its headers is refused with
    /// 408 and its connection closed; the body is read before a queue slot is taken.
    pub body_read_timeout_ms: u64,
    /// Whole-request limit in milliseconds (body, queue, work and answer); past it, 503 or 408.
    /// Keep it above `job_deadline_ms` plus `body_read_timeout_ms`.
    pub request_timeout_ms: u64,
    /// Most open client connections. At the bound a new connection closes the one idle longest
    /// (no request in flight); when every one is busy, it is answered 503 and closed.
    pub max_connections: usize,
    /// A connection that starts a request head must send all of it within this many
    /// milliseconds, or it is closed.
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight is closed after this many milliseconds without a
    /// byte (keep-alive connections between requests, and new ones that send nothing).
    pub idle_timeout_ms: u64,
    /// Largest attribution map returned in JSON or drawn as PNG, in pixels; larger originals are
    /// scaled down (aspect kept).
    pub max_map_pixels: u64,
    /// Seconds suggested to clients in `Retry-After` when the queue is full.
    pub retry_after_secs: u64,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// Folder for the service's durable data (the SQLite audit log).
    pub data_dir: PathBuf,
    /// What the audit log records: `off`, `explanations`, or `all` (predictions too). A request's
    /// `"audit": true` records it whatever this says.
    pub audit: AuditMode,
    /// Audit database: `sqlite://path` or `postgres://user@host/db`; default: SQLite `audit.db`
    /// in `data_dir`.
    pub audit_database_url: Option<String>,
    /// Keep each audited input itself (base64), not only its sha256.
    pub audit_store_inputs: bool,
    /// Keep each audited attribution map (deflate-compressed), so its overlay can be drawn again.
    pub audit_store_maps: bool,
    /// SQLite durability: `normal` (write-ahead log synced at checkpoints: survives a crash of the
    /// process) or `full` (synced at every record: survives power loss too).
    pub audit_sync: AuditSync,
    /// Ed25519 key that signs the chain's tip (checkpoints): `file:PATH` (a file holding the 32-byte
    /// secret as 64 hex digits) or `env:NAME` (an environment variable holding it). Unset: no
    /// checkpoints.
    pub audit_signing_key: Option<String>,
    /// Public keys (64 hex digits each) of earlier signing keys whose checkpoints still verify (key
    /// rotation); at most 64.
    pub audit_trusted_keys: Vec<String>,
    /// A checkpoint is signed after this many new records (1 to 10,000,000).
    pub audit_checkpoint_records: u64,
    /// A checkpoint is signed this many seconds after the last one when the tip has moved (1 to
    /// 86,400), and at shutdown.
    pub audit_checkpoint_secs: u64,
    /// Encrypt stored inputs, maps and per-feature attributions with a per-subject key (the
    /// `x-audit-subject` header) or a per-record key, so they can be erased by destroying the key.
    pub audit_encrypt: bool,
    /// Key that wraps the per-subject keys in the database: `file:PATH` or `env:NAME` (64 hex
    /// digits). Unset: the keys are stored unwrapped (erasure still works; a copy of the database
    /// then reads the inputs).
    pub audit_master_key: Option<String>,
    /// Records older than this many days are removed in whole checkpointed segments (0: kept for
    /// ever; at most 36,500). Needs `audit_signing_key`.
    pub audit_retention_days: u64,
    /// Deadline of an asynchronous job (`POST /v1/jobs`), from admission.
    pub async_job_deadline_ms: u64,
    /// At start, fit the PatternNet patterns of every model that has data to fit them on and none
    /// kept on disk, one model at a time in the background (each under `async_job_deadline_ms`).
    /// Off (the default): they are fitted by the first request that needs them, or by `POST
    /// /v1/models/{model}/patterns`. Kept patterns are read back at start either way.
    pub fit_patterns_at_start: bool,
    /// Finished asynchronous jobs' results are kept this many seconds.
    pub job_ttl_secs: u64,
    /// Most asynchronous jobs remembered at once (finished ones until their time is up); beyond it,
    /// submissions are refused (503). This bounds the memory results hold.
    pub max_jobs: usize,
    /// Most unfinished (queued or running) asynchronous jobs one caller (API key; without keys,
    /// every caller is one) may have; beyond it, submissions get 429 with `Retry-After`.
    pub max_jobs_per_caller: usize,
    /// PostgreSQL database that holds asynchronous jobs, shared by every replica that names it
    /// (`postgres://user@host/db`). Unset: the audit database when that is PostgreSQL, else jobs
    /// live in this process's memory.
    pub jobs_database_url: Option<String>,
    /// A replica that claims a shared job holds it this long and renews it while it runs; a replica
    /// that dies leaves the lease to expire and another replica runs the job again.
    pub job_lease_ms: u64,
    /// Most runs of one shared job (each replica death mid-job costs one); then it is `failed`.
    pub job_max_attempts: u32,
    /// Most rows one model's reference set may hold (`[reference]` in its manifest).
    pub max_reference_rows: usize,
    /// Most bytes one model's reference set may hold in memory (embeddings, last-layer inputs and
    /// loss gradients, for every checkpoint); a set beyond it is refused at start.
    pub max_reference_bytes: u64,
    /// Largest reference set upload (`POST /v1/models/{model}/reference`), in bytes of body.
    pub max_reference_upload_bytes: usize,
    /// API keys (`Authorization: Bearer <key>`); empty: no authentication (local use).
    pub api_keys: Vec<ApiKey>,
    /// Origins allowed to call the API from a browser (CORS); empty: CORS off; `"*"`: any origin.
    pub cors_allowed_origins: Vec<String>,
}

/// What the audit log records.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuditMode {
    /// Only requests that ask (`"audit": true`).
    Off,
    /// Every explanation.
    Explanations,
    /// Every explanation and prediction.
    All,
}

/// How SQLite commits audit records.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuditSync {
    /// `synchronous=NORMAL` in WAL mode.
    Normal,
    /// `synchronous=FULL`.
    Full,
}

/// An API key: a name (recorded in audit records as the caller) and the sha256 of the key (hex;
/// `explaind hash-key` prints it), with its scopes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Who holds the key.
    pub name: String,
    /// Hex sha256 of the key.
    pub sha256: String,
    /// `predict` (predictions and explanations, jobs), `audit` (the audit endpoints).
    #[serde(default = "default_scopes")]
    pub scopes: Vec<Scope>,
}

fn default_scopes() -> Vec<Scope> {
    vec![Scope::Predict]
}

/// What a key may do.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Models, predictions, explanations and jobs.
    Predict,
    /// The audit log.
    Audit,
    /// Replacing models' reference sets (`POST /v1/models/{model}/reference`).
    Reference,
    /// Seeing and cancelling every caller's jobs (others see only their own).
    Admin,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            models_dir: PathBuf::from("models"),
            strict_models: false,
            onnxruntime_library: None,
            workers: 2,
            intra_op_threads: 0,
            intra_op_spinning: false,
            execution_provider: ExecutionProvider::Cpu,
            max_model_memory: 2 * 1024 * 1024 * 1024,
            batching: true,
            batch_wait_us: 0,
            memory_arena: false,
            inline_pass_bytes: 2 * 1024 * 1024,
            malloc_arenas: 1,
            return_pass_memory: false,
            max_pass_bytes: 256 * 1024 * 1024,
            queue_capacity: 64,
            // Perturbation methods at their papers' sample counts need tens of seconds on a photo model.
            job_deadline_ms: 120_000,
            max_batch: 64,
            max_body_bytes: 16 * 1024 * 1024,
            max_image_pixels: 4096 * 4096,
            max_text_bytes: 64 * 1024,
            max_top_k: 100,
            max_samples: 4096,
            max_targets: 10,
            max_job_bytes: 512 * 1024 * 1024,
            max_running_job_bytes: 512 * 1024 * 1024,
            body_read_timeout_ms: 10_000,
            request_timeout_ms: 150_000,
            max_connections: 1024,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_map_pixels: 1024 * 1024,
            retry_after_secs: 1,
            log_format: LogFormat::Text,
            data_dir: PathBuf::from("data"),
            audit: AuditMode::Off,
            audit_database_url: None,
            audit_store_inputs: false,
            audit_store_maps: false,
            audit_sync: AuditSync::Normal,
            audit_signing_key: None,
            audit_trusted_keys: Vec::new(),
            audit_checkpoint_records: 1000,
            audit_checkpoint_secs: 60,
            audit_encrypt: false,
            audit_master_key: None,
            audit_retention_days: 0,
            async_job_deadline_ms: 600_000,
            fit_patterns_at_start: false,
            job_ttl_secs: 3600,
            max_jobs: 100,
            max_jobs_per_caller: 20,
            jobs_database_url: None,
            job_lease_ms: 10_000,
            job_max_attempts: 3,
            max_reference_rows: 100_000,
            max_reference_bytes: 1024 * 1024 * 1024,
            max_reference_upload_bytes: 256 * 1024 * 1024,
            api_keys: Vec::new(),
            cors_allowed_origins: Vec::new(),
        }
    }
}

/// Where model passes run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionProvider {
    /// ONNX Runtime's CPU provider.
    Cpu,
    /// ONNX Runtime's CUDA provider (falls back to the CPU when the library lacks it).
    Cuda,
}

/// A configuration that could not be read; the message names the file, variable or field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config {origin}: {message}")]
    Invalid { origin: String, message: String },
}

const ENV_PREFIX: &str = "EXPLAIND_";

impl Config {
    /// Defaults, then the file (if any), then `EXPLAIND_<FIELD>` variables from `env`.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut table = match toml::Table::try_from(Config::default()) {
            Ok(t) => t,
            Err(e) => unreachable!("defaults serialize: {e}"),
        };
        let mut origin = "defaults".to_string();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let from_file: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Invalid {
                origin: path.display().to_string(),
                message: e.to_string(),
            })?;
            for (key, value) in from_file {
                if !Self::is_field(&key) {
                    return Err(ConfigError::Invalid {
                        origin: path.display().to_string(),
                        message: format!("unknown field `{key}`"),
                    });
                }
                table.insert(key, value);
            }
            origin = path.display().to_string();
        }
        for (name, raw) in env {
            let Some(field) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = field.to_ascii_lowercase();
            if !Self::is_field(&key) {
                continue; // other EXPLAIND_* variables (test switches, cache paths) are not config
            }
            let value = env_value(&raw);
            let digits = raw.trim().trim_start_matches(['-', '+']);
            // TOML integers are 64-bit signed: a longer number for an integer field would read as
            // text and be refused as "invalid type: string".
            if value.is_str()
                && table.get(&key).is_some_and(toml::Value::is_integer)
                && !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(ConfigError::Invalid {
                    origin: format!("environment ({name})"),
                    message: format!("`{raw}` is out of range (integers go up to {})", i64::MAX),
                });
            }
            table.insert(key, value);
            origin = format!("{origin} + environment ({name})");
        }
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid {
                origin,
                message: e.message().to_string(),
            })
            .and_then(|c: Config| c.validated())
    }

    /// Whether `key` names a setting: the keys of a config with every optional field set, so a new
    /// field is known to files and `EXPLAIND_*` variables without a second list to keep.
    fn is_field(key: &str) -> bool {
        static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        NAMES
            .get_or_init(|| {
                let full = Config {
                    onnxruntime_library: Some(PathBuf::new()),
                    audit_database_url: Some(String::new()),
                    audit_signing_key: Some(String::new()),
                    audit_master_key: Some(String::new()),
                    jobs_database_url: Some(String::new()),
                    ..Config::default()
                };
                toml::Table::try_from(full)
                    .map(|t| t.keys().cloned().collect())
                    .unwrap_or_default()
            })
            .iter()
            .any(|name| name == key)
    }

    /// Checks the bounds that the rest of the service relies on.
    // Long on purpose: a flat list of one check per field, read best in one place.
    pub fn validated(self) -> Result<Self, ConfigError> {
        let bad = |field: &str, why: &str| ConfigError::Invalid {
            origin: format!("field `{field}`"),
            message: why.to_string(),
        };
        if self.workers == 0 || self.workers > 256 {
            return Err(bad("workers", "must be between 1 and 256"));
        }
        if self.malloc_arenas > 1024 {
            return Err(bad("malloc_arenas", "must be at most 1024 (0 = glibc's default)"));
        }
        if self.inline_pass_bytes > 1 << 30 {
            return Err(bad("inline_pass_bytes", "must be at most 1 GiB"));
        }
        if self.max_pass_bytes < 1 << 20 {
            return Err(bad("max_pass_bytes", "must be at least 1 MiB"));
        }
        if self.batch_wait_us > 100_000 {
            return Err(bad("batch_wait_us", "must be at most 100000 (0.1 s)"));
        }
        if self.intra_op_threads > 1024 {
            return Err(bad("intra_op_threads", "must be at most 1024 (0 = one per core)"));
        }
        if self.max_batch == 0 {
            return Err(bad("max_batch", "must be at least 1"));
        }
        if self.job_deadline_ms == 0 {
            return Err(bad("job_deadline_ms", "must be at least 1"));
        }
        if self.max_body_bytes < 1024 {
            return Err(bad("max_body_bytes", "must be at least 1024"));
        }
        if self.max_samples == 0 || self.max_targets == 0 || self.max_map_pixels == 0 {
            return Err(bad("max_samples / max_targets / max_map_pixels", "must be at least 1"));
        }
        if self.max_image_pixels == 0 {
            return Err(bad("max_image_pixels", "must be at least 1"));
        }
        if self.max_text_bytes == 0 {
            return Err(bad("max_text_bytes", "must be at least 1"));
        }
        if self.max_job_bytes < 1 << 20 {
            return Err(bad("max_job_bytes", "must be at least 1 MiB (1048576)"));
        }
        if self.max_running_job_bytes < 1 << 20 {
            return Err(bad("max_running_job_bytes", "must be at least 1 MiB (1048576)"));
        }
        if self.body_read_timeout_ms == 0
            || self.request_timeout_ms == 0
            || self.max_connections == 0
            || self.header_read_timeout_ms == 0
            || self.idle_timeout_ms == 0
        {
            return Err(bad(
                "body_read_timeout_ms / request_timeout_ms / max_connections / header_read_timeout_ms / idle_timeout_ms",
                "must be at least 1",
            ));
        }
        if self.async_job_deadline_ms == 0 || self.max_jobs == 0 || self.max_jobs_per_caller == 0 {
            return Err(bad(
                "async_job_deadline_ms / max_jobs / max_jobs_per_caller",
                "must be at least 1",
            ));
        }
        // A connection's deadlines are instants: a day bounds them far from overflow.
        for (name, ms) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if ms > 86_400_000 {
                return Err(bad(name, "must be at most 86400000 (a day)"));
            }
        }
        if !(100..=3_600_000).contains(&self.job_lease_ms) {
            return Err(bad("job_lease_ms", "must be between 100 and 3600000 (an hour)"));
        }
        if !(1..=100).contains(&self.job_max_attempts) {
            return Err(bad("job_max_attempts", "must be between 1 and 100"));
        }
        if let Some(url) = &self.jobs_database_url {
            if !is_postgres(url) {
                return Err(bad("jobs_database_url", "must start with postgres:// or postgresql://"));
            }
        }
        for key in &self.api_keys {
            if key.sha256.len() != 64 || !key.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(
                    "api_keys",
                    &format!("key `{}`: sha256 must be 64 hex digits", key.name),
                ));
            }
        }
        if let Some(url) = &self.audit_database_url {
            if !(url.starts_with("sqlite:") || is_postgres(url)) {
                return Err(bad("audit_database_url", "must start with sqlite: or postgres://"));
            }
        }
        self.validate_ledger()?;
        Ok(self)
    }

    /// The audit log's signing, encryption and retention settings.
    fn validate_ledger(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, why: &str| ConfigError::Invalid {
            origin: format!("field `{field}`"),
            message: why.to_string(),
        };
        for (name, source) in [
            ("audit_signing_key", &self.audit_signing_key),
            ("audit_master_key", &self.audit_master_key),
        ] {
            if let Some(s) = source {
                if !(s.starts_with("file:") || s.starts_with("env:")) || s.len() < 6 || s.len() > 4096 {
                    return Err(bad(name, "must be `file:PATH` or `env:NAME`"));
                }
            }
        }
        if self.audit_trusted_keys.len() > 64 {
            return Err(bad("audit_trusted_keys", "at most 64 keys"));
        }
        if let Some(k) = self
            .audit_trusted_keys
            .iter()
            .find(|k| k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            let shown: String = k.chars().take(16).collect();
            return Err(bad(
                "audit_trusted_keys",
                &format!("`{shown}...`: a public key is 64 hex digits"),
            ));
        }
        if !(1..=10_000_000).contains(&self.audit_checkpoint_records) {
            return Err(bad("audit_checkpoint_records", "must be between 1 and 10000000"));
        }
        if !(1..=86_400).contains(&self.audit_checkpoint_secs) {
            return Err(bad("audit_checkpoint_secs", "must be between 1 and 86400 (a day)"));
        }
        if self.audit_retention_days > 36_500 {
            return Err(bad(
                "audit_retention_days",
                "must be at most 36500 (0: records are kept for ever)",
            ));
        }
        if self.audit_retention_days > 0 && self.audit_signing_key.is_none() {
            return Err(bad(
                "audit_retention_days",
                "needs audit_signing_key: removed records are vouched for by a signed checkpoint that \
                 carries the last removed record's hash, without which the shortened chain could not be told \
                 from a truncated one",
            ));
        }
        Ok(())
    }

    /// The audit database's URL: `audit_database_url`, else SQLite's `audit.db` in `data_dir`.
    pub fn audit_url(&self) -> String {
        match &self.audit_database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", self.data_dir.join("audit.db").display()),
        }
    }

    /// The PostgreSQL database shared jobs live in, if any: `jobs_database_url`, else the audit
    /// database when that is PostgreSQL.
    pub fn shared_jobs_url(&self) -> Option<&str> {
        self.jobs_database_url
            .as_deref()
            .or(self.audit_database_url.as_deref().filter(|u| is_postgres(u)))
    }
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Environment values are TOML literals where they parse as one (`4`, `true`), else plain strings.
fn env_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match probe.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_integer_too_large_for_toml_is_refused_as_out_of_range() {
        for raw in ["18446744073709551615", "-99999999999999999999"] {
            let env = vec![("EXPLAIND_MAX_JOB_BYTES".to_string(), raw.to_string())];
            let err = Config::load(None, env).unwrap_err().to_string();
            assert!(
                err.contains("out of range") && err.contains("EXPLAIND_MAX_JOB_BYTES"),
                "{err}"
            );
        }
        // Words are still text, refused by the field's type.
        let env = vec![("EXPLAIND_MAX_JOB_BYTES".to_string(), "lots".to_string())];
        assert!(Config::load(None, env)
            .unwrap_err()
            .to_string()
            .contains("invalid type"));
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("explaind-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "workers = 3\nqueue_capacity = 5\n").unwrap();
        let env = vec![
            ("EXPLAIND_QUEUE_CAPACITY".to_string(), "7".to_string()),
            ("EXPLAIND_BIND".to_string(), "0.0.0.0:9".to_string()),
            ("EXPLAIND_UNRELATED".to_string(), "x".to_string()),
        ];
        let c = Config::load(Some(&file), env).unwrap();
        assert_eq!(c.workers, 3);
        assert_eq!(c.queue_capacity, 7);
        assert_eq!(c.bind, "0.0.0.0:9");
        assert_eq!(c.max_batch, Config::default().max_batch);
    }

    #[test]
    fn unknown_file_field_is_named() {
        let dir = std::env::temp_dir().join(format!("explaind-config2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "wokers = 3\n").unwrap();
        let err = Config::load(Some(&file), vec![]).unwrap_err().to_string();
        assert!(err.contains("wokers"), "{err}");
    }

    #[test]
    fn bad_value_is_rejected() {
        let env = vec![("EXPLAIND_WORKERS".to_string(), "0".to_string())];
        let err = Config::load(None, env).unwrap_err().to_string();
        assert!(err.contains("workers"), "{err}");
    }

    #[test]
    fn connection_timeouts_are_bounded_both_ways() {
        for (var, value) in [
            ("EXPLAIND_HEADER_READ_TIMEOUT_MS", "0"),
            ("EXPLAIND_IDLE_TIMEOUT_MS", "86400001"),
            ("EXPLAIND_IDLE_TIMEOUT_MS", "18446744073709551615"),
        ] {
            let env = vec![(var.to_string(), value.to_string())];
            let err = Config::load(None, env)
                .and_then(|c| c.validated())
                .unwrap_err()
                .to_string();
            assert!(err.to_lowercase().contains("timeout_ms"), "{var}={value}: {err}");
        }
        let env = vec![("EXPLAIND_IDLE_TIMEOUT_MS".to_string(), "86400000".to_string())];
        assert!(Config::load(None, env).and_then(|c| c.validated()).is_ok());
    }
}
