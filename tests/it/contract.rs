//! The committed OpenAPI document is a contract: it validates against the OpenAPI 3.1 schema
//! (openapi-spec-validator); schemathesis (both installed by scripts/test-setup.sh) generates
//! requests from it for every operation against a real server with small bounds and runs all its
//! checks but the acceptance of schema-valid data (which depends on the model), failing on any 5xx,
//! undocumented status or content type, response that violates the schema, or invalid request
//! accepted; every method's real answers validate against it; and a Python client generated from
//! it runs the README's tour.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use base64::Engine;
use common::*;
use serde_json::{json, Value};

fn schemathesis() -> PathBuf {
    test_venv("schemathesis")
}

#[test]
fn the_document_is_valid_openapi_3_1() {
    let python = test_venv("python");
    assert!(python.exists(), "{} is missing: run `make test`", python.display());
    let out = Command::new(python)
        .args([
            "-c",
            "import sys\n\
             from openapi_spec_validator import validate\n\
             from openapi_spec_validator.readers import read_from_filename\n\
             spec, _ = read_from_filename(sys.argv[1])\n\
             validate(spec)\n\
             print(spec['openapi'])",
        ])
        .arg(root().join("openapi/openapi.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi/openapi.json does not validate:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("3.1"),
        "an OpenAPI 3.1 document"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_its_openapi_contract() {
    let tool = schemathesis();
    assert!(
        tool.exists(),
        "{} is missing: run `make test` (scripts/test-setup.sh installs it)",
        tool.display()
    );
    let mut config = test_config(&root().join("models"));
    config.max_samples = 64;
    config.max_batch = 8;
    config.max_body_bytes = 256 * 1024;
    config.max_image_pixels = 512 * 512;
    let s = start(config).await;
    // PatternNet fits its patterns on the first request (one pass over the reference set,
    // seconds in a debug build): fitted here, so that schemathesis's requests time what they ask.
    let image = std::fs::read(root().join("models/fashion-cnn/reference/images/train-00000.png")).unwrap();
    let body = json!({"image": base64::engine::general_purpose::STANDARD.encode(image)});
    let fitted = post_json(&s, "/v1/models/fashion-cnn/explain/pattern-net", &body).await;
    assert_eq!(fitted.status(), 200, "{}", fitted.text().await.unwrap());
    let base = format!("http://{}", s.addr);
    let spec = root().join("openapi/openapi.json");
    let mut schemathesis = Command::new(tool);
    schemathesis
        .args([
            "run",
            spec.to_str().unwrap(),
            "--url",
            &base,
            "--max-examples",
            "25",
            "--seed",
            "1",
            // No example database: a run here generates what CI's fresh checkout generates.
            "--generation-database",
            "none",
            "--checks",
            "all",
            // A request the schema allows may still not fit the model (an image to a tabular
            // model, a method that needs self-attention: 422), or break a rule between fields
            // that the document states in words (exactly one of `image`, `features`, `text`: 400).
            // `DELETE /v1/jobs/{id}` cancels, as documented: a finished job stays readable until
            // it expires, which `use_after_free` takes for a deleted resource still served.
            "--exclude-checks",
            "positive_data_acceptance,use_after_free",
        ])
        .env("NO_COLOR", "1")
        // Bodies for the JSON Lines upload (tests/fixtures/schemathesis_hooks.py).
        .env("PYTHONPATH", root().join("tests/fixtures"))
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .current_dir(std::env::temp_dir());
    let stdout = run_ok(schemathesis, "schemathesis found problems".into()).await;
    // Answers were checked, not only refusals: the hooks' real inputs reached the methods.
    let metrics = reqwest::get(format!("http://{}/metrics", s.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let answered: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("explaind_http_requests_total{") && l.contains("/explain/") && l.contains("status=\"200\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let summary = stdout
        .lines()
        .filter(|l| l.contains(" generated, ") || l.contains("Tested:"))
        .collect::<Vec<_>>();
    eprintln!("schemathesis: {summary:?}; {answered} explanations answered 200");
    assert!(
        answered >= 50.0,
        "only {answered} explanations answered 200:\n{metrics}"
    );
    s.stop().await.unwrap();
}

/// A client that openapi-python-client generates from the committed document (in a scratch
/// folder, at test time) runs the README's tour against a real server and reads every answer
/// with its generated models (tests/fixtures/generated_client_tour.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_runs_the_readme_tour() {
    let generator = test_venv("openapi-python-client");
    assert!(
        generator.exists(),
        "{} is missing: run `make test` (scripts/test-setup.sh installs it)",
        generator.display()
    );
    let dir = temp_dir("generated-client");
    let out = Command::new(generator)
        .args(["generate", "--meta", "none", "--path"])
        .arg(root().join("openapi/openapi.json"))
        .arg("--output-path")
        .arg(dir.join("explaind_client"))
        .output()
        .unwrap();
    assert!(
        dir.join("explaind_client/client.py").exists(),
        "openapi-python-client generated no client:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = start_bundled().await;
    let base = format!("http://{}", s.addr);
    let mut tour = Command::new(test_venv("python"));
    tour.arg(root().join("tests/fixtures/generated_client_tour.py"))
        .arg(root().join("README.md"))
        .arg(&base)
        .arg(root())
        .env("PYTHONPATH", &dir);
    let stdout = run_ok(tour, "the generated client failed on the tour".into()).await;
    assert!(stdout.contains("answers read with the generated client"), "{stdout}");
    s.stop().await.unwrap();
}

/// Every method's real answer, with one target and with two, has a documented status and content
/// type, and validates against the document (tests/fixtures/openapi_answers.py): the `details` of
/// every method against the schema it declares (its explain path's `ExplainResponse.{method}`), no
/// `details` from a method that declares none, a multi-target answer's `explanations`. Each method runs on the first model that lists it (the bundled models
/// and a small vision transformer and detector from the zoo).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_methods_answers_validate_against_the_document() {
    let dir = temp_dir("contract-models");
    let models = [
        "fashion-cnn",
        "breast-cancer-forest",
        "breast-cancer",
        "movie-reviews",
        "vit",
        "detector",
    ];
    for name in &models[..4] {
        copy_bundled(name, &dir);
    }
    let vit = explaind::onnx::zoo::vit(32, 8, (16, 2, 3), 3);
    write_model(
        &dir,
        "vit",
        &vit,
        "task = \"image-classification\"\nlabels = [\"a\", \"b\", \"c\"]\n",
    );
    write_model(
        &dir,
        "detector",
        &explaind::onnx::zoo::detector(2),
        crate::detection::MANIFEST,
    );
    let s = start(test_config(&dir)).await;
    let http = reqwest::Client::new();
    let b64 = |png: Vec<u8>| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png);
    let mut square = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 128]))
        .write_to(&mut square, image::ImageFormat::Png)
        .unwrap();
    let inputs = [
        json!({"image": b64(fashion_png())}),
        json!({"features": breast_cancer_holdout()[0]}),
        json!({"features": breast_cancer_holdout()[0]}),
        json!({"text": "A moving story, but the second hour is dull."}),
        json!({"image": b64(square.into_inner())}),
        json!({"image": b64(crate::detection::cell_png())}),
    ];
    let mut listed = Vec::new();
    for name in models {
        let report: Value = http
            .get(url(&s, &format!("/v1/models/{name}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listed.push(report["methods"].clone());
    }
    let declared: std::collections::BTreeMap<&str, Option<String>> = explaind::explain::Methods::standard()
        .iter()
        .map(|m| (m.name(), m.details_schemas().map(|(name, _)| name)))
        .collect();
    let answers_dir = temp_dir("contract-answers");
    let mut answers = Vec::new();
    let mut asked = 0;
    for method in explaind::explain::Methods::standard().names() {
        // Every model that lists it (the details of image, tabular and text answers differ), with
        // two targets on the first. (PNG answers are the README tour's, checked in tests/it/web.rs.)
        let on: Vec<usize> = (0..models.len())
            .filter(|&m| listed[m].as_array().unwrap().contains(&json!(method)))
            .collect();
        assert!(!on.is_empty(), "no test model lists {method}");
        for (m, target) in on
            .iter()
            .map(|&m| (m, json!(null)))
            .chain([(on[0], json!({"top_k": 2}))])
        {
            let path = format!("/v1/models/{}/explain/{method}", models[m]);
            let accept = "application/json";
            asked += 1;
            let mut body = inputs[m].clone();
            body["target"] = target;
            if method == "extremal-perturbation" {
                // Its default 300 iterations per area take half a minute here; the answer's shape
                // does not depend on them.
                body["params"] = json!({"iterations": 10, "areas": [0.1]});
            }
            let r = http
                .post(url(&s, &path))
                .header("accept", accept)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let content_type = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let file = answers_dir.join(format!("{method}-{}", answers.len()));
            let bytes = r.bytes().await.unwrap();
            if declared.get(method).is_some_and(Option::is_none) {
                // The document's generic answer leaves `details` open: a method that declares none
                // must send none (those that declare a schema are held to it below).
                let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let targets = v["explanations"].as_array().cloned().unwrap_or_else(|| vec![v.clone()]);
                assert!(
                    targets.iter().all(|t| t.get("details").is_none()),
                    "{method} declares no `details` but answered some: {v}"
                );
            }
            std::fs::write(&file, bytes).unwrap();
            answers.push(
                json!({"method": "post", "path": path, "status": status, "content_type": content_type, "body": file}),
            );
        }
    }
    let ok_json = answers
        .iter()
        .filter(|a| a["status"] == 200 && a["content_type"] == "application/json")
        .count();
    std::fs::write(answers_dir.join("answers.json"), serde_json::to_vec(&answers).unwrap()).unwrap();
    let out = Command::new(test_venv("python"))
        .arg(root().join("tests/fixtures/openapi_answers.py"))
        .arg(root().join("openapi/openapi.json"))
        .arg(answers_dir.join("answers.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "answers the OpenAPI document does not describe:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every answer asked for: a skipped method cannot pass silently.
    assert!(ok_json == asked, "{ok_json} JSON answers of {asked} asked:\n{stdout}");
    s.stop().await.unwrap();
}

/// One schema name per type: utoipa keys schemas by name and keeps one silently, so two types of
/// the same name (the evaluation and the similarity `Metric` were) leave fields checked against the
/// other's schema. Every type that derives `ToSchema` in src/ is found by its `pub struct` /
/// `pub enum` line and its `#[schema(as = ...)]` rename.
#[test]
fn every_schema_name_belongs_to_one_type() {
    fn files(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut sources = Vec::new();
    files(&root().join("src"), &mut sources);
    let mut names: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for file in sources {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut derives = false;
        let mut renamed: Option<String> = None;
        for line in text.lines().map(str::trim) {
            if line.starts_with("#[derive(") && line.contains("ToSchema") {
                derives = true;
            } else if let Some(rest) = line.strip_prefix("#[schema(as = ") {
                renamed = rest
                    .split(')')
                    .next()
                    .map(|n| n.rsplit("::").next().unwrap_or(n).to_string());
            } else if derives && (line.starts_with("pub struct ") || line.starts_with("pub enum ")) {
                let declared = line.split_whitespace().nth(2).unwrap_or_default();
                let declared = declared.split(['<', '(', '{', ';']).next().unwrap_or_default();
                let name = renamed.take().unwrap_or_else(|| declared.to_string());
                let at = format!("{}: {declared}", file.strip_prefix(root()).unwrap().display());
                names.entry(name).or_default().push(at);
                derives = false;
            } else if !line.starts_with("#[") && !line.starts_with("//") {
                (derives, renamed) = (false, None);
            }
        }
    }
    assert!(names.len() > 100, "only {} schema types found", names.len());
    let shared: Vec<_> = names.iter().filter(|(_, types)| types.len() > 1).collect();
    assert!(shared.is_empty(), "schema names shared by several types: {shared:#?}");
}
