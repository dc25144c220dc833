//! Asynchronous jobs on a real server: progress, Server-Sent Events, results, expiry, cancellation
//! that frees the worker, and the shared bounded queue. The work is KernelSHAP on a deliberately
//! slow model (each pass two 1024x1024 matrix products per layer), so jobs last long enough to watch.

use crate::common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{start, temp_dir, test_config, url, write_slow_tabular};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn slow_service(ttl_secs: u64) -> explaind::Service {
    let dir = temp_dir("jobs-models");
    write_slow_tabular(&dir, 2);
    let mut c = test_config(&dir);
    c.workers = 1;
    c.queue_capacity = 0;
    c.max_batch = 1; // the slow model takes one row at a time
    c.job_ttl_secs = ttl_secs;
    start(c).await
}

fn job(samples: usize) -> Value {
    json!({"model": "slow", "method": "kernel-shap", "features": [1, 2, 3, 4, 5, 6, 7, 8],
           "params": {"samples": samples, "background_rows": 1}})
}

async fn submit(http: &reqwest::Client, s: &explaind::Service, body: Value) -> Value {
    let r = http.post(url(s, "/v1/jobs")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(location, format!("/v1/jobs/{}", v["id"].as_str().unwrap()));
    v
}

async fn view(http: &reqwest::Client, s: &explaind::Service, id: &str) -> (StatusCode, Value) {
    let r = http.get(url(s, &format!("/v1/jobs/{id}"))).send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_report_progress_stream_events_finish_and_expire() {
    let s = slow_service(2).await;
    let http = reqwest::Client::new();
    let mut body = job(24);
    body["audit"] = json!(true);
    let v = submit(&http, &s, body).await;
    let id = v["id"].as_str().unwrap().to_string();
    assert!(matches!(v["state"].as_str(), Some("queued" | "running")), "{v}");
    // Server-Sent Events: progress while it runs, then `done` with the result.
    let mut events = http
        .get(url(&s, &format!("/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !text.contains("event: done") {
        assert!(Instant::now() < deadline, "no `done` event: {text}");
        match tokio::time::timeout(Duration::from_secs(60), events.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            _ => panic!("the event stream ended early: {text}"),
        }
    }
    let progress: Vec<usize> = text
        .split("\n\n")
        .filter(|e| e.contains("event: progress"))
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["progress"]["done"]
                .as_u64()
                .unwrap() as usize
        })
        .collect();
    assert!(progress.len() >= 3, "progress events: {progress:?}");
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress only advances: {progress:?}"
    );
    assert!(progress.last() > progress.first(), "{progress:?}");
    // The finished job holds the explain endpoint's answer.
    let (status, done) = view(&http, &s, &id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["result"]["method"], "kernel-shap");
    assert_eq!(done["result"]["attributions"]["values"].as_array().unwrap().len(), 8);
    // Asked to be audited: the record was written when the job finished.
    let record_id = done["result"]["audit_record"]["id"].as_str().unwrap();
    let r = http
        .get(url(&s, &format!("/v1/audit/records/{record_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let record: Value = r.json().await.unwrap();
    assert_eq!(record["method"], "kernel-shap");
    assert_eq!(record["explanation_id"], done["result"]["id"]);
    let p = &done["progress"];
    assert!(
        p["done"].as_u64().unwrap() >= 24 && p["planned"].as_u64().unwrap() > 0,
        "{p}"
    );
    // Kept for job_ttl_secs, then forgotten.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, _) = view(&http, &s, &id).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_job_stops_it_frees_the_worker_and_a_full_queue_refuses_jobs() {
    let s = slow_service(60).await;
    let http = reqwest::Client::new();
    let v = submit(&http, &s, job(2000)).await;
    let id = v["id"].as_str().unwrap().to_string();
    // Wait until it runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = view(&http, &s, &id).await;
        if v["state"] == "running" && v["progress"]["done"].as_u64().unwrap() > 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never ran: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The one worker is busy and the queue holds nothing more: a second job is refused at once.
    let r = http.post(url(&s, "/v1/jobs")).json(&job(10)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    // Cancel: the answer says so, the work stops, and the worker takes new work at once.
    let r = http.delete(url(&s, &format!("/v1/jobs/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["state"], "cancelled");
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http
            .post(url(&s, "/v1/models/slow/predict"))
            .json(&json!({"features": [1, 2, 3, 4, 5, 6, 7, 8]}))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            break;
        }
        assert_eq!(
            r.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            r.text().await.unwrap()
        );
        assert!(Instant::now() < deadline, "the worker was not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("worker free {:?} after the cancel", started.elapsed());
    let (_, a) = view(&http, &s, &id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, b) = view(&http, &s, &id).await;
    assert_eq!(b["state"], "cancelled");
    assert_eq!(a["progress"], b["progress"], "no work after the cancel");
    assert!(b["progress"]["done"].as_u64().unwrap() < 2000);
    // Errors: ids that are not UUIDs, unknown jobs, PNG asked of a job, an unknown model.
    let (status, v) = view(&http, &s, "nope").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, _) = view(&http, &s, "6f1c1f0e-3b1a-4c38-9a43-2b8f1f1f0a00").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut png = job(10);
    png["format"] = json!("png");
    let r = http.post(url(&s, "/v1/jobs")).json(&png).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let mut other = job(10);
    other["model"] = json!("missing");
    let r = http.post(url(&s, "/v1/jobs")).json(&other).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_running_jobs_instead_of_waiting_for_them() {
    let s = slow_service(60).await;
    let http = reqwest::Client::new();
    let v = submit(&http, &s, job(2000)).await;
    let id = v["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while view(&http, &s, &id).await.1["state"] != "running" {
        assert!(Instant::now() < deadline, "never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    s.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stop waited {:?} for a job of 2,000 slow passes",
        started.elapsed()
    );
}

/// Follows a job's event stream to its end; returns every event as (name, data).
async fn events(http: &reqwest::Client, s: &explaind::Service, id: &str) -> Vec<(String, Value)> {
    let mut stream = http.get(url(s, &format!("/v1/jobs/{id}/events"))).send().await.unwrap();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !["event: done", "event: failed", "event: cancelled"]
        .iter()
        .any(|e| text.contains(e))
        || !text.ends_with("\n\n")
    {
        assert!(Instant::now() < deadline, "no final event: {text}");
        match tokio::time::timeout(Duration::from_secs(120), stream.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            _ => panic!("the event stream ended early: {text}"),
        }
    }
    text.split("\n\n")
        .filter_map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = e.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_string(), serde_json::from_str(data).unwrap()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_as_a_job_counts_progress_in_model_rows_and_never_past_its_plan() {
    let s = common::start_bundled().await;
    let http = reqwest::Client::new();
    let image = base64::engine::general_purpose::STANDARD.encode(common::fashion_png());
    let features = common::breast_cancer_holdout()[0].clone();
    let mut checked = 0;
    for model in ["fashion-cnn", "breast-cancer", "breast-cancer-forest", "movie-reviews"] {
        let info: Value = http
            .get(url(&s, &format!("/v1/models/{model}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for method in info["methods"].as_array().unwrap() {
            let method = method.as_str().unwrap();
            let mut body = json!({"model": model, "method": method, "seed": 3});
            if model == "fashion-cnn" {
                body["image"] = json!(image);
            } else if model == "movie-reviews" {
                body["text"] = json!("A moving story, but the second hour is dull and far too long.");
            } else {
                body["features"] = json!(features);
            }
            // Two targets and a metric on one method of each model: the plan counts them too.
            if method == "saliency" || method == "kernel-shap" {
                body["target"] = json!({"top_k": 2});
                body["evaluate"] = json!(["complexity", "deletion"]);
            }
            let v = submit(&http, &s, body.clone()).await;
            let id = v["id"].as_str().unwrap().to_string();
            let seen = events(&http, &s, &id).await;
            let (last_name, last) = seen.last().unwrap();
            assert_eq!(last_name, "done", "{model}/{method}: {last}");
            for (_, e) in &seen {
                let p = &e["progress"];
                assert!(p["done"].as_u64() <= p["planned"].as_u64(), "{model}/{method}: {p}");
            }
            let (_, job) = view(&http, &s, &id).await;
            assert_eq!(
                job["progress"], last["progress"],
                "{model}/{method}: the stream and the job agree"
            );
            // The same request answered at once gives the same answer, number for number (ids,
            // timings and work done aside).
            let mut asked = body.clone();
            asked
                .as_object_mut()
                .unwrap()
                .retain(|k, _| k != "model" && k != "method");
            let mut now =
                common::ok_json(common::post_json(&s, &format!("/v1/models/{model}/explain/{method}"), &asked).await)
                    .await;
            let mut later = job["result"].clone();
            for answer in [&mut now, &mut later] {
                answer.as_object_mut().unwrap().retain(|k, _| k != "id" && k != "stats");
                // What each target cost, like `stats`, differs from run to run: the worker's time,
                // and passes made once and kept (PatternNet's patterns fitted by the first).
                let targets = match answer["explanations"].as_array_mut() {
                    Some(list) => list.iter_mut().collect::<Vec<_>>(),
                    None => vec![answer],
                };
                for target in targets {
                    if let Some(details) = target["details"].as_object_mut() {
                        details.remove("cost");
                        details.remove("patterns");
                    }
                }
            }
            assert!(
                now == later,
                "{model}/{method}: the job's answer differs from the synchronous one"
            );
            let stats = &job["result"]["stats"];
            let (rows, planned) = (
                stats["model_rows"].as_u64().unwrap(),
                stats["planned_rows"].as_u64().unwrap(),
            );
            assert_eq!(
                job["progress"]["done"].as_u64().unwrap(),
                rows,
                "{model}/{method}: progress counts the answer's model rows"
            );
            assert!(
                rows <= planned,
                "{model}/{method}: ran {rows} model rows of {planned} planned"
            );
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} methods ran");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_seen_and_cancelled_only_by_its_caller_and_each_caller_has_a_quota() {
    let dir = temp_dir("jobs-keys");
    write_slow_tabular(&dir, 2);
    let mut c = test_config(&dir);
    c.workers = 1;
    c.queue_capacity = 4;
    c.max_batch = 1;
    c.max_jobs_per_caller = 2;
    let key = |name: &str, scopes: &str| -> explaind::config::ApiKey {
        serde_json::from_value(json!({"name": name, "sha256": explaind::http::auth::hash_key(name),
            "scopes": scopes.split(',').collect::<Vec<_>>()}))
        .unwrap()
    };
    c.api_keys = vec![
        key("alpha", "predict"),
        key("beta", "predict"),
        key("ops", "predict,admin"),
    ];
    let s = start(c).await;
    let http = reqwest::Client::new();
    let post = |who: &'static str| http.post(url(&s, "/v1/jobs")).bearer_auth(who).json(&job(400)).send();
    let r = post("alpha").await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let a: Value = r.json().await.unwrap();
    let id = a["id"].as_str().unwrap();
    assert_eq!(a["owner"], "alpha");
    for (who, status) in [
        ("beta", StatusCode::NOT_FOUND),
        ("alpha", StatusCode::OK),
        ("ops", StatusCode::OK),
    ] {
        for path in [format!("/v1/jobs/{id}"), format!("/v1/jobs/{id}/events")] {
            let r = http.get(url(&s, &path)).bearer_auth(who).send().await.unwrap();
            assert_eq!(r.status(), status, "{who} GET {path}");
        }
    }
    let r = http
        .delete(url(&s, &format!("/v1/jobs/{id}")))
        .bearer_auth("beta")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "beta cannot cancel alpha's job");
    // alpha's quota is two unfinished jobs: the third is refused with 429; beta's quota is its own.
    assert_eq!(post("alpha").await.unwrap().status(), StatusCode::ACCEPTED);
    let r = post("alpha").await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "/problems/too-many-jobs", "{p}");
    assert_eq!(post("beta").await.unwrap().status(), StatusCode::ACCEPTED);
    // The owner cancels; the admin sees it cancelled; a place is free again.
    let r = http
        .delete(url(&s, &format!("/v1/jobs/{id}")))
        .bearer_auth("alpha")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = http
        .get(url(&s, &format!("/v1/jobs/{id}")))
        .bearer_auth("ops")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "cancelled");
    assert_eq!(post("alpha").await.unwrap().status(), StatusCode::ACCEPTED);
    s.stop().await.unwrap();
}
