//! Replaying audit records and the decision report, against a real server on loopback with its
//! SQLite audit log: every bundled model's methods replay to the recorded attributions (seeded
//! sampling methods with their recorded seed); a record whose stored input was altered in the
//! database replays to different attributions (and `verify` names it); the refusals (404, 403,
//! 409 for a missing input or map, an erased input, a model no longer loaded); and the report's
//! content (escaped descriptions, recorded and computed counterfactuals, the heat map).

use crate::common;

use std::path::Path;

use base64::Engine;
use common::{copy_bundled, fashion_png, frontend_and_auditor_keys, problem, root, start, temp_dir, test_config, url};
use explaind::config::{AuditMode, Config};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn holdout_features() -> Value {
    let v: Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/breast_cancer_holdout.json")).unwrap())
            .unwrap();
    v["cases"][0]["features"].clone()
}

/// Every answer recorded, with its input and map.
fn audited(models: &Path, data: &Path) -> Config {
    let mut c = test_config(models);
    c.data_dir = data.to_path_buf();
    c.audit = AuditMode::All;
    c.audit_store_inputs = true;
    c.audit_store_maps = true;
    c
}

async fn send(r: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let r = r.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A copy of the bundled breast-cancer model whose manifest describes every feature in plain
/// language (each description carrying markup, which the report must show as text) and names a
/// version.
pub fn described_models(dir: &Path) {
    copy_bundled("breast-cancer", dir);
    let toml = dir.join("breast-cancer/model.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let manifest: toml::Value = toml::from_str(&text).unwrap();
    let described: Vec<String> = manifest["tabular"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let f = f.as_str().unwrap();
            format!("\"{f}\" = \"the {f}, in plain words <script>alert(1)</script>\"")
        })
        .collect();
    let text = text.replacen(
        "[tabular]\n",
        &format!("[tabular]\ndescriptions = {{ {} }}\n", described.join(", ")),
        1,
    );
    std::fs::write(&toml, format!("version = \"2.1 <b>\"\n{text}")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_replays_to_its_record_and_an_altered_input_does_not() {
    let models = temp_dir("replay-models");
    for m in ["fashion-cnn", "breast-cancer-forest", "movie-reviews"] {
        copy_bundled(m, &models);
    }
    described_models(&models);
    let data = temp_dir("replay-data");
    let s = start(audited(&models, &data)).await;
    let http = reqwest::Client::new();
    let b64 = base64::engine::general_purpose::STANDARD.encode(fashion_png());
    let methods = explaind::explain::Methods::standard();
    let mut replayed = Vec::new();
    let mut seeded = 0;
    let mut tabular_record = None;
    for (model, input) in [
        ("fashion-cnn", json!({"image": b64})),
        ("breast-cancer", json!({"features": holdout_features()})),
        ("breast-cancer-forest", json!({"features": holdout_features()})),
        ("movie-reviews", json!({"text": "a gripping, funny and moving film"})),
    ] {
        let (_, info) = send(http.get(url(&s, &format!("/v1/models/{model}")))).await;
        for name in info["methods"].as_array().unwrap().iter().filter_map(Value::as_str) {
            let caps = methods.get(name).unwrap().capabilities();
            let mut body = input.clone();
            if caps.random {
                body["seed"] = json!(11);
            }
            // The slowest methods' budgets cut down: a replay runs what the record says, whatever it is.
            match (model, name) {
                (_, "extremal-perturbation") => body["params"] = json!({"iterations": 10, "areas": [0.1]}),
                ("fashion-cnn", "kernel-shap") => body["params"] = json!({"samples": 128}),
                ("fashion-cnn", "rise") => body["params"] = json!({"masks": 128}),
                // Several targets, each compared.
                ("fashion-cnn", "integrated-gradients") => body["target"] = json!({"top_k": 2}),
                _ => {}
            }
            let (status, answer) = send(
                http.post(url(&s, &format!("/v1/models/{model}/explain/{name}")))
                    .json(&body),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{model}/{name}: {answer}");
            let id = answer["audit_record"]["id"].as_str().unwrap().to_string();
            let (status, r) = send(http.post(url(&s, &format!("/v1/audit/records/{id}/replay")))).await;
            assert_eq!(status, StatusCode::OK, "{model}/{name}: {r}");
            assert_eq!(r["equal"], true, "{model}/{name}: {r}");
            // One request at a time: ONNX Runtime sees the same batches, so the bits are the same.
            assert_eq!(r["agreement"], "bitwise", "{model}/{name}: {r}");
            assert_eq!(r["method"], name);
            assert_eq!(
                r["params"], answer["params"],
                "{model}/{name}: parameters after defaults"
            );
            if caps.random {
                assert_eq!(r["seed"], 11, "{model}/{name}");
                seeded += 1;
            }
            let targets = answer["explanations"].as_array().map_or(1, Vec::len);
            assert_eq!(r["targets"].as_array().unwrap().len(), targets, "{model}/{name}: {r}");
            assert!(r["targets"][0]["values"].as_u64().is_some(), "{r}");
            // The replay is itself a record, pointing at the original.
            let rid = r["audit_record"]["id"].as_str().unwrap();
            let (_, rec) = send(http.get(url(&s, &format!("/v1/audit/records/{rid}")))).await;
            assert_eq!(rec["kind"], "replay", "{rec}");
            assert_eq!(rec["replay_of"]["id"], id.as_str());
            assert_eq!(rec["outcome"]["equal"], true);
            assert_eq!(rec["inputs"][0]["sha256"], answer_input_sha(&http, &s, &id).await);
            if model == "breast-cancer" && name == "kernel-shap" {
                tabular_record = Some((id.clone(), answer.clone()));
            }
            replayed.push(format!("{model}/{name}"));
        }
    }
    // Every method the bundled models' pages list (all but the transformer-only ones).
    let distinct: std::collections::HashSet<&str> = replayed.iter().filter_map(|r| r.split('/').nth(1)).collect();
    assert!(
        distinct.len() >= 20,
        "only {} methods replayed: {replayed:?}",
        distinct.len()
    );
    assert!(seeded >= 5, "only {seeded} seeded methods replayed: {replayed:?}");

    // Predictions with attached explanations: each instance's explanation replays on its input.
    let cases = [
        json!({"image": b64, "explain": {"method": "grad-cam", "target": {"top_k": 2}}}),
        json!({"instances": [{"features": holdout_features()}, {"features": holdout_features()
            .as_array().unwrap().iter().map(|v| v.as_f64().unwrap() * 1.1).collect::<Vec<_>>()}],
               "explain": {"method": "kernel-shap", "seed": 4, "params": {"samples": 256}}}),
    ];
    for (model, body) in ["fashion-cnn", "breast-cancer"].into_iter().zip(cases) {
        let (status, answer) = send(http.post(url(&s, &format!("/v1/models/{model}/predict"))).json(&body)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let id = answer["audit_record"]["id"].as_str().unwrap();
        let (status, r) = send(http.post(url(&s, &format!("/v1/audit/records/{id}/replay")))).await;
        assert_eq!(status, StatusCode::OK, "{model}: {r}");
        assert_eq!(
            (&r["equal"], &r["agreement"]),
            (&json!(true), &json!("bitwise")),
            "{model}: {r}"
        );
        let instances: Vec<u64> = r["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["instance"].as_u64().unwrap())
            .collect();
        assert_eq!(
            instances,
            if model == "fashion-cnn" { vec![0, 0] } else { vec![0, 1] },
            "{r}"
        );
    }

    // The stored input altered in the database: the replay explains another input.
    let (id, _) = tabular_record.unwrap();
    s.stop().await.unwrap();
    sqlx::any::install_default_drivers();
    let db = format!("sqlite://{}", data.join("audit.db").display());
    let pool = sqlx::AnyPool::connect(&db).await.unwrap();
    let body: String = sqlx::query_scalar("SELECT body FROM audit_records WHERE id = $1")
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut record: Value = serde_json::from_str(&body).unwrap();
    let features = record["inputs"][0]["data"]["features"].as_array_mut().unwrap();
    features[23] = json!(features[23].as_f64().unwrap() * 3.0);
    sqlx::query("UPDATE audit_records SET body = $1 WHERE id = $2")
        .bind(serde_json::to_string(&record).unwrap())
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let s = start(audited(&models, &data)).await;
    let (status, r) = send(http.post(url(&s, &format!("/v1/audit/records/{id}/replay")))).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["equal"], false, "{r}");
    assert_eq!(r["agreement"], "different");
    let t = &r["targets"][0];
    assert_eq!(t["agreement"], "different");
    assert!(
        t["differing"].as_u64().unwrap() > 0 && t["max_abs_difference"].as_f64().unwrap() > 0.0,
        "{t}"
    );
    assert!(!t["first_positions"].as_array().unwrap().is_empty(), "{t}");
    let rid = r["audit_record"]["id"].as_str().unwrap();
    let (_, rec) = send(http.get(url(&s, &format!("/v1/audit/records/{rid}")))).await;
    assert_eq!(rec["outcome"]["equal"], false);
    // Editing the record broke the chain at it, as it should.
    let (_, v) = send(http.get(url(&s, "/v1/audit/verify"))).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_broken"]["id"], id.as_str(), "{v}");
    assert!(v["first_broken"]["reason"].as_str().unwrap().contains("edited"), "{v}");
    s.stop().await.unwrap();
}

/// The sha256 of the original record's input.
async fn answer_input_sha(http: &reqwest::Client, s: &explaind::Service, id: &str) -> Value {
    let (_, rec) = send(http.get(url(s, &format!("/v1/audit/records/{id}")))).await;
    rec["inputs"][0]["sha256"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_that_cannot_run_are_refused_with_the_reason() {
    let models = temp_dir("replay-refusal-models");
    for m in ["fashion-cnn", "breast-cancer"] {
        copy_bundled(m, &models);
    }
    let data = temp_dir("replay-refusal-data");
    let mut c = audited(&models, &data);
    c.audit_store_maps = false;
    c.api_keys = frontend_and_auditor_keys();
    let keys = c.api_keys.clone();
    let s = start(c).await;
    let http = reqwest::Client::new();
    let post = |path: &str, key: &str| http.post(url(&s, path)).bearer_auth(key);
    let (_, tab) = send(
        post("/v1/models/breast-cancer/explain/saliency", "key-one").json(&json!({"features": holdout_features()})),
    )
    .await;
    let tab = tab["audit_record"]["id"].as_str().unwrap().to_string();
    let b64 = base64::engine::general_purpose::STANDARD.encode(fashion_png());
    let (_, img) = send(post("/v1/models/fashion-cnn/explain/saliency", "key-one").json(&json!({"image": b64}))).await;
    let img = img["audit_record"]["id"].as_str().unwrap().to_string();
    let (_, pred) = send(post("/v1/models/fashion-cnn/predict", "key-one").json(&json!({"image": b64}))).await;
    let pred = pred["audit_record"]["id"].as_str().unwrap().to_string();
    let (_, erased) = send(
        post("/v1/models/breast-cancer/explain/saliency", "key-one").json(&json!({"features": holdout_features()})),
    )
    .await;
    let erased = erased["audit_record"]["id"].as_str().unwrap().to_string();

    // Another caller without the audit scope: 403, for the replay and the report alike.
    let r = post(&format!("/v1/audit/records/{tab}/replay"), "key-one")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = http
        .get(url(&s, &format!("/v1/audit/records/{tab}/report")))
        .bearer_auth("key-one")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    // Unknown records: 404.
    let r = post("/v1/audit/records/no-such-record/replay", "key-two")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::NOT_FOUND, "not-found").await;
    let r = http
        .get(url(&s, "/v1/audit/records/no-such-record/report"))
        .bearer_auth("key-two")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::NOT_FOUND, "not-found").await;
    // An image record without its map (audit_store_maps off): 409 naming the setting.
    let r = post(&format!("/v1/audit/records/{img}/replay"), "key-two")
        .send()
        .await
        .unwrap();
    let p = problem(r, StatusCode::CONFLICT, "not-replayable").await;
    assert!(p["detail"].as_str().unwrap().contains("audit_store_maps"), "{p}");
    // A prediction: not an explanation.
    let r = post(&format!("/v1/audit/records/{pred}/replay"), "key-two")
        .send()
        .await
        .unwrap();
    let p = problem(r, StatusCode::CONFLICT, "not-replayable").await;
    assert!(p["detail"].as_str().unwrap().contains("prediction"), "{p}");
    // The tabular record replays.
    let (status, r) = send(post(&format!("/v1/audit/records/{tab}/replay"), "key-two")).await;
    assert_eq!((status, &r["equal"]), (StatusCode::OK, &json!(true)), "{r}");
    assert_eq!(r["agreement"], "bitwise");
    s.stop().await.unwrap();

    // Without stored inputs: 409 naming audit_store_inputs; an erased input (the ledger's
    // crypto-shredding leaves it unreadable: null): 409 saying so.
    erase_input(&data, &erased).await;
    let mut c = audited(&models, &data);
    c.audit_store_inputs = false;
    c.api_keys = keys.clone();
    let s = start(c).await;
    let post = |path: &str, key: &str| http.post(url(&s, path)).bearer_auth(key);
    let (_, bare) = send(
        post("/v1/models/breast-cancer/explain/saliency", "key-one").json(&json!({"features": holdout_features()})),
    )
    .await;
    let bare = bare["audit_record"]["id"].as_str().unwrap().to_string();
    let r = post(&format!("/v1/audit/records/{bare}/replay"), "key-two")
        .send()
        .await
        .unwrap();
    let p = problem(r, StatusCode::CONFLICT, "not-replayable").await;
    assert!(p["detail"].as_str().unwrap().contains("audit_store_inputs"), "{p}");
    let r = post(&format!("/v1/audit/records/{erased}/replay"), "key-two")
        .send()
        .await
        .unwrap();
    let p = problem(r, StatusCode::CONFLICT, "not-replayable").await;
    assert!(p["detail"].as_str().unwrap().contains("erased"), "{p}");
    s.stop().await.unwrap();

    // The model removed since the record: 409, the model with that sha256 is no longer loaded.
    std::fs::remove_dir_all(models.join("breast-cancer")).unwrap();
    let mut c = audited(&models, &data);
    c.api_keys = keys;
    let s = start(c).await;
    let r = http
        .post(url(&s, &format!("/v1/audit/records/{tab}/replay")))
        .bearer_auth("key-two")
        .send()
        .await
        .unwrap();
    let p = problem(r, StatusCode::CONFLICT, "not-replayable").await;
    assert!(p["detail"].as_str().unwrap().contains("no longer loaded"), "{p}");
    s.stop().await.unwrap();
}

/// Sets the record's stored input to null in the database, as an erasure leaves it.
async fn erase_input(data: &Path, id: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", data.join("audit.db").display()))
        .await
        .unwrap();
    let body: String = sqlx::query_scalar("SELECT body FROM audit_records WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut record: Value = serde_json::from_str(&body).unwrap();
    record["inputs"][0]["data"] = Value::Null;
    sqlx::query("UPDATE audit_records SET body = $1 WHERE id = $2")
        .bind(serde_json::to_string(&record).unwrap())
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_report_tells_the_decision_in_words() {
    let models = temp_dir("report-models");
    copy_bundled("fashion-cnn", &models);
    copy_bundled("breast-cancer-forest", &models);
    described_models(&models);
    let s = start(audited(&models, &temp_dir("report-data"))).await;
    let http = reqwest::Client::new();
    let features = json!({"features": holdout_features()});
    let report = |id: &str, query: &str| {
        let u = url(&s, &format!("/v1/audit/records/{id}/report{query}"));
        let http = http.clone();
        async move {
            let r = http.get(u).send().await.unwrap();
            let status = r.status();
            let ct = r.headers()["content-type"].to_str().unwrap().to_string();
            let csp = r
                .headers()
                .get("content-security-policy")
                .map(|v| v.to_str().unwrap().to_string());
            let text = r.text().await.unwrap();
            assert_eq!(status, StatusCode::OK, "{text}");
            assert!(ct.starts_with("text/html"), "{ct}");
            assert!(csp.unwrap().contains("default-src 'none'"));
            common::assert_discloses_nothing(&text);
            text
        }
    };
    let (_, shap) = send(
        http.post(url(&s, "/v1/models/breast-cancer/explain/kernel-shap"))
            .json(&json!({"features": holdout_features(), "seed": 3, "evaluate": [{"metric": "deletion"}]})),
    )
    .await;
    let id = shap["audit_record"]["id"].as_str().unwrap();
    let html = report(id, "").await;
    let label = shap["target"]["label"].as_str().unwrap();
    assert!(html.contains(&format!("<h1>Decision: {label}</h1>")), "{html}");
    let top = shap["features"][0]["name"].as_str().unwrap();
    assert!(
        html.contains(&format!("<strong>{top}</strong>")),
        "the main factor named: {html}"
    );
    // Descriptions and the version from the manifest, escaped.
    assert!(
        html.contains(&format!(
            "the {top}, in plain words &lt;script&gt;alert(1)&lt;/script&gt;"
        )),
        "{html}"
    );
    assert!(!html.contains("<script>"));
    assert!(html.contains("2.1 &lt;b&gt;"), "{html}");
    assert!(html.contains(shap["model_sha256"].as_str().unwrap()));
    assert!(
        html.contains("efficiency gap") && html.contains("deletion"),
        "faithfulness figures: {html}"
    );
    assert!(html.contains("data:image/png;base64,"), "the bar chart inline");
    assert!(html.contains("?counterfactual=true"), "{html}");
    let seq = shap["audit_record"]["seq"].as_i64().unwrap();
    assert!(
        html.contains(&format!("<th>Position in the audit chain</th><td>{seq}</td>")),
        "{html}"
    );
    // A counterfactual computed on request (and recorded).
    let html = report(id, "?counterfactual=true").await;
    assert!(html.contains("What would change it to"), "{html}");
    assert!(html.contains("Computed for this report"), "{html}");
    let r = http
        .get(url(&s, &format!("/v1/audit/records/{id}/report?counterfactual=maybe")))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_REQUEST, "invalid-request").await;
    // A prediction recorded with its uncertainty and no explanation: the decision and how sure.
    let (_, pred) = send(
        http.post(url(&s, "/v1/models/breast-cancer/predict"))
            .json(&json!({"features": holdout_features(), "uncertainty": {"params": {"samples": 20}}})),
    )
    .await;
    let html = report(pred["audit_record"]["id"].as_str().unwrap(), "").await;
    let label = pred["predictions"][0]["label"].as_str().unwrap();
    assert!(html.contains(&format!("<h1>Decision: {label}</h1>")), "{html}");
    assert!(
        html.contains("predictive entropy") && html.contains("recorded without an explanation"),
        "{html}"
    );
    // A counterfactual answer's report shows the recorded counterfactual.
    let (_, cf) = send(
        http.post(url(&s, "/v1/models/breast-cancer-forest/explain/counterfactual"))
            .json(&features),
    )
    .await;
    let html = report(cf["audit_record"]["id"].as_str().unwrap(), "").await;
    assert!(
        html.contains("What would change it to") && html.contains("As recorded"),
        "{html}"
    );
    let first_change = cf["details"]["counterfactuals"][0]["changes"][0]["feature"]
        .as_str()
        .unwrap();
    assert!(html.contains(first_change), "{html}");
    // An image: the heat map over the stored image, and where it looked in words.
    let b64 = base64::engine::general_purpose::STANDARD.encode(fashion_png());
    let (_, sal) = send(
        http.post(url(&s, "/v1/models/fashion-cnn/explain/grad-cam"))
            .json(&json!({"image": b64})),
    )
    .await;
    let html = report(sal["audit_record"]["id"].as_str().unwrap(), "").await;
    assert!(
        html.contains("data:image/png;base64,") && html.contains("of the image"),
        "{html}"
    );
    assert!(
        html.contains("only for tabular") || html.contains("tabular decisions only"),
        "{html}"
    );
    s.stop().await.unwrap();
}

#[test]
fn feature_descriptions_must_name_features() {
    let dir = temp_dir("described");
    described_models(&dir);
    let m = explaind::runtime::registry::load_model(&dir.join("breast-cancer")).unwrap();
    assert_eq!(m.spec.version.as_deref(), Some("2.1 <b>"));
    assert_eq!(m.spec.tabular.as_ref().unwrap().descriptions.len(), 30);
    let toml = dir.join("breast-cancer/model.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replacen(
        "descriptions = { ",
        "descriptions = { \"shoe size\" = \"x\", ",
        1,
    );
    std::fs::write(&toml, text).unwrap();
    let err = explaind::runtime::registry::load_model(&dir.join("breast-cancer"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("tabular.descriptions") && err.contains("shoe size"),
        "{err}"
    );
}
