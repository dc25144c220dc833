//! Models whose weights live in external data files (ONNX's `data_location = EXTERNAL`, as
//! PyTorch's exporter writes them): loaded from the model's own folder whatever the working
//! directory, explained exactly as the same model with inline weights, and refused, naming the
//! initializer, when a location leaves the folder or the file is missing or short.

use crate::common;

use base64::Engine;
use common::*;
use explaind::onnx::proto::{ModelProto, StringStringEntryProto};
use reqwest::StatusCode;
use serde_json::json;

/// The bundled fashion CNN's manifest without its reference set (not needed here).
fn fashion_manifest() -> String {
    let text = std::fs::read_to_string(root().join("models/fashion-cnn/model.toml")).unwrap();
    text.split("\n# 1,000").next().unwrap().to_string()
}

/// The bundled fashion CNN with every initializer over 64 bytes moved to `data_file` inside
/// `folder` (at 64-byte aligned offsets, as onnx's writer does), referenced as `location`.
fn write_external(folder: &std::path::Path, location: &str, data_file: &str) -> ModelProto {
    let mut model = bundled_model("fashion-cnn");
    let mut data = Vec::new();
    let mut moved = 0;
    for t in &mut model.graph.as_mut().unwrap().initializer {
        let Some(raw) = t.raw_data.take_if(|r| r.len() > 64) else {
            continue;
        };
        data.resize(data.len().next_multiple_of(64), 0);
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        t.external_data = vec![
            entry("location", location.into()),
            entry("offset", data.len().to_string()),
            entry("length", raw.len().to_string()),
        ];
        t.data_location = Some(1);
        data.extend_from_slice(&raw);
        moved += 1;
    }
    assert!(moved >= 6, "the CNN's weights moved out ({moved} tensors)");
    std::fs::create_dir_all(folder).unwrap();
    std::fs::write(folder.join(data_file), data).unwrap();
    write_model(
        folder.parent().unwrap(),
        &folder.file_name().unwrap().to_string_lossy(),
        &model,
        &fashion_manifest(),
    );
    model
}

async fn explain(s: &explaind::Service, model: &str, method: &str) -> Vec<f64> {
    let png = fashion_png();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let resp = post_json(
        s,
        &format!("/v1/models/{model}/explain/{method}"),
        &json!({"image": b64, "target": 3, "include": ["tensor"]}),
    )
    .await;
    let v = ok_json(resp).await;
    v["attributions"]["tensor"]["values"]
        .as_array()
        .unwrap_or_else(|| panic!("{method}: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The service runs in the crate's folder, the models live elsewhere: before external data were
/// resolved against the model's folder, ONNX Runtime looked `weights.bin` up in the working
/// directory and the service did not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_with_external_weights_serves_and_explains_like_the_inline_one() {
    let dir = temp_dir("external-serve");
    write_external(&dir.join("ext"), "weights.bin", "weights.bin");
    let inline = dir.join("inline");
    std::fs::create_dir_all(&inline).unwrap();
    std::fs::copy(root().join("models/fashion-cnn/model.onnx"), inline.join("model.onnx")).unwrap();
    std::fs::write(inline.join("model.toml"), fashion_manifest()).unwrap();
    let s = start(test_config(&dir)).await;
    let listed = get_json(&s, "/v1/models").await;
    assert_eq!(listed["failed"], json!([]), "{listed}");
    let report = get_json(&s, "/v1/models/ext").await;
    assert_eq!(report["gradients"]["differentiable"], true, "{report}");
    // The hash covers the weights: read back in, they make the bundled file byte for byte.
    let inline_report = get_json(&s, "/v1/models/inline").await;
    assert_eq!(report["sha256"], inline_report["sha256"]);
    // Read in at load, the weights are held once: the graph kept for backward graphs holds slices
    // of the model's bytes.
    let (total, inside) = crate::model_memory::shared_bytes(&s, "ext");
    assert!(total > 0 && inside == total, "{inside} of {total} bytes shared");
    // Gradient methods (backward graphs built from the weights, LRP rules reading them) and a
    // perturbation method.
    for method in ["saliency", "lrp", "occlusion"] {
        let (ext, inl) = (explain(&s, "ext", method).await, explain(&s, "inline", method).await);
        assert_eq!(ext.len(), 28 * 28, "{method}");
        assert!(ext.iter().any(|v| *v != 0.0), "{method}: all zero");
        assert_eq!(ext, inl, "{method}: external and inline weights answer alike");
    }
}

#[test]
fn inspect_reads_external_weights_from_the_model_folder_whatever_the_working_directory() {
    let dir = temp_dir("external-inspect");
    write_external(&dir.join("ext"), "weights.bin", "weights.bin");
    let elsewhere = temp_dir("external-inspect-cwd");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_explaind"))
        .current_dir(&elsewhere)
        .arg("inspect")
        .arg(dir.join("ext/model.onnx"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["gradients"]["differentiable"], true, "{report}");
    // The bare file name from inside the folder: the data sit beside it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_explaind"))
        .current_dir(dir.join("ext"))
        .args(["inspect", "model.onnx"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_data_that_leave_the_folder_or_are_missing_are_refused_naming_the_initializer() {
    let dir = temp_dir("external-escape");
    // `../x.bin`: the file exists, one level up, where the model must not reach.
    write_external(&dir.join("escape"), "../x.bin", "x.bin");
    std::fs::rename(dir.join("escape/x.bin"), dir.join("x.bin")).unwrap();
    write_external(&dir.join("missing"), "gone.bin", "weights.bin");
    write_external(&dir.join("short"), "weights.bin", "weights.bin");
    let data = std::fs::read(dir.join("short/weights.bin")).unwrap();
    std::fs::write(dir.join("short/weights.bin"), &data[..data.len() - 4]).unwrap();
    copy_bundled("breast-cancer", &dir);

    // Strict: the start is refused, naming the model folder, the initializer and the reason.
    let config = explaind::config::Config {
        strict_models: true,
        ..test_config(&dir)
    };
    let err = start_error(config).await;
    assert!(
        err.contains("escape/model.onnx")
            && err.contains("initializer `")
            && err.contains("`../x.bin` leaves the model's folder"),
        "{err}"
    );

    // Default: the good model serves, each bad one is listed with its reason.
    let s = start(test_config(&dir)).await;
    let listed = get_json(&s, "/v1/models").await;
    let failed: std::collections::BTreeMap<String, String> = listed["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap().into(), f["error"].as_str().unwrap().into()))
        .collect();
    let expect = [
        ("escape", "leaves the model's folder"),
        ("missing", "`gone.bin`: no such file"),
        ("short", "holds"),
    ];
    for (name, why) in expect {
        let error = &failed[name];
        assert!(
            error.starts_with(&format!("{name}/model.onnx: initializer `")) && error.contains(why),
            "{name}: {error}"
        );
        assert!(!error.contains(&*dir.to_string_lossy()), "a server path in {error}");
    }
    assert_eq!(listed["models"].as_array().unwrap().len(), 1, "{listed}");
    let resp = reqwest::get(url(&s, "/v1/models/escape")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

/// The format as onnx itself writes it (`onnx.save_model(..., save_as_external_data=True)`: one
/// file, offsets aligned, every tensor moved): read back in, the bundled file byte for byte.
#[test]
fn onnx_s_own_external_data_writer_is_read_back_exactly() {
    let folder = temp_dir("external-onnx-writer").join("m");
    std::fs::create_dir_all(&folder).unwrap();
    let script = "import sys, onnx\n\
        m = onnx.load(sys.argv[1])\n\
        onnx.save_model(m, sys.argv[2], save_as_external_data=True, all_tensors_to_one_file=True,\n\
        \x20   location='weights.bin', size_threshold=0)\n";
    let out = std::process::Command::new(test_venv("python"))
        .args(["-c", script])
        .arg(root().join("models/fashion-cnn/model.onnx"))
        .arg(folder.join("model.onnx"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(folder.join("weights.bin").exists());
    std::fs::write(folder.join("model.toml"), fashion_manifest()).unwrap();
    let model = explaind::runtime::registry::load_model(&folder).unwrap();
    let bundled = std::fs::read(root().join("models/fashion-cnn/model.onnx")).unwrap();
    assert!(std::fs::metadata(folder.join("model.onnx")).unwrap().len() < bundled.len() as u64 / 10);
    assert_eq!(&model.bytes[..], &bundled[..]);
}
