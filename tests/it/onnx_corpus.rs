//! ONNX's own backend test models (Debian's libonnx-testdata, installed by scripts/test-setup.sh):
//! every file survives decode and re-encode byte for byte, and the PyTorch-exported models whose
//! operators all have rules pass the gradient check at their recorded test inputs.

use crate::common;

use std::path::{Path, PathBuf};

use common::gradcheck::{check_gradient, runner, Check};
use explaind::onnx::autodiff::{build_backward, prepare_forward, unsupported_ops, GradientSpec, RuleTable};
use explaind::onnx::node::tensor_f32;
use explaind::onnx::proto::{decode_model, TensorProto};
use explaind::onnx::ModelSummary;
use explaind::runtime::shapes::probe_shapes;
use prost::Message;

const CORPUS: &str = "/usr/share/libonnx-testdata/data";

fn corpus() -> PathBuf {
    let dir = PathBuf::from(CORPUS);
    assert!(
        dir.is_dir(),
        "{CORPUS} is missing: run `make test` (scripts/test-setup.sh installs libonnx-testdata)"
    );
    dir
}

fn onnx_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            onnx_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "onnx") {
            out.push(p);
        }
    }
}

#[test]
fn every_corpus_model_round_trips_byte_for_byte() {
    let mut files = Vec::new();
    onnx_files(&corpus(), &mut files);
    assert!(files.len() > 1000, "only {} models found", files.len());
    let mut changed = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let model = decode_model(&bytes).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if model.encode_to_vec() != bytes {
            changed.push(f.display().to_string());
        }
    }
    assert!(
        changed.is_empty(),
        "{} of {} models changed on re-encode: {:?}",
        changed.len(),
        files.len(),
        &changed[..changed.len().min(10)]
    );
}

#[test]
fn operator_test_models_pass_the_gradient_check() {
    let dir = corpus().join("node");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let runner = runner();
    let mut checked = Vec::new();
    let mut skipped = Vec::new();
    let mut failed = Vec::new();
    for name in names {
        let case = dir.join(&name);
        let mut model = decode_model(&std::fs::read(case.join("model.onnx")).unwrap()).unwrap();
        // Inputs after the first become constants (from the test's own data), so the gradient is
        // taken w.r.t. input 0 and rules see their parameters (weights, indices, axes) as constants.
        if !bake_inputs(&mut model, &case.join("test_data_set_0")) {
            skipped.push(format!("{name} (inputs data)"));
            continue;
        }
        let summary = ModelSummary::of(&model);
        let (Some(input), Some(output)) = (summary.inputs.first(), summary.outputs.first()) else {
            continue;
        };
        if summary.inputs.len() != 1 || input.dtype != "float32" || output.dtype != "float32" {
            skipped.push(format!("{name} (inputs)"));
            continue;
        }
        let Ok(data) = std::fs::read(case.join("test_data_set_0/input_0.pb")) else {
            continue;
        };
        let tensor = TensorProto::decode(data.as_slice()).unwrap();
        let dims: Vec<usize> = tensor.dims.iter().map(|&d| d as usize).collect();
        let Some(values) = tensor_f32(&tensor) else { continue };
        let Ok(prepared) = prepare_forward(&model) else {
            skipped.push(format!("{name} (opset)"));
            continue;
        };
        let Ok(shapes) = probe_shapes(&runner, &prepared, &input.name, &dims) else {
            skipped.push(format!("{name} (probe)"));
            continue;
        };
        let spec = GradientSpec {
            input: input.name.clone(),
            output: output.name.clone(),
            layers: vec![],
            input_grad: true,
        };
        // Piecewise-constant or random outputs (Floor, Sign, Bernoulli) have no gradient to check.
        if build_backward(&prepared, &spec, &shapes, &RuleTable::exact(), Some(&runner))
            .is_err_and(|e| e.to_string().contains("does not depend on input"))
        {
            skipped.push(format!("{name} (no float path)"));
            continue;
        }
        match unsupported_ops(&prepared, &spec, &shapes, &RuleTable::exact()) {
            Ok(u) if u.is_empty() => {}
            Ok(u) => {
                skipped.push(format!(
                    "{name} ({})",
                    u.iter().map(|x| x.op.clone()).collect::<Vec<_>>().join(", ")
                ));
                continue;
            }
            Err(_) => continue,
        }
        if !shapes
            .get(&output.name)
            .is_some_and(|s| s.dims.iter().all(Option::is_some))
        {
            skipped.push(format!("{name} (output shape)"));
            continue;
        }
        // Some operator tests feed extreme values (softmax of 1e4): require only one checkable point.
        let check = Check {
            h: 5e-3,
            atol: 3e-3,
            rtol: 2e-2,
            samples: 24,
            seed: 3,
            min_coverage: 0.0,
        };
        // Rules refuse some attribute variants with a message (training-mode BatchNormalization,
        // tf_crop_and_resize); those are listed, not failed. Wrong numbers fail.
        if let Err(e) = build_backward(&prepared, &spec, &shapes, &RuleTable::exact(), Some(&runner)) {
            skipped.push(format!("{name} ({e})"));
            continue;
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_gradient(&name, &model, &input.name, &dims, &values, &output.name, check)
        }));
        match result {
            Ok(_) => checked.push(name),
            Err(e) => failed.push(format!(
                "{name}: {}",
                e.downcast_ref::<String>().cloned().unwrap_or_default()
            )),
        }
    }
    eprintln!(
        "checked {} models: {checked:?}\nskipped {}: {skipped:?}",
        checked.len(),
        skipped.len()
    );
    assert!(
        failed.is_empty(),
        "{} corpus models failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert!(
        checked.len() >= 100,
        "only {} corpus models were checked; skipped: {skipped:?}",
        checked.len()
    );
}

/// Turns graph inputs 1.. into initializers holding the test's input_1.pb, input_2.pb, ...
fn bake_inputs(model: &mut explaind::onnx::proto::ModelProto, data: &Path) -> bool {
    let Some(graph) = model.graph.as_mut() else {
        return false;
    };
    let initialized: std::collections::HashSet<String> =
        graph.initializer.iter().filter_map(|t| t.name.clone()).collect();
    let inputs: Vec<String> = graph
        .input
        .iter()
        .filter_map(|v| v.name.clone())
        .filter(|n| !initialized.contains(n))
        .collect();
    for (k, name) in inputs.iter().enumerate().skip(1) {
        let Ok(bytes) = std::fs::read(data.join(format!("input_{k}.pb"))) else {
            return false;
        };
        let Ok(mut tensor) = TensorProto::decode(bytes.as_slice()) else {
            return false;
        };
        tensor.name = Some(name.clone());
        graph.initializer.push(tensor);
        graph.input.retain(|v| v.name.as_deref() != Some(name));
    }
    true
}
