//! Every request is bounded: hostile parameters drawn from each method's own schema get a 4xx or a
//! 200, never a 5xx or a dead process; slow clients hold no queue slot; the service answers health
//! checks while saturated; and a method is one type plus one registration line.

use crate::common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use explaind::config::Config;
use explaind::explain::method::{bytes, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext};
use explaind::explain::{Cx, ExplainJob, Limits, Methods, TargetAttribution};
use explaind::runtime::predict::Prediction;
use explaind::runtime::{RuntimeError, Tensor};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FEATURES: [f64; 30] = [
    13.0, 15.7, 82.0, 520.0, 0.08, 0.06, 0.03, 0.02, 0.17, 0.06, 0.3, 1.0, 2.0, 25.0, 0.006, 0.01, 0.02, 0.008, 0.02,
    0.003, 14.0, 20.0, 90.0, 600.0, 0.11, 0.15, 0.12, 0.06, 0.28, 0.08,
];

fn fashion_b64() -> String {
    let png = std::fs::read(root().join("tests/fixtures/fashion/test_00.png")).unwrap();
    base64::engine::general_purpose::STANDARD.encode(png)
}

/// Starts this process's peak resident memory afresh from its current size, so that the peak read
/// after a test counts only what ran since: the tests of every file share one process, and an earlier
/// test's high mark (a large real model, say) would otherwise be read as this one's.
fn reset_peak_rss() {
    // Writing 5 to clear_refs resets VmHWM (Linux 4.0 and later); a kernel that refuses leaves the
    // peak since the process started, an over-estimate, so the bound below still holds.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process (the server runs in it), in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Values at and past every bound a number can have, as JSON text (some are not valid doubles).
const EXTREMES: &[&str] = &[
    "0",
    "1",
    "2",
    "-1",
    "-9223372036854775808",
    "2147483648",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "1e999",
    "-1e308",
    "0.5",
    "1e-300",
    "null",
    "true",
    "\"auto\"",
    "\"\"",
    "[]",
    "{}",
];

/// One hostile value for a property of `schema` (resolved through `components`).
fn draw(rng: &mut Rng, schema: &Value, components: &Value) -> String {
    let schema = match schema["$ref"].as_str() {
        Some(r) => &components[r.trim_start_matches("#/components/schemas/")],
        None => schema,
    };
    let mut options: Vec<String> = EXTREMES.iter().map(|s| s.to_string()).collect();
    for bound in ["maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum"] {
        if let Some(b) = schema[bound].as_f64() {
            for v in [b, b + 1.0, b - 1.0] {
                options.push(format!("{}", if v.fract() == 0.0 { v as i64 as f64 } else { v }).replace(".0", ""));
            }
        }
    }
    let mut enums = Vec::new();
    collect_enums(schema, components, &mut enums);
    options.extend(enums.iter().map(|e| e.to_string()));
    options.push(format!("\"{}\"", "x".repeat(10_000)));
    options.push(format!("[{}]", vec!["1"; 5000].join(",")));
    let pick = (rng.next_u64() as usize) % options.len();
    options.swap_remove(pick)
}

fn collect_enums(schema: &Value, components: &Value, out: &mut Vec<Value>) {
    if let Some(r) = schema["$ref"].as_str() {
        collect_enums(
            &components[r.trim_start_matches("#/components/schemas/")],
            components,
            out,
        );
    }
    if let Some(e) = schema["enum"].as_array() {
        out.extend(e.iter().cloned());
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        for s in schema[key].as_array().into_iter().flatten() {
            collect_enums(s, components, out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_parameters_from_every_schema_get_4xx_or_200_never_5xx() {
    let mut config = test_config(&root().join("models"));
    config.max_samples = 256;
    config.max_batch = 16;
    config.max_job_bytes = 64 << 20;
    config.job_deadline_ms = 20_000;
    let s = start(config).await;
    let http = reqwest::Client::new();
    let doc: Value = serde_json::from_str(&explaind::http::openapi::document_json(
        &Methods::standard(),
        Limits::from_config(&Config::default()),
    ))
    .unwrap();
    let components = &doc["components"]["schemas"];
    let seed = std::env::var("LIMITS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261129u64);
    let mut rng = Rng::new(seed);
    let image = fashion_b64();
    reset_peak_rss();
    let before = peak_rss_mib();
    let started = Instant::now();
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    for method in Methods::standard().iter() {
        let (name, _) = method.params_schemas();
        let schema = &components[&name];
        let properties: Vec<(&String, &Value)> = schema["properties"]
            .as_object()
            .map(|p| p.iter().collect())
            .unwrap_or_default();
        let tabular = method.capabilities().inputs == Inputs::Tabular;
        let model = if tabular { "breast-cancer-forest" } else { "fashion-cnn" };
        for round in 0..12 {
            // Each round sets a few properties to hostile values (and an unknown name now and then).
            let mut params = String::from("{");
            let mut first = true;
            for (key, prop) in &properties {
                if rng.next_u64().is_multiple_of(2) {
                    continue;
                }
                if !first {
                    params.push(',');
                }
                first = false;
                params.push_str(&format!("\"{key}\":{}", draw(&mut rng, prop, components)));
            }
            if round == 11 {
                params.push_str(if first {
                    "\"no_such_param\":1"
                } else {
                    ",\"no_such_param\":1"
                });
            }
            params.push('}');
            let target = match rng.next_u64() % 5 {
                0 => "\"target\": 18446744073709551615,".to_string(),
                1 => "\"target\": {\"top_k\": 9223372036854775807},".to_string(),
                2 => format!("\"target\": [{}],", vec!["0"; 1000].join(",")),
                _ => String::new(),
            };
            let input = if tabular {
                format!("\"features\": {}", serde_json::to_string(&FEATURES.to_vec()).unwrap())
            } else {
                format!("\"image\": \"{image}\"")
            };
            let body = format!("{{{target}{input}, \"seed\": 1, \"params\": {params}}}");
            let r = http
                .post(url(&s, &format!("/v1/models/{model}/explain/{}", method.name())))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: {} dropped the connection: {e}\n{params}", method.name()));
            let status = r.status();
            *counts.entry(status.as_u16()).or_default() += 1;
            let content_type = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
            let text = r.text().await.unwrap();
            assert!(
                status.is_success() || status.is_client_error(),
                "seed {seed}: {} answered {status} to params {params}: {text}",
                method.name()
            );
            if status.is_client_error() {
                assert_eq!(
                    content_type.as_deref(),
                    Some("application/problem+json"),
                    "seed {seed}: {} {status}: {text}",
                    method.name()
                );
            }
        }
    }
    // The service is still up and well.
    let health = http.get(url(&s, "/healthz")).send().await.unwrap();
    assert!(health.status().is_success());
    let peak = peak_rss_mib();
    println!(
        "hostile parameters: statuses {counts:?} in {:.1} s; peak resident memory {peak} MiB (from {before} MiB)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        counts.get(&200).copied().unwrap_or(0) > 0,
        "no request succeeded: {counts:?}"
    );
    assert!(peak < 3 * 1024, "peak resident memory {peak} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_of_parameters_that_overflow_are_refused_at_the_edge() {
    let s = start_bundled().await;
    let http = reqwest::Client::new();
    let image = fashion_b64();
    for (method, params, status, slug) in [
        (
            "smoothgrad",
            json!({"base": "integrated_gradients", "samples": 288230376151711744u64, "steps": 64}),
            400,
            "invalid-request",
        ),
        (
            "smoothgrad",
            json!({"base": "integrated_gradients", "samples": 4096, "steps": 4096}),
            422,
            "invalid-input",
        ),
        ("rise", json!({"cell_size": 50000}), 400, "invalid-request"),
        ("integrated-gradients", json!({"steps": 4000}), 200, ""),
        ("occlusion", json!({"window": 1, "stride": 1}), 200, ""),
        ("grad-cam", json!({"layer": "no-such-layer"}), 422, "invalid-input"),
    ] {
        let started = Instant::now();
        let r = http
            .post(url(&s, &format!("/v1/models/fashion-cnn/explain/{method}")))
            .json(&json!({"image": image, "params": params, "target": [0, 1]}))
            .send()
            .await
            .unwrap();
        if status == 200 {
            // In-budget requests run (occlusion at 1 pixel: 784 windows; IG: 8,000 rows).
            let code = r.status().as_u16();
            assert!(code == 200 || code == 422, "{method} {params}: {code}");
            continue;
        }
        let p = problem(r, reqwest::StatusCode::from_u16(status).unwrap(), slug).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{method}: refused after {:?}",
            started.elapsed()
        );
        println!("{method} {params}: {}", p["detail"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_hold_no_slot_and_get_408() {
    let mut config = test_config(&root().join("models"));
    config.body_read_timeout_ms = 1500;
    config.queue_capacity = 4;
    let s = start(config).await;
    let addr = s.addr;
    // 100 connections announce a 1 MB body and send one byte of it.
    let mut stalled = Vec::new();
    for _ in 0..100 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = "POST /v1/models/fashion-cnn/predict HTTP/1.1\r\nhost: x\r\ncontent-type: image/png\r\ncontent-length: 1000000\r\n\r\n";
        c.write_all(head.as_bytes()).await.unwrap();
        c.write_all(b"\x89").await.unwrap();
        stalled.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let normal = timed_predict(&reqwest::Client::new(), &s).await;
    assert!(normal < Duration::from_secs(2), "a normal request took {normal:?}");
    // Each stalled one is answered 408 and closed.
    let started = Instant::now();
    let mut refused = 0;
    for mut c in stalled {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "a stalled connection was not closed");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("application/problem+json"), "{text}");
        refused += 1;
    }
    println!(
        "slow clients: a normal request answered in {} ms beside 100 stalled uploads; all {refused} stalled got 408 and \
         were closed within {} ms of it",
        normal.as_millis(),
        started.elapsed().as_millis()
    );
}

/// How long a prediction of a fashion image takes, which must succeed.
async fn timed_predict(client: &reqwest::Client, s: &explaind::Service) -> Duration {
    let png = std::fs::read(root().join("tests/fixtures/fashion/test_00.png")).unwrap();
    let started = Instant::now();
    let r = client
        .post(url(s, "/v1/models/fashion-cnn/predict"))
        .header("content-type", "image/png")
        .body(png)
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    took
}

/// Reads what a held connection gets until it closes; None when it stays open past `wait`.
async fn until_closed(c: &mut tokio::net::TcpStream, wait: Duration) -> Option<String> {
    let mut answer = Vec::new();
    match tokio::time::timeout(wait, c.read_to_end(&mut answer)).await {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_and_half_sent_connections_deny_nothing_and_are_closed() {
    let mut config = test_config(&root().join("models"));
    config.header_read_timeout_ms = 1500;
    config.idle_timeout_ms = 2500;
    let max_connections = config.max_connections;
    let s = start(config).await;
    // 1,100 connections (more than max_connections, 1,024): half send nothing, half half a head.
    let opened = Instant::now();
    let mut held = Vec::new();
    for i in 0..1100 {
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        if i % 2 == 1 {
            c.write_all(b"POST /v1/models/fashion-cnn/predict HTTP/1.1\r\nhost: x\r\n")
                .await
                .unwrap();
        }
        held.push(c);
    }
    // Opening 1,100 connections takes a while on a loaded machine: the timeouts count from each
    // connection's own start, so the bound below counts from the last one's.
    let last_opened = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Fresh clients are answered at once beside them (before, they waited in the kernel's backlog).
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = Instant::now();
    let r = client.get(url(&s, "/healthz")).send().await.unwrap();
    let health = started.elapsed();
    assert_eq!(r.status(), 200);
    let predict = timed_predict(&client, &s).await;
    assert!(
        health < Duration::from_millis(500) && predict < Duration::from_millis(500),
        "beside 1,100 idle connections: /healthz took {health:?}, predict {predict:?}"
    );
    // Every held connection is closed by its timeout (or evicted for a newer one at the bound);
    // a head that never finished is told why with 408 problem+json.
    let (mut timed_out, mut silent) = (0, 0);
    for (i, c) in held.iter_mut().enumerate() {
        let answer = until_closed(c, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("connection {i} was not closed"));
        if answer.is_empty() {
            silent += 1;
        } else {
            assert!(i % 2 == 1, "an idle connection got {answer}");
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
            assert!(
                answer.contains("application/problem+json") && answer.contains("/problems/request-timeout"),
                "{answer}"
            );
            timed_out += 1;
        }
    }
    let all_closed = last_opened.elapsed();
    assert!(
        all_closed < Duration::from_millis(2500 + 2000),
        "closing took {all_closed:?} after the last was opened ({:?} after the first)",
        opened.elapsed()
    );
    assert!(
        timed_out >= 550 - (1100 - max_connections),
        "only {timed_out} half-sent heads got 408"
    );
    println!(
        "1,100 held connections (max_connections {max_connections}): /healthz answered in {} ms, predict in {} ms; \
         all closed within {} ms of opening ({timed_out} half-sent heads with 408, {silent} idle or evicted silently)",
        health.as_millis(),
        predict.as_millis(),
        all_closed.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_hyper_cannot_parse_get_problem_json() {
    let s = start_bundled().await;
    let long_uri = format!("GET /v1/models?{} HTTP/1.1\r\nhost: x\r\n\r\n", "q".repeat(200_000));
    let many_headers = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\n{}\r\n",
        (0..150).map(|i| format!("x-{i}: y\r\n")).collect::<String>()
    );
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "y".repeat(600_000)
    );
    let cases = [
        (long_uri, 414, "uri-too-long"),
        (many_headers, 431, "headers-too-large"),
        (huge_header, 431, "headers-too-large"),
        ("G\x01T / HTTP/1.1\r\n\r\n".to_string(), 400, "malformed-request"),
        (
            "GET / HTTP/1.1\r\nbad header\r\n\r\n".to_string(),
            400,
            "malformed-request",
        ),
        (
            "PUT /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_string(),
            405,
            "method-not-allowed",
        ),
    ];
    for (request, status, slug) in cases {
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        // The server may answer and close before reading all of an oversized request.
        let _ = c.write_all(request.as_bytes()).await;
        let answer = until_closed(&mut c, Duration::from_secs(10))
            .await
            .expect("the connection was not closed");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{slug}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{slug}: {head}"
        );
        let problem: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{slug}: {e}: {body}"));
        assert_eq!(problem["type"], format!("/problems/{slug}"));
        assert_eq!(problem["status"], status);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_and_metrics_answer_while_the_workers_and_queue_are_full() {
    let dir = temp_dir("saturated");
    write_model(&dir, "slow", &slow_model(12), SLOW_MANIFEST);
    let mut config = test_config(&dir);
    config.workers = 1;
    config.queue_capacity = 2;
    let s = start(config).await;
    let http = reqwest::Client::new();
    let endpoint = url(&s, "/v1/models/slow/predict");
    let mut busy = Vec::new();
    for _ in 0..3 {
        let (http, endpoint) = (http.clone(), endpoint.clone());
        busy.push(tokio::spawn(async move {
            http.post(endpoint)
                .json(&json!({"features": [1, 2, 3, 4, 5, 6, 7, 8]}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    // Wait until the queue is full.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.state.executor.is_full() {
        assert!(Instant::now() < deadline, "the queue never filled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let r = http
        .post(&endpoint)
        .json(&json!({"features": [1, 2, 3, 4, 5, 6, 7, 8]}))
        .send()
        .await
        .unwrap();
    let refused_in = started.elapsed();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let mut times = Vec::new();
    for i in 0..200 {
        let path = if i % 10 == 0 { "/metrics" } else { "/healthz" };
        let started = Instant::now();
        let r = http.get(url(&s, path)).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        times.push(started.elapsed());
    }
    let still_full = s.state.executor.is_full();
    times.sort();
    let p99 = times[times.len() * 99 / 100];
    println!(
        "saturated (1 worker busy, queue full: {still_full}): 503 in {:.2} ms; /healthz and /metrics p99 {:.2} ms, max {:.2} ms over 200",
        refused_in.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3
    );
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}");
    for b in busy {
        let _ = b.await;
    }
}

/// A toy method: the input itself as the attribution. One type, one registration line.
struct Identity;

impl Method for Identity {
    type Params = explaind::explain::GradientXInputParams;
    const NAME: &'static str = "identity";
    const SUMMARY: &'static str = "The input itself";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::None,
        inputs: Inputs::Any,
        layer: false,
        random: false,
        examples: false,
        decision: false,
        text: false,
        makes_image: false,
    };

    fn plan(_: &mut Self::Params, cx: &PlanContext) -> Result<Cost, Invalid> {
        Ok(Cost {
            samples: 0,
            rows: 0,
            bytes: bytes(cx.input_len(), 8),
        })
    }

    fn explain(
        _: &mut Cx,
        job: &ExplainJob,
        _: &Self::Params,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        let values: Vec<f64> = job.input.to_f64();
        Ok(targets
            .iter()
            .map(|t| TargetAttribution::from_values(t, &values, json!({"toy": true})))
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_is_one_type_and_one_registration_line() {
    let methods = Methods::standard().with::<Identity>();
    let s = match explaind::Service::start_with(test_config(&root().join("models")), methods).await {
        Ok(s) => s,
        Err(e) => panic!("{e:#}"),
    };
    assert!(s.state.executor.wait_ready(Duration::from_secs(60)).await);
    let r = reqwest::Client::new()
        .post(url(&s, "/v1/models/breast-cancer/explain/identity"))
        .json(&json!({"features": FEATURES.to_vec()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["method"], "identity");
    assert_eq!(v["details"]["toy"], true);
    let values = v["attributions"]["values"].as_array().unwrap();
    assert_eq!(values.len(), 30);
    assert!((values[0].as_f64().unwrap() - 13.0).abs() < 1e-4, "{values:?}");
    let _ = Tensor::f32(vec![1], vec![0.0]);
    // The document lists it with its parameters.
    let doc: Value = reqwest::get(url(&s, "/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/v1/models/{model}/explain/identity"]["post"].is_object());
}

#[test]
fn every_parameter_schema_default_is_the_default_value() {
    let doc: Value = serde_json::from_str(&explaind::http::openapi::document_json(
        &Methods::standard(),
        Limits::from_config(&Config::default()),
    ))
    .unwrap();
    let components = &doc["components"]["schemas"];
    let mut checked = 0;
    for method in Methods::standard().iter() {
        let (name, _) = method.params_schemas();
        let defaults = method.default_params();
        for (key, prop) in components[&name]["properties"].as_object().into_iter().flatten() {
            if let Some(d) = prop.get("default") {
                let actual = &defaults[key];
                let same = match (d.as_f64(), actual.as_f64()) {
                    (Some(a), Some(b)) => (a - b).abs() < 1e-6,
                    _ => d == actual,
                };
                assert!(
                    same,
                    "{}: params.{key} schema default {d} but Default gives {actual}",
                    method.name()
                );
                checked += 1;
            }
        }
        // Every method's path is in the document.
        assert!(doc["paths"][format!("/v1/models/{{model}}/explain/{}", method.name())].is_object());
    }
    assert!(checked >= 25, "only {checked} defaults checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pass_budget_splits_batches_without_changing_answers() {
    let image = fashion_b64();
    let body = json!({"image": image, "target": 3, "params": {"steps": 32}});
    let mut answers = Vec::new();
    for max_pass_bytes in [256u64 << 20, 1 << 20] {
        let mut config = test_config(&root().join("models"));
        config.max_pass_bytes = max_pass_bytes;
        let s = start(config).await;
        let r = reqwest::Client::new()
            .post(url(&s, "/v1/models/fashion-cnn/explain/integrated-gradients"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        answers.push(r.json::<Value>().await.unwrap());
        s.stop().await.unwrap();
    }
    let runs = |v: &Value| v["stats"]["model_runs"].as_u64().unwrap();
    assert!(
        runs(&answers[1]) > runs(&answers[0]),
        "a 1 MiB budget takes more, smaller passes: {} vs {}",
        runs(&answers[1]),
        runs(&answers[0])
    );
    let (a, b) = (attribution_values(&answers[0]), attribution_values(&answers[1]));
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-6 + 1e-4 * y.abs()));
}

/// The numeric schema of a property: itself, its non-null `oneOf` branch, or its items.
fn numeric_schema(prop: &Value) -> Option<(&Value, bool)> {
    let is_numeric = |s: &Value| {
        let types: Vec<&str> = match &s["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        types.iter().any(|t| *t == "integer" || *t == "number")
    };
    if is_numeric(prop) {
        return Some((prop, false));
    }
    if let Some(branch) = prop["oneOf"].as_array().and_then(|b| b.iter().find(|s| is_numeric(s))) {
        return Some((branch, false));
    }
    if is_numeric(&prop["items"]) {
        return Some((&prop["items"], true));
    }
    None
}

/// A value just past `bound` on the refused side (`above`: past a maximum), or the bound itself
/// when it is exclusive.
fn past(bound: f64, integer: bool, exclusive: bool, above: bool) -> f64 {
    let step = if integer { 1.0 } else { (bound.abs() * 1e-3).max(1e-3) };
    match (exclusive, above) {
        (true, _) => bound,
        (false, true) => bound + step,
        (false, false) => bound - step,
    }
}

/// Every numeric parameter of every method, metric option and uncertainty parameter states a
/// minimum and a maximum in the served document; a value past either is refused with 400 naming
/// the parameter, and a value at an inclusive bound is not refused for that parameter (bounds an
/// input's own size lowers below the document's, `MAX_SIDE` and up, are checked past only). The
/// service runs with a `max_samples` other than the default, so bounds that follow it must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_numeric_parameter_has_the_bounds_the_code_enforces() {
    let mut config = test_config(&root().join("models"));
    config.max_samples = 1000;
    let s = start(config).await;
    let http = reqwest::Client::new();
    let doc: Value = http
        .get(url(&s, "/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = &doc["components"]["schemas"];
    // A corrupt image or a short row: the parameters are checked first, the input after, so a
    // request whose parameters pass is refused without running.
    let image = "aGVsbG8=";
    let features: Vec<f32> = vec![1.0];
    // (what, schema name, the request for one property set to a value)
    type Body = Box<dyn Fn(&str, Value) -> (String, Value)>;
    let mut cases: Vec<(String, String, Body)> = Vec::new();
    for method in Methods::standard().iter() {
        let (params, _) = method.params_schemas();
        let name = method.name();
        let tabular = method.capabilities().inputs == Inputs::Tabular;
        let features = features.clone();
        cases.push((
            name.to_string(),
            params,
            Box::new(move |key: &str, v: Value| {
                let model = if tabular { "breast-cancer-forest" } else { "fashion-cnn" };
                let mut body = json!({"params": {key: v}});
                match tabular {
                    true => body["features"] = json!(features),
                    false => body["image"] = json!(image),
                }
                (format!("/v1/models/{model}/explain/{name}"), body)
            }),
        ));
    }
    cases.push((
        "metric options".into(),
        "MetricOptions".into(),
        Box::new(move |key: &str, v: Value| {
            let metric = match key {
                "steps" => "deletion",
                "nr_runs" | "subset_size" => "mu_fidelity",
                "features_in_step" => "pixel_flipping",
                _ => "model_randomization",
            };
            let body = json!({"image": image, "evaluate": [{"metric": metric, key: v}]});
            ("/v1/models/fashion-cnn/explain/saliency".into(), body)
        }),
    ));
    cases.push((
        "uncertainty".into(),
        "UncertaintyParams".into(),
        Box::new(move |key: &str, v: Value| {
            let body = match key {
                "scales" => json!({"image": image, "method": "tta", "params": {"transforms": "multiscale", key: v}}),
                _ => json!({"image": image, "method": "mc-dropout", "params": {key: v}}),
            };
            ("/v1/models/fashion-cnn/uncertainty".into(), body)
        }),
    ));
    let (mut missing, mut wrong, mut checked) = (Vec::new(), Vec::new(), 0);
    for (what, schema_name, body) in &cases {
        for (key, prop) in schemas[schema_name]["properties"].as_object().into_iter().flatten() {
            let Some((schema, items)) = numeric_schema(prop) else {
                continue;
            };
            let integer = schema["type"] == "integer" || schema["type"][0] == "integer";
            let wrap = |v: f64| {
                let v = if integer { json!(v as i64) } else { json!(v) };
                if items {
                    json!([v])
                } else {
                    v
                }
            };
            let bounds = [
                (schema["maximum"].as_f64(), false, true),
                (schema["exclusiveMaximum"].as_f64(), true, true),
                (schema["minimum"].as_f64(), false, false),
                (schema["exclusiveMinimum"].as_f64(), true, false),
            ];
            let has = |above: bool| bounds.iter().any(|(b, _, a)| b.is_some() && *a == above);
            if !has(true) || !has(false) {
                missing.push(format!("{what}: {key}"));
                continue;
            }
            for (bound, exclusive, above) in bounds {
                let Some(bound) = bound else { continue };
                let mut tries = vec![(past(bound, integer, exclusive, above), true)];
                // An inclusive bound is tried too, unless an input's size lowers it (MAX_SIDE and up).
                let lowered = above && bound >= explaind::explain::method::MAX_SIDE as f64;
                if !exclusive && !lowered {
                    tries.push((bound, false));
                }
                for (value, refused) in tries {
                    let (path, request) = body(key, wrap(value));
                    let r = http.post(url(&s, &path)).json(&request).send().await.unwrap();
                    let status = r.status().as_u16();
                    let detail = r.json::<Value>().await.unwrap_or_default()["detail"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    // A product of parameters (`iterations x areas x targets`) has a bound of its own.
                    let names_it =
                        status == 400 && detail.contains(key.as_str()) && !detail.contains(&format!("{key} x "));
                    if names_it != refused {
                        wrong.push(format!("{what}: {key} = {value}: {status} {detail}"));
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "numeric parameters without both bounds in the document: {missing:#?}"
    );
    assert!(
        wrong.is_empty(),
        "bounds the document and the code disagree on: {wrong:#?}"
    );
    eprintln!("{checked} bounds checked");
    assert!(checked >= 150, "only {checked} bounds checked");
    s.stop().await.unwrap();
}
