//! PatternNet's and PatternAttribution's view of a graph (Kindermans et al., "Learning how to
//! explain neural networks: PatternNet and PatternAttribution", ICLR 2018): the linear layers
//! (Conv, Gemm, MatMul with constant weights) on the path from the input to the scores, what a
//! fitting pass must expose of each (its input, its output, and the tensor a following ReLU reads),
//! and the fitted patterns, shaped like the weights they stand in for, with their file form.

use std::collections::{BTreeMap, HashMap};

use prost::Message;

use super::autodiff::analysis::Path;
use super::autodiff::ShapeMap;
use super::builder::{attribute, float_tensor, int64_tensor, value_info, Attr};
use super::node::{attr_float, attr_int, attr_ints, attr_string, constant, node_name, op_type, tensor_f32};
use super::proto::{data_type, GraphProto, ModelProto, NodeProto};

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
    /// That ReLU's output (with `gate`): on the open regime's samples, the output plus a
    /// constant per output neuron where the gate adds a bias (which the regime's covariance does
    /// not see), or a batch normalisation's nonzero scale and shift of it (which the pattern, a
    /// quotient of covariances, does not see).
    pub relu: Option<String>,
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

    /// Groups of a convolution (1 for a dense layer): output `j` sees the inputs of group
    /// `j / (outputs / groups)`.
    pub fn groups(&self) -> usize {
        match self.receptive {
            Receptive::Conv { group, .. } => group.max(1),
            Receptive::Dense { .. } => 1,
        }
    }

    /// Right-hand sides per output neuron in the statistics pass: the ReLU's open-regime mask and
    /// its output (the open regime's samples, their output), for a layer a ReLU follows; the
    /// output alone otherwise.
    pub fn blocks(&self) -> usize {
        if self.relu.is_some() {
            2
        } else {
            1
        }
    }

    /// Columns of a group's statistics: the blocks of each of its output neurons, then, for the
    /// linear estimator, a column of ones (the samples' count, and each input's plain sum; the
    /// open regime's are the mask's).
    pub fn columns(&self) -> usize {
        let ones = usize::from(self.relu.is_none());
        self.blocks() * (self.outputs() / self.groups()) + ones
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
    let (gate, relu) = gate(graph, &output, consumers).unzip();
    Ok(LinearLayer {
        node: node_name(n),
        gate,
        relu,
        input,
        output,
        weight,
        weight_dims: dims,
        weight_values: values,
        receptive,
    })
}

/// The tensor a ReLU right after `output` reads (`output` itself, or the output of the one
/// constant-parameter Add or BatchNormalization between them), and that ReLU's output.
fn gate(graph: &GraphProto, output: &str, consumers: &HashMap<&str, Vec<&NodeProto>>) -> Option<(String, String)> {
    let only = |t: &str| match consumers.get(t).map(Vec::as_slice) {
        Some([n]) => Some(*n),
        _ => None,
    };
    let relu_of = |t: &str| {
        let n = only(t)?;
        (op_type(n) == "Relu").then(|| Some((t.to_string(), n.output.first()?.clone())))?
    };
    let next = only(output)?;
    match op_type(next) {
        "Relu" => relu_of(output),
        "Add" | "BatchNormalization" => {
            let constants = next
                .input
                .iter()
                .filter(|t| t.as_str() != output)
                .all(|t| t.is_empty() || constant(graph, t).is_some());
            if !constants {
                return None;
            }
            relu_of(next.output.first()?)
        }
        _ => None,
    }
}

/// The statistics graph's outputs for linear layer `i` (of [`linear_layers`]): `products`
/// `[1, groups, fan_in, columns]`, each sample's input (a convolution's zero-padded patch) times
/// each right-hand side ([`LinearLayer::blocks`], block-major within a group, then the linear
/// estimator's ones) summed over the pass's samples; and `sums` `[1, groups, columns]`, the right-hand sides' sums. The
/// leading axis is the pass: the runtime's passes stack along it.
pub fn statistics_outputs(i: usize) -> (String, String) {
    (
        format!("explaind.patterns.{i}.products"),
        format!("explaind.patterns.{i}.sums"),
    )
}

/// The forward model (`model`, as prepared for gradients, with its probed `shapes`) with, for each
/// of `layers`, the sums the pattern estimators need as outputs ([`statistics_outputs`]) in
/// place of the model's own: per output neuron `j` and input `k`, the samples, the sums of y, of
/// x and of x y (over the samples where the ReLU after the layer is open, for the two-component
/// estimator's `a+`; over every sample for the linear estimator), as matrix products ONNX
/// Runtime runs beside the forward pass, so that only these sums (the weights' size, not the
/// data's) leave the pass. The open regime's sums are products with the ReLU's mask and its
/// output, which the forward pass computes anyway: its convolutions and ReLUs stay fused, and a
/// layer costs two times its multiply-adds in products (the shut regime's `a-`, which no rule
/// uses, would cost a third, and the output before the ReLU).
///
/// A convolution's patches are gathered as its input transposed to channels first, padded, and
/// one strided slice per kernel offset (im2col with standard operators), so the sums are one
/// GEMM `[fan_in, samples] x [columns, samples]^T` (a batched MatMul per group when grouped).
/// (The weight-gradient form, a Conv of the transposed input with the transposed right-hand
/// sides as its kernel, computes the same sums; ONNX Runtime ran it at about twice the time, its
/// convolution kernels being made for constant weights. Gathering the patches with one Gather,
/// or one depthwise Conv of one-hot kernels, or taking nine GEMMs of the slices instead of their
/// concatenation, each ran slower than this.)
pub fn statistics_graph(model: &ModelProto, layers: &[LinearLayer], shapes: &ShapeMap) -> Result<ModelProto, String> {
    let mut out = model.clone();
    let graph = out.graph.as_mut().ok_or("the model has no graph")?;
    graph.output.clear();
    for (i, l) in layers.iter().enumerate() {
        let mut e = Emit {
            graph,
            prefix: format!("explaind.patterns.{i}."),
            count: 0,
        };
        let (products, sums) = match &l.receptive {
            Receptive::Conv { .. } => conv_statistics(&mut e, l, shapes),
            Receptive::Dense { .. } => dense_statistics(&mut e, l),
        }
        .map_err(|why| format!("{}: {why}", l.node))?;
        let (products_name, sums_name) = statistics_outputs(i);
        let zero = e.ints(&[0]);
        e.named("Unsqueeze", &[&products, &zero], vec![], &products_name);
        e.named("Unsqueeze", &[&sums, &zero], vec![], &sums_name);
        for name in [products_name, sums_name] {
            graph.output.push(value_info(&name, data_type::FLOAT, None));
        }
    }
    Ok(out)
}

/// Bytes one input row adds in a statistics pass: per layer its patches (fan-in times its output
/// positions), the right-hand sides and the transposed copies, the largest layer's (ONNX Runtime
/// frees a layer's once its products are taken); 0 when a shape is unknown.
pub fn statistics_row_bytes(layers: &[LinearLayer], shapes: &ShapeMap) -> u64 {
    let per_row = |name: &str| -> Option<u64> {
        let dims = &shapes.get(name)?.dims;
        dims.iter()
            .skip(1)
            .try_fold(1u64, |n, d| n.checked_mul(u64::try_from((*d)?).ok()?))
    };
    layers
        .iter()
        .filter_map(|l| {
            let (x, y) = (per_row(&l.input)?, per_row(&l.output)?);
            let positions = y / (l.outputs() as u64).max(1);
            let patches = positions.saturating_mul(l.fan_in() as u64 * l.groups() as u64);
            // Patches, the transposed input, the transposed output or ReLU, the mask, the
            // right-hand sides (blocks + ones).
            let floats = patches
                .saturating_add(x)
                .saturating_add(y.saturating_mul(2 * l.blocks() as u64 + 2));
            Some(floats.saturating_mul(4))
        })
        .max()
        .unwrap_or(0)
}

/// Nodes appended to a graph, named under a prefix.
struct Emit<'g> {
    graph: &'g mut GraphProto,
    prefix: String,
    count: usize,
}

impl Emit<'_> {
    fn named(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>, output: &str) {
        self.count += 1;
        self.graph.node.push(NodeProto {
            name: Some(format!("{}{}.{}", self.prefix, op.to_ascii_lowercase(), self.count)),
            op_type: Some(op.to_string()),
            domain: Some(String::new()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            attribute: attrs.into_iter().map(|(n, v)| attribute(n, v)).collect(),
            ..Default::default()
        });
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let out = format!("{}{}.{}", self.prefix, op.to_ascii_lowercase(), self.count + 1);
        self.named(op, inputs, attrs, &out);
        out
    }

    fn ints(&mut self, values: &[i64]) -> String {
        self.count += 1;
        let name = format!("{}ints.{}", self.prefix, self.count);
        self.graph
            .initializer
            .push(int64_tensor(&name, &[values.len() as i64], values));
        name
    }

    fn reshape(&mut self, x: &str, dims: &[i64]) -> String {
        let shape = self.ints(dims);
        self.node("Reshape", &[x, &shape], vec![])
    }

    fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.node("Transpose", &[x], vec![("perm", Attr::Ints(perm.to_vec()))])
    }

    /// Ones shaped like `like` except axis `axis`, which is 1 (`like`'s rank is `rank`).
    fn ones_beside(&mut self, like: &str, axis: usize, rank: usize) -> String {
        let shape = self.node("Shape", &[like], vec![]);
        let mut parts = Vec::new();
        if axis > 0 {
            let (start, end) = (self.ints(&[0]), self.ints(&[axis as i64]));
            parts.push(self.node("Slice", &[&shape, &start, &end], vec![]));
        }
        parts.push(self.ints(&[1]));
        if axis + 1 < rank {
            let (start, end) = (self.ints(&[axis as i64 + 1]), self.ints(&[rank as i64]));
            parts.push(self.node("Slice", &[&shape, &start, &end], vec![]));
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let dims = self.node("Concat", &refs, vec![("axis", Attr::Int(0))]);
        let one = Attr::Tensor(Box::new(float_tensor("value", &[1], &[1.0])));
        self.node("ConstantOfShape", &[&dims], vec![("value", one)])
    }

    /// The open-regime mask `gate > 0` as floats.
    fn open(&mut self, gate: &str) -> String {
        self.count += 1;
        let zero = format!("{}zero.{}", self.prefix, self.count);
        self.graph.initializer.push(float_tensor(&zero, &[], &[0.0]));
        let open = self.node("Greater", &[gate, &zero], vec![]);
        self.node("Cast", &[&open], vec![("to", Attr::Int(i64::from(data_type::FLOAT)))])
    }
}

/// A convolution's sums: `[groups, fan_in, columns]` and `[groups, columns]`.
fn conv_statistics(e: &mut Emit, l: &LinearLayer, shapes: &ShapeMap) -> Result<(String, String), String> {
    let Receptive::Conv {
        kernel,
        strides,
        dilations,
        pads,
        group,
    } = &l.receptive
    else {
        return Err("not a convolution".into());
    };
    let fixed = |name: &str| -> Option<Vec<i64>> { shapes.get(name)?.dims.iter().skip(1).copied().collect() };
    let (Some(x_dims), Some(y_dims)) = (fixed(&l.input), fixed(&l.output)) else {
        return Err("patterns are fitted for convolutions whose sizes the shape probe fixed".into());
    };
    let [_, h, w] = <[i64; 3]>::try_from(x_dims).map_err(|_| "the input is not 4-D")?;
    let [_, oh, ow] = <[i64; 3]>::try_from(y_dims).map_err(|_| "the output is not 4-D")?;
    let [kh, kw] = kernel.map(|k| k as i64);
    let [sh, sw] = strides.map(|s| s as i64);
    let [dh, dw] = dilations.map(|d| d as i64);
    let [pt, pl] = pads.map(|p| p as i64);
    // The end pads the last output position's patch reaches into.
    let reach = |k: i64, d: i64, o: i64, s: i64| (k - 1) * d + (o - 1) * s + 1;
    let (pb, pr) = (
        (reach(kh, dh, oh, sh) - h - pt).max(0),
        (reach(kw, dw, ow, sw) - w - pl).max(0),
    );
    let g = *group as i64;
    let per_group = (l.outputs() / group) as i64;
    let blocks = l.blocks() as i64;

    // Patches `[groups, fan_in, samples]`: the input channels first, then one strided slice per
    // kernel offset, concatenated so that a row is (channel, kernel row, kernel column), the
    // weight's order, and a column (image, output position).
    let xt = e.transpose(&l.input, &[1, 0, 2, 3]);
    let padded = if pt + pl + pb + pr > 0 {
        let p = e.ints(&[0, 0, pt, pl, 0, 0, pb, pr]);
        e.node("Pad", &[&xt, &p], vec![])
    } else {
        xt
    };
    let (axes, steps) = (e.ints(&[2, 3]), e.ints(&[sh, sw]));
    let mut slices = Vec::new();
    for ky in 0..kh {
        for kx in 0..kw {
            let starts = e.ints(&[ky * dh, kx * dw]);
            let ends = e.ints(&[ky * dh + (oh - 1) * sh + 1, kx * dw + (ow - 1) * sw + 1]);
            slices.push(e.node("Slice", &[&padded, &starts, &ends, &axes, &steps], vec![]));
        }
    }
    let refs: Vec<&str> = slices.iter().map(String::as_str).collect();
    let patches = e.node("Concat", &refs, vec![("axis", Attr::Int(1))]);
    let patches = e.reshape(&patches, &[g, l.fan_in() as i64, -1]);

    // Right-hand sides `[groups, columns, samples]`, output channels first: the ReLU's mask and
    // output (read from the forward pass, whose convolution and ReLU stay one fused kernel), or
    // the output and ones.
    let mut rhs = Vec::new();
    let linear = match &l.relu {
        Some(relu) => {
            let rt = e.transpose(relu, &[1, 0, 2, 3]);
            rhs.extend([e.open(&rt), rt]);
            false
        }
        None => {
            rhs.push(e.transpose(&l.output, &[1, 0, 2, 3]));
            true
        }
    };
    let rhs = if g == 1 {
        if linear {
            let ones = e.ones_beside(&rhs[0], 0, 4);
            rhs.push(ones);
        }
        let refs: Vec<&str> = rhs.iter().map(String::as_str).collect();
        let all = e.node("Concat", &refs, vec![("axis", Attr::Int(0))]);
        e.reshape(&all, &[l.columns() as i64, -1])
    } else {
        let refs: Vec<&str> = rhs.iter().map(String::as_str).collect();
        let all = e.node("Concat", &refs, vec![("axis", Attr::Int(0))]);
        let split = e.reshape(&all, &[blocks, g, per_group, -1]);
        let grouped = e.transpose(&split, &[1, 0, 2, 3]);
        let grouped = e.reshape(&grouped, &[g, blocks * per_group, -1]);
        if linear {
            let ones = e.ones_beside(&grouped, 1, 3);
            e.node("Concat", &[&grouped, &ones], vec![("axis", Attr::Int(1))])
        } else {
            grouped
        }
    };
    let (products, sums) = if g == 1 {
        // One GEMM `[fan_in, samples] x [columns, samples]^T`: no transposed copy of the
        // right-hand sides.
        let patches = e.reshape(&patches, &[l.fan_in() as i64, -1]);
        let products = e.node("Gemm", &[&patches, &rhs], vec![("transB", Attr::Int(1))]);
        let axis = e.ints(&[1]);
        let sums = e.node("ReduceSum", &[&rhs, &axis], vec![("keepdims", Attr::Int(0))]);
        let zero = e.ints(&[0]);
        (
            e.node("Unsqueeze", &[&products, &zero], vec![]),
            e.node("Unsqueeze", &[&sums, &zero], vec![]),
        )
    } else {
        let rhs_t = e.transpose(&rhs, &[0, 2, 1]);
        let products = e.node("MatMul", &[&patches, &rhs_t], vec![]);
        let axis = e.ints(&[2]);
        let sums = e.node("ReduceSum", &[&rhs, &axis], vec![("keepdims", Attr::Int(0))]);
        (products, sums)
    };
    Ok((products, sums))
}

/// A dense layer's sums (every leading position a sample): `[1, fan_in, columns]` and
/// `[1, columns]`.
fn dense_statistics(e: &mut Emit, l: &LinearLayer) -> Result<(String, String), String> {
    let (k, j) = (l.fan_in() as i64, l.outputs() as i64);
    let x = e.reshape(&l.input, &[-1, k]);
    let mut rhs = Vec::new();
    match &l.relu {
        Some(relu) => {
            let r = e.reshape(relu, &[-1, j]);
            rhs.extend([e.open(&r), r]);
        }
        None => {
            rhs.push(e.reshape(&l.output, &[-1, j]));
            rhs.push(e.ones_beside(&x, 1, 2));
        }
    }
    let refs: Vec<&str> = rhs.iter().map(String::as_str).collect();
    let rhs = e.node("Concat", &refs, vec![("axis", Attr::Int(1))]);
    let products = e.node("Gemm", &[&x, &rhs], vec![("transA", Attr::Int(1))]);
    let products = e.reshape(&products, &[1, k, l.columns() as i64]);
    let axis = e.ints(&[0]);
    let sums = e.node("ReduceSum", &[&rhs, &axis], vec![("keepdims", Attr::Int(0))]);
    let sums = e.reshape(&sums, &[1, l.columns() as i64]);
    Ok((products, sums))
}

/// One layer's fitted patterns, shaped like its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerPattern {
    /// The weight's dims.
    pub dims: Vec<i64>,
    /// The pattern the backward pass uses: the linear estimator's `a`, or the two-component
    /// estimator's positive regime `a+` for a layer a ReLU follows (its negative regime `a-` is
    /// what the ReLU blocks, which no rule reads: not fitted).
    pub values: Vec<f32>,
    /// Whether `values` is the two-component estimator's `a+` (a ReLU follows the layer).
    pub two_component: bool,
}

/// A model's fitted patterns, by weight initializer name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Patterns {
    /// Layer patterns by weight name.
    pub layers: BTreeMap<String, LayerPattern>,
}

/// The file form's name, with its version (v1 held the shut regime's `a-` too: read as another
/// version, its patterns are fitted again).
const FORMAT: &str = "explaind.patterns.v2";
/// The doc string of a two-component pattern's tensor in the file form.
const TWO_COMPONENT: &str = "two-component a+";

impl Patterns {
    /// Its file form: an ONNX GraphProto whose initializers are the patterns.
    pub fn encode(&self) -> Vec<u8> {
        let mut g = GraphProto {
            name: Some(FORMAT.into()),
            ..Default::default()
        };
        for (name, p) in &self.layers {
            let mut t = float_tensor(name, &p.dims, &p.values);
            t.doc_string = p.two_component.then(|| TWO_COMPONENT.into());
            g.initializer.push(t);
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
            let two_component = t.doc_string.as_deref() == Some(TWO_COMPONENT);
            layers.insert(
                name,
                LayerPattern {
                    dims: t.dims.clone(),
                    values,
                    two_component,
                },
            );
        }
        Some(Self { layers })
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.layers.values().map(|p| p.values.len()).sum()
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
        assert_eq!(layers[0].relu.as_deref(), Some(r.as_str()));
        assert_eq!((layers[0].outputs(), layers[0].fan_in()), (2, 9));
        assert_eq!((&layers[1].gate, &layers[1].relu), (&None, &None));
        assert_eq!((layers[1].outputs(), layers[1].fan_in()), (3, 32));
        assert_eq!(layers[1].weight_index(2, 1), 5);

        let mut p = Patterns::default();
        p.layers.insert(
            "w".into(),
            LayerPattern {
                dims: vec![2, 1],
                values: vec![1.0, 2.0],
                two_component: true,
            },
        );
        p.layers.insert(
            "v".into(),
            LayerPattern {
                dims: vec![1, 1],
                values: vec![5.0],
                two_component: false,
            },
        );
        assert_eq!(Patterns::decode(&p.encode()), Some(p));
        assert_eq!(Patterns::decode(b"not a pattern file"), None);
    }
}
