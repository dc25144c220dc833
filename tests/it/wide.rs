//! Wide tables: KernelSHAP and LIME over 2,048 features answer within the default memory budget
//! (`max_job_bytes`), KernelSHAP equal to the exact linear SHAP values within its standard errors;
//! their cost estimate moves with `samples`; and a job cancelled while its regression is being
//! solved (Cholesky, least-norm conjugate gradients, KernelSHAP's conditioning test) frees its
//! worker within 100 ms, and SIGTERM then is not delayed. A real server on loopback throughout.

use std::time::{Duration, Instant};

use crate::common;
use common::*;
use explaind::onnx::builder::GraphBuilder;
use reqwest::StatusCode;
use serde_json::{json, Value};

const WIDE: usize = 2048;
const BACKGROUND_ROWS: usize = 10;

/// Output 1's weight on feature `i` (output 0 weighs every feature 0.01).
fn weight(i: usize) -> f32 {
    ((i * 37) % 17) as f32 / 8.0 - 1.0
}

/// Writes `wide`: y = x W + b over 2,048 features, 2 outputs, with 10 background rows; returns
/// the background rows.
fn write_wide(dir: &std::path::Path) -> Vec<Vec<f32>> {
    let mut g = GraphBuilder::new("wide", 17);
    let x = g.input("input", &[-1, WIDE as i64]);
    let w: Vec<f32> = (0..WIDE).flat_map(|i| [0.01, weight(i)]).collect();
    let wn = g.constant("w", &[WIDE as i64, 2], &w);
    let b = g.constant("b", &[2], &[0.3, -0.2]);
    let mm = g.node("MatMul", &[&x, &wn], vec![]);
    g.node("Add", &[&mm, &b], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    let names: Vec<String> = (0..WIDE).map(|i| format!("f{i}")).collect();
    let manifest = format!(
        "task = \"tabular-classification\"\nscores = \"raw\"\nlabels = [\"a\", \"b\"]\n[tabular]\nfeatures = {names:?}\n\
         background = \"background.csv\"\n"
    );
    write_model(dir, "wide", &g.build(), &manifest);
    let mut rng = Rng::new(5);
    let rows: Vec<Vec<f32>> = (0..BACKGROUND_ROWS)
        .map(|_| (0..WIDE).map(|_| rng.uniform(-2.0, 2.0)).collect())
        .collect();
    let mut csv = names.join(",") + "\n";
    for r in &rows {
        csv += &(r.iter().map(f32::to_string).collect::<Vec<_>>().join(",") + "\n");
    }
    std::fs::write(dir.join("wide/background.csv"), csv).unwrap();
    rows
}

/// The explained row.
fn input() -> Vec<f32> {
    let mut rng = Rng::new(9);
    (0..WIDE).map(|_| rng.uniform(-2.0, 2.0)).collect()
}

async fn wide_service(config: impl FnOnce(&mut explaind::config::Config)) -> (explaind::Service, Vec<Vec<f32>>) {
    let dir = temp_dir("wide-models");
    let rows = write_wide(&dir);
    let mut c = test_config(&dir);
    config(&mut c);
    (start(c).await, rows)
}

async fn explain(http: &reqwest::Client, s: &explaind::Service, method: &str, params: Value) -> (StatusCode, Value) {
    let body = json!({"features": input(), "target": 1, "seed": 1, "params": params});
    let r = http
        .post(url(s, &format!("/v1/models/wide/explain/{method}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// The method's own arithmetic (sampling and regression: the worker's time less ONNX Runtime's)
/// as a share of the request's time.
fn report(method: &str, v: &Value) {
    let st = &v["stats"];
    let (wall, worker, model) = (
        st["wall_ms"].as_f64().unwrap(),
        st["worker_ms"].as_f64().unwrap(),
        st["model_ms"].as_f64().unwrap(),
    );
    eprintln!(
        "{method} over {WIDE} features, {} samples: wall {wall:.0} ms, worker {worker:.0} ms, model {model:.0} ms; \
         sampling and regression {:.0}% of the request",
        v["details"]["samples"],
        100.0 * (worker - model) / wall
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_shap_and_lime_over_2048_features_answer_within_the_default_budget() {
    let (s, rows) = wide_service(|_| {}).await;
    let http = reqwest::Client::new();
    let x = input();
    let (status, v) = explain(
        &http,
        &s,
        "kernel-shap",
        json!({"samples": 256, "background_rows": BACKGROUND_ROWS}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    report("kernel-shap", &v);
    let d = &v["details"];
    let phi = numbers(&d["shapley_values"]);
    let se = numbers(&d["standard_errors"]);
    assert!(
        d["efficiency_gap"].as_f64().unwrap().abs() < 1e-6,
        "{}",
        d["efficiency_gap"]
    );
    // phi_i = w_i (x_i - E[x_i]) over the background: each within its standard error's reach,
    // and the errors honest (their ratio to the standard errors about 1 in size).
    let mut ratios = Vec::new();
    for i in 0..WIDE {
        let mean = rows.iter().map(|r| f64::from(r[i])).sum::<f64>() / rows.len() as f64;
        let exact = f64::from(weight(i)) * (f64::from(x[i]) - mean);
        assert!(se[i].is_finite() && se[i] > 0.0, "feature {i}: {}", se[i]);
        ratios.push((phi[i] - exact) / se[i]);
    }
    let within = |k: f64| ratios.iter().filter(|r| r.abs() <= k).count() as f64 / WIDE as f64;
    let rms = (ratios.iter().map(|r| r * r).sum::<f64>() / WIDE as f64).sqrt();
    eprintln!(
        "kernel-shap: within 1/2/3 SE {:.3}/{:.3}/{:.3}, RMS error / SE {rms:.2}",
        within(1.0),
        within(2.0),
        within(3.0)
    );
    assert!(
        within(2.0) >= 0.85 && within(4.0) >= 0.99,
        "{:.3} within 2 SE",
        within(2.0)
    );
    assert!((0.5..2.0).contains(&rms), "RMS error / SE {rms}");
    // LIME, the same size.
    let (status, v) = explain(&http, &s, "lime", json!({"samples": 256})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    report("lime", &v);
    let w = numbers(&v["details"]["weights"]);
    assert_eq!(w.len(), WIDE);
    assert!(w.iter().all(|w| w.is_finite()));
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_estimate_moves_with_samples() {
    // 16 MiB: 100 samples over 2,048 features fit; 1,000 and 2,000 do not, and the figure grows
    // with them (it was over a gigabyte at any number of samples).
    let (s, _) = wide_service(|c| c.max_job_bytes = 16 << 20).await;
    let http = reqwest::Client::new();
    let mut refused = Vec::new();
    for (method, params) in [("lime", json!({})), ("kernel-shap", json!({"background_rows": 1}))] {
        let ask = |samples: usize| {
            let mut params = params.clone();
            params["samples"] = samples.into();
            params
        };
        let (status, v) = explain(&http, &s, method, ask(100)).await;
        assert_eq!(status, StatusCode::OK, "{method}: {v}");
        for samples in [1000, 2000] {
            let (status, v) = explain(&http, &s, method, ask(samples)).await;
            assert!(status.is_client_error(), "{method} {samples}: {status} {v}");
            let detail = v["detail"].as_str().unwrap().to_string();
            let mib: u64 = detail
                .split(" would hold ")
                .nth(1)
                .and_then(|rest| rest.split(" MiB").next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{detail}"));
            refused.push((method, samples, mib));
        }
    }
    eprintln!("refused at 16 MiB: {refused:?}");
    assert!(
        2 * refused[0].2 < refused[1].2 && 2 * refused[2].2 < refused[3].2,
        "{refused:?}"
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_mid_solver_frees_its_worker_at_once() {
    let (s, _) = wide_service(|c| {
        c.workers = 1;
        c.queue_capacity = 0;
    })
    .await;
    let http = reqwest::Client::new();
    let body = json!({"model": "wide", "method": "lime", "features": input(), "params": {"samples": 2000}});
    // Every model row run and the job still running: it is fitting its local model.
    let id = in_solver(&http, &url(&s, ""), &body, 2000, Duration::from_millis(200)).await;
    let stopped = cancel_until_worker_free(&http, &s, &id, "lime").await;
    eprintln!("lime over {WIDE} features: worker free {stopped:?} after the cancel, mid-solver");
    assert!(stopped < Duration::from_secs(1), "{stopped:?}");
    s.stop().await.unwrap();
}

/// Submits `body` as a job at `base` and waits until every one of its `rows` model rows has run
/// and it still runs (it is in its solver), then `settle` longer; returns the job's id.
async fn in_solver(http: &reqwest::Client, base: &str, body: &Value, rows: u64, settle: Duration) -> String {
    // The one worker may still be winding down a job cancelled just before (busy: 503).
    let admitted = Instant::now() + Duration::from_secs(30);
    let r = loop {
        let r = http.post(format!("{base}/v1/jobs")).json(body).send().await.unwrap();
        if r.status() != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > admitted {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v: Value = http
            .get(format!("{base}/v1/jobs/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["state"] == "running" && v["progress"]["done"].as_u64().unwrap() >= rows {
            break;
        }
        assert!(
            v["state"] == "running" || v["state"] == "queued",
            "the fit ended first: {v}"
        );
        assert!(Instant::now() < deadline, "never reached the solver: {v}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(settle).await;
    let v: Value = http
        .get(format!("{base}/v1/jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "running", "the solver ended before the cancel: {v}");
    id
}

/// Cancels job `id` and waits until the one worker answers a predict again: how long that took.
async fn cancel_until_worker_free(http: &reqwest::Client, s: &explaind::Service, id: &str, what: &str) -> Duration {
    let cancelled = Instant::now();
    let r = http.delete(url(s, &format!("/v1/jobs/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    loop {
        let r = http
            .post(url(s, "/v1/models/wide/predict"))
            .json(&json!({"features": input()}))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            return cancelled.elapsed();
        }
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            cancelled.elapsed() < Duration::from_secs(60),
            "{what}: the worker was not freed"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The solvers that were single library calls (LIME without a penalty: the least-norm solution;
/// KernelSHAP with as many pairs as players: the test of its kernel matrix's conditioning) stop
/// within about 100 ms of a cancel, as every step checks the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_in_a_least_norm_or_conditioning_solver_stops_at_once() {
    let (s, _) = wide_service(|c| {
        c.workers = 1;
        c.queue_capacity = 0;
    })
    .await;
    let http = reqwest::Client::new();
    let base = url(&s, "");
    let cases = [
        (
            "lime, alpha 0",
            json!({"model": "wide", "method": "lime", "features": input(), "params": {"samples": 4096, "alpha": 0.0}}),
            4096,
            3000,
        ),
        (
            "kernel-shap, 2,048 pairs",
            json!({"model": "wide", "method": "kernel-shap", "features": input(),
                   "params": {"samples": 4096, "background_rows": 1}}),
            4096,
            300,
        ),
    ];
    // Cancelled well into the solve (an SVD / eigen-decomposition of 2,048 rows before, for
    // minutes in a debug build), past the sums it starts with.
    for (what, body, rows, settle) in cases {
        let id = in_solver(&http, &base, &body, rows, Duration::from_millis(settle)).await;
        let stopped = cancel_until_worker_free(&http, &s, &id, what).await;
        eprintln!("{what} over {WIDE} features: worker free {stopped:?} after the cancel, mid-solver");
        // 100 ms is the goal (20-70 ms measured on a quiet machine); the bound leaves room for
        // a shared, loaded one (it includes a predict's round trip to see the worker free).
        assert!(stopped < Duration::from_millis(250), "{what}: {stopped:?}");
    }
    s.stop().await.unwrap();
}

/// SIGTERM while a job is in its solver: the process exits at once (the job is cancelled at
/// shutdown and its solver stops), not when the solve would have ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_solver_is_not_delayed() {
    let dir = temp_dir("wide-sigterm");
    write_wide(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_explaind"))
        .args(["serve", "--bind", &format!("127.0.0.1:{port}"), "--models"])
        .arg(&dir)
        .env("EXPLAIND_DATA_DIR", temp_dir("wide-sigterm-data"))
        .env("EXPLAIND_WORKERS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status() == StatusCode::OK {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body =
        json!({"model": "wide", "method": "lime", "features": input(), "params": {"samples": 4096, "alpha": 0.0}});
    in_solver(&http, &base, &body, 4096, Duration::from_millis(3000)).await;
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let term = Instant::now();
    let status = child.wait().unwrap();
    let took = term.elapsed();
    eprintln!("SIGTERM mid-solver: exited {took:?} after it");
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// The process's peak resident memory (Linux), MiB.
fn peak_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Benchmark (run alone, `--ignored`): KernelSHAP and LIME over 2,048 features and 1,000 samples,
/// the method's own arithmetic as a share of the request, and the process's peak memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run alone with --ignored --nocapture"]
async fn benchmark_2048_features_1000_samples() {
    let (s, _) = wide_service(|_| {}).await;
    let http = reqwest::Client::new();
    eprintln!("peak before: {:?} MiB", peak_mib());
    for (method, params) in [
        (
            "kernel-shap",
            json!({"samples": 1000, "background_rows": BACKGROUND_ROWS}),
        ),
        ("lime", json!({"samples": 1000})),
    ] {
        let (status, v) = explain(&http, &s, method, params).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        report(method, &v);
        eprintln!("peak after {method}: {:?} MiB", peak_mib());
    }
    s.stop().await.unwrap();
}
