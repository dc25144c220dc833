//! The bounded executor under pressure: a full queue refuses at once with 503 and Retry-After,
//! deadlines cancel, panics are contained, and shutdown finishes in-flight work. A deliberately
//! slow model (built here with explaind's graph builder) keeps workers busy.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use explaind::executor::{JobContext, Task};
use explaind::runtime::{RuntimeError, WorkerRuntime};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn slow_service_config(name: &str, layers: usize) -> explaind::config::Config {
    let dir = temp_dir(name);
    write_model(&dir, "slow", &slow_model(layers), SLOW_MANIFEST);
    let mut config = test_config(&dir);
    config.workers = 1;
    config.queue_capacity = 1;
    config.retry_after_secs = 2;
    config
}

async fn slow_request(http: &reqwest::Client, endpoint: &str) -> (StatusCode, Option<String>, Duration, Value) {
    let start = Instant::now();
    let r = http
        .post(endpoint)
        .json(&json!({"features": [1, 2, 3, 4, 5, 6, 7, 8]}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let body: Value = r.json().await.unwrap();
    (status, retry, start.elapsed(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_refuses_at_once_and_accepted_jobs_complete() {
    let s = start(slow_service_config("overload", 24)).await;
    let http = reqwest::Client::new();
    let endpoint = url(&s, "/v1/models/slow/predict");
    // One pass alone, to know what "at once" means next to it.
    let (status, _, alone, _) = slow_request(&http, &endpoint).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        alone > Duration::from_millis(100),
        "the slow model ran in {alone:?}; make it slower"
    );

    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (http, endpoint, barrier) = (http.clone(), endpoint.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            slow_request(&http, &endpoint).await
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let (status, retry, took, body) = t.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                assert_eq!(retry.as_deref(), Some("2"), "Retry-After");
                assert_eq!(body["type"], "/problems/overloaded");
                assert!(
                    took < alone / 2 + Duration::from_millis(50),
                    "a refusal took {took:?} (one pass: {alone:?})"
                );
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    // One worker plus one queue slot: two admitted, the rest refused.
    assert!((1..=2).contains(&ok), "{ok} accepted");
    assert_eq!(ok + refused, 8);
    let metrics = http
        .get(url(&s, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("explaind_jobs_rejected_total {refused}")),
        "{metrics}"
    );
    // Healthy afterwards.
    assert_eq!(
        http.get(url(&s, "/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(slow_request(&http, &endpoint).await.0, StatusCode::OK);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_past_its_deadline_is_cancelled_and_the_worker_carries_on() {
    let mut config = slow_service_config("deadline", 12);
    config.queue_capacity = 4;
    config.job_deadline_ms = 60;
    let s = start(config).await;
    let http = reqwest::Client::new();
    let endpoint = url(&s, "/v1/models/slow/predict");
    // The first occupies the worker past its deadline; the second waits in the queue past its own.
    let (a, b) = tokio::join!(slow_request(&http, &endpoint), slow_request(&http, &endpoint));
    for (status, _, took, body) in [a, b] {
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
        assert_eq!(body["type"], "/problems/deadline-exceeded");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    // The worker finishes the running pass, skips the expired queued job, and serves again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fast = url(&s, "/healthz");
    assert_eq!(http.get(fast).send().await.unwrap().status(), StatusCode::OK);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_finishes_requests_in_flight() {
    let s = start(slow_service_config("shutdown", 8)).await;
    let http = reqwest::Client::new();
    let endpoint = url(&s, "/v1/models/slow/predict");
    let in_flight = tokio::spawn(async move { slow_request(&http, &endpoint).await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let addr = s.addr;
    s.stop().await.unwrap();
    let (status, _, _, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        reqwest::get(format!("http://{addr}/healthz")).await.is_err(),
        "still accepting after shutdown"
    );
}

struct Panics;
impl Task for Panics {
    type Output = ();
    fn run(self, _: &mut WorkerRuntime, _: &JobContext) -> Result<(), RuntimeError> {
        panic!("deliberate test panic")
    }
}

struct ModelNames;
impl Task for ModelNames {
    type Output = usize;
    fn run(self, rt: &mut WorkerRuntime, _: &JobContext) -> Result<usize, RuntimeError> {
        rt.model("slow").map(|_| 1)
    }
}

#[tokio::test]
async fn a_panicking_job_reports_an_error_and_the_worker_lives_on() {
    let s = start(slow_service_config("panic", 1)).await;
    let executor = s.state.executor.clone();
    for _ in 0..3 {
        let err = executor.submit(Panics).await.unwrap_err();
        assert!(err.to_string().contains("deliberate test panic"), "{err}");
        assert_eq!(
            executor.submit(ModelNames).await.unwrap(),
            1,
            "the single worker still runs jobs"
        );
    }
    s.stop().await.unwrap();
}

/// Holds its worker for a while and says when it ran.
struct Holds {
    bytes: u64,
}
impl Task for Holds {
    type Output = (Instant, Instant);
    fn run(self, _: &mut WorkerRuntime, _: &JobContext) -> Result<(Instant, Instant), RuntimeError> {
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        Ok((started, Instant::now()))
    }
    fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_together_plan_more_than_max_running_job_bytes_run_one_after_another() {
    let mut config = slow_service_config("running-bytes", 1);
    config.workers = 3;
    config.queue_capacity = 8;
    config.max_running_job_bytes = 100 << 20;
    let s = start(config).await;
    let executor = s.state.executor.clone();
    let overlapping = |spans: &[(Instant, Instant)]| {
        spans
            .iter()
            .enumerate()
            .any(|(i, a)| spans[i + 1..].iter().any(|b| a.0 < b.1 && b.0 < a.1))
    };
    let run = |bytes: u64| {
        let executor = executor.clone();
        tokio::spawn(async move { executor.submit(Holds { bytes }).await.unwrap() })
    };
    // Three of 60 MiB: any two would hold 120 MiB, so each runs alone, one after another.
    let big: Vec<_> = (0..3).map(|_| run(60 << 20)).collect();
    let mut spans = Vec::new();
    for t in big {
        spans.push(t.await.unwrap());
    }
    assert!(!overlapping(&spans), "large jobs ran side by side: {spans:?}");
    // Three of 30 MiB fit together: they run side by side on the three workers.
    let small: Vec<_> = (0..3).map(|_| run(30 << 20)).collect();
    let mut spans = Vec::new();
    for t in small {
        spans.push(t.await.unwrap());
    }
    assert!(overlapping(&spans), "small jobs waited for each other: {spans:?}");
    // One larger than the whole budget still runs.
    run(1 << 30).await.unwrap();
    s.stop().await.unwrap();
}
