//! PatternNet's and PatternAttribution's view of a graph (Kindermans et al., "Learning how to
//! explain neural networks: PatternNet and PatternAttribution", ICLR 2018): the linear layers
//! (Conv, Gemm, MatMul with constant weights) on the path from the input to the scores, what a
//! fitting pass must expose of each (its input, its output, and the tensor a following ReLU reads),
//! and the fitted patterns, shaped like the weights they stand in for, with their file form.

use std::collections::{BTreeMap, HashMap};

use prost::Message;

use super::autodiff::analysis::Path;
use super::autodiff::ShapeMap;
use super::builder::float_tensor;
use super::node::{attr_float, attr_int, attr_ints, attr_string, constant, node_name, op_type, tensor_f32};
use super::proto::{GraphProto, NodeProto};

/// How a linear layer's output neuron sees its input.
#[derive(Debug, Clone, PartialEq)]
pub enum Receptive {
    /// A 2-D convolution: each output position's input patch (im2col), channels of its group
    /// first, then kernel rows and columns (the weight's own order).
    Conv {
        /// Kernel height and width.
        kernel: [usize; 2],
        /// Strides.
        strides: [usize; 2],
        /// Dilations.
        dilations: [usize; 2],
        /// Pads: top, left (the bottom and right ones follow from the output's size).
        pads: [usize; 2],
        /// Groups.
        group: usize,
    },
    /// A dense layer on the last axis (Gemm, MatMul): every leading position is one sample.
    /// `transposed`: the weight is `[outputs, inputs]` (Gemm's transB), else `[inputs, outputs]`.
    Dense {
        /// Whether the weight is stored `[outputs, inputs]`.
        transposed: bool,
    },
}

/// A linear layer on the path, as a fitting pass sees it.
#[derive(Debug, Clone)]
pub struct LinearLayer {
    /// The node's name.
    pub node: String,
    /// Its data input (a tensor of the graph, or the model input).
    pub input: String,
    /// Its output (with its bias, which the estimators' covariances do not see).
    pub output: String,
    /// The tensor the ReLU after it reads (its output, or that plus a constant bias, or its batch
    /// normalisation), when one follows: its sign splits the samples into the two-component
    /// estimator's regimes. `None`: the linear estimator.
    pub gate: Option<String>,
    /// The weight's initializer name (the key of its pattern).
    pub weight: String,
    /// The weight's dims.
    pub weight_dims: Vec<i64>,
    /// The weight's values.
    pub weight_values: Vec<f32>,
    /// How an output neuron sees the input.
    pub receptive: Receptive,
}

impl LinearLayer {
    /// Output neurons (Conv: output channels; dense: output features).
    pub fn outputs(&self) -> usize {
        match self.receptive {
            Receptive::Conv { .. } => self.weight_dims.first().copied().unwrap_or(0).max(0) as usize,
            Receptive::Dense { transposed: true } => self.weight_dims.first().copied().unwrap_or(0).max(0) as usize,
            Receptive::Dense { transposed: false } => self.weight_dims.get(1).copied().unwrap_or(0).max(0) as usize,
        }
    }

    /// Inputs one output neuron weighs (Conv: its group's channels x kernel; dense: input features).
    pub fn fan_in(&self) -> usize {
        let total = self.weight_values.len();
        total.checked_div(self.outputs()).unwrap_or(0)
    }

    /// Index in the weight of output `j`'s input `k` (the pattern uses the same layout).
    pub fn weight_index(&self, j: usize, k: usize) -> usize {
        match self.receptive {
            Receptive::Conv { .. } | Receptive::Dense { transposed: true } => j * self.fan_in() + k,
            Receptive::Dense { transposed: false } => k * self.outputs() + j,
        }
    }
}

/// The linear layers on the path from `input` to `output`, in graph order, or why PatternNet
/// cannot read one of them (every such layer named).
pub fn linear_layers(
    graph: &GraphProto,
    input: &str,
    output: &str,
    shapes: &ShapeMap,
) -> Result<Vec<LinearLayer>, String> {
    let path = Path::find(graph, input, &[output.to_string()], shapes);
    let mut consumers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
    for &i in &path.nodes {
        let n = &graph.node[i];
        for t in &n.input {
            consumers.entry(t.as_str()).or_default().push(n);
        }
    }
    let mut layers = Vec::new();
    let mut refused = Vec::new();
    for &i in &path.nodes {
        let n = &graph.node[i];
        if !matches!(op_type(n), "Conv" | "Gemm" | "MatMul") {
            continue;
        }
        match layer(graph, n, &path, &consumers) {
            Ok(l) => layers.push(l),
            Err(why) => refused.push(format!("{} ({}): {why}", node_name(n), op_type(n))),
        }
    }
    if !refused.is_empty() {
        return Err(refused.join("; "));
    }
    if layers.is_empty() {
        return Err("no linear layer (Conv, Gemm, MatMul) between the input and the scores".into());
    }
    Ok(layers)
}

fn layer(
    graph: &GraphProto,
    n: &NodeProto,
    path: &Path,
    consumers: &HashMap<&str, Vec<&NodeProto>>,
) -> Result<LinearLayer, String> {
    let input = n.input.first().cloned().unwrap_or_default();
    let weight = n.input.get(1).cloned().unwrap_or_default();
    if !path.depends.contains(&input) || path.depends.contains(&weight) {
        return Err("patterns need the data on input 0 and constant weights on input 1".into());
    }
    let w = constant(graph, &weight).ok_or("the weight is not a constant")?;
    let values = tensor_f32(w).ok_or("the weight is not a float tensor")?;
    let dims = w.dims.clone();
    let attr = |e: super::node::AttrError| e.to_string();
    let receptive = match op_type(n) {
        "Conv" => {
            if dims.len() != 4 {
                return Err("patterns are fitted for 2-D convolutions only".into());
            }
            let pair = |v: Option<Vec<i64>>, default: i64| -> Result<[usize; 2], String> {
                let v = v.unwrap_or_else(|| vec![default; 2]);
                match v.as_slice() {
                    [a, b] if *a >= 0 && *b >= 0 => Ok([*a as usize, *b as usize]),
                    _ => Err(format!("unexpected attribute {v:?}")),
                }
            };
            let pads = match attr_string(n, "auto_pad", "NOTSET").map_err(attr)?.as_str() {
                "NOTSET" => attr_ints(n, "pads").map_err(attr)?.unwrap_or_else(|| vec![0; 4]),
                "VALID" => vec![0; 4],
                other => return Err(format!("auto_pad `{other}` is not supported by the pattern fitting")),
            };
            if pads.len() != 4 || pads.iter().any(|p| *p < 0) {
                return Err(format!("unexpected pads {pads:?}"));
            }
            Receptive::Conv {
                kernel: [dims[2].max(0) as usize, dims[3].max(0) as usize],
                strides: pair(attr_ints(n, "strides").map_err(attr)?, 1)?,
                dilations: pair(attr_ints(n, "dilations").map_err(attr)?, 1)?,
                pads: [pads[0] as usize, pads[1] as usize],
                group: attr_int(n, "group", 1).map_err(attr)?.max(1) as usize,
            }
        }
        "Gemm" => {
            if attr_int(n, "transA", 0).map_err(attr)? != 0 {
                return Err("Gemm with transA is not supported".into());
            }
            if attr_float(n, "alpha", 1.0).map_err(attr)? != 1.0 {
                return Err("patterns need Gemm with alpha 1".into());
            }
            Receptive::Dense {
                transposed: attr_int(n, "transB", 0).map_err(attr)? != 0,
            }
        }
        _ => Receptive::Dense { transposed: false },
    };
    if dims.len() < 2 || (matches!(receptive, Receptive::Dense { .. }) && dims.len() != 2) {
        return Err(format!("unexpected weight shape {dims:?}"));
    }
    let output = n.output.first().cloned().unwrap_or_default();
    Ok(LinearLayer {
        node: node_name(n),
        gate: gate(graph, &output, consumers),
        input,
        output,
        weight,
        weight_dims: dims,
        weight_values: values,
        receptive,
    })
}

/// The tensor a ReLU right after `output` reads: `output` itself, or the output of the one
/// constant-parameter Add or BatchNormalization between them.
fn gate(graph: &GraphProto, output: &str, consumers: &HashMap<&str, Vec<&NodeProto>>) -> Option<String> {
    let only = |t: &str| match consumers.get(t).map(Vec::as_slice) {
        Some([n]) => Some(*n),
        _ => None,
    };
    let next = only(output)?;
    match op_type(next) {
        "Relu" => Some(output.to_string()),
        "Add" | "BatchNormalization" => {
            let constants = next
                .input
                .iter()
                .filter(|t| t.as_str() != output)
                .all(|t| t.is_empty() || constant(graph, t).is_some());
            let after = next.output.first()?;
            (constants && op_type(only(after)?) == "Relu").then(|| after.clone())
        }
        _ => None,
    }
}

/// One layer's fitted patterns, shaped like its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerPattern {
    /// The weight's dims.
    pub dims: Vec<i64>,
    /// The pattern the backward pass uses: the linear estimator's `a`, or the two-component
    /// estimator's positive regime `a+` for a layer a ReLU follows (its negative regime is what
    /// the ReLU blocks).
    pub values: Vec<f32>,
    /// The two-component estimator's negative regime `a-` (layers a ReLU follows).
    pub negative: Option<Vec<f32>>,
}

/// A model's fitted patterns, by weight initializer name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Patterns {
    /// Layer patterns by weight name.
    pub layers: BTreeMap<String, LayerPattern>,
}

/// The file form's name, with its version.
const FORMAT: &str = "explaind.patterns.v1";
/// Suffix of a negative-regime pattern's tensor in the file form.
const NEGATIVE: &str = "#negative";

impl Patterns {
    /// Its file form: an ONNX GraphProto whose initializers are the patterns.
    pub fn encode(&self) -> Vec<u8> {
        let mut g = GraphProto {
            name: Some(FORMAT.into()),
            ..Default::default()
        };
        for (name, p) in &self.layers {
            g.initializer.push(float_tensor(name, &p.dims, &p.values));
            if let Some(neg) = &p.negative {
                g.initializer
                    .push(float_tensor(&format!("{name}{NEGATIVE}"), &p.dims, neg));
            }
        }
        g.encode_to_vec()
    }

    /// Reads the file form; `None` when it is not one (another version, a damaged file).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let g = GraphProto::decode(bytes).ok()?;
        if g.name.as_deref() != Some(FORMAT) {
            return None;
        }
        let mut layers: BTreeMap<String, LayerPattern> = BTreeMap::new();
        let mut negatives = Vec::new();
        for t in &g.initializer {
            let name = t.name.clone()?;
            let values = tensor_f32(t)?;
            let count = t
                .dims
                .iter()
                .try_fold(1usize, |n, d| n.checked_mul(usize::try_from(*d).ok()?))?;
            if count != values.len() {
                return None;
            }
            match name.strip_suffix(NEGATIVE) {
                Some(base) => negatives.push((base.to_string(), values)),
                None => {
                    layers.insert(
                        name,
                        LayerPattern {
                            dims: t.dims.clone(),
                            values,
                            negative: None,
                        },
                    );
                }
            }
        }
        for (base, values) in negatives {
            layers.get_mut(&base)?.negative = Some(values);
        }
        Some(Self { layers })
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.layers
            .values()
            .map(|p| p.values.len() + p.negative.as_ref().map_or(0, Vec::len))
            .sum()
    }

    /// True when no layer has a pattern.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::autodiff::prepare_forward;
    use crate::onnx::builder::{Attr, GraphBuilder};

    #[test]
    fn layers_and_their_gates_are_found_and_patterns_round_trip() {
        let mut b = GraphBuilder::new("net", 17);
        b.input("x", &[-1, 1, 4, 4]);
        let w = b.constant("w", &[2, 1, 3, 3], &[0.1; 18]);
        let c = b.node(
            "Conv",
            &["x", &w],
            vec![
                ("pads", Attr::Ints(vec![1, 1, 1, 1])),
                ("kernel_shape", Attr::Ints(vec![3, 3])),
            ],
        );
        let bias = b.constant("bias", &[1, 2, 1, 1], &[0.0; 2]);
        let added = b.node("Add", &[&c, &bias], vec![]);
        let r = b.node("Relu", &[&added], vec![]);
        let f = b.node("Flatten", &[&r], vec![]);
        let v = b.constant("v", &[32, 3], &[0.1; 96]);
        let y = b.node("MatMul", &[&f, &v], vec![]);
        b.output(&y, &[-1, 3]);
        let model = prepare_forward(&b.build()).unwrap();
        let graph = model.graph.as_ref().unwrap();
        let layers = linear_layers(graph, "x", &y, &ShapeMap::new()).unwrap();
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[0].gate.as_deref(), Some(added.as_str()));
        assert_eq!((layers[0].outputs(), layers[0].fan_in()), (2, 9));
        assert_eq!(layers[1].gate, None);
        assert_eq!((layers[1].outputs(), layers[1].fan_in()), (3, 32));
        assert_eq!(layers[1].weight_index(2, 1), 5);

        let mut p = Patterns::default();
        p.layers.insert(
            "w".into(),
            LayerPattern {
                dims: vec![2, 1],
                values: vec![1.0, 2.0],
                negative: Some(vec![3.0, 4.0]),
            },
        );
        assert_eq!(Patterns::decode(&p.encode()), Some(p));
        assert_eq!(Patterns::decode(b"not a pattern file"), None);
    }
}
