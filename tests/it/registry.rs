//! Model folders that are wrong fail at start with a message naming the file and the field; what a
//! manifest leaves out is read from the graph. Also: ONNX files survive decode and re-encode intact.

use crate::common;

use common::*;
use explaind::runtime::registry::load_model;
use prost::Message;

fn fashion_onnx() -> Vec<u8> {
    std::fs::read(root().join("models/fashion-cnn/model.onnx")).unwrap()
}

fn folder_with(name: &str, manifest: &str) -> std::path::PathBuf {
    let dir = temp_dir(name);
    let model_dir = dir.join("m");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(model_dir.join("model.onnx"), fashion_onnx()).unwrap();
    std::fs::write(model_dir.join("model.toml"), manifest).unwrap();
    model_dir
}

fn load_error(name: &str, manifest: &str) -> String {
    let dir = folder_with(name, manifest);
    load_model(&dir)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| panic!("{manifest:?} was accepted"))
}

#[test]
fn a_minimal_manifest_is_completed_from_the_graph() {
    let dir = folder_with("minimal", "task = \"image-classification\"\n");
    let m = load_model(&dir).unwrap();
    let image = m.spec.image.as_ref().unwrap();
    assert_eq!((image.width, image.height, image.channels), (28, 28, 1));
    assert_eq!(m.spec.input, "input");
    assert_eq!(m.spec.output, "logits");
    assert_eq!(m.spec.labels.len(), 10);
    assert_eq!(m.spec.labels[3], "class_3");
    assert_eq!(m.summary.onnx_opset(), Some(17));
}

#[test]
fn bad_manifests_name_the_file_and_field() {
    let cases = [
        ("no-task", "", "task"),
        ("typo", "task = \"image-classification\"\nlabelz = []\n", "labelz"),
        ("bad-task", "task = \"video\"\n", "video"),
        (
            "labels",
            "task = \"image-classification\"\nlabels = [\"a\", \"b\"]\n",
            "labels",
        ),
        (
            "input",
            "task = \"image-classification\"\ninput = \"pixels\"\n",
            "pixels",
        ),
        (
            "width",
            "task = \"image-classification\"\n[image]\nwidth = 32\n",
            "image.width",
        ),
        (
            "mean",
            "task = \"image-classification\"\n[image]\nmean = [0.1, 0.2]\n",
            "image.mean",
        ),
        (
            "std",
            "task = \"image-classification\"\n[image]\nstd = [0.0]\n",
            "image.std",
        ),
        (
            "color",
            "task = \"image-classification\"\n[image]\ncolor = \"rgb\"\n",
            "image.color",
        ),
        (
            "features",
            "task = \"tabular-classification\"\n[tabular]\nfeatures = [\"a\"]\n",
            "input",
        ),
    ];
    for (name, manifest, field) in cases {
        let err = load_error(name, manifest);
        assert!(err.contains("model.toml"), "{name}: {err}");
        assert!(err.contains(field), "{name}: expected `{field}` in: {err}");
    }
}

#[test]
fn a_corrupt_onnx_file_is_named() {
    let dir = folder_with("corrupt", "task = \"image-classification\"\n");
    std::fs::write(dir.join("model.onnx"), b"this is not protobuf at all \xff\xff\xff").unwrap();
    let err = load_model(&dir).unwrap_err().to_string();
    assert!(err.contains("model.onnx") && err.contains("not an ONNX model"), "{err}");
}

/// Beside a good model: a corrupt ONNX file, a bad manifest, a graph ONNX Runtime refuses.
fn broken_beside_good(name: &str) -> std::path::PathBuf {
    let dir = temp_dir(name);
    copy_bundled("breast-cancer", &dir);
    let corrupt = dir.join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("model.onnx"), b"this is not protobuf at all \xff\xff\xff").unwrap();
    std::fs::write(corrupt.join("model.toml"), "task = \"image-classification\"\n").unwrap();
    let manifest = dir.join("manifest");
    std::fs::create_dir_all(&manifest).unwrap();
    std::fs::write(manifest.join("model.onnx"), fashion_onnx()).unwrap();
    std::fs::write(
        manifest.join("model.toml"),
        "task = \"image-classification\"\nlabelz = []\n",
    )
    .unwrap();
    // Decodes, and its manifest resolves, but no operator `NoSuchOp` exists: ONNX Runtime refuses it.
    let mut g = explaind::onnx::builder::GraphBuilder::new("refused", 17);
    let x = g.input("input", &[-1, 3]);
    g.node_with_outputs("NoSuchOp", &[&x], &["scores"], vec![]);
    g.output("scores", &[-1, 3]);
    write_model(
        &dir,
        "refused",
        &g.build(),
        "task = \"tabular-classification\"\nlabels = [\"a\", \"b\", \"c\"]\n",
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fails_to_load_is_listed_with_its_error_and_the_others_serve() {
    let dir = broken_beside_good("broken-beside-good");
    // A models directory given with a trailing separator still yields errors without its path.
    let s = start(test_config(&dir.join(""))).await;
    let listed = get_json(&s, "/v1/models").await;
    let names: Vec<&str> = listed["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["breast-cancer"]);
    let expect = [
        ("corrupt", "corrupt/model.onnx: not an ONNX model"),
        ("manifest", "manifest/model.toml"),
        ("refused", "refused/model.onnx: ONNX Runtime cannot load this model"),
    ];
    let failed = listed["failed"].as_array().unwrap();
    assert_eq!(failed.len(), expect.len(), "{listed}");
    for ((name, why), f) in expect.iter().zip(failed) {
        assert_eq!(f["name"], *name);
        let error = f["error"].as_str().unwrap();
        assert!(error.starts_with(why), "{name}: {error}");
        assert!(!error.contains(&*dir.to_string_lossy()), "a server path in {error}");
        assert_discloses_nothing(error);
    }
    assert!(failed[1]["error"].as_str().unwrap().contains("labelz"), "{listed}");
    // Readiness says which models are missing; the service is ready for the others.
    let resp = reqwest::get(url(&s, "/readyz")).await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let ready = ok_json(resp).await;
    assert_eq!(ready["failed_models"], listed["failed"], "{ready}");
    let missing = reqwest::get(url(&s, "/v1/models/corrupt")).await.unwrap();
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);
    let features = tabular_features(&s, "breast-cancer").await;
    let row: Vec<f32> = breast_cancer_holdout()[0].clone();
    assert_eq!(row.len(), features.len());
    let resp = post_json(
        &s,
        "/v1/models/breast-cancer/explain/saliency",
        &serde_json::json!({"features": row}),
    )
    .await;
    ok_json(resp).await;
}

#[tokio::test]
async fn with_strict_models_a_model_that_fails_to_load_stops_the_start_naming_it() {
    let dir = broken_beside_good("broken-strict");
    for (remove, why) in [
        (None, "corrupt/model.onnx"),
        (Some("corrupt"), "manifest/model.toml"),
        (
            Some("manifest"),
            "refused/model.onnx: ONNX Runtime cannot load this model",
        ),
    ] {
        if let Some(folder) = remove {
            std::fs::remove_dir_all(dir.join(folder)).unwrap();
        }
        let config = explaind::config::Config {
            strict_models: true,
            ..test_config(&dir)
        };
        let err = start_error(config).await;
        assert!(err.contains(why), "expected `{why}` in: {err}");
    }
}

#[tokio::test]
async fn the_service_refuses_to_start_on_a_bad_model_folder() {
    let dir = temp_dir("bad-start");
    let model_dir = dir.join("m");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(model_dir.join("model.onnx"), fashion_onnx()).unwrap();
    std::fs::write(model_dir.join("model.toml"), "task = \"tabular-regression\"\n").unwrap();
    let err = start_error(test_config(&dir)).await;
    // Alone, a bad model leaves nothing to serve: the start is refused, with strict_models or not.
    assert!(
        err.contains("no model loaded") && err.contains("m/model.toml") && err.contains("input") && err.contains("2-D"),
        "{err}"
    );
    let strict = explaind::config::Config {
        strict_models: true,
        ..test_config(&dir)
    };
    let err = start_error(strict).await;
    assert!(
        err.contains("model.toml") && err.contains("input") && err.contains("2-D"),
        "{err}"
    );
    let empty = temp_dir("empty-models");
    let err = start_error(test_config(&empty)).await;
    assert!(err.contains("no models found"), "{err}");
}

#[test]
fn onnx_files_round_trip_byte_for_byte() {
    for path in ["models/fashion-cnn/model.onnx", "models/breast-cancer/model.onnx"] {
        let bytes = std::fs::read(root().join(path)).unwrap();
        let model = explaind::onnx::proto::decode_model(&bytes).unwrap();
        assert_eq!(model.encode_to_vec(), bytes, "{path} changed on re-encode");
    }
}
