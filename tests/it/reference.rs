//! Reference sets and the example-based methods on the bundled Fashion-MNIST CNN, with reference
//! rows from Debian's dataset-fashion-mnist (scripts/test-setup.sh installs it; written as PNGs by
//! scripts/make_reference.py):
//! - influence (TracIn on the last layer, two checkpoints) and self-influence against
//!   scripts/tracin_reference.py (NumPy on the tensors ONNX Runtime's Python API reads);
//! - likely mislabels: 10% of 10,000 training labels flipped, how many the top of the suspects finds;
//! - similar examples of held-out images share their true label;
//! - the set is kept in the data directory and loaded at the next start, rebuilt when its files change;
//! - bad reference files refuse the start naming file and line; requests without a set are refused.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{get_json, job_done, ok_json, post_json, problem, root, start, temp_dir, test_config, test_venv, url};
use explaind::config::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};

const FASHION: &str = "/usr/share/datasets/fashion-mnist";

/// Writes `count` Fashion-MNIST images of `split` from `start` under `out` (and, with `flip`, a
/// labels file with that share flipped).
fn make_reference(out: &Path, split: &str, start: usize, count: usize, flip: f64) {
    assert!(
        Path::new(FASHION).is_dir(),
        "{FASHION} is missing: run scripts/test-setup.sh (it installs Debian's dataset-fashion-mnist)"
    );
    let status = Command::new("python3")
        .arg(root().join("scripts/make_reference.py"))
        .arg(out)
        .args([
            "--split",
            split,
            "--start",
            &start.to_string(),
            "--count",
            &count.to_string(),
        ])
        .args(["--flip", &flip.to_string(), "--seed", "0"])
        .status()
        .unwrap();
    assert!(status.success());
}

fn fashion_manifest(reference: &str) -> String {
    let base = std::fs::read_to_string(root().join("models/fashion-cnn/model.toml")).unwrap();
    let base = base.split("\n[reference]").next().unwrap().to_string();
    let base = base
        .lines()
        .filter(|l| !l.starts_with("# 1,000") && !l.starts_with("# (scripts/make_reference"))
        .collect::<Vec<_>>()
        .join("\n");
    match reference {
        "" => format!("{base}\n"),
        _ => format!("{base}\n\n[reference]\n{reference}\n"),
    }
}

/// A copy of the bundled Fashion-MNIST model named `name` whose reference set is the images of
/// `reference` (as make_reference.py writes them) with the labels file `labels`.
fn fashion_with_reference(models: &Path, name: &str, reference: &Path, labels: &str) {
    let onnx = std::fs::read(root().join("models/fashion-cnn/model.onnx")).unwrap();
    let toml = format!(
        "images = \"{}\"\nlabels = \"{}\"",
        reference.join("images").display(),
        reference.join(labels).display()
    );
    write_folder(models, name, &onnx, &fashion_manifest(&toml));
}

fn write_folder(models: &Path, name: &str, onnx: &[u8], manifest: &str) {
    let dir = models.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.onnx"), onnx).unwrap();
    std::fs::write(dir.join("model.toml"), manifest).unwrap();
}

fn png(path: &Path) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-4 * a.abs().max(b.abs()) + 1e-9
}

/// The set, the noisy checkpoint and the queries the TracIn comparison uses.
struct Small {
    models: PathBuf,
    reference: PathBuf,
    queries: Vec<PathBuf>,
}

fn small_fixture() -> Small {
    let dir = temp_dir("reference-small");
    let reference = dir.join("ref");
    make_reference(&reference, "train", 0, 400, 0.0);
    let held_out = dir.join("queries");
    make_reference(&held_out, "t10k", 0, 4, 0.0);
    let models = dir.join("models");
    let onnx = std::fs::read(root().join("models/fashion-cnn/model.onnx")).unwrap();
    let decoded = explaind::onnx::proto::decode_model(&onnx).unwrap();
    // Another checkpoint of the same architecture: other weights in the last two layers.
    let noisy = explaind::onnx::randomize::randomized(&decoded, &["fc_w".into(), "c3_w".into()], 7);
    let manifest = fashion_manifest("");
    write_folder(
        &models,
        "fashion-noisy",
        &prost::Message::encode_to_vec(&noisy),
        &manifest,
    );
    let reference_toml = format!(
        "images = \"{}\"\nlabels = \"{}\"\nlr = 0.01\ncheckpoints = [{{ model = \"fashion-noisy\", lr = 0.5 }}]",
        reference.join("images").display(),
        reference.join("labels.csv").display()
    );
    write_folder(&models, "fashion-small", &onnx, &fashion_manifest(&reference_toml));
    let queries = (0..4)
        .map(|i| held_out.join("images").join(format!("t10k-{i:05}.png")))
        .collect();
    Small {
        models,
        reference,
        queries,
    }
}

#[tokio::test]
async fn influence_and_self_influence_match_an_independent_tracin() {
    let small = small_fixture();
    let spec = json!({
        "checkpoints": [
            {"model": small.models.join("fashion-small/model.onnx"), "lr": 0.01},
            {"model": small.models.join("fashion-noisy/model.onnx"), "lr": 0.5},
        ],
        "reference": small.reference,
        "queries": small.queries,
        "labels": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
        "mean": 0.286, "std": 0.353, "embedding": "flat", "logits": "logits",
    });
    let spec_path = small.models.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let out = Command::new(test_venv("python"))
        .arg(root().join("scripts/tracin_reference.py"))
        .arg(&spec_path)
        .output()
        .expect("the test virtualenv (scripts/test-setup.sh)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<String> = serde_json::from_value(expected["ids"].clone()).unwrap();

    let service = start(test_config(&small.models)).await;
    let info = get_json(&service, "/v1/models/fashion-small").await;
    assert_eq!(info["reference_set"]["rows"], 400, "{}", info["reference_set"]);
    assert_eq!(
        info["reference_set"]["checkpoints"],
        json!(["fashion-small", "fashion-noisy"])
    );
    assert_eq!(info["reference_set"]["embedding_layer"], "flat");
    assert!(info["methods"].as_array().unwrap().contains(&json!("influence")));

    for (q, query) in small.queries.iter().enumerate() {
        let want: Vec<f64> = serde_json::from_value(expected["influence"][q].clone()).unwrap();
        let answer = ok_json(
            post_json(
                &service,
                "/v1/models/fashion-small/explain/influence",
                &json!({"image": png(query), "params": {"k": 5}}),
            )
            .await,
        )
        .await;
        assert_eq!(answer["target"]["label"], expected["predictions"][q]);
        // Two checkpoints, each one forward pass of the input (the model's own also gives the
        // scores that choose the target).
        assert_eq!(answer["stats"]["model_rows"], 2, "{}", answer["stats"]);
        let mut order: Vec<usize> = (0..want.len()).collect();
        order.sort_by(|&a, &b| want[b].total_cmp(&want[a]));
        for (list, rows) in [("proponents", &order[..5]), ("opponents", &order[order.len() - 5..])] {
            let got = answer["details"][list].as_array().unwrap();
            let want_rows: Vec<usize> = match list {
                "proponents" => rows.to_vec(),
                _ => rows.iter().rev().copied().collect(),
            };
            assert_eq!(got.len(), 5, "{list}: {got:?}");
            for (g, &i) in got.iter().zip(&want_rows) {
                assert_eq!(g["id"], ids[i], "{list} of query {q}");
                let score = g["influence"].as_f64().unwrap();
                assert!(close(score, want[i]), "{list} {}: {score} vs {}", ids[i], want[i]);
            }
        }
        // Nearest rows by cosine, with their similarity.
        let similar = ok_json(
            post_json(
                &service,
                "/v1/models/fashion-small/explain/similar-examples",
                &json!({"image": png(query)}),
            )
            .await,
        )
        .await;
        assert_eq!(similar["stats"]["model_rows"], 1, "one pass: {}", similar["stats"]);
        let got: Vec<&str> = similar["details"]["examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        assert_eq!(json!(got), expected["nearest"][q]);
        let s = similar["details"]["examples"][0]["score"].as_f64().unwrap();
        assert!(close(s, expected["nearest_scores"][q][0].as_f64().unwrap()), "{s}");
    }

    // Self-influence is the diagonal of influence(reference, reference): ask for a reference
    // image's influence and find its own row; and the suspects list is the same figures in order.
    let self_inf: Vec<f64> = serde_json::from_value(expected["self_influence"].clone()).unwrap();
    let page = get_json(&service, "/v1/models/fashion-small/reference/suspects?limit=500").await;
    let rows = page["rows"].as_array().unwrap();
    assert_eq!((rows.len(), page["total"].as_u64()), (400, Some(400)));
    assert!(page.get("next_cursor").is_none());
    for r in rows {
        let i = ids.iter().position(|x| x == r["id"].as_str().unwrap()).unwrap();
        assert!(
            close(r["score"].as_f64().unwrap(), self_inf[i]),
            "{r} vs {}",
            self_inf[i]
        );
    }
    assert!(rows
        .windows(2)
        .all(|w| w[0]["score"].as_f64() >= w[1]["score"].as_f64()));
    let top = rows[0]["id"].as_str().unwrap().to_string();
    let label = rows[0]["label"].as_str().unwrap();
    let answer = ok_json(
        post_json(
            &service,
            "/v1/models/fashion-small/explain/influence",
            &json!({"image": png(&small.reference.join("images").join(&top)), "target": label, "params": {"k": 1}}),
        )
        .await,
    )
    .await;
    let first = &answer["details"]["proponents"][0];
    assert_eq!(
        first["id"],
        top.as_str(),
        "the row with the most self-influence is its own top proponent"
    );
    assert!(close(
        first["influence"].as_f64().unwrap(),
        rows[0]["score"].as_f64().unwrap()
    ));

    // Pages, a label filter, and the rows themselves.
    let page1 = get_json(
        &service,
        "/v1/models/fashion-small/reference/suspects?limit=3&label=Trouser",
    )
    .await;
    assert_eq!(page1["rows"].as_array().unwrap().len(), 3);
    assert!(page1["rows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["label"] == "Trouser"));
    let cursor = page1["next_cursor"].as_u64().unwrap();
    let page2 = get_json(
        &service,
        &format!("/v1/models/fashion-small/reference/suspects?limit=3&label=1&cursor={cursor}"),
    )
    .await;
    assert_ne!(page1["rows"][0]["id"], page2["rows"][0]["id"]);
    let image = reqwest::get(url(&service, &format!("/v1/models/fashion-small/reference/{top}")))
        .await
        .unwrap();
    assert_eq!(image.status(), StatusCode::OK);
    assert_eq!(image.headers()["content-type"], "image/png");
    assert_eq!(
        image.bytes().await.unwrap().to_vec(),
        std::fs::read(small.reference.join("images").join(&top)).unwrap()
    );
    problem(
        reqwest::get(url(&service, "/v1/models/fashion-small/reference/nope.png"))
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    problem(
        reqwest::get(url(&service, "/v1/models/fashion-small/reference/suspects?label=Hat"))
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid-request",
    )
    .await;
    // The noisy checkpoint has no reference set of its own.
    let no_set = problem(
        post_json(
            &service,
            "/v1/models/fashion-noisy/explain/similar-examples",
            &json!({"image": png(&small.queries[0])}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    assert!(no_set["detail"].as_str().unwrap().contains("[reference]"), "{no_set}");
    // Out-of-range parameters, metrics of an attribution, a picture, a side-by-side comparison:
    // refused, naming why.
    let image = png(&small.queries[0]);
    for (path, body, says) in [
        (
            "explain/similar-examples",
            json!({"image": image, "params": {"k": 101}}),
            "params.k",
        ),
        (
            "explain/influence",
            json!({"image": image, "params": {"k": 0}}),
            "params.k",
        ),
        (
            "explain/influence",
            json!({"image": image, "params": {"normalise": true}}),
            "normalise",
        ),
        (
            "explain/similar-examples",
            json!({"image": image, "evaluate": ["deletion"]}),
            "evaluate",
        ),
        (
            "explain/influence",
            json!({"image": image, "format": "png"}),
            "format=png",
        ),
        (
            "compare",
            json!({"image": image, "methods": ["saliency", "influence"]}),
            "reference rows",
        ),
    ] {
        let p = problem(
            post_json(&service, &format!("/v1/models/fashion-small/{path}"), &body).await,
            StatusCode::BAD_REQUEST,
            "invalid-request",
        )
        .await;
        assert!(p["detail"].as_str().unwrap().contains(says), "{path}: {p}");
    }
    // Audited like any explanation: the rows and their scores are in the record.
    let answer = ok_json(
        post_json(
            &service,
            "/v1/models/fashion-small/explain/influence",
            &json!({"image": image, "audit": true, "params": {"k": 2}}),
        )
        .await,
    )
    .await;
    let id = answer["audit_record"]["id"].as_str().unwrap();
    let record = get_json(&service, &format!("/v1/audit/records/{id}")).await;
    let summary = &record["targets"][0]["summary"];
    assert_eq!(summary["proponents"], answer["details"]["proponents"], "{record}");
    assert_eq!(summary["opponents"], answer["details"]["opponents"]);
    // A client that accepts PNG gets the rows as JSON.
    let answer = reqwest::Client::new()
        .post(url(&service, "/v1/models/fashion-small/explain/similar-examples"))
        .header("accept", "image/png, application/json")
        .json(&json!({ "image": image }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.headers()["content-type"], "application/json");
    service.stop().await.unwrap();
}

#[tokio::test]
async fn suspects_find_flipped_labels_and_neighbours_share_the_true_label() {
    let dir = temp_dir("reference-fashion");
    let images = dir.join("ref");
    make_reference(&images, "train", 0, 10_000, 0.1);
    let held_out = dir.join("held-out");
    make_reference(&held_out, "t10k", 0, 200, 0.0);
    let models = dir.join("models");
    for (name, labels) in [
        ("fashion-clean", "labels.csv"),
        ("fashion-flipped", "labels-flipped.csv"),
    ] {
        fashion_with_reference(&models, name, &images, labels);
    }
    let config = Config {
        max_reference_rows: 10_000,
        ..test_config(&models)
    };
    let service = start(config).await;

    // Mislabels: the share of flipped rows in the top 10% and 20% by self-influence.
    let flipped: std::collections::HashSet<String> = std::fs::read_to_string(images.join("flipped.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(flipped.len(), 1000);
    let mut ranked = Vec::new();
    let mut cursor = 0;
    while ranked.len() < 2000 {
        let page = get_json(
            &service,
            &format!("/v1/models/fashion-flipped/reference/suspects?limit=500&cursor={cursor}"),
        )
        .await;
        for r in page["rows"].as_array().unwrap() {
            ranked.push(r["id"].as_str().unwrap().to_string());
        }
        cursor = page["next_cursor"].as_u64().unwrap();
    }
    let found = |n: usize| ranked[..n].iter().filter(|id| flipped.contains(*id)).count() as f64 / 1000.0;
    let (top10, top20) = (found(1000), found(2000));
    println!("flipped labels found: {top10:.3} of them in the top 10% by self-influence, {top20:.3} in the top 20%");
    // Chance would find 0.10 and 0.20.
    assert!(top10 >= 0.6 && top20 >= 0.8, "top 10%: {top10}, top 20%: {top20}");

    // Similar examples of held-out images: the share of k = 5 neighbours with the image's true label.
    let truth: Vec<String> = std::fs::read_to_string(held_out.join("labels.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().to_string())
        .collect();
    let mut same = 0;
    for (i, label) in truth.iter().enumerate() {
        let answer = ok_json(
            post_json(
                &service,
                "/v1/models/fashion-clean/explain/similar-examples",
                &json!({"image": png(&held_out.join("images").join(format!("t10k-{i:05}.png"))), "params": {"k": 5}}),
            )
            .await,
        )
        .await;
        let examples = answer["details"]["examples"].as_array().unwrap();
        assert_eq!(examples.len(), 5);
        same += examples.iter().filter(|e| e["label"] == label.as_str()).count();
    }
    let share = same as f64 / (5 * truth.len()) as f64;
    println!("similar examples: {share:.3} of k = 5 neighbours share the held-out image's true label");
    assert!(share >= 0.8, "{share}");

    // l2 and gradient cosine answer too, and the label filter holds.
    let query = png(&held_out.join("images/t10k-00000.png"));
    for metric in ["l2", "gradient_cosine"] {
        let answer = ok_json(
            post_json(
                &service,
                "/v1/models/fashion-clean/explain/similar-examples",
                &json!({"image": query, "params": {"metric": metric, "labels": ["Bag", 7]}}),
            )
            .await,
        )
        .await;
        let examples = answer["details"]["examples"].as_array().unwrap();
        assert!(
            examples.iter().all(|e| e["label"] == "Bag" || e["label"] == "Sneaker"),
            "{examples:?}"
        );
        let scores: Vec<f64> = examples.iter().map(|e| e["score"].as_f64().unwrap()).collect();
        match metric {
            "l2" => assert!(scores.windows(2).all(|w| w[0] <= w[1]), "{scores:?}"),
            _ => assert!(
                scores.windows(2).all(|w| w[0] >= w[1]) && scores[0] <= 1.0 + 1e-9,
                "{scores:?}"
            ),
        }
    }
    service.stop().await.unwrap();
}

#[tokio::test]
async fn a_kept_set_loads_at_the_next_start_and_is_rebuilt_when_its_files_change() {
    let dir = temp_dir("reference-kept");
    let reference = dir.join("ref");
    make_reference(&reference, "train", 0, 50, 0.0);
    let models = dir.join("models");
    fashion_with_reference(&models, "fashion", &reference, "labels.csv");
    let config = Config {
        data_dir: dir.join("data"),
        ..test_config(&models)
    };
    let summary = |config: Config| async move {
        let service = start(config).await;
        let info = get_json(&service, "/v1/models/fashion").await;
        let suspects = get_json(&service, "/v1/models/fashion/reference/suspects?limit=5").await;
        service.stop().await.unwrap();
        (info["reference_set"].clone(), suspects["rows"].clone())
    };
    let (first, rows) = summary(config.clone()).await;
    assert_eq!(
        (first["rows"].as_u64(), first["loaded"].as_bool()),
        (Some(50), Some(false)),
        "{first}"
    );
    assert!(config.data_dir.join("reference/fashion.bin").is_file());
    let (second, rows2) = summary(config.clone()).await;
    assert_eq!(second["loaded"], true, "{second}");
    assert_eq!(rows, rows2, "the kept set gives the same answers");
    // A changed label is a changed set: rebuilt, not mixed with the kept one.
    let labels = std::fs::read_to_string(reference.join("labels.csv")).unwrap();
    std::fs::write(reference.join("labels.csv"), labels.replacen(",Ankle boot", ",Bag", 1)).unwrap();
    let (third, _) = summary(config.clone()).await;
    assert_eq!(third["loaded"], false, "{third}");
    // A kept file that is not a set (torn, or from elsewhere) is rebuilt too.
    std::fs::write(config.data_dir.join("reference/fashion.bin"), b"EXPLREF1garbage").unwrap();
    let (fourth, _) = summary(config).await;
    assert_eq!(
        (fourth["rows"].as_u64(), fourth["loaded"].as_bool()),
        (Some(50), Some(false))
    );
}

#[tokio::test]
async fn bad_reference_files_refuse_the_start_naming_file_and_line() {
    let dir = temp_dir("reference-bad");
    let reference = dir.join("ref");
    make_reference(&reference, "train", 0, 5, 0.0);
    let onnx = std::fs::read(root().join("models/fashion-cnn/model.onnx")).unwrap();
    let cases: [(&str, &str, &str); 5] = [
        (
            "id,label\ntrain-00000.png,Ankle boot\ntrain-00001.png,Hat\n",
            "line 3: label `Hat`",
            "",
        ),
        (
            "id,label\ntrain-00000.png,Ankle boot\nmissing.png,Bag\n",
            "line 3: image `missing.png`",
            "",
        ),
        (
            "id,label\n../model.toml,Bag\n",
            "line 2: id `../model.toml` is not a file name",
            "",
        ),
        (
            "id,label\ntrain-00000.png,Bag\ntrain-00000.png,Bag\n",
            "appears twice",
            "",
        ),
        (
            "id,label\ntrain-00000.png,1\ntrain-00001.png,2\n",
            "more than 1 rows (max_reference_rows)",
            "rows",
        ),
    ];
    for (k, (labels, wanted, limit)) in cases.iter().enumerate() {
        let models = dir.join(format!("models-{k}"));
        let csv = dir.join(format!("labels-{k}.csv"));
        std::fs::write(&csv, labels).unwrap();
        let toml = format!(
            "images = \"{}\"\nlabels = \"{}\"",
            reference.join("images").display(),
            csv.display()
        );
        write_folder(&models, "fashion", &onnx, &fashion_manifest(&toml));
        // All or nothing with `strict_models`; without it, see the test below.
        let mut config = Config {
            strict_models: true,
            ..test_config(&models)
        };
        if *limit == "rows" {
            config.max_reference_rows = 1;
        }
        let err = match explaind::Service::start(config).await {
            Ok(_) => panic!("case {k} started"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains(wanted) && err.contains(&format!("labels-{k}.csv")),
            "case {k}: {err}"
        );
    }
    // A tabular section on an image model is a manifest error naming the field.
    let models = dir.join("models-kind");
    write_folder(&models, "fashion", &onnx, &fashion_manifest("csv = \"rows.csv\""));
    let err = format!(
        "{:#}",
        explaind::Service::start(test_config(&models)).await.err().unwrap()
    );
    assert!(err.contains("reference") && err.contains("images"), "{err}");
}

#[tokio::test]
async fn a_failing_reference_set_leaves_its_model_serving_and_is_reported_with_why() {
    let dir = temp_dir("reference-failing");
    let reference = dir.join("ref");
    make_reference(&reference, "train", 0, 5, 0.0);
    let onnx = std::fs::read(root().join("models/fashion-cnn/model.onnx")).unwrap();
    let models = dir.join("models");
    std::fs::create_dir_all(&reference).unwrap();
    let csv = reference.join("bad-labels.csv");
    std::fs::write(&csv, "id,label\ntrain-00000.png,Ankle boot\ntrain-00001.png,Hat\n").unwrap();
    let toml = format!(
        "images = \"{}\"\nlabels = \"{}\"",
        reference.join("images").display(),
        csv.display()
    );
    write_folder(&models, "fashion", &onnx, &fashion_manifest(&toml));
    common::copy_bundled("breast-cancer", &models);
    let service = start(test_config(&models)).await;
    // The model serves: predictions and methods that need no reference set answer.
    let body = json!({"image": png(&reference.join("images/train-00000.png"))});
    ok_json(post_json(&service, "/v1/models/fashion/predict", &body).await).await;
    let features = json!({"features": common::breast_cancer_holdout()[0], "params": {"samples": 64}});
    ok_json(post_json(&service, "/v1/models/breast-cancer/explain/kernel-shap", &features).await).await;
    // The set is reported as failed, with why, in the model list and in readiness.
    let list = get_json(&service, "/v1/models").await;
    let fashion = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "fashion")
        .unwrap();
    let why = fashion["reference_set_failed"].as_str().unwrap_or_default().to_string();
    assert!(
        why.contains("bad-labels.csv") && why.contains("line 3: label `Hat`"),
        "{why}"
    );
    assert!(fashion.get("reference_set").is_none(), "{fashion}");
    assert_eq!(list["failed"], json!([]), "{list}");
    let ready = get_json(&service, "/readyz").await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(
        ready["failed_reference_sets"],
        json!([{"name": "fashion", "error": why}]),
        "{ready}"
    );
    // Methods that need it are refused, pointing at where the reason is.
    let refused = problem(
        post_json(&service, "/v1/models/fashion/explain/similar-examples", &body).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    assert!(
        refused["detail"].as_str().unwrap().contains("GET /v1/models/fashion"),
        "{refused}"
    );
    // The manifest names the set by absolute paths: answers show their file names only.
    assert_eq!(fashion["reference"]["images"], "images", "{fashion}");
    assert_eq!(fashion["reference"]["labels"], "bad-labels.csv", "{fashion}");
    let model = get_json(&service, "/v1/models/fashion").await;
    for answer in [
        why,
        ready.to_string(),
        refused.to_string(),
        list.to_string(),
        model.to_string(),
    ] {
        assert!(!answer.contains(&dir.display().to_string()), "{answer}");
        common::assert_discloses_nothing(&answer);
    }
    service.stop().await.unwrap();
}

#[tokio::test]
async fn a_tabular_reference_set_serves_rows_as_json_and_a_bundled_one_loads() {
    // The bundled models: fashion-cnn has a reference set of 1,000 training images.
    let service = common::start_bundled().await;
    let info = get_json(&service, "/v1/models/fashion-cnn").await;
    assert_eq!(info["reference_set"]["rows"], 1000, "{info}");
    let cancer = get_json(&service, "/v1/models/breast-cancer").await;
    assert!(cancer.get("reference_set").is_none());
    assert!(!cancer["methods"].as_array().unwrap().contains(&json!("influence")));
    service.stop().await.unwrap();

    // A tabular model with its background rows as a reference set (labels from the model's own
    // predictions, as a stand-in for training labels).
    let dir = temp_dir("reference-tabular");
    let models = dir.join("models");
    let src = root().join("models/breast-cancer");
    let background = std::fs::read_to_string(src.join("background.csv")).unwrap();
    let mut lines = background.lines();
    let header = lines.next().unwrap();
    let mut csv = format!("{header},label\n");
    for (i, line) in lines.take(40).enumerate() {
        csv.push_str(&format!("{line},{}\n", i % 2));
    }
    let manifest = std::fs::read_to_string(src.join("model.toml")).unwrap();
    write_folder(
        &models,
        "cancer",
        &std::fs::read(src.join("model.onnx")).unwrap(),
        &format!("{manifest}\n[reference]\ncsv = \"rows.csv\"\n"),
    );
    std::fs::write(models.join("cancer/rows.csv"), csv).unwrap();
    std::fs::copy(src.join("background.csv"), models.join("cancer/background.csv")).unwrap();
    let service = start(test_config(&models)).await;
    let info = get_json(&service, "/v1/models/cancer").await;
    assert_eq!(info["reference_set"]["rows"], 40, "{info}");
    let row = get_json(&service, "/v1/models/cancer/reference/3").await;
    assert_eq!(row["label"], info["labels"][1]);
    let first_feature = header.split(',').next().unwrap().trim_matches('"');
    let value = background.lines().nth(4).unwrap().split(',').next().unwrap();
    assert!((row["features"][first_feature].as_f64().unwrap() - value.parse::<f64>().unwrap()).abs() < 1e-4);
    let x: Vec<f64> = background
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let body = json!({ "features": x });
    let answer = ok_json(post_json(&service, "/v1/models/cancer/explain/influence", &body).await).await;
    assert_eq!(answer["details"]["proponents"].as_array().unwrap().len(), 5, "{answer}");
    service.stop().await.unwrap();
}

#[tokio::test]
async fn a_model_without_a_linear_last_layer_serves_similarity_on_a_named_embedding_and_refuses_influence() {
    use explaind::onnx::builder::{Attr, GraphBuilder};
    // x [N, 3] -> Gemm -> Relu (the embedding, 4 values) -> Gemm -> Sigmoid: scores that are not
    // a linear layer's output.
    let mut g = GraphBuilder::new("sigmoid-head", 17);
    g.input("x", &[-1, 3]);
    let w1 = g.constant(
        "w1",
        &[3, 4],
        &[1.0, 0.0, 0.0, 0.5, 0.0, 1.0, 0.0, 0.5, 0.0, 0.0, 1.0, 0.5],
    );
    let h = g.node("Gemm", &["x", &w1], vec![("alpha", Attr::Float(1.0))]);
    let e = g.node("Relu", &[&h], vec![]);
    let w2 = g.constant("w2", &[4, 2], &[1.0, -1.0, -1.0, 1.0, 0.5, 0.5, 0.0, 0.0]);
    let z = g.node("Gemm", &[&e, &w2], vec![("alpha", Attr::Float(1.0))]);
    let s = g.node("Sigmoid", &[&z], vec![]);
    g.output(&s, &[-1, 2]);
    let model = g.build();
    let dir = temp_dir("reference-sigmoid");
    let manifest = format!(
        "task = \"tabular-classification\"\nscores = \"probabilities\"\nlabels = [\"no\", \"yes\"]\n\
         [tabular]\nfeatures = [\"a\", \"b\", \"c\"]\n[reference]\ncsv = \"rows.csv\"\nembedding_layer = \"{e}\"\n"
    );
    common::write_model(&dir, "sig", &model, &manifest);
    std::fs::write(
        dir.join("sig/rows.csv"),
        "a,b,c,label\n1,0,0,no\n0,1,0,yes\n0,0,1,1\n2,0,0.1,no\n",
    )
    .unwrap();
    let service = start(test_config(&dir)).await;
    let info = get_json(&service, "/v1/models/sig").await;
    assert_eq!(info["reference_set"]["influence"], false, "{info}");
    assert!(info["reference_set"]["no_influence"]
        .as_str()
        .unwrap()
        .contains("Sigmoid"));
    // Nearest to (1, 0, 0.05) by cosine of the Relu output: rows 0 and 3.
    let answer = ok_json(
        post_json(
            &service,
            "/v1/models/sig/explain/similar-examples",
            &json!({"features": [1.0, 0.0, 0.05], "params": {"k": 2}}),
        )
        .await,
    )
    .await;
    let ids: Vec<&str> = answer["details"]["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["3", "0"], "{answer}");
    assert_eq!(answer["details"]["embedding_layer"], e.as_str());
    for (method, params) in [
        ("influence", json!({})),
        ("similar-examples", json!({"metric": "gradient_cosine"})),
    ] {
        let p = problem(
            post_json(
                &service,
                &format!("/v1/models/sig/explain/{method}"),
                &json!({"features": [1.0, 0.0, 0.0], "params": params}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported-model",
        )
        .await;
        assert!(p["detail"].as_str().unwrap().contains("Sigmoid"), "{p}");
    }
    service.stop().await.unwrap();
}

#[tokio::test]
async fn an_uploaded_set_replaces_the_old_one_whole_as_a_job_and_stays_at_the_next_start() {
    let dir = temp_dir("reference-upload");
    let reference = dir.join("ref");
    make_reference(&reference, "train", 0, 20, 0.0);
    let upload = dir.join("upload");
    make_reference(&upload, "t10k", 0, 30, 0.0);
    let models = dir.join("models");
    fashion_with_reference(&models, "fashion", &reference, "labels.csv");
    let config = Config {
        data_dir: dir.join("data"),
        ..test_config(&models)
    };
    let service = start(config.clone()).await;
    let lines: Vec<String> = std::fs::read_to_string(upload.join("labels.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let (id, label) = l.split_once(',').unwrap();
            json!({"id": id, "label": label, "image": png(&upload.join("images").join(id))}).to_string()
        })
        .collect();
    let send = |body: String| {
        let endpoint = url(&service, "/v1/models/fashion/reference");
        async move {
            reqwest::Client::new()
                .post(endpoint)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    // A bad line refuses the whole upload, naming it; the old set stays.
    let mut bad = lines.clone();
    bad[1] = json!({"id": "x.png", "label": "Hat", "image": "aGVsbG8="}).to_string();
    bad[4] = "not json".into();
    let p = problem(send(bad.join("\n")).await, StatusCode::BAD_REQUEST, "invalid-request").await;
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("line 2") && detail.contains("line 5"), "{detail}");
    assert_eq!(
        get_json(&service, "/v1/models/fashion").await["reference_set"]["rows"],
        20
    );
    problem(
        reqwest::Client::new()
            .post(url(&service, "/v1/models/fashion/reference"))
            .header("content-type", "text/csv")
            .body("id,label")
            .send()
            .await
            .unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
    )
    .await;

    let accepted = send(lines.join("\n")).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let job = accepted.headers()["location"].to_str().unwrap().to_string();
    let view = job_done(&service, &job, std::time::Duration::from_secs(10)).await;
    assert_eq!(view["progress"]["done"], 30, "{view}");
    assert_eq!(view["result"]["rows"], 30, "{view}");
    let info = get_json(&service, "/v1/models/fashion").await;
    assert_eq!(info["reference_set"]["rows"], 30);
    let row = reqwest::get(url(&service, "/v1/models/fashion/reference/t10k-00003.png"))
        .await
        .unwrap();
    assert_eq!(
        row.bytes().await.unwrap().to_vec(),
        std::fs::read(upload.join("images/t10k-00003.png")).unwrap()
    );
    // The same as a multipart form of the files a manifest names: a labels CSV and the images
    // (ten of them). A labels line naming an image the form lacks is refused naming the line.
    let form = |count: usize, labels: String| {
        let mut form = reqwest::multipart::Form::new().text("labels", labels);
        for i in 0..count {
            let name = format!("t10k-{i:05}.png");
            let bytes = std::fs::read(upload.join("images").join(&name)).unwrap();
            form = form.part("image", reqwest::multipart::Part::bytes(bytes).file_name(name));
        }
        form
    };
    let csv: String = std::fs::read_to_string(upload.join("labels.csv"))
        .unwrap()
        .lines()
        .take(11)
        .map(|l| format!("{l}\n"))
        .collect();
    let multipart = |form: reqwest::multipart::Form| {
        let endpoint = url(&service, "/v1/models/fashion/reference");
        async move {
            reqwest::Client::new()
                .post(endpoint)
                .multipart(form)
                .send()
                .await
                .unwrap()
        }
    };
    // Three images missing: each line is named (up to five), by the file's name, never the
    // folder the upload was written to (`problem` checks that no server path shows).
    let p = problem(
        multipart(form(7, csv.clone())).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    let detail = p["detail"].as_str().unwrap();
    for (line, id) in [(9, 7), (10, 8), (11, 9)] {
        assert!(
            detail.contains(&format!(
                "labels.csv: line {line}: image `t10k-{id:05}.png`: no such file"
            )),
            "{p}"
        );
    }
    assert!(!detail.contains(&config.data_dir.display().to_string()), "{p}");
    let accepted = multipart(form(10, csv)).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let job = accepted.headers()["location"].to_str().unwrap().to_string();
    let view = job_done(&service, &job, std::time::Duration::from_secs(10)).await;
    assert_eq!(view["result"]["rows"], 10, "{view}");
    // The set it replaced and the refused upload are gone; the one in force stays.
    let uploads = config.data_dir.join("reference/fashion.uploads");
    let folders = std::fs::read_dir(&uploads)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .count();
    assert_eq!(folders, 1);
    service.stop().await.unwrap();
    // The next start uses the last upload, kept, without running the model.
    let service = start(config).await;
    let info = get_json(&service, "/v1/models/fashion").await;
    let summary = &info["reference_set"];
    assert_eq!(
        (summary["rows"].as_u64(), summary["loaded"].as_bool()),
        (Some(10), Some(true)),
        "{info}"
    );
    service.stop().await.unwrap();
}
