//! The page for people, the interactive API documents, and the README's curl tour, against a real
//! server on loopback. The browser test drives Debian's Chromium through playwright-core (both
//! installed by scripts/test-setup.sh) and keeps screenshots under target/.

use crate::common;

use std::process::Command;

use base64::Engine;
use common::*;
use reqwest::StatusCode;

#[tokio::test]
async fn the_page_and_the_api_documents_are_served() {
    let s = start_bundled().await;
    let r = reqwest::get(url(&s, "/")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = r.text().await.unwrap();
    assert!(
        html.contains("<title>explaind</title>") && html.contains("/v1/models"),
        "the page calls the public API"
    );
    let r = reqwest::get(url(&s, "/docs/")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("swagger-ui"));
    let init = reqwest::get(url(&s, "/docs/swagger-initializer.js"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("/openapi.json"), "Swagger UI reads the served document");
    s.stop().await.unwrap();
}

/// Every TOML block of the README is read as what it shows: a model manifest (it declares a
/// `task`) through the manifest parser, anything else as a config file through the config's own
/// loading and checks. A key under the wrong table (`ensemble` after `[image]`) fails here.
#[test]
fn the_readme_toml_examples_parse() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let blocks: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(blocks.len() >= 3, "only {} TOML blocks in the README", blocks.len());
    let dir = temp_dir("readme-toml");
    for (i, block) in blocks.iter().enumerate() {
        if block.lines().any(|l| l.starts_with("task =")) {
            if let Err(e) = explaind::runtime::manifest::Manifest::parse(std::path::Path::new("README.md"), block) {
                panic!("README manifest block {i}: {e:?}\n{block}");
            }
        } else {
            let path = dir.join(format!("block-{i}.toml"));
            std::fs::write(&path, block).unwrap();
            let loaded =
                explaind::config::Config::load(Some(&path), Vec::<(String, String)>::new()).and_then(|c| c.validated());
            if let Err(e) = loaded {
                panic!("README config block {i}: {e}\n{block}");
            }
        }
    }
}

/// The commands of the README's tour, continuation lines joined.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let tour = readme
        .split("## A short tour")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut current = String::new();
    for line in tour.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block || line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        current.push_str(line.trim_end().trim_end_matches('\\'));
        current.push(' ');
        if !line.trim_end().ends_with('\\') {
            commands.push(current.trim().to_string());
            current.clear();
        }
    }
    commands
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_tour_works_as_written() {
    let s = start_bundled().await;
    let commands = readme_commands();
    assert!(commands.len() >= 8, "{commands:?}");
    // Run from a scratch folder that sees the repository's fixtures, so written files land there.
    let dir = temp_dir("readme");
    std::os::unix::fs::symlink(root().join("tests"), dir.join("tests")).unwrap();
    // Each answer, for the check against the document below: where it was sent and what came back.
    let mut answers = Vec::new();
    for (i, command) in commands.into_iter().enumerate() {
        assert!(command.starts_with("curl"), "{command}");
        let address = s.addr.to_string();
        let command = command.replace("localhost:8080", &address);
        let target = command
            .split_whitespace()
            .find(|t| t.contains(&address))
            .unwrap()
            .trim_matches(|c| c == '\'' || c == '"');
        let path = target
            .split(&address)
            .nth(1)
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .to_string();
        let method = if command.contains("-X POST") { "post" } else { "get" };
        let words: Vec<&str> = command.split_whitespace().collect();
        let body = match words.iter().position(|w| *w == "-o") {
            Some(at) => words[at + 1].to_string(),
            None => format!("answer-{i}"),
        };
        let command = match words.contains(&"-o") {
            true => format!("{command} -D headers-{i}"),
            false => format!("{command} -D headers-{i} -o {body}"),
        };
        let mut shell = Command::new("sh");
        shell
            .arg("-c")
            .arg(format!("set -e; {command} --fail-with-body"))
            .current_dir(&dir);
        let stdout = run_ok(shell, command.clone()).await;
        assert!(!stdout.contains("/problems/"), "{command}\n{stdout}");
        // The last response head (after any `100 Continue`): its status and content type.
        let head = std::fs::read_to_string(dir.join(format!("headers-{i}"))).unwrap();
        let head = head.rsplit("HTTP/").next().unwrap_or_default();
        let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap();
        let content_type = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default();
        answers.push(serde_json::json!({
            "method": method, "path": path, "status": status, "content_type": content_type,
            "body": dir.join(&body),
        }));
    }
    // Every answer as the OpenAPI document describes it: status, content type, JSON schema.
    std::fs::write(dir.join("answers.json"), serde_json::to_vec(&answers).unwrap()).unwrap();
    let python = test_venv("python");
    let out = Command::new(&python)
        .arg(root().join("tests/fixtures/openapi_answers.py"))
        .arg(root().join("openapi/openapi.json"))
        .arg(dir.join("answers.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "README answers that the OpenAPI document does not describe:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(dir.join("grad-cam.png")).unwrap();
    assert_eq!(image::load_from_memory(&png).unwrap().width(), 28);
    let spread = std::fs::read(dir.join("saliency-spread.png")).unwrap();
    assert_eq!(
        image::load_from_memory(&spread).unwrap().width(),
        28,
        "the saliency spread"
    );
    let bars = std::fs::read(dir.join("tree-shap.png")).unwrap();
    assert_eq!(
        image::load_from_memory(&bars).unwrap().width(),
        720,
        "the tabular bar chart"
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_works_in_a_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let script = root().join("tests/browser/page.mjs");
    assert!(
        std::path::Path::new(&chromium).exists() && root().join("tests/browser/node_modules/playwright-core").exists(),
        "Chromium or playwright-core is missing: run `make test` (scripts/test-setup.sh installs them)"
    );
    // The bundled models and the tests' text models.
    let dir = temp_dir("web-models");
    for name in ["fashion-cnn", "breast-cancer-forest"] {
        copy_bundled(name, &dir);
    }
    // breast-cancer with plain-language feature descriptions, for the decision report.
    crate::replay::described_models(&dir);
    write_text_models(&dir);
    // The zoo's detector, segmenter and tagger: boxes to click, a mask layer, labels over thresholds.
    write_model(
        &dir,
        "detector",
        &explaind::onnx::zoo::detector(2),
        crate::detection::MANIFEST,
    );
    use explaind::onnx::zoo::{mean_linear, segmenter, SegLayout};
    write_model(
        &dir,
        "seg",
        &segmenter(16, 2, SegLayout::Nchw, 3),
        crate::segmentation::SEG,
    );
    use crate::segmentation::{TAGGER, TAG_B, TAG_W};
    write_model(&dir, "tagger", &mean_linear(16, &TAG_W, &TAG_B), TAGGER);
    let pictures = temp_dir("web-pictures");
    let (detector_image, gray_image) = (pictures.join("cell.png"), pictures.join("noise.png"));
    std::fs::write(&detector_image, crate::detection::cell_png()).unwrap();
    std::fs::write(&gray_image, crate::explain::noise_png(16, 1).0).unwrap();
    let mut config = test_config(&dir);
    // The report's record keeps its input (requests ask for their record with "audit": true).
    config.audit_store_inputs = true;
    let s = start(config).await;
    // A concept set for the page's TCAV: 20 of the bundled reference set's bags.
    let reference = root().join("models/fashion-cnn/reference");
    let labels = std::fs::read_to_string(reference.join("labels.csv")).unwrap();
    let bags: String = labels
        .lines()
        .filter_map(|l| l.split_once(','))
        .filter(|(_, label)| *label == "Bag")
        .take(20)
        .map(|(id, _)| {
            let png = std::fs::read(reference.join("images").join(id)).unwrap();
            serde_json::json!({"id": id, "image": base64::engine::general_purpose::STANDARD.encode(png)}).to_string()
                + "\n"
        })
        .collect();
    let uploaded = reqwest::Client::new()
        .post(url(&s, "/v1/models/fashion-cnn/concepts/bags"))
        .header("content-type", "application/x-ndjson")
        .body(bags)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), StatusCode::CREATED);
    let shots = root().join("target").join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let base = url(&s, "/");
    let image = root().join("tests/fixtures/fashion/test_00.png");
    let mut node = Command::new("node");
    node.arg(script)
        .arg(base)
        .arg(&shots)
        .arg(image)
        .arg(detector_image)
        .arg(gray_image)
        .env("CHROMIUM", chromium);
    run_ok(node, "browser test failed".into()).await;
    s.stop().await.unwrap();
}
