//! The audit log's signed checkpoints, erasure by crypto-shredding and retention, on SQLite (a real
//! file) and PostgreSQL (a throwaway server): a cut after a checkpoint, a tampered checkpoint and a
//! rewritten chain are detected; an earlier key listed as trusted still verifies; an erased
//! subject's records still verify but their inputs cannot be read, the erasure is recorded, and
//! only an admin key may erase; retention removes old segments and the rest verifies from its
//! signed base. Tampering is done directly in the database.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::postgres::Postgres;
use common::{fashion_png, get_json, root, start, temp_dir, test_config, url};
use explaind::audit::{AuditLog, Context, Evidence, Kind, Verification};
use explaind::config::{ApiKey, AuditMode, Config, Scope};
use explaind::http::auth::hash_key;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Executor;

/// A config over the bundled models whose audit log is SQLite in a fresh `data_dir` (returned).
fn on_sqlite(name: &str) -> (Config, PathBuf) {
    let data = temp_dir(name);
    let mut config = test_config(&root().join("models"));
    config.data_dir = data.clone();
    (config, data)
}

/// Writes a signing key (hex) to a file under `dir`; returns the config value naming it.
fn key_file(dir: &Path, name: &str, byte: u8) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{}\n", hex::encode([byte; 32]))).unwrap();
    format!("file:{}", path.display())
}

fn public_of(byte: u8) -> String {
    let signer = explaind::audit::Signer::new(&explaind::audit::secret::Secret([byte; 32]));
    hex::encode(signer.public().as_bytes())
}

fn features() -> Value {
    let v: Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/breast_cancer_holdout.json")).unwrap())
            .unwrap();
    v["cases"][0]["features"].clone()
}

fn broken(v: &Verification, words: &str) {
    let b = v.first_broken.clone().unwrap_or_else(|| panic!("not detected: {v:?}"));
    assert!(!v.ok);
    assert!(b.reason.contains(words), "expected `{words}`: {b:?}");
}

async fn pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(url).await.unwrap()
}

/// Appends `n` small prediction records straight through the log.
async fn append(log: &AuditLog, n: usize, subject: Option<&str>) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let ctx = Context {
            subject: subject.map(String::from),
            ..Context::default()
        };
        let response = json!({"model": "m", "model_sha256": "00", "predictions": [{"label": "a", "score": i}]});
        let evidence = Evidence::features(&[i as f32, 2.0], true);
        ids.push(
            log.prediction(Kind::Prediction, &ctx, vec![evidence], &response)
                .await
                .unwrap()
                .id,
        );
    }
    ids
}

/// Checkpoints through a served log, then a tampered checkpoint, a rewritten chain, key rotation and
/// a cut, each checked directly.
async fn checkpoints(mut config: Config, keys: &Path) {
    config.audit_signing_key = Some(key_file(keys, "signing.key", 1));
    config.audit_checkpoint_records = 3;
    let s = start(config.clone()).await;
    let http = reqwest::Client::new();
    for _ in 0..7 {
        let r = http
            .post(url(&s, "/v1/models/breast-cancer/predict"))
            .json(&json!({"features": features()}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    // Every third record wakes the signer; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let v: Value = loop {
        let v = get_json(&s, "/v1/audit/verify").await;
        if v["newest_checkpoint"]["seq"].as_i64() >= Some(3) || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        v["newest_checkpoint"]["seq"].as_i64() >= Some(3),
        "signed after 3 records: {v}"
    );
    assert_eq!(v["newest_checkpoint"]["key_id"].as_str().unwrap().len(), 16);
    s.stop().await.unwrap();

    let log = AuditLog::open(&config).await.unwrap();
    let v = log.verify().await.unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.records, 7);
    assert_eq!(
        v.newest_checkpoint.as_ref().unwrap().seq,
        7,
        "the tip is signed at shutdown"
    );
    assert!(v.checkpoints >= 2, "one on the way, one at shutdown: {v:?}");
    let db = pool(&config.audit_url()).await;

    // A tampered checkpoint is refused.
    db.execute("UPDATE audit_checkpoints SET time_ms = time_ms + 1 WHERE seq = 7")
        .await
        .unwrap();
    broken(&log.verify().await.unwrap(), "altered");
    db.execute("UPDATE audit_checkpoints SET time_ms = time_ms - 1 WHERE seq = 7")
        .await
        .unwrap();
    assert!(log.verify().await.unwrap().ok, "restored");

    // A rewritten chain (record 2 edited and every later hash recomputed) is caught by the first
    // checkpoint after the edit, though each link holds.
    let rows: Vec<(i64, String, String)> = sqlx::query_as("SELECT seq, body, hash FROM audit_records ORDER BY seq")
        .fetch_all(&db)
        .await
        .unwrap();
    let mut prev = rows[0].2.clone();
    for (seq, body, _) in &rows[1..] {
        let body = if *seq == 2 {
            body.replacen("\"score\":", "\"score\":0.5,\"was\":", 1)
        } else {
            body.clone()
        };
        let hash = explaind::audit::store::chain_hash(&prev, &body);
        sqlx::query("UPDATE audit_records SET body = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
            .bind(&body)
            .bind(&prev)
            .bind(&hash)
            .bind(seq)
            .execute(&db)
            .await
            .unwrap();
        prev = hash;
    }
    broken(&log.verify().await.unwrap(), "rewritten");
    for (seq, body, hash) in &rows {
        let prev = if *seq == 1 {
            explaind::audit::store::GENESIS.to_string()
        } else {
            rows[*seq as usize - 2].2.clone()
        };
        sqlx::query("UPDATE audit_records SET body = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
            .bind(body)
            .bind(&prev)
            .bind(hash)
            .bind(seq)
            .execute(&db)
            .await
            .unwrap();
    }
    assert!(log.verify().await.unwrap().ok, "restored");
    log.close().await;

    // Key rotation: a new key signs from now on; the old one's checkpoints verify while it is listed.
    let mut rotated = config.clone();
    rotated.audit_signing_key = Some(key_file(keys, "signing-2.key", 2));
    let log = AuditLog::open(&rotated).await.unwrap();
    broken(&log.verify().await.unwrap(), "audit_trusted_keys");
    log.close().await;
    rotated.audit_trusted_keys = vec![public_of(1)];
    let log = Arc::new(AuditLog::open(&rotated).await.unwrap());
    assert!(log.verify().await.unwrap().ok);
    append(&log, 2, None).await;
    let signed = log.checkpoint().await.unwrap().unwrap();
    assert_eq!((signed.seq, signed.key_id.len()), (9, 16));
    let v = log.verify().await.unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.newest_checkpoint.unwrap().key_id, signed.key_id);
    log.close().await;

    // A cut after the newest checkpoint: the last two records removed.
    db.execute("DELETE FROM audit_records WHERE seq >= 8").await.unwrap();
    let log = AuditLog::open(&rotated).await.unwrap();
    broken(&log.verify().await.unwrap(), "cut off");
    log.close().await;
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_on_sqlite_detect_cuts_and_tampering_and_survive_rotation() {
    let (mut config, data) = on_sqlite("ledger-cp");
    config.audit = AuditMode::All;
    checkpoints(config.clone(), &data).await;
    // The command line finds the cut, and its export carries the keys and the checkpoints.
    let signing = key_file(&data, "signing-2b.key", 2);
    let cli = |what: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_explaind"))
            .args(["audit", what])
            .env("EXPLAIND_DATA_DIR", &data)
            .env("EXPLAIND_AUDIT_SIGNING_KEY", &signing)
            .env("EXPLAIND_AUDIT_TRUSTED_KEYS", format!("[\"{}\"]", public_of(1)))
            .output()
            .unwrap()
    };
    let out = cli("verify");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("cut off"), "{out:?}");
    let out = cli("export");
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let keys = lines[0]["public_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["public_key"], public_of(2));
    assert_eq!(keys[0]["current"], true);
    assert_eq!(lines.iter().filter(|l| l.get("chain").is_some()).count(), 7);
    let signed: Vec<&Value> = lines.iter().filter_map(|l| l.get("checkpoint")).collect();
    assert!(signed.len() >= 3 && signed.iter().all(|c| c["signature"].as_str().unwrap().len() == 128));
    // `audit keygen` writes a key only its owner reads, and never over an existing file.
    let fresh = data.join("fresh.key");
    let keygen = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_explaind"))
            .args(["audit", "keygen"])
            .arg(&fresh)
            .output()
            .unwrap()
    };
    let out = keygen();
    assert!(out.status.success(), "{out:?}");
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o600);
    let secret = explaind::audit::secret::parse(std::fs::read_to_string(&fresh).unwrap().trim()).unwrap();
    let signer = explaind::audit::Signer::new(&explaind::audit::secret::Secret(secret));
    assert_eq!(made["public_key"], hex::encode(signer.public().as_bytes()));
    assert!(!keygen().status.success(), "an existing key file is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_on_postgres_detect_cuts_and_tampering_and_survive_rotation() {
    let pg = Postgres::start();
    let keys = temp_dir("ledger-cp-pg");
    let mut config = test_config(&root().join("models"));
    config.audit = AuditMode::All;
    config.audit_database_url = Some(pg.url());
    checkpoints(config, &keys).await;
}

/// Encrypted records of two subjects and of none; one subject erased by an admin, not by another key.
async fn erasure(mut config: Config) {
    config.audit = AuditMode::All;
    config.audit_store_inputs = true;
    config.audit_store_maps = true;
    config.audit_encrypt = true;
    config.api_keys = vec![
        ApiKey {
            name: "auditor".into(),
            sha256: hash_key("audit-key"),
            scopes: vec![Scope::Predict, Scope::Audit],
        },
        ApiKey {
            name: "dpo".into(),
            sha256: hash_key("admin-key"),
            scopes: vec![Scope::Predict, Scope::Audit, Scope::Admin],
        },
    ];
    let s = start(config.clone()).await;
    let http = reqwest::Client::new();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, fashion_png());
    let post = |path: &str, body: Value, subject: Option<&str>| {
        let mut r = http.post(url(&s, path)).bearer_auth("audit-key").json(&body);
        if let Some(subject) = subject {
            r = r.header("x-audit-subject", subject);
        }
        r.send()
    };
    let get = |path: String| http.get(url(&s, &path)).bearer_auth("audit-key").send();
    let read = |path: String| async move { get(path).await.unwrap().json::<Value>().await.unwrap() };
    let mut ids = Vec::new();
    for (path, body, subject) in [
        (
            "/v1/models/breast-cancer/explain/kernel-shap",
            json!({"features": features(), "seed": 1, "params": {"samples": 128}}),
            Some("customer-7"),
        ),
        (
            "/v1/models/fashion-cnn/explain/saliency",
            json!({"image": b64}),
            Some("customer-7"),
        ),
        (
            "/v1/models/breast-cancer/predict",
            json!({"features": features()}),
            Some("customer-8"),
        ),
        (
            "/v1/models/breast-cancer/predict",
            json!({"features": features()}),
            None,
        ),
    ] {
        let r = post(path, body, subject).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        ids.push(v["audit_record"]["id"].as_str().unwrap().to_string());
    }
    // The stored bodies hold ciphertext in place of the inputs, maps and per-feature values.
    let db = pool(&config.audit_url()).await;
    let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM audit_records ORDER BY seq")
        .fetch_all(&db)
        .await
        .unwrap();
    let first_value = features()[0].as_f64().unwrap().to_string();
    for body in &bodies {
        assert!(body.contains("\"ciphertext\""), "{body}");
        assert!(
            !body.contains("image_base64") && !body.contains("\"features\"") && !body.contains("top_features"),
            "{body}"
        );
    }
    assert!(
        !bodies[0].contains(&first_value),
        "a feature's value is not kept in the clear"
    );
    // Read back, they are whole again.
    let rec: Value = read(format!("/v1/audit/records/{}", ids[0])).await;
    assert_eq!(rec["erased"], false, "{rec}");
    assert_eq!(rec["inputs"][0]["data"]["features"], features());
    assert_eq!(rec["targets"][0]["attributions"].as_array().unwrap().len(), 30);
    let saliency: Value = read(format!("/v1/audit/records/{}", ids[1])).await;
    assert_eq!(saliency["inputs"][0]["data"]["image_base64"], b64);
    let r = get(format!("/v1/audit/records/{}/overlay.png", ids[1])).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the overlay is drawn from the decrypted map"
    );

    // Erasure needs the admin scope, and a subject id of visible ASCII.
    let r = http
        .delete(url(&s, "/v1/audit/subjects/customer-7"))
        .bearer_auth("audit-key")
        .send()
        .await
        .unwrap();
    common::problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    let long = "x".repeat(257);
    let r = http
        .delete(url(&s, &format!("/v1/audit/subjects/{long}")))
        .bearer_auth("admin-key")
        .send()
        .await
        .unwrap();
    common::problem(r, StatusCode::BAD_REQUEST, "invalid-request").await;
    let r = post(
        "/v1/models/breast-cancer/predict",
        json!({"features": features()}),
        Some("bad subject"),
    )
    .await
    .unwrap();
    common::problem(r, StatusCode::BAD_REQUEST, "invalid-request").await;
    let r = http
        .delete(url(&s, "/v1/audit/subjects/customer-7"))
        .bearer_auth("admin-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let erased: Value = r.json().await.unwrap();
    assert_eq!(erased["keys_destroyed"], 1, "{erased}");

    // The subject's records: still there, decision kept, inputs and maps gone.
    for id in &ids[..2] {
        let rec: Value = read(format!("/v1/audit/records/{id}")).await;
        assert_eq!(rec["erased"], true, "{rec}");
        assert!(rec["inputs"][0].get("data").is_none(), "{rec}");
        assert!(rec["inputs"][0]["sha256"].is_string());
        assert!(rec["targets"][0].get("attributions").is_none() && rec["targets"][0].get("map").is_none());
        assert!(
            rec["targets"][0]["target"]["score"].is_number(),
            "the decision stays readable"
        );
    }
    let r = get(format!("/v1/audit/records/{}/overlay.png", ids[1])).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "no map to draw after erasure");
    // The other subject's record and the per-record one are untouched.
    for id in &ids[2..] {
        let rec: Value = read(format!("/v1/audit/records/{id}")).await;
        assert_eq!(rec["erased"], false);
        assert_eq!(rec["inputs"][0]["data"]["features"], features());
    }
    // The erasure is a record (by whom, of which subject reference; never the subject itself).
    let page: Value = read("/v1/audit/records?kind=erasure".into()).await;
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["caller"], "dpo");
    assert_eq!(records[0]["id"], erased["audit_record"]["id"]);
    assert_eq!(records[0]["subject_ref"].as_str().unwrap().len(), 64);
    assert!(!records[0].to_string().contains("customer-7"));
    // The chain still verifies.
    let v: Value = read("/v1/audit/verify".into()).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["records"], 5);
    // Another replica erases customer-8 (its key removed behind this one's back): this replica's
    // next record of customer-8 is not sealed with the destroyed key it holds, but with a new one.
    db.execute("DELETE FROM audit_keys WHERE subject IS NOT NULL")
        .await
        .unwrap();
    let r = post(
        "/v1/models/breast-cancer/predict",
        json!({"features": features()}),
        Some("customer-8"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let id = r.json::<Value>().await.unwrap()["audit_record"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let rec: Value = read(format!("/v1/audit/records/{id}")).await;
    assert_eq!(rec["erased"], false, "{rec}");
    assert_eq!(rec["inputs"][0]["data"]["features"], features());
    // A sealed part altered in the database breaks the chain.
    let body: String = sqlx::query_scalar("SELECT body FROM audit_records WHERE seq = 3")
        .fetch_one(&db)
        .await
        .unwrap();
    let at = body.find("\"ciphertext\":\"").unwrap() + 14;
    let flipped = format!(
        "{}{}{}",
        &body[..at],
        if &body[at..at + 1] == "A" { "B" } else { "A" },
        &body[at + 1..]
    );
    sqlx::query("UPDATE audit_records SET body = $1 WHERE seq = 3")
        .bind(&flipped)
        .execute(&db)
        .await
        .unwrap();
    let v: Value = read("/v1/audit/verify".into()).await;
    assert_eq!(v["first_broken"]["seq"], 3, "{v}");
    s.stop().await.unwrap();
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_on_sqlite_keeps_the_chain_and_shreds_the_inputs() {
    let (mut config, _) = on_sqlite("ledger-erase");
    // Keys wrapped by a master key from the environment.
    std::env::set_var("LEDGER_TEST_MASTER_KEY", hex::encode([5u8; 32]));
    config.audit_master_key = Some("env:LEDGER_TEST_MASTER_KEY".into());
    let db_url = config.audit_url();
    erasure(config).await;
    let db = pool(&db_url).await;
    let wraps: Vec<String> = sqlx::query_scalar("SELECT wrap FROM audit_keys")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(wraps.len(), 2, "customer-8's new key and the per-record key remain");
    assert!(wraps.iter().all(|w| w.starts_with("master:")), "{wraps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_on_postgres_keeps_the_chain_and_shreds_the_inputs() {
    let pg = Postgres::start();
    let mut config = test_config(&root().join("models"));
    config.audit_database_url = Some(pg.url());
    erasure(config).await;
}

/// Retention on `db`: old records removed up to a checkpoint, the rest verifies from the signed base.
async fn retention(mut config: Config, keys: &Path) {
    config.audit_signing_key = Some(key_file(keys, "retention.key", 3));
    config.audit_retention_days = 30;
    config.audit_encrypt = true;
    let log = AuditLog::open(&config).await.unwrap();
    append(&log, 5, None).await;
    log.checkpoint().await.unwrap().unwrap();
    append(&log, 2, None).await;
    log.checkpoint().await.unwrap().unwrap();
    append(&log, 2, None).await;
    assert_eq!(log.retain().await.unwrap(), 0, "nothing is old yet");
    // Records 1-6 made 40 days old (their hashed times no longer match, but they are to go).
    let db = pool(&config.audit_url()).await;
    let old = explaind::audit::record::now_ms() - 40 * 86_400_000;
    sqlx::query("UPDATE audit_records SET time_ms = $1 WHERE seq <= 6")
        .bind(old)
        .execute(&db)
        .await
        .unwrap();
    let removed_keys: Vec<String> = sqlx::query_scalar("SELECT key_id FROM audit_records WHERE seq <= 5")
        .fetch_all(&db)
        .await
        .unwrap();
    // Whole segments only: up to the checkpoint at 5, not into the segment 6-7.
    assert_eq!(log.retain().await.unwrap(), 5);
    let left: Vec<i64> = sqlx::query_scalar("SELECT seq FROM audit_records ORDER BY seq")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(left, vec![6, 7, 8, 9]);
    for id in removed_keys {
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_keys WHERE id = $1")
            .bind(&id)
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(left, 0, "the removed records' keys went with them");
    }
    // Record 6 stays (its segment reaches 7, which is recent): its column back as its body says.
    let restore: String = sqlx::query_scalar("SELECT body FROM audit_records WHERE seq = 6")
        .fetch_one(&db)
        .await
        .unwrap();
    let hashed: Value = serde_json::from_str(&restore).unwrap();
    sqlx::query("UPDATE audit_records SET time_ms = $1 WHERE seq = 6")
        .bind(hashed["time_ms"].as_i64().unwrap())
        .execute(&db)
        .await
        .unwrap();
    append(&log, 1, None).await;
    let v = log.verify().await.unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.records, 5);
    assert_eq!(v.starts_after.as_ref().map(|b| b.seq), Some(5));
    // The base checkpoint is signed too: altered, it is refused.
    db.execute("UPDATE audit_checkpoints SET seq = 4 WHERE mark = 'base'")
        .await
        .unwrap();
    broken(&log.verify().await.unwrap(), "altered");
    log.close().await;
    db.close().await;
    // Without a signing key the setting is refused at start, with the reason.
    let mut unsigned = config.clone();
    unsigned.audit_signing_key = None;
    let err = unsigned.validated().unwrap_err().to_string();
    assert!(
        err.contains("audit_retention_days") && err.contains("audit_signing_key"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_on_sqlite_keeps_verification_working() {
    let (config, data) = on_sqlite("ledger-retention");
    retention(config, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_on_postgres_keeps_verification_working() {
    let pg = Postgres::start();
    let keys = temp_dir("ledger-retention-pg");
    let mut config = test_config(&root().join("models"));
    config.audit_database_url = Some(pg.url());
    retention(config, &keys).await;
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The figures, in one run: signed checkpoints' cost on the log's append throughput,
/// encryption's cost on an audited request's time, and bytes per record with and without
/// encryption. Run with `cargo test --test it ledger::figures -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures; run on purpose"]
async fn figures() {
    // Appends, one at a time, the logs taking turns in a rotating order (so load spikes fall on
    // every log alike): no signing key; a key at the default 1000 records; a key every 100; the
    // input kept in the clear; sealed with a record's own key; with a subject's key.
    let setups: [(&str, u64, bool, Option<&str>); 6] = [
        ("unsigned", 0, false, None),
        ("signed every 1000", 1000, false, None),
        ("signed every 100", 100, false, None),
        ("clear (unsigned)", 0, false, None),
        ("sealed, own key", 0, true, None),
        ("sealed, subject's key", 0, true, Some("c-1")),
    ];
    let mut logs = Vec::new();
    for (_, every, encrypt, _) in setups {
        let (mut c, data) = on_sqlite("ledger-figures");
        c.audit = AuditMode::All;
        c.audit_encrypt = encrypt;
        if every > 0 {
            c.audit_signing_key = Some(key_file(&data, "k", 9));
            c.audit_checkpoint_records = every;
        }
        let log = Arc::new(AuditLog::open(&c).await.unwrap());
        log.start_upkeep();
        logs.push(log);
    }
    let rounds = 3000;
    let mut times = vec![Vec::with_capacity(rounds); logs.len()];
    for round in 0..rounds + 100 {
        for k in 0..logs.len() {
            let i = (k + round) % logs.len();
            let started = Instant::now();
            append(&logs[i], 1, setups[i].3).await;
            if round >= 100 {
                times[i].push(started.elapsed());
            }
        }
    }
    println!("appends (SQLite, sync normal; {rounds} each, one at a time in turns; an input of 2 features kept):");
    let mean = |t: &[Duration]| t.iter().sum::<Duration>().as_secs_f64() / t.len() as f64;
    for (i, (name, ..)) in setups.iter().enumerate() {
        let base = if i < 3 { 0 } else { 3 };
        let v = logs[i].verify().await.unwrap();
        assert!(v.ok);
        println!(
            "  {name:<22} median {:>7.1} us ({:>+6.1}%)  mean {:>7.1} us ({:>+6.1}%)  {} checkpoints",
            median(times[i].clone()).as_secs_f64() * 1e6,
            (median(times[i].clone()).as_secs_f64() / median(times[base].clone()).as_secs_f64() - 1.0) * 100.0,
            mean(&times[i]) * 1e6,
            (mean(&times[i]) / mean(&times[base]) - 1.0) * 100.0,
            v.checkpoints
        );
    }
    // A checkpoint's own cost (a signature and an insert), against the appends it covers.
    let mut signing = Vec::new();
    for _ in 0..100 {
        append(&logs[1], 1, None).await;
        let started = Instant::now();
        logs[1].checkpoint().await.unwrap().unwrap();
        signing.push(started.elapsed());
    }
    let one = median(signing).as_secs_f64();
    let append_cost = median(times[0].clone()).as_secs_f64();
    println!(
        "  a checkpoint: median {:.1} us = {:.2}% of 1000 appends, {:.1}% of 100",
        one * 1e6,
        one / (1000.0 * append_cost) * 100.0,
        one / (100.0 * append_cost) * 100.0
    );
    for log in &logs {
        log.close().await;
    }

    // Audited requests: inputs and maps kept, in the clear and encrypted, interleaved.
    let mut services = Vec::new();
    let mut dbs = Vec::new();
    // The last two are alike: their difference is the noise floor.
    for encrypt in [true, false, false] {
        let (mut c, _) = on_sqlite("ledger-figures-http");
        c.workers = 1;
        c.audit = AuditMode::All;
        c.audit_store_inputs = true;
        c.audit_store_maps = true;
        c.audit_encrypt = encrypt;
        dbs.push(c.audit_url());
        services.push(start(c).await);
    }
    dbs.truncate(2);
    let http = reqwest::Client::new();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, fashion_png());
    println!("audited requests (1 worker, median of 200, interleaved; client time on loopback):");
    for (path, body, subject) in [
        (
            "/v1/models/fashion-cnn/explain/saliency",
            json!({"image": b64}),
            Some("c-1"),
        ),
        ("/v1/models/fashion-cnn/explain/saliency", json!({"image": b64}), None),
        (
            "/v1/models/breast-cancer/predict",
            json!({"features": features()}),
            None,
        ),
    ] {
        let mut times = [Vec::new(), Vec::new(), Vec::new()];
        for round in 0..210 {
            // The order turns each round, so no service always follows another.
            for k in 0..services.len() {
                let i = (k + round) % services.len();
                let s = &services[i];
                let mut r = http.post(url(s, path)).json(&body);
                if let Some(subject) = subject {
                    r = r.header("x-audit-subject", subject);
                }
                let started = Instant::now();
                let answer = r.send().await.unwrap();
                assert_eq!(answer.status(), StatusCode::OK);
                answer.bytes().await.unwrap();
                if round >= 10 {
                    times[i].push(started.elapsed());
                }
            }
        }
        let [sealed, plain, again] = [0, 1, 2].map(|i| median(times[i].clone()).as_secs_f64());
        println!(
            "  {path:<42} subject {:<4} clear {:>7.3} ms  clear again {:>+6.1}%  encrypted {:>7.3} ms  {:>+6.1}%",
            if subject.is_some() { "yes" } else { "no" },
            plain * 1e3,
            (again / plain - 1.0) * 100.0,
            sealed * 1e3,
            (sealed / plain - 1.0) * 100.0
        );
    }
    for s in services {
        s.stop().await.unwrap();
    }
    println!("bytes per record (body; encrypted: plus its key row when the key is the record's own):");
    let mut sizes = Vec::new();
    for db in &dbs {
        let p = pool(db).await;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT model || ' ' || kind || CASE WHEN key_id IS NULL THEN '' ELSE ' sealed' END, \
             CAST(AVG(LENGTH(body)) AS BIGINT) FROM audit_records GROUP BY model, kind, key_id IS NULL ORDER BY 1",
        )
        .fetch_all(&p)
        .await
        .unwrap();
        let key_row: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(AVG(LENGTH(id) + LENGTH(key) + LENGTH(wrap) + 8) AS BIGINT) FROM audit_keys",
        )
        .fetch_one(&p)
        .await
        .unwrap();
        sizes.push((rows, key_row));
        p.close().await;
    }
    // Sealing alone, on the saliency records as kept in the clear: the encryption's own cost.
    let p = pool(&dbs[1]).await;
    let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM audit_records WHERE kind = 'explanation' LIMIT 50")
        .fetch_all(&p)
        .await
        .unwrap();
    p.close().await;
    let key = explaind::audit::secret::Secret([1; 32]);
    let mut sealing = Vec::new();
    for text in &bodies {
        let mut body: Value = serde_json::from_str(text).unwrap();
        let started = Instant::now();
        explaind::audit::seal::seal(&mut body, "id", "key", &key).unwrap();
        let sealed = serde_json::to_string(&body).unwrap();
        sealing.push(started.elapsed());
        assert!(sealed.len() > text.len() / 2);
    }
    // In the dev profile the AEAD's generic code is compiled into explaind unoptimised: this figure
    // (and the encrypted rows above) is far above an optimised build's.
    println!(
        "sealing one saliency record ({} bytes): median {:.1} us (opt-level {})",
        bodies[0].len(),
        median(sealing).as_secs_f64() * 1e6,
        if cfg!(debug_assertions) {
            "0: dev profile"
        } else {
            "release"
        },
    );
    for (rows, key_row) in &sizes {
        for (what, bytes) in rows {
            println!("  {what:<40} {bytes:>8}");
        }
        if let Some(k) = key_row {
            println!("  {:<40} {k:>8}", "a key row");
        }
    }
}
