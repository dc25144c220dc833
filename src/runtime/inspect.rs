//! `explaind inspect` and `explaind backward`: what a model file offers explaind, and its backward
//! model, without a manifest.

use std::path::Path;

use serde::Serialize;

use super::gradients::{describe, GradientReport};
use super::graph_runner::OrtRunner;
use super::shapes::probe_shapes;
use crate::onnx::{autodiff, proto, ModelSummary, TensorInfo};

/// The interface and gradient support of a model file.
#[derive(Debug, Serialize)]
pub struct InspectReport {
    /// File inspected.
    pub file: String,
    /// Inputs, outputs, opsets.
    #[serde(flatten)]
    pub summary: ModelSummary,
    /// Input the gradients are taken for.
    pub gradient_input: String,
    /// Output whose scores are differentiated.
    pub gradient_output: String,
    /// Gradient support.
    pub gradients: GradientReport,
}

struct Resolved {
    decoded: proto::ModelProto,
    summary: ModelSummary,
    input: String,
    output: String,
    dims: Vec<usize>,
}

fn resolve(
    file: &Path,
    input: Option<&str>,
    output: Option<&str>,
    input_shape: Option<&[usize]>,
) -> anyhow::Result<Resolved> {
    let bytes = std::fs::read(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut decoded =
        proto::decode_model(&bytes).map_err(|e| anyhow::anyhow!("{}: not an ONNX model: {e}", file.display()))?;
    // External data sit beside the file (`parent` of a bare file name is the empty path).
    let folder = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    super::external::inline(&mut decoded, folder).map_err(|m| anyhow::anyhow!("{}: {m}", file.display()))?;
    let summary = ModelSummary::of(&decoded);
    let pick = |given: Option<&str>, list: &[TensorInfo], what: &str| -> anyhow::Result<TensorInfo> {
        match given {
            Some(name) => list
                .iter()
                .find(|t| t.name == name)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no {what} named `{name}`")),
            None => list
                .iter()
                .find(|t| t.dtype == "float32")
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no float32 {what}; name one")),
        }
    };
    let input = pick(input, &summary.inputs, "input")?;
    let output = pick(output, &summary.outputs, "output")?;
    let dims: Vec<usize> = match input_shape {
        Some(d) => d.to_vec(),
        None => input
            .shape
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("input `{}` has no shape; pass --input-shape", input.name))?
            .iter()
            .enumerate()
            .map(|(i, d)| match d.fixed() {
                Some(n) => Ok(n),
                None if i == 0 => Ok(1),
                None => Err(anyhow::anyhow!(
                    "input `{}` has a dynamic dimension {i}; pass --input-shape",
                    input.name
                )),
            })
            .collect::<anyhow::Result<_>>()?,
    };
    Ok(Resolved {
        decoded,
        summary,
        input: input.name,
        output: output.name,
        dims,
    })
}

/// Reads, probes and describes a model file.
pub fn inspect(
    file: &Path,
    input: Option<&str>,
    output: Option<&str>,
    input_shape: Option<&[usize]>,
    library: Option<&Path>,
) -> anyhow::Result<InspectReport> {
    let Resolved {
        decoded,
        summary,
        input,
        output,
        dims,
    } = resolve(file, input, output, input_shape)?;
    let env = super::library::init(library)?;
    let runner = OrtRunner::new(env);
    let gradients = match autodiff::prepare_forward(&decoded) {
        Ok(prepared) => {
            let shapes = probe_shapes(&runner, &prepared, &input, &dims)
                .map_err(|e| anyhow::anyhow!("shape probe failed: {e}"))?;
            // Without a manifest there is no normalisation to bound the input: ZBox is refused.
            describe(&prepared, &shapes, (&input, &output), None, Some(&runner))
        }
        Err(e) => GradientReport::refused(e.to_string()),
    };
    Ok(InspectReport {
        file: file.display().to_string(),
        summary,
        gradient_input: input,
        gradient_output: output,
        gradients,
    })
}

/// Builds the backward model of a model file.
pub fn backward(
    file: &Path,
    input: Option<&str>,
    output: Option<&str>,
    layers: &[String],
    rules: autodiff::RuleSet,
    input_shape: Option<&[usize]>,
    library: Option<&Path>,
) -> anyhow::Result<autodiff::BackwardModel> {
    let r = resolve(file, input, output, input_shape)?;
    let env = super::library::init(library)?;
    let runner = OrtRunner::new(env);
    let prepared = autodiff::prepare_forward(&r.decoded)?;
    let shapes =
        probe_shapes(&runner, &prepared, &r.input, &r.dims).map_err(|e| anyhow::anyhow!("shape probe failed: {e}"))?;
    let spec = autodiff::GradientSpec {
        input: r.input,
        output: r.output,
        layers: layers.to_vec(),
        input_grad: true,
    };
    Ok(autodiff::build_backward(
        &prepared,
        &spec,
        &shapes,
        &autodiff::RuleTable::for_set(rules),
        Some(&runner),
    )?)
}
