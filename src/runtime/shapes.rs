//! The shape probe: runs a model once or twice on sample inputs with every intermediate tensor
//! exposed, and records each tensor's dimensions and element type. Dimensions that change with the
//! batch size are marked dynamic. Gradient rules use these shapes to decide broadcasting and sizes.

use std::collections::HashMap;

use super::graph_runner::OrtRunner;
use super::manifest::Constant;
use super::tensor::{ElementType, TensorData};
use crate::onnx::autodiff::{ShapeMap, TensorShape};
use crate::onnx::proto::{data_type, type_proto, ModelProto, ValueInfoProto};
use crate::onnx::summary::{Dim, ModelSummary};

/// One probe run's outputs: each tensor's element type and dimensions.
type Run = HashMap<String, (i32, Vec<usize>)>;

/// Probes every tensor's shape; `input` is fed `sample_dims` (its batch axis first) with values in [-1, 1).
pub fn probe_shapes(
    runner: &OrtRunner,
    model: &ModelProto,
    input: &str,
    sample_dims: &[usize],
) -> Result<ShapeMap, String> {
    probe_shapes_with(runner, model, input, sample_dims, &[])
}

/// [`probe_shapes`], the model's constant side inputs fed their values (other inputs zeros).
pub fn probe_shapes_with(
    runner: &OrtRunner,
    model: &ModelProto,
    input: &str,
    sample_dims: &[usize],
    constants: &[Constant],
) -> Result<ShapeMap, String> {
    let probe = with_every_output(model)?;
    let summary = ModelSummary::of(model);
    // A fixed batch dimension allows one run only; otherwise a second run with batch 2 shows which
    // dimensions follow the batch.
    let fixed_batch = sample_dims.is_empty()
        || summary
            .inputs
            .iter()
            .find(|i| i.name == input)
            .and_then(|i| i.shape.as_ref())
            .and_then(|s| s.first())
            .and_then(Dim::fixed)
            .is_some();
    let batches: &[usize] = if fixed_batch { &[0] } else { &[1, 2] };
    let runs = batches
        .iter()
        .map(|&batch| {
            let mut dims = sample_dims.to_vec();
            if !fixed_batch {
                dims[0] = batch;
            }
            run_once(runner, &probe, (&summary, constants), input, dims, batch)
        })
        .collect::<Result<Vec<Run>, String>>()?;
    let mut shapes = merge_runs(&runs);
    let graph = model.graph.as_ref().ok_or("the model has no graph")?;
    for init in &graph.initializer {
        if let Some(name) = &init.name {
            shapes.insert(
                name.clone(),
                TensorShape {
                    dims: init.dims.iter().map(|&d| Some(d)).collect(),
                    elem_type: init.data_type.unwrap_or(0),
                },
            );
        }
    }
    add_unseen_inputs(&mut shapes, &graph.input, input, sample_dims, fixed_batch);
    Ok(shapes)
}

/// A copy of `model` whose every node output is also a graph output, so one run shows them all.
fn with_every_output(model: &ModelProto) -> Result<ModelProto, String> {
    let mut probe = model.clone();
    let graph = probe.graph.as_mut().ok_or("the model has no graph")?;
    let existing: std::collections::HashSet<String> = graph.output.iter().filter_map(|o| o.name.clone()).collect();
    let mut extra = Vec::new();
    for node in &graph.node {
        for o in node.output.iter().filter(|o| !o.is_empty() && !existing.contains(*o)) {
            extra.push(ValueInfoProto {
                name: Some(o.clone()),
                ..Default::default()
            });
        }
    }
    graph.output.extend(extra);
    Ok(probe)
}

/// Runs `probe` once: `input` gets sample values of `dims` (zeros when it is not float: an index
/// or a flag), the constants their values (a batched one a row per row), every other input zeros of
/// its fixed dimensions (free ones: `batch` on the first axis, 1 elsewhere).
fn run_once(
    runner: &OrtRunner,
    probe: &ModelProto,
    (summary, constants): (&ModelSummary, &[Constant]),
    input: &str,
    dims: Vec<usize>,
    batch: usize,
) -> Result<Run, String> {
    let count: usize = dims.iter().product();
    let element = |t: &crate::onnx::TensorInfo| {
        ElementType::of_name(&t.dtype).ok_or_else(|| format!("input `{}` is {}; cannot probe", t.name, t.dtype))
    };
    let mut feeds = Vec::new();
    for t in &summary.inputs {
        if t.name == input {
            let data = match element(t)? {
                ElementType::Float32 => TensorData::F32((0..count).map(|i| sample_value(i as u64)).collect()),
                other => other.zeros(count),
            };
            feeds.push((t.name.as_str(), dims.clone(), data));
        } else if let Some(c) = constants.iter().find(|c| c.name == t.name) {
            match c.batched {
                true => {
                    let mut shape = vec![batch.max(1)];
                    shape.extend_from_slice(&c.shape);
                    feeds.push((t.name.as_str(), shape, c.value.repeated(batch.max(1))));
                }
                false => feeds.push((t.name.as_str(), c.shape.clone(), c.value.clone())),
            }
        } else {
            let shape: Vec<usize> = t
                .shape
                .as_ref()
                .ok_or_else(|| format!("input `{}` has no shape; cannot probe", t.name))?
                .iter()
                .enumerate()
                .map(|(k, d)| d.fixed().unwrap_or(if k == 0 { batch } else { 1 }))
                .collect();
            let n: usize = shape.iter().product();
            feeds.push((t.name.as_str(), shape, element(t)?.zeros(n)));
        }
    }
    let outputs = runner.run_typed(probe, &feeds)?;
    Ok(outputs.into_iter().map(|o| (o.name, (o.elem_type, o.shape))).collect())
}

/// The first run's shapes, a dimension left free where the second run (batch 2) differs; a tensor
/// whose rank changed with the batch is left out.
fn merge_runs(runs: &[Run]) -> ShapeMap {
    let mut shapes = ShapeMap::new();
    let Some(first) = runs.first() else { return shapes };
    for (name, (elem_type, dims)) in first {
        let merged: Vec<Option<i64>> = match runs.get(1).and_then(|r| r.get(name)) {
            Some((_, other)) if other.len() == dims.len() => dims
                .iter()
                .zip(other)
                .map(|(a, b)| (a == b).then_some(*a as i64))
                .collect(),
            Some(_) => continue,
            None => dims.iter().map(|&d| Some(d as i64)).collect(),
        };
        shapes.insert(
            name.clone(),
            TensorShape {
                dims: merged,
                elem_type: *elem_type,
            },
        );
    }
    shapes
}

/// Graph inputs no run reported: the probed input with its sample dimensions (batch free unless
/// fixed), others with their rank and every dimension free.
fn add_unseen_inputs(
    shapes: &mut ShapeMap,
    inputs: &[ValueInfoProto],
    input: &str,
    sample_dims: &[usize],
    fixed_batch: bool,
) {
    for vi in inputs {
        let Some(name) = &vi.name else { continue };
        if shapes.contains_key(name) {
            continue;
        }
        if let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            let mut dims: Vec<Option<i64>> = if name == input {
                sample_dims.iter().map(|&d| Some(d as i64)).collect()
            } else {
                t.shape
                    .as_ref()
                    .map(|s| s.dim.iter().map(|_| None).collect())
                    .unwrap_or_default()
            };
            if name == input && !fixed_batch {
                dims[0] = None;
            }
            shapes.insert(
                name.clone(),
                TensorShape {
                    dims,
                    elem_type: t.elem_type.unwrap_or(data_type::FLOAT),
                },
            );
        }
    }
}

/// True when the model takes or answers one row only: its input's batch axis is fixed at 1 (an
/// export without a dynamic batch), or the graph fixes it at one row though the input's is free
/// (a Reshape or Resize to batch 1, as some converters write: fed two rows, the probe saw one
/// answer). Such a model runs one row per pass.
pub fn fixes_batch(shapes: &ShapeMap, input: &str, output: &str) -> bool {
    let input_batch = shapes.get(input).and_then(|s| s.dims.first().copied());
    let output_batch = shapes.get(output).and_then(|s| s.dims.first().copied());
    match input_batch {
        Some(Some(1)) => true,
        Some(None) => output_batch == Some(Some(1)),
        _ => false,
    }
}

/// Deterministic sample values in [-1, 1) (a hash of the index), so probes are reproducible.
fn sample_value(i: u64) -> f32 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}
