//! Tree ensembles read from ONNX-ML `TreeEnsembleClassifier` / `TreeEnsembleRegressor` nodes (what
//! skl2onnx, onnxmltools and hummingbird write for scikit-learn, XGBoost and LightGBM), in their raw
//! output space: `base_values` plus the sum of the trees' leaf weights, before `post_transform`.

use std::collections::HashMap;

use super::node::{attr_floats, attr_ints, attr_string, attr_strings, attr_tensor, domain, node_name, op_type};
use super::proto::{GraphProto, ModelProto, NodeProto};

/// How a split compares the feature with its threshold; `true` sends the row to the true branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
}

/// A split node.
#[derive(Debug, Clone)]
pub struct Split {
    pub feature: usize,
    pub threshold: f32,
    pub mode: Mode,
    /// Index of the true child in the tree's node list.
    pub yes: usize,
    pub no: usize,
    /// Where a NaN goes.
    pub missing_yes: bool,
}

impl Split {
    /// The child a row goes to.
    pub fn child(&self, x: &[f32]) -> usize {
        let v = x[self.feature];
        let yes = if v.is_nan() {
            self.missing_yes
        } else {
            let t = self.threshold;
            match self.mode {
                Mode::Leq => v <= t,
                Mode::Lt => v < t,
                Mode::Gte => v >= t,
                Mode::Gt => v > t,
                Mode::Eq => v == t,
                Mode::Neq => v != t,
            }
        };
        if yes {
            self.yes
        } else {
            self.no
        }
    }
}

/// A node: a split, or a leaf with one weight per output column.
#[derive(Debug, Clone)]
pub struct Node {
    pub split: Option<Split>,
    /// Leaf weights per output column (empty for splits).
    pub values: Vec<f64>,
    /// The node's cover (training rows through it), when the model records one (`nodes_hitrates`).
    pub cover: f64,
}

/// One tree; node 0 is the root.
#[derive(Debug, Clone)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// The leaf a row reaches.
    pub fn leaf(&self, x: &[f32]) -> usize {
        let mut i = 0;
        while let Some(s) = &self.nodes[i].split {
            i = s.child(x);
        }
        i
    }
}

/// What ONNX Runtime applies to the raw scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostTransform {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
    Probit,
}

/// A tree ensemble in raw output space.
#[derive(Debug, Clone)]
pub struct Forest {
    pub trees: Vec<Tree>,
    /// Raw output columns (classes, regression targets; 1 for a binary classifier with one column).
    pub columns: usize,
    /// Added to every row's raw scores.
    pub base: Vec<f64>,
    pub post_transform: PostTransform,
    /// A two-class classifier scored by one column `s`: class 1 is `s`, class 0 is `-s`, or `1 - s`
    /// when every weight is positive (ONNX Runtime's binary case).
    pub binary: Option<Binary>,
    /// Largest feature index used, plus one.
    pub features: usize,
    /// Whether `nodes_hitrates` held real covers (not all equal, as converters write by default).
    pub has_covers: bool,
    /// The ONNX node, for messages.
    pub node: String,
}

/// How a binary classifier's two classes derive from its one raw column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// Class 0 scores `-s`.
    Negated,
    /// Class 0 scores `1 - s`.
    Complement,
}

impl Forest {
    /// Raw scores of one row, per column.
    pub fn raw(&self, x: &[f32]) -> Vec<f64> {
        let mut out = self.base.clone();
        for t in &self.trees {
            for (o, v) in out.iter_mut().zip(&t.nodes[t.leaf(x)].values) {
                *o += v;
            }
        }
        out
    }

    /// For the model's class (or target) `index`: (column, sign, offset), so that its raw score is
    /// `offset + sign * column score`.
    pub fn class_column(&self, index: usize) -> Option<(usize, f64, f64)> {
        match self.binary {
            Some(_) if index == 1 => Some((0, 1.0, 0.0)),
            Some(Binary::Negated) if index == 0 => Some((0, -1.0, 0.0)),
            Some(Binary::Complement) if index == 0 => Some((0, -1.0, 1.0)),
            Some(_) => None,
            None => (index < self.columns).then_some((index, 1.0, 0.0)),
        }
    }

    /// What ONNX Runtime outputs for raw scores `raw`, when we are sure of its formula.
    pub fn transformed(&self, raw: &[f64]) -> Option<Vec<f64>> {
        let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
        let scores: Vec<f64> = match self.binary {
            Some(Binary::Negated) => vec![-raw[0], raw[0]],
            Some(Binary::Complement) if self.post_transform == PostTransform::None => vec![1.0 - raw[0], raw[0]],
            Some(Binary::Complement) => return None,
            None => raw.to_vec(),
        };
        match self.post_transform {
            PostTransform::None => Some(scores),
            PostTransform::Logistic => Some(scores.into_iter().map(sigmoid).collect()),
            PostTransform::Softmax if self.binary.is_none() => {
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
                let z: f64 = e.iter().sum();
                Some(e.into_iter().map(|v| v / z).collect())
            }
            _ => None,
        }
    }
}

/// Why a model's trees could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TreeError(pub String);

fn floats_or_tensor(node: &NodeProto, name: &str) -> Result<Option<Vec<f64>>, TreeError> {
    let e = |e: super::node::AttrError| TreeError(e.to_string());
    if let Some(v) = attr_floats(node, name).map_err(e)? {
        if !v.is_empty() {
            return Ok(Some(v.into_iter().map(f64::from).collect()));
        }
    }
    match attr_tensor(node, &format!("{name}_as_tensor")) {
        Some(t) => super::node::tensor_f32(t)
            .map(|v| Some(v.into_iter().map(f64::from).collect()))
            .ok_or_else(|| TreeError(format!("`{name}_as_tensor` is not a float tensor"))),
        None => Ok(None),
    }
}

/// Whether `node` passes `input` on unchanged: Identity, or a multiplication by a constant one
/// (onnxmltools writes one after LightGBM's ensemble).
fn passes_unchanged(graph: &GraphProto, node: &NodeProto, input: &str) -> bool {
    match op_type(node) {
        "Identity" => true,
        "Mul" => node.input.iter().filter(|i| i.as_str() != input).all(|other| {
            super::node::constant(graph, other)
                .and_then(super::node::tensor_f32)
                .is_some_and(|v| v.iter().all(|x| *x == 1.0))
        }),
        _ => false,
    }
}

/// Follows `name` through nodes that pass it on unchanged: whether it reaches `output`.
fn reaches(graph: &GraphProto, name: &str, output: &str) -> Result<(), String> {
    let mut current = name.to_string();
    for _ in 0..64 {
        if current == output {
            return Ok(());
        }
        let consumers: Vec<&NodeProto> = graph.node.iter().filter(|n| n.input.contains(&current)).collect();
        if let Some(n) = consumers.iter().find(|n| passes_unchanged(graph, n, &current)) {
            current = n.output[0].clone();
        } else if let Some(n) = consumers.first() {
            return Err(format!(
                "`{}` ({}) transforms the ensemble's scores",
                node_name(n),
                op_type(n)
            ));
        } else {
            break;
        }
    }
    Err(format!(
        "the ensemble's scores do not reach output `{output}` unchanged"
    ))
}

/// Follows `name` back through Identity and Cast nodes: whether it is a graph input.
fn from_input(graph: &GraphProto, name: &str) -> bool {
    let mut current = name.to_string();
    for _ in 0..16 {
        if graph.input.iter().any(|i| i.name.as_deref() == Some(current.as_str())) {
            return true;
        }
        match graph.node.iter().find(|n| n.output.contains(&current)) {
            Some(n) if matches!(op_type(n), "Identity" | "Cast") => current = n.input[0].clone(),
            _ => return false,
        }
    }
    false
}

/// Reads the tree ensemble whose scores are the model's output `output`.
pub fn read(model: &ModelProto, output: &str) -> Result<Forest, TreeError> {
    let graph = model.graph.as_ref().ok_or_else(|| TreeError("no graph".into()))?;
    let node = ensemble(graph)?;
    let name = node_name(node);
    let classifier = op_type(node) == "TreeEnsembleClassifier";
    let scores = node
        .output
        .get(if classifier { 1 } else { 0 })
        .cloned()
        .unwrap_or_default();
    reaches(graph, &scores, output).map_err(|m| TreeError(format!("node `{name}`: {m}")))?;
    if !node.input.first().is_some_and(|x| from_input(graph, x)) {
        return Err(TreeError(format!(
            "node `{name}`: its features are computed in the graph, not the model's input"
        )));
    }
    let attrs = Attrs { node, name: &name };
    let lists = NodeLists::read(&attrs)?;
    let leaves = LeafWeights::read(&attrs, classifier)?;
    let (binary, columns) = columns(&attrs, classifier, &leaves)?;
    let post_transform = match attr_string(node, "post_transform", "NONE")
        .map_err(attr_error)?
        .as_str()
    {
        "NONE" => PostTransform::None,
        "LOGISTIC" => PostTransform::Logistic,
        "SOFTMAX" => PostTransform::Softmax,
        "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
        "PROBIT" => PostTransform::Probit,
        other => return Err(TreeError(format!("node `{name}`: unknown post_transform `{other}`"))),
    };
    let aggregate = attr_string(node, "aggregate_function", "SUM").map_err(attr_error)?;
    if !matches!(aggregate.as_str(), "SUM" | "AVERAGE") {
        return Err(TreeError(format!(
            "node `{name}`: aggregate_function {aggregate} is not additive over trees"
        )));
    }
    let mut base = floats_or_tensor(node, "base_values")?.unwrap_or_default();
    base.resize(columns, 0.0);
    let (mut trees, features) = lists.trees(&name, columns)?;
    let scale = if aggregate == "AVERAGE" {
        1.0 / trees.len().max(1) as f64
    } else {
        1.0
    };
    leaves.place(&mut trees, &name, binary.is_some(), columns, scale)?;
    let has_covers =
        lists.hitrates.len() == lists.tree_ids.len() && lists.hitrates.iter().any(|h| *h != lists.hitrates[0]);
    Ok(Forest {
        trees: trees.into_iter().map(|t| t.tree).collect(),
        columns,
        base,
        post_transform,
        binary,
        features,
        has_covers,
        node: name,
    })
}

/// The one ONNX-ML tree ensemble node of `graph`.
fn ensemble(graph: &GraphProto) -> Result<&NodeProto, TreeError> {
    let ensembles: Vec<&NodeProto> = graph
        .node
        .iter()
        .filter(|n| {
            domain(n) == "ai.onnx.ml" && matches!(op_type(n), "TreeEnsembleClassifier" | "TreeEnsembleRegressor")
        })
        .collect();
    match ensembles.as_slice() {
        [n] => Ok(*n),
        [] => Err(TreeError(
            "the model has no ONNX-ML TreeEnsembleClassifier or TreeEnsembleRegressor node".into(),
        )),
        _ => Err(TreeError(
            "the model has several tree ensembles; only a model with one is read".into(),
        )),
    }
}

fn attr_error(e: super::node::AttrError) -> TreeError {
    TreeError(e.to_string())
}

/// The ensemble node and its name, for reading required attributes.
struct Attrs<'n> {
    node: &'n NodeProto,
    name: &'n str,
}

impl Attrs<'_> {
    /// A required integer list.
    fn ints(&self, attr: &str) -> Result<Vec<i64>, TreeError> {
        attr_ints(self.node, attr)
            .map_err(attr_error)?
            .ok_or_else(|| TreeError(format!("node `{}`: attribute `{attr}` missing", self.name)))
    }
}

/// The ensemble's per-node lists (`nodes_*`), one entry per tree node.
struct NodeLists {
    tree_ids: Vec<i64>,
    node_ids: Vec<i64>,
    feature_ids: Vec<i64>,
    true_ids: Vec<i64>,
    false_ids: Vec<i64>,
    modes: Vec<String>,
    thresholds: Vec<f64>,
    missing: Vec<i64>,
    hitrates: Vec<f64>,
}

/// A tree being read: its id, its nodes' positions by node id, and its nodes.
struct TreeBuild {
    id: i64,
    index: HashMap<i64, usize>,
    tree: Tree,
}

impl NodeLists {
    fn read(attrs: &Attrs) -> Result<Self, TreeError> {
        let (node, name) = (attrs.node, attrs.name);
        let lists = NodeLists {
            tree_ids: attrs.ints("nodes_treeids")?,
            node_ids: attrs.ints("nodes_nodeids")?,
            feature_ids: attrs.ints("nodes_featureids")?,
            true_ids: attrs.ints("nodes_truenodeids")?,
            false_ids: attrs.ints("nodes_falsenodeids")?,
            modes: attr_strings(node, "nodes_modes")
                .map_err(attr_error)?
                .ok_or_else(|| TreeError(format!("node `{name}`: attribute `nodes_modes` missing")))?,
            thresholds: floats_or_tensor(node, "nodes_values")?.unwrap_or_default(),
            missing: attr_ints(node, "nodes_missing_value_tracks_true")
                .map_err(attr_error)?
                .unwrap_or_default(),
            hitrates: floats_or_tensor(node, "nodes_hitrates")?.unwrap_or_default(),
        };
        let n = lists.tree_ids.len();
        for (attr, len) in [
            ("nodes_nodeids", lists.node_ids.len()),
            ("nodes_featureids", lists.feature_ids.len()),
            ("nodes_truenodeids", lists.true_ids.len()),
            ("nodes_falsenodeids", lists.false_ids.len()),
            ("nodes_modes", lists.modes.len()),
        ] {
            if len != n {
                return Err(TreeError(format!("node `{name}`: `{attr}` has {len} entries, not {n}")));
            }
        }
        Ok(lists)
    }

    /// The trees in order of first appearance, each with its nodes indexed root first (leaves
    /// with zero weights yet), and the largest feature index used plus one.
    fn trees(&self, name: &str, columns: usize) -> Result<(Vec<TreeBuild>, usize), TreeError> {
        let mut tree_index: HashMap<i64, usize> = HashMap::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        for (k, t) in self.tree_ids.iter().enumerate() {
            let ti = *tree_index.entry(*t).or_insert_with(|| {
                members.push(Vec::new());
                members.len() - 1
            });
            members[ti].push(k);
        }
        let mut trees = Vec::with_capacity(members.len());
        let mut features = 0usize;
        for rows in &members {
            trees.push(self.tree(name, rows, columns, &mut features)?);
        }
        Ok((trees, features))
    }

    /// The tree made of list entries `rows`, its root first.
    fn tree(&self, name: &str, rows: &[usize], columns: usize, features: &mut usize) -> Result<TreeBuild, TreeError> {
        let tree_id = self.tree_ids[rows[0]];
        let children: std::collections::HashSet<i64> = rows
            .iter()
            .filter(|&&k| self.modes[k] != "LEAF")
            .flat_map(|&k| [self.true_ids[k], self.false_ids[k]])
            .collect();
        let root = rows
            .iter()
            .copied()
            .find(|&k| !children.contains(&self.node_ids[k]))
            .ok_or_else(|| TreeError(format!("node `{name}`: tree {tree_id} has no root")))?;
        let mut order = vec![root];
        order.extend(rows.iter().copied().filter(|&k| k != root));
        let index: HashMap<i64, usize> = order.iter().enumerate().map(|(i, &k)| (self.node_ids[k], i)).collect();
        let child = |id: i64| {
            index
                .get(&id)
                .copied()
                .ok_or_else(|| TreeError(format!("node `{name}`: tree {tree_id} points at missing node {id}")))
        };
        let mut nodes = Vec::with_capacity(order.len());
        for &k in &order {
            let split = if self.modes[k] == "LEAF" {
                None
            } else {
                let mode = match self.modes[k].as_str() {
                    "BRANCH_LEQ" => Mode::Leq,
                    "BRANCH_LT" => Mode::Lt,
                    "BRANCH_GTE" => Mode::Gte,
                    "BRANCH_GT" => Mode::Gt,
                    "BRANCH_EQ" => Mode::Eq,
                    "BRANCH_NEQ" => Mode::Neq,
                    other => return Err(TreeError(format!("node `{name}`: unknown node mode `{other}`"))),
                };
                let feature = usize::try_from(self.feature_ids[k])
                    .map_err(|_| TreeError(format!("node `{name}`: negative feature id")))?;
                *features = (*features).max(feature + 1);
                Some(Split {
                    feature,
                    threshold: self.thresholds.get(k).copied().unwrap_or(0.0) as f32,
                    mode,
                    yes: child(self.true_ids[k])?,
                    no: child(self.false_ids[k])?,
                    missing_yes: self.missing.get(k).is_some_and(|m| *m != 0),
                })
            };
            let values = if split.is_none() {
                vec![0.0; columns]
            } else {
                Vec::new()
            };
            nodes.push(Node {
                split,
                values,
                cover: self.hitrates.get(k).copied().unwrap_or(1.0),
            });
        }
        Ok(TreeBuild {
            id: tree_id,
            index,
            tree: Tree { nodes },
        })
    }
}

/// The leaves' weights (`class_*` for a classifier, `target_*` for a regressor): per entry, its
/// tree, node, output column and weight.
struct LeafWeights {
    prefix: &'static str,
    trees: Vec<i64>,
    nodes: Vec<i64>,
    ids: Vec<i64>,
    weights: Vec<f64>,
}

impl LeafWeights {
    fn read(attrs: &Attrs, classifier: bool) -> Result<Self, TreeError> {
        let (prefix, class_ids_attr) = if classifier {
            ("class", "class_ids")
        } else {
            ("target", "target_ids")
        };
        let leaves = LeafWeights {
            prefix,
            trees: attrs.ints(&format!("{prefix}_treeids"))?,
            nodes: attrs.ints(&format!("{prefix}_nodeids"))?,
            ids: attrs.ints(class_ids_attr)?,
            weights: floats_or_tensor(attrs.node, &format!("{prefix}_weights"))?.unwrap_or_default(),
        };
        let len = leaves.trees.len();
        if leaves.nodes.len() != len || leaves.ids.len() != len || leaves.weights.len() != len {
            return Err(TreeError(format!(
                "node `{}`: the {} weight lists differ in length",
                attrs.name, leaves.prefix
            )));
        }
        Ok(leaves)
    }

    /// Adds each weight, times `scale`, to its leaf's column (column 0 for a binary classifier).
    fn place(
        &self,
        trees: &mut [TreeBuild],
        name: &str,
        binary: bool,
        columns: usize,
        scale: f64,
    ) -> Result<(), TreeError> {
        let by_id: HashMap<i64, usize> = trees.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
        for k in 0..self.trees.len() {
            let ti = *by_id
                .get(&self.trees[k])
                .ok_or_else(|| TreeError(format!("node `{name}`: a weight names missing tree {}", self.trees[k])))?;
            let TreeBuild { index, tree, .. } = &mut trees[ti];
            let ni = *index
                .get(&self.nodes[k])
                .ok_or_else(|| TreeError(format!("node `{name}`: a weight names missing node {}", self.nodes[k])))?;
            let column = if binary { 0 } else { self.ids[k] as usize };
            let node = &mut tree.nodes[ni];
            if node.split.is_some() || column >= columns {
                return Err(TreeError(format!(
                    "node `{name}`: a weight is on a split node or names column {column} of {columns}"
                )));
            }
            node.values[column] += self.weights[k] * scale;
        }
        Ok(())
    }
}

/// Whether a classifier is binary (one raw column for two classes), and the raw output columns.
fn columns(attrs: &Attrs, classifier: bool, leaves: &LeafWeights) -> Result<(Option<Binary>, usize), TreeError> {
    let node = attrs.node;
    let labels = if classifier {
        let ints = attr_ints(node, "classlabels_int64s")
            .map_err(attr_error)?
            .unwrap_or_default();
        let strings = attr_strings(node, "classlabels_strings")
            .map_err(attr_error)?
            .unwrap_or_default();
        ints.len().max(strings.len())
    } else {
        0
    };
    let distinct: std::collections::BTreeSet<i64> = leaves.ids.iter().copied().collect();
    let max_id = distinct.iter().next_back().copied().unwrap_or(0).max(0) as usize;
    let binary = (classifier && labels == 2 && distinct.len() == 1).then(|| {
        if leaves.weights.iter().all(|w| *w >= 0.0) {
            Binary::Complement
        } else {
            Binary::Negated
        }
    });
    let columns = if binary.is_some() {
        1
    } else if classifier {
        labels.max(max_id + 1)
    } else {
        super::node::attr_int(node, "n_targets", 1)
            .map_err(attr_error)?
            .max(max_id as i64 + 1) as usize
    };
    Ok((binary, columns))
}
