//! API keys and CORS on a real server: open probes, 401 without or with a bad key, 403 without the
//! audit scope, the caller's key name in audit records, and CORS headers only for allowed origins.

use crate::common;

use common::{frontend_and_auditor_keys, root, start, start_bundled, test_config, url};
use explaind::config::AuditMode;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_everything_but_probes_and_scope_the_audit_log() {
    let mut c = test_config(&root().join("models"));
    c.audit = AuditMode::All;
    c.api_keys = frontend_and_auditor_keys();
    let s = start(c).await;
    let http = reqwest::Client::new();
    for open in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(
            http.get(url(&s, open)).send().await.unwrap().status(),
            StatusCode::OK,
            "{open}"
        );
    }
    let r = http.get(url(&s, "/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "/problems/unauthorized");
    let r = http
        .get(url(&s, "/v1/models"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        http.get(url(&s, "/v1/models"))
            .bearer_auth("key-one")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // The caller's key name goes into the record; only the audit scope reads it back.
    let holdout: Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/breast_cancer_holdout.json")).unwrap())
            .unwrap();
    let v: Value = http
        .post(url(&s, "/v1/models/breast-cancer/predict"))
        .bearer_auth("key-one")
        .json(&json!({"features": holdout["cases"][0]["features"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = v["audit_record"]["id"].as_str().unwrap();
    let r = http
        .get(url(&s, &format!("/v1/audit/records/{id}")))
        .bearer_auth("key-one")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let record: Value = http
        .get(url(&s, &format!("/v1/audit/records/{id}")))
        .bearer_auth("key-two")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(record["caller"], "frontend");
    assert!(record["request_id"].is_string());
    // Replacing a reference set needs its own scope; reading one needs only `predict`.
    let r = http
        .post(url(&s, "/v1/models/fashion-cnn/reference"))
        .bearer_auth("key-two")
        .header("content-type", "application/x-ndjson")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = http
        .get(url(&s, "/v1/models/fashion-cnn/reference/suspects"))
        .bearer_auth("key-one")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_only_allowed_origins() {
    let mut c = test_config(&root().join("models"));
    c.cors_allowed_origins = vec!["https://app.example".into()];
    let s = start(c).await;
    let http = reqwest::Client::new();
    let r = http
        .get(url(&s, "/v1/models"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example");
    let expose = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        expose.contains("x-explanation-id") && expose.contains("x-audit-record") && expose.contains("server-timing"),
        "{expose}"
    );
    // The Resource Timing API may show it the answers' Server-Timing too.
    assert_eq!(r.headers()["timing-allow-origin"], "https://app.example");
    let r = http
        .request(
            reqwest::Method::OPTIONS,
            url(&s, "/v1/models/fashion-cnn/explain/saliency"),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example");
    let r = http
        .get(url(&s, "/v1/models"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    assert!(!r.headers().contains_key("timing-allow-origin"));
    s.stop().await.unwrap();
    // Off by default.
    let s = start_bundled().await;
    let r = http
        .get(url(&s, "/v1/models"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    s.stop().await.unwrap();
}
