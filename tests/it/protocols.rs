//! Other platforms' protocols (src/http/protocols/): KServe V1 `:predict` / `:explain` and the Open
//! Inference Protocol (KServe V2 / Triton), driven by clients nobody here wrote (Triton's
//! `tritonclient.http`, the KServe SDK's REST client; scripts/protocol_clients.py), whose parsed
//! answers must equal explaind's own predict and explain answers on the bundled models; and their
//! errors in the protocols' own shape, under explaind's limits.

use crate::common;

use base64::Engine;
use serde_json::{json, Value};

use common::*;

/// The fashion CNN's input tensor for the fixture image, as explaind prepares it.
fn fashion_tensor(service: &explaind::Service) -> (Vec<usize>, Vec<f32>) {
    let model = service.state.registry.get("fashion-cnn").unwrap();
    let img = explaind::runtime::preprocess::decode_image(&fashion_png(), 1 << 20).unwrap();
    let prepared = explaind::runtime::preprocess::prepare_image(&img, model.spec.image.as_ref().unwrap());
    (
        prepared.tensor.shape.clone(),
        prepared.tensor.as_f32().unwrap().to_vec(),
    )
}

#[track_caller]
fn floats(v: &Value) -> Vec<f64> {
    let Some(list) = v.as_array() else {
        panic!("not an array: {v}")
    };
    list.iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Equal as float32 (the protocols answer float32; explaind's predict writes them as f64).
fn assert_same(what: &str, got: &[f64], want: &[f64], tolerance: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} values, want {}",
        got.len(),
        want.len()
    );
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f32 - *w as f32).abs() as f64 <= tolerance * w.abs().max(1.0),
            "{what}[{i}]: {g}, explaind's own answer {w}"
        );
    }
}

#[tokio::test]
async fn triton_and_kserve_clients_get_explaind_own_answers() {
    let service = start_bundled().await;
    let (shape, pixels) = fashion_tensor(&service);
    let rows: Vec<Vec<f32>> = breast_cancer_holdout().into_iter().take(2).collect();
    let png = base64::engine::general_purpose::STANDARD.encode(fashion_png());
    let ig = json!({"method": "integrated-gradients", "params": {"steps": 16}});
    let spec = json!({
        "address": service.addr.to_string(),
        "models": ["fashion-cnn", "breast-cancer", "movie-reviews"],
        "infer": [
            {"model": "fashion-cnn", "input": "input", "shape": shape, "data": pixels, "outputs": ["logits"]},
            {"model": "breast-cancer", "input": "input", "shape": [2, 30], "data": rows.concat(), "outputs": ["logits"]},
        ],
        "explain": {"model": "fashion-cnn", "input": "input", "shape": shape, "data": pixels, "explain": ig},
        "v1": {
            "fashion": {"model": "fashion-cnn", "instances": [{"b64": png}]},
            "tabular": {"model": "breast-cancer", "instances": rows},
            "forest": {"model": "breast-cancer-forest", "instances": [rows[0]]},
        },
    });
    let file = temp_dir("protocol-clients").join("spec.json");
    std::fs::write(&file, spec.to_string()).unwrap();
    let mut command = std::process::Command::new(test_venv("python"));
    command.arg(root().join("scripts/protocol_clients.py")).arg(&file);
    let text = run_ok(command, "protocol_clients.py".into()).await;
    // Kept beside the spec, for reading when a check below fails.
    std::fs::write(file.with_file_name("answers.json"), &text).unwrap();
    let out: Value = serde_json::from_str(&text).unwrap();
    let (triton, kserve) = (&out["triton"], &out["kserve"]);

    // Health, readiness and metadata, as Triton's client reads them.
    for (key, want) in [
        ("live", true),
        ("ready", true),
        ("model_ready", true),
        ("unknown_ready", false),
    ] {
        assert_eq!(triton[key], want, "tritonclient {key}");
    }
    assert_eq!(triton["server"]["name"], "explaind");
    let fashion = &triton["metadata"]["fashion-cnn"];
    assert_eq!(
        fashion["inputs"][0],
        json!({"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]})
    );
    assert_eq!(fashion["outputs"][0]["name"], "logits");
    assert_eq!(fashion["outputs"][0]["datatype"], "FP32");
    assert_eq!(
        triton["metadata"]["breast-cancer"]["inputs"][0]["shape"],
        json!([-1, 30])
    );
    assert_eq!(
        triton["metadata"]["movie-reviews"]["inputs"][0],
        json!({"name": "text", "datatype": "BYTES", "shape": [-1]})
    );
    for key in ["v2/live", "v2/ready", "v2/model_ready"] {
        assert_eq!(kserve[key], true, "kserve {key}");
    }

    // Infer's outputs are explaind's predict's, through both clients, in JSON and binary.
    let own = ok_json(post_json(&service, "/v1/models/fashion-cnn/predict", &json!({"image": png})).await).await;
    let want_fashion = floats(&own["outputs"]["logits"]);
    let instances: Vec<Value> = rows.iter().map(|r| json!({"features": r})).collect();
    let own = ok_json(
        post_json(
            &service,
            "/v1/models/breast-cancer/predict",
            &json!({"instances": instances}),
        )
        .await,
    )
    .await;
    let want_tabular: Vec<f64> = (0..2)
        .flat_map(|i| floats(&own["instances"][i]["outputs"]["logits"]))
        .collect();
    for form in ["binary", "json"] {
        for (client, answers, prefix) in [("tritonclient", triton, "infer/"), ("kserve", kserve, "v2/infer/")] {
            let (answers, key) = match client {
                "tritonclient" => (&answers["infer"], format!("fashion-cnn/{form}")),
                _ => (answers, format!("{prefix}fashion-cnn/{form}")),
            };
            let logits = &answers[&key]["logits"];
            assert_eq!(logits["shape"], json!([1, 10]), "{client} {key}");
            assert_same(&format!("{client} {key}"), &floats(&logits["data"]), &want_fashion, 0.0);
            let key = key.replace("fashion-cnn", "breast-cancer");
            let logits = &answers[&key]["logits"];
            assert_eq!(logits["shape"], json!([2, 2]), "{client} {key}");
            assert_same(&format!("{client} {key}"), &floats(&logits["data"]), &want_tabular, 0.0);
        }
    }
    assert_eq!(triton["infer"]["fashion-cnn/all"], json!(["logits"]));

    // The explain extension's attribution is the same method's answer on explaind's own path.
    let own = ok_json(
        post_json(
            &service,
            "/v1/models/fashion-cnn/explain/integrated-gradients",
            &json!({"image": png, "params": {"steps": 16}, "include": ["tensor"]}),
        )
        .await,
    )
    .await;
    let want = floats(&own["attributions"]["tensor"]["values"]);
    let target = own["target"]["index"].as_f64().unwrap();
    assert_eq!(triton["explain"]["shape"], json!([1, 1, 28, 28]));
    assert_same(
        "tritonclient explain",
        &floats(&triton["explain"]["attribution"]),
        &want,
        1e-5,
    );
    assert_same(
        "kserve explain",
        &floats(&kserve["v2/explain"]["attribution"]),
        &want,
        1e-5,
    );
    assert_eq!(floats(&triton["explain"]["target"]), vec![target]);
    assert_eq!(floats(&kserve["v2/explain"]["target"]), vec![target]);

    // KServe V1: predictions are the score rows; explanations are explaind's own, by the task's
    // default method (integrated gradients for the CNN, KernelSHAP for the MLP, TreeSHAP for trees).
    let predictions = &kserve["v1/predict/fashion"]["predictions"];
    assert_same("v1 predict", &floats(&predictions[0]), &want_fashion, 0.0);
    let predictions = &kserve["v1/predict/tabular"]["predictions"];
    assert_same("v1 predict tabular", &floats(&predictions[1]), &want_tabular[2..], 0.0);
    for (case, model, method, input) in [
        ("fashion", "fashion-cnn", "integrated-gradients", json!({"image": png})),
        ("tabular", "breast-cancer", "kernel-shap", json!({"features": rows[1]})),
        (
            "forest",
            "breast-cancer-forest",
            "tree-shap",
            json!({"features": rows[0]}),
        ),
    ] {
        let list = kserve[format!("v1/explain/{case}")]["explanations"]
            .as_array()
            .unwrap()
            .clone();
        let last = list.last().unwrap();
        assert_eq!(last["method"], method, "{case}: the default method");
        let mut body = input;
        if let Some(seed) = last.get("seed") {
            body["seed"] = seed.clone();
        }
        let own = ok_json(post_json(&service, &format!("/v1/models/{model}/explain/{method}"), &body).await).await;
        assert_same(
            &format!("v1 explain {case}"),
            &floats(&last["attributions"]["values"]),
            &floats(&own["attributions"]["values"]),
            1e-5,
        );
    }

    // Errors reach the clients in the protocols' shape.
    let error = &triton["error"];
    assert_eq!(error["status"], "400", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("no input `nope`"),
        "{error}"
    );
    let error = &kserve["v1/error"];
    assert_eq!(error["status"], 422, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("expected 30 feature values"),
        "{error}"
    );
    service.stop().await.unwrap();
}

/// An OIP or KServe V1 error: its status, `{"error": ...}` with the problem's `type` beside it,
/// and nothing of the server's insides.
async fn protocol_error(resp: reqwest::Response, status: u16, slug: &str) -> String {
    assert_eq!(resp.status().as_u16(), status);
    assert_eq!(
        resp.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap(),
        "application/json"
    );
    let text = resp.text().await.unwrap();
    assert_discloses_nothing(&text);
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["type"], format!("/problems/{slug}"), "{body}");
    body["error"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn refusals_keep_explaind_limits_in_each_protocol_shape() {
    let mut config = test_config(&root().join("models"));
    config.max_batch = 2;
    config.max_body_bytes = 64 * 1024;
    let service = start(config).await;
    let http = reqwest::Client::new();
    let row = vec![1.0f32; 30];
    let infer = |rows: usize| json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 30], "data": vec![row.clone(); rows].concat()}]});
    let post = |path: &str, body: Value| {
        let request = http.post(url(&service, path)).json(&body);
        async move { request.send().await.unwrap() }
    };
    // max_batch, as explaind's predict counts it.
    let error = protocol_error(
        post("/v2/models/breast-cancer/infer", infer(3)).await,
        400,
        "invalid-request",
    )
    .await;
    assert!(error.contains("max_batch"), "{error}");
    let ok = ok_json(post("/v2/models/breast-cancer/infer", infer(2)).await).await;
    assert_eq!(ok["outputs"][0]["shape"], json!([2, 2]));
    let v1 = json!({"instances": vec![row.clone(); 3]});
    let error = protocol_error(
        post("/v1/models/breast-cancer:predict", v1).await,
        400,
        "invalid-request",
    )
    .await;
    assert!(error.contains("max_batch"), "{error}");
    // The body limit, before any parsing.
    let big = json!({"instances": [vec![0.5f32; 20_000]]});
    protocol_error(
        post("/v1/models/breast-cancer:predict", big.clone()).await,
        413,
        "payload-too-large",
    )
    .await;
    protocol_error(
        post("/v2/models/breast-cancer/infer", big).await,
        413,
        "payload-too-large",
    )
    .await;
    // Shapes, names, datatypes and values the model does not take.
    for (body, says) in [
        (
            json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 29], "data": vec![1.0; 29]}]}),
            "takes [rows, 30]",
        ),
        (
            json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": vec![1.0; 29]}]}),
            "29 numbers",
        ),
        (
            json!({"inputs": [{"name": "input", "datatype": "INT64", "shape": [1, 30], "data": vec![1; 30]}]}),
            "is FP32",
        ),
        (
            json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [4294967296u64, 4294967296u64, 4], "data": [1.0]}]}),
            "counted",
        ),
        (json!({"inputs": []}), "exactly one input"),
        (
            json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": vec![1.0; 30]}], "parameters": {"priority": 1}}),
            "unknown request parameter",
        ),
        (
            json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": vec![1.0; 30]}], "outputs": [{"name": "nope"}]}),
            "no output `nope`",
        ),
    ] {
        let error = protocol_error(
            post("/v2/models/breast-cancer/infer", body).await,
            400,
            "invalid-request",
        )
        .await;
        assert!(error.contains(says), "{error} should say {says}");
    }
    // An explanation that does not fit: explaind's own validation, in the protocol's shape.
    let mut body = infer(1);
    body["parameters"] = json!({"explain": {"method": "grad-cam"}});
    protocol_error(post("/v2/models/breast-cancer/infer", body).await, 422, "invalid-input").await;
    let mut body = infer(1);
    body["parameters"] = json!({"explain": {"method": "kernel-shap", "params": {"samples": 1_000_000_000}}});
    protocol_error(
        post("/v2/models/breast-cancer/infer", body).await,
        400,
        "invalid-request",
    )
    .await;
    // Unknown models and verbs; explaind's own model description still answers GET.
    protocol_error(post("/v2/models/nope/infer", infer(1)).await, 404, "model-not-found").await;
    protocol_error(
        post("/v1/models/nope:predict", json!({"instances": []})).await,
        404,
        "model-not-found",
    )
    .await;
    protocol_error(
        post("/v1/models/breast-cancer:classify", json!({"instances": []})).await,
        404,
        "not-found",
    )
    .await;
    let own = http
        .get(url(&service, "/v1/models/breast-cancer"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok_json(own).await["name"], "breast-cancer");
    // A corrupt image in a V1 instance: explaind's image problem.
    let v1 = json!({"instances": [{"b64": "bm90IGFuIGltYWdl"}]});
    protocol_error(post("/v1/models/fashion-cnn:predict", v1).await, 400, "invalid-image").await;
    // A text model takes its texts as BYTES; TorchServe's {"data": b64} is an image instance.
    let texts = json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a great film", "dull and bad"]}]});
    let v2 = ok_json(post("/v2/models/movie-reviews/infer", texts).await).await;
    let own = json!({"instances": [{"text": "a great film"}, {"text": "dull and bad"}]});
    let own = ok_json(post("/v1/models/movie-reviews/predict", own).await).await;
    let want: Vec<f64> = (0..2)
        .flat_map(|i| floats(&own["instances"][i]["outputs"]["logits"]))
        .collect();
    assert_eq!(v2["outputs"][0]["shape"], json!([2, 2]));
    assert_same("text infer", &floats(&v2["outputs"][0]["data"]), &want, 0.0);
    let png = base64::engine::general_purpose::STANDARD.encode(fashion_png());
    let v1 = ok_json(post("/v1/models/fashion-cnn:predict", json!({"instances": [{"data": png}]})).await).await;
    let own = ok_json(post("/v1/models/fashion-cnn/predict", json!({"image": png})).await).await;
    assert_same(
        "data instance",
        &floats(&v1["predictions"][0]),
        &floats(&own["outputs"]["logits"]),
        0.0,
    );
    // A binary body whose header length overruns it.
    let resp = http
        .post(url(&service, "/v2/models/breast-cancer/infer"))
        .header("inference-header-content-length", "999")
        .header("content-type", "application/octet-stream")
        .body(b"{}".to_vec())
        .send()
        .await
        .unwrap();
    protocol_error(resp, 400, "invalid-request").await;
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_service_answers_busy_in_the_protocol_shape() {
    let models = temp_dir("protocols-busy");
    write_model(&models, "slow", &slow_model(24), SLOW_MANIFEST);
    let mut config = test_config(&models);
    config.workers = 1;
    config.queue_capacity = 1;
    let service = start(config).await;
    let http = reqwest::Client::new();
    let features = json!({"features": [1, 2, 3, 4, 5, 6, 7, 8]});
    // One worker and one queue slot: two slow predictions fill the service.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(
                http.post(url(&service, "/v1/models/slow/predict"))
                    .json(&features)
                    .send(),
            )
        })
        .collect();
    for _ in 0..500 {
        if service.state.executor.is_full() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(
        service.state.executor.is_full(),
        "the slow jobs never filled the service"
    );
    let body = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8], "data": vec![0.5f32; 8]}]});
    let resp = http
        .post(url(&service, "/v2/models/slow/infer"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key(reqwest::header::RETRY_AFTER));
    protocol_error(resp, 503, "overloaded").await;
    let resp = http
        .post(url(&service, "/v1/models/slow:predict"))
        .json(&json!({"instances": [[1, 2, 3, 4, 5, 6, 7, 8]]}))
        .send()
        .await
        .unwrap();
    protocol_error(resp, 503, "overloaded").await;
    for s in slow {
        assert!(s.await.unwrap().unwrap().status().is_success());
    }
    // Free again: the same infer answers.
    let resp = http
        .post(url(&service, "/v2/models/slow/infer"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok_json(resp).await["outputs"][0]["shape"], json!([1, 1]));
    service.stop().await.unwrap();
}
