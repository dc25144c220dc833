//! Layers of a graph a method can read besides the input: feature maps and a vision
//! transformer's token sequence (with their channel axis and patch grid), and self-attention's
//! probabilities. Found from the graph and its probed shapes; nothing is built.

use std::collections::HashSet;

use super::{analysis, is_float, ShapeMap};
use crate::onnx::node::{attr_ints, op_type};
use crate::onnx::proto::{GraphProto, ModelProto, NodeProto};

/// A layer whose activations and gradients a method can read (the CAM methods do), and the axis
/// of its channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureLayer {
    pub name: String,
    /// 1 for channels-first (NCHW) feature maps, 3 for channels-last (NHWC), 2 for a transformer's
    /// token sequence `[batch, tokens, dim]`.
    pub channel_axis: usize,
    /// For a token sequence: how its tokens lie on the image.
    pub grid: Option<TokenGrid>,
}

/// How a vision transformer's tokens `[batch, skip + height * width, dim]` lie on the image: the
/// first `skip` (the class token, a distillation token) are not patches; the rest are the patch
/// grid row by row (pytorch-grad-cam's `reshape_transform`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct TokenGrid {
    /// Leading tokens that are not patches.
    pub skip: usize,
    /// Patch rows.
    pub height: usize,
    /// Patch columns.
    pub width: usize,
}

/// Candidate layers to read (as the CAM methods do): float 4-D feature maps on the path from `input` to `output`
/// whose spatial size is above 1, in graph order, each with its channel axis. A tensor is a
/// feature map when its layout is known from how it was made: the output of an operator ONNX
/// defines on NCHW (Conv, pooling, normalisation), a Transpose between the two layouts of one
/// (converted channels-last graphs transpose around every convolution), or elementwise from one.
pub fn analysis_layers(model: &ModelProto, input: &str, output: &str, shapes: &ShapeMap) -> Vec<FeatureLayer> {
    let Some(graph) = model.graph.as_ref() else {
        return Vec::new();
    };
    let path = analysis::Path::find(graph, input, &[output.to_string()], shapes);
    let mut layers = Vec::new();
    for &i in &path.nodes {
        for o in &graph.node[i].output {
            if !(path.depends.contains(o) && path.needed.contains(o)) {
                continue;
            }
            let Some(s) = shapes.get(o) else { continue };
            if s.dims.len() != 4 || !is_float(s.elem_type) {
                continue;
            }
            let Some(channel_axis) = channel_axis(graph, o, shapes, 0) else {
                continue;
            };
            let spatial: Option<i64> = if channel_axis == 1 {
                s.dims[2].zip(s.dims[3]).map(|(h, w)| h * w)
            } else {
                s.dims[1].zip(s.dims[2]).map(|(h, w)| h * w)
            };
            if spatial.is_some_and(|p| p > 1) {
                layers.push(FeatureLayer {
                    name: o.clone(),
                    channel_axis,
                    grid: None,
                });
            }
        }
    }
    layers.extend(last_attention_tokens(graph, input, &path, shapes));
    layers
}

/// Whether every path from `input` to `output` runs through tensor `layer`. A multi-scale
/// detector's heads each read one scale: a CAM at one head's layer has no gradient for the
/// detections the other heads make, while a layer every path runs through sees them all.
pub fn on_every_path(model: &ModelProto, input: &str, output: &str, layer: &str) -> bool {
    let Some(graph) = model.graph.as_ref() else {
        return false;
    };
    if layer == input || layer == output {
        return true;
    }
    // The tensors reachable from the input without going through `layer`.
    let mut reached: HashSet<&str> = HashSet::from([input]);
    let mut grew = true;
    while grew {
        grew = false;
        for n in &graph.node {
            if n.input.iter().any(|i| i != layer && reached.contains(i.as_str())) {
                for o in &n.output {
                    if o != layer && reached.insert(o.as_str()) {
                        grew = true;
                    }
                }
            }
        }
    }
    !reached.contains(output)
}

/// Attention probabilities on the path from `input` to `output`: the outputs of Softmax nodes
/// shaped `[batch, heads, tokens, tokens]`, in graph order (attention rollout reads them).
pub fn attention_maps(model: &ModelProto, input: &str, output: &str, shapes: &ShapeMap) -> Vec<String> {
    let Some(graph) = model.graph.as_ref() else {
        return Vec::new();
    };
    let path = analysis::Path::find(graph, input, &[output.to_string()], shapes);
    path.nodes
        .iter()
        .filter_map(|&i| attention_probabilities(&graph.node[i], shapes))
        .cloned()
        .collect()
}

/// The output of `n` when it is self-attention's probabilities: a Softmax shaped
/// `[batch, heads, tokens, tokens]`.
fn attention_probabilities<'n>(n: &'n NodeProto, shapes: &ShapeMap) -> Option<&'n String> {
    let o = n.output.first().filter(|_| op_type(n) == "Softmax")?;
    let dims = &shapes.get(o)?.dims;
    (dims.len() == 4 && dims[2].is_some() && dims[2] == dims[3]).then_some(o)
}

/// The token sequence the last self-attention reads (its queries' and keys' latest common source
/// `[batch, tokens, dim]`: the last block's input, or its first normalisation in pre-norm blocks),
/// when its tokens lie on the input image as a patch grid. Later token tensors only reach the
/// scores through the class token, so their patch tokens have no gradient; this is the layer
/// pytorch-grad-cam's ViT recipe uses.
fn last_attention_tokens(
    graph: &GraphProto,
    input: &str,
    path: &analysis::Path,
    shapes: &ShapeMap,
) -> Option<FeatureLayer> {
    let dims = |t: &str| shapes.get(t).map(|s| s.dims.clone());
    // The image's height and width, channels-first or channels-last.
    let image = dims(input)?;
    let (h, w) = match image.as_slice() {
        [_, Some(3 | 1), Some(h), Some(w)] => (*h, *w),
        [_, Some(h), Some(w), Some(3 | 1)] => (*h, *w),
        _ => return None,
    };
    let softmax = path
        .nodes
        .iter()
        .rev()
        .map(|&i| &graph.node[i])
        .find(|n| attention_probabilities(n, shapes).is_some())?;
    let tokens = dims(&softmax.output[0])?[2]?;
    // The scores' MatMul of queries and transposed keys, under any scaling.
    let producer = |t: &str| graph.node.iter().position(|n| n.output.iter().any(|o| o == t));
    let mut scores = producer(&softmax.input[0])?;
    while matches!(op_type(&graph.node[scores]), "Div" | "Mul" | "Add" | "Sub") {
        scores = producer(&graph.node[scores].input[0])?;
    }
    let matmul = &graph.node[scores];
    if op_type(matmul) != "MatMul" {
        return None;
    }
    let ancestors = |t: &str| {
        let mut seen: HashSet<String> = HashSet::new();
        let mut stack = vec![t.to_string()];
        while let Some(t) = stack.pop() {
            if !seen.insert(t.clone()) {
                continue;
            }
            if let Some(i) = producer(&t) {
                stack.extend(
                    graph.node[i]
                        .input
                        .iter()
                        .filter(|i| path.depends.contains(*i))
                        .cloned(),
                );
            }
        }
        seen
    };
    let (queries, keys) = (ancestors(&matmul.input[0]), ancestors(&matmul.input[1]));
    // The latest common source in graph order with a token axis of the attention's size.
    let source = path
        .nodes
        .iter()
        .rev()
        .flat_map(|&i| graph.node[i].output.iter())
        .find(|o| {
            queries.contains(*o)
                && keys.contains(*o)
                && dims(o).is_some_and(|d| d.len() == 3 && d[1] == Some(tokens) && d[2].is_some())
        })?;
    let grid = patch_grid(tokens, h, w)?;
    Some(FeatureLayer {
        name: source.clone(),
        channel_axis: 2,
        grid: Some(grid),
    })
}

/// How `tokens` tokens lie on an `h` x `w` image: 1, 0 or 2 leading tokens that are not patches,
/// then a grid of patches in the image's proportions, row by row.
fn patch_grid(tokens: i64, h: i64, w: i64) -> Option<TokenGrid> {
    [1, 0, 2].into_iter().find_map(|skip| {
        let patches = tokens - skip;
        // Rows and columns in the image's proportions.
        (1..=patches).find_map(|rows| {
            let cols = patches / rows;
            (rows * cols == patches && rows * w == cols * h && rows > 1).then_some(TokenGrid {
                skip: skip as usize,
                height: rows as usize,
                width: cols as usize,
            })
        })
    })
}

/// The channel axis of 4-D tensor `t` (1: NCHW, 3: NHWC) when its producers tell it, else `None`.
fn channel_axis(graph: &GraphProto, t: &str, shapes: &ShapeMap, depth: usize) -> Option<usize> {
    if depth >= 64 {
        return None;
    }
    let n = graph
        .node
        .iter()
        .find(|n| n.output.first().map(String::as_str) == Some(t))?;
    let from_input = |i: &String| {
        shapes
            .get(i)
            .is_some_and(|s| s.dims.len() == 4)
            .then(|| channel_axis(graph, i, shapes, depth + 1))
            .flatten()
    };
    match op_type(n) {
        "Conv"
        | "ConvTranspose"
        | "MaxPool"
        | "AveragePool"
        | "LpPool"
        | "BatchNormalization"
        | "InstanceNormalization" => Some(1),
        "Transpose" => {
            let perm = attr_ints(n, "perm").ok().flatten()?;
            match (n.input.first().and_then(from_input), perm.as_slice()) {
                (Some(1), [0, 2, 3, 1]) => Some(3),
                (Some(3), [0, 3, 1, 2]) => Some(1),
                _ => None,
            }
        }
        "Relu" | "LeakyRelu" | "PRelu" | "Elu" | "Selu" | "Sigmoid" | "Tanh" | "Clip" | "HardSigmoid" | "HardSwish"
        | "Softplus" | "Gelu" | "Identity" | "Dropout" | "Cast" | "Add" | "Sub" | "Mul" | "Div" | "Max" | "Min"
        | "Sum" => n.input.iter().find_map(from_input),
        _ => None,
    }
}
