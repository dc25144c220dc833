//! The audit log through the API, on SQLite (a real file) and on PostgreSQL (a throwaway server from
//! Debian's packages): records for predictions and every method family, filters, pagination,
//! export, overlays drawn again, reproducibility, chain verification against edited, deleted and
//! re-ordered rows (tampered with directly in the database), and durability under SIGKILL.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine;
use common::postgres::Postgres;
use common::{fashion_png, root, start, temp_dir, test_config, url};
use explaind::config::{AuditMode, Config};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Executor;

fn holdout_features() -> Value {
    let v: Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/breast_cancer_holdout.json")).unwrap())
            .unwrap();
    v["cases"][0]["features"].clone()
}

fn audited_config(extra: impl FnOnce(&mut Config)) -> Config {
    let mut c = test_config(&root().join("models"));
    c.audit = AuditMode::All;
    c.audit_store_inputs = true;
    c.audit_store_maps = true;
    extra(&mut c);
    c
}

async fn post(http: &reqwest::Client, base: &str, path: &str, body: Value) -> Value {
    let r = http.post(format!("{base}{path}")).json(&body).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{path}: {v}");
    assert!(
        v["audit_record"]["id"].is_string(),
        "{path}: the answer names its record: {v}"
    );
    v
}

async fn get(http: &reqwest::Client, base: &str, path: &str) -> Value {
    let r = http.get(format!("{base}{path}")).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{path}: {v}");
    v
}

/// Writes records of every kind through the API and reads them back; returns the answers' record ids.
async fn exercise(config: Config) -> Vec<String> {
    let s = start(config).await;
    let base = url(&s, "");
    let http = reqwest::Client::new();
    let png = fashion_png();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let features = holdout_features();
    let mut answers = Vec::new();
    // Predictions, image and tabular; a prediction carrying an explanation.
    answers.push(post(&http, &base, "/v1/models/fashion-cnn/predict", json!({"image": b64})).await);
    answers.push(
        post(
            &http,
            &base,
            "/v1/models/breast-cancer/predict",
            json!({"features": features}),
        )
        .await,
    );
    answers.push(
        post(
            &http,
            &base,
            "/v1/models/fashion-cnn/predict",
            json!({"image": b64, "explain": {"method": "saliency"}}),
        )
        .await,
    );
    // Each method family: gradients, CAM, perturbation (image and tabular), trees.
    let saliency = post(
        &http,
        &base,
        "/v1/models/fashion-cnn/explain/saliency",
        json!({"image": b64}),
    )
    .await;
    answers.push(saliency.clone());
    answers.push(
        post(
            &http,
            &base,
            "/v1/models/fashion-cnn/explain/grad-cam",
            json!({"image": b64}),
        )
        .await,
    );
    answers.push(
        post(
            &http,
            &base,
            "/v1/models/fashion-cnn/explain/lime",
            json!({"image": b64, "seed": 3, "params": {"samples": 64, "segments": 12}}),
        )
        .await,
    );
    let shap = post(
        &http,
        &base,
        "/v1/models/breast-cancer/explain/kernel-shap",
        json!({"features": features, "seed": 9, "params": {"samples": 128}}),
    )
    .await;
    answers.push(shap.clone());
    answers.push(
        post(
            &http,
            &base,
            "/v1/models/breast-cancer-forest/explain/tree-shap",
            json!({"features": features}),
        )
        .await,
    );
    let ids: Vec<String> = answers
        .iter()
        .map(|a| a["audit_record"]["id"].as_str().unwrap().to_string())
        .collect();

    // A PNG answer names its record in a header.
    let r = http
        .post(format!("{base}/v1/models/fashion-cnn/explain/saliency?format=png"))
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let png_record = r.headers()["x-audit-record"].to_str().unwrap().to_string();
    let rec = get(&http, &base, &format!("/v1/audit/records/{png_record}")).await;
    assert_eq!(rec["inputs"][0]["media_type"], "image/png");
    // One record, in full: what was asked, by which input, of which model, and what was answered.
    let rec = get(&http, &base, &format!("/v1/audit/records/{}", ids[3])).await;
    assert_eq!(rec["kind"], "explanation");
    assert_eq!(rec["method"], "saliency");
    assert_eq!(rec["model"], "fashion-cnn");
    assert_eq!(rec["model_sha256"], saliency["model_sha256"]);
    assert_eq!(rec["inputs"][0]["sha256"], hex::encode(Sha256::digest(&png)));
    assert_eq!(rec["inputs"][0]["data"]["image_base64"], b64);
    assert_eq!(rec["params"], saliency["params"]);
    assert_eq!(rec["targets"][0]["target"], saliency["target"]);
    assert!(rec["targets"][0]["summary"]["map"]["max"].is_number(), "{rec}");
    // What the answer cost, as it said: one backward row for the top class.
    assert_eq!(
        rec["targets"][0]["summary"]["cost"], saliency["details"]["cost"],
        "{rec}"
    );
    assert!(
        rec["targets"][0]["map"]["data"].is_string(),
        "the map is kept when configured"
    );
    assert_eq!(rec["service"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(rec["chain"]["hash"], saliency["audit_record"]["hash"]);
    let pred = get(&http, &base, &format!("/v1/audit/records/{}", ids[1])).await;
    assert_eq!(pred["kind"], "prediction");
    assert_eq!(pred["results"][0]["predictions"], answers[1]["predictions"]);
    let attached = get(&http, &base, &format!("/v1/audit/records/{}", ids[2])).await;
    assert_eq!(attached["results"][0]["explanation"]["method"], "saliency");
    let shap_rec = get(&http, &base, &format!("/v1/audit/records/{}", ids[6])).await;
    assert_eq!(shap_rec["seed"], 9);
    assert!(
        shap_rec["targets"][0]["summary"]["efficiency_gap"]
            .as_f64()
            .unwrap()
            .abs()
            < 1e-9
    );
    assert_eq!(
        shap_rec["targets"][0]["summary"]["top_features"]
            .as_array()
            .unwrap()
            .len(),
        10
    );
    let tree = get(&http, &base, &format!("/v1/audit/records/{}", ids[7])).await;
    assert_eq!(tree["targets"][0]["summary"]["feature_perturbation"], "interventional");

    // Reproducible: the recorded input, method, parameters and seed give the same attributions.
    let again = post(
        &http,
        &base,
        "/v1/models/breast-cancer/explain/kernel-shap",
        json!({"features": shap_rec["inputs"][0]["data"]["features"], "seed": shap_rec["seed"],
               "params": shap_rec["params"]}),
    )
    .await;
    assert_eq!(again["attributions"], shap["attributions"]);
    assert_eq!(shap_rec["targets"][0]["attributions"], shap["attributions"]["values"]);

    // Filters and pagination.
    let page = get(&http, &base, "/v1/audit/records?model=fashion-cnn&method=saliency").await;
    let found: HashSet<&str> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(found, HashSet::from([ids[3].as_str(), png_record.as_str()]));
    let preds = get(&http, &base, "/v1/audit/records?kind=prediction").await;
    assert_eq!(preds["records"].as_array().unwrap().len(), 3);
    let target = saliency["target"]["label"].as_str().unwrap();
    let by_target = get(
        &http,
        &base,
        &format!("/v1/audit/records?method=saliency&target={}", urlencode(target)),
    )
    .await;
    assert_eq!(by_target["records"].as_array().unwrap().len(), 2);
    let future = get(&http, &base, "/v1/audit/records?since=2999-01-01T00:00:00Z").await;
    assert!(future["records"].as_array().unwrap().is_empty());
    let past = get(&http, &base, "/v1/audit/records?until=2000-01-01T00:00:00Z").await;
    assert!(past["records"].as_array().unwrap().is_empty());
    let mut paged = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let q = match cursor {
            Some(c) => format!("/v1/audit/records?limit=3&cursor={c}"),
            None => "/v1/audit/records?limit=3".into(),
        };
        let page = get(&http, &base, &q).await;
        for r in page["records"].as_array().unwrap() {
            paged.push(r["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_i64() {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(paged.len(), answers.len() + 2, "every record once, in chain order");
    assert_eq!(&paged[..ids.len()], &ids[..]);
    assert_eq!(paged[ids.len()], png_record);
    let r = http
        .get(format!("{base}/v1/audit/records?limit=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = http.get(format!("{base}/v1/audit/records/nope")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Export: JSON Lines, every record.
    let text = http
        .get(format!("{base}/v1/audit/export"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), paged.len());
    assert_eq!(lines[0]["chain"]["seq"], 1);

    // Overlays drawn again from the stored map and image, and the tabular bar chart.
    for id in [&ids[3], &ids[6]] {
        let r = http
            .get(format!("{base}/v1/audit/records/{id}/overlay.png"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "image/png");
        image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
    }
    let v = get(&http, &base, "/v1/audit/verify").await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["records"], paged.len());
    s.stop().await.unwrap();
    ids
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Tampers with the log directly in its database, checks that verification names the first broken
/// record and why, and puts each row back.
async fn tampering_is_detected(config: &Config, db_url: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(db_url).await.unwrap();
    let log = explaind::audit::AuditLog::open(config).await.unwrap();
    assert!(log.verify().await.unwrap().ok);
    let expect_broken = |v: explaind::audit::Verification, seq: i64, words: &str| {
        let b = v.first_broken.clone().unwrap_or_else(|| panic!("not detected: {v:?}"));
        assert_eq!(b.seq, seq, "{b:?}");
        assert!(b.reason.contains(words), "{b:?}");
        assert!(!v.ok);
    };
    let body3: String = sqlx::query_scalar("SELECT body FROM audit_records WHERE seq = 3")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Edited: one score changed in a record's body.
    let edited = body3.replacen("\"score\":", "\"score\":0.5,\"was\":", 1);
    assert_ne!(edited, body3);
    sqlx::query("UPDATE audit_records SET body = $1 WHERE seq = 3")
        .bind(&edited)
        .execute(&pool)
        .await
        .unwrap();
    expect_broken(log.verify().await.unwrap(), 3, "edited");
    sqlx::query("UPDATE audit_records SET body = $1 WHERE seq = 3")
        .bind(&body3)
        .execute(&pool)
        .await
        .unwrap();
    assert!(log.verify().await.unwrap().ok, "restored");
    // An indexed column changed (the body kept): still caught.
    pool.execute("UPDATE audit_records SET model = 'other' WHERE seq = 2")
        .await
        .unwrap();
    expect_broken(log.verify().await.unwrap(), 2, "column `model`");
    pool.execute("UPDATE audit_records SET model = 'breast-cancer' WHERE seq = 2")
        .await
        .unwrap();
    assert!(log.verify().await.unwrap().ok, "restored");
    // Re-ordered: records 4 and 5 swap places.
    pool.execute("UPDATE audit_records SET seq = -5 WHERE seq = 5")
        .await
        .unwrap();
    pool.execute("UPDATE audit_records SET seq = 5 WHERE seq = 4")
        .await
        .unwrap();
    pool.execute("UPDATE audit_records SET seq = 4 WHERE seq = -5")
        .await
        .unwrap();
    expect_broken(log.verify().await.unwrap(), 4, "re-ordered");
    pool.execute("UPDATE audit_records SET seq = -5 WHERE seq = 4")
        .await
        .unwrap();
    pool.execute("UPDATE audit_records SET seq = 4 WHERE seq = 5")
        .await
        .unwrap();
    pool.execute("UPDATE audit_records SET seq = 5 WHERE seq = -5")
        .await
        .unwrap();
    assert!(log.verify().await.unwrap().ok, "restored");
    // Deleted: record 6 removed.
    pool.execute("DELETE FROM audit_records WHERE seq = 6").await.unwrap();
    expect_broken(log.verify().await.unwrap(), 6, "missing");
    log.close().await;
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_on_sqlite() {
    let data = temp_dir("audit-sqlite");
    let config = audited_config(|c| c.data_dir = data.clone());
    exercise(config.clone()).await;
    let db = data.join("audit.db");
    assert!(db.exists());
    tampering_is_detected(&config, &format!("sqlite://{}", db.display())).await;
    // The command line finds the break too, and says so in its exit status.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_explaind"))
        .args(["audit", "verify"])
        .env("EXPLAIND_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("missing"), "{out:?}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_explaind"))
        .args(["audit", "export"])
        .env("EXPLAIND_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        9,
        "10 records, one deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_on_postgres() {
    let pg = Postgres::start();
    let config = audited_config(|c| c.audit_database_url = Some(pg.url()));
    exercise(config.clone()).await;
    tampering_is_detected(&config, &pg.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_asked_for_requests_are_recorded_when_audit_is_off() {
    let data = temp_dir("audit-off");
    let mut config = test_config(&root().join("models"));
    config.data_dir = data.clone();
    let s = start(config).await;
    let http = reqwest::Client::new();
    let features = holdout_features();
    let r: Value = http
        .post(url(&s, "/v1/models/breast-cancer/predict"))
        .json(&json!({"features": features}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r.get("audit_record").is_none(), "{r}");
    assert!(!data.join("audit.db").exists(), "nothing opened until asked");
    let r: Value = http
        .post(url(&s, "/v1/models/breast-cancer/predict"))
        .json(&json!({"features": features, "audit": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["audit_record"]["seq"], 1, "{r}");
    s.stop().await.unwrap();
}

#[test]
fn answered_requests_survive_sigkill() {
    let data = temp_dir("audit-kill");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_explaind"))
            .args(["serve", "--bind", &format!("127.0.0.1:{port}"), "--models"])
            .arg(root().join("models"))
            .env("EXPLAIND_DATA_DIR", &data)
            .env("EXPLAIND_AUDIT", "all")
            .env("EXPLAIND_QUEUE_CAPACITY", "64")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let wait_ready = |base: &str| {
        let base = base.to_string();
        rt.block_on(async move {
            for _ in 0..300 {
                if let Ok(r) = reqwest::get(format!("{base}/readyz")).await {
                    if r.status() == StatusCode::OK {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("server not ready");
        })
    };
    let mut child = spawn();
    wait_ready(&base);
    let b64 = base64::engine::general_purpose::STANDARD.encode(fashion_png());
    // Eight clients send saliency requests without pause; the server is killed mid-flight.
    let answered: Vec<String> = rt.block_on(async {
        let http = reqwest::Client::new();
        let mut clients = Vec::new();
        for _ in 0..8 {
            let (http, base, b64) = (http.clone(), base.clone(), b64.clone());
            clients.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let sent = http
                        .post(format!("{base}/v1/models/fashion-cnn/explain/saliency"))
                        .json(&json!({"image": b64}))
                        .send()
                        .await;
                    let Ok(r) = sent else { break };
                    if r.status() != StatusCode::OK {
                        continue;
                    }
                    let Ok(v) = r.json::<Value>().await else { break };
                    ids.push(v["audit_record"]["id"].as_str().unwrap().to_string());
                }
                ids
            }));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        child.kill().unwrap(); // SIGKILL
        let mut all = Vec::new();
        for c in clients {
            all.extend(c.await.unwrap());
        }
        all
    });
    let _ = child.wait();
    assert!(answered.len() > 10, "only {} answers before the kill", answered.len());
    let mut child = spawn();
    wait_ready(&base);
    rt.block_on(async {
        let http = reqwest::Client::new();
        for id in &answered {
            let r = http.get(format!("{base}/v1/audit/records/{id}")).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "record {id} of an answered request is lost");
        }
        let v: Value = http
            .get(format!("{base}/v1/audit/verify"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["ok"], true, "{v}");
        assert!(v["records"].as_i64().unwrap() >= answered.len() as i64);
        eprintln!(
            "{} answered before SIGKILL; {} records after restart",
            answered.len(),
            v["records"]
        );
    });
    child.kill().unwrap();
    let _ = child.wait();
}
