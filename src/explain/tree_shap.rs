//! Exact TreeSHAP for ONNX-ML tree ensembles (Lundberg et al. 2018 and 2020), in the ensemble's raw
//! output space (before `post_transform`: log-odds for boosted classifiers, averaged leaf
//! probabilities for random forests). Two games, as shap's TreeExplainer offers:
//! - `interventional`: missing features take a background row's values; the exact Shapley values
//!   of that game, averaged over the (k-means summarised) background rows. Needs only the trees.
//! - `tree_path_dependent`: missing features follow the training data's split proportions (node
//!   covers); the polynomial-time path algorithm. Converters rarely record covers (`nodes_hitrates`
//!   is all ones from skl2onnx), so without them the covers are counted from the background rows.
//!
//! No model passes: the trees are read from the graph; the raw scores are checked against ONNX
//! Runtime's output where its post-transform is known, so a misread model fails loudly.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::background::{self, Background};
use super::method::{bytes, check_range, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext};
use super::method::{schemas_of, NamedSchemas};
use super::{Cx, ExplainJob, TargetAttribution};
use crate::onnx::trees::{Forest, Tree};
use crate::runtime::predict::Prediction;
use crate::runtime::preprocess::InputError;
use crate::runtime::RuntimeError;

/// Which game's Shapley values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeaturePerturbation {
    /// Missing features take background rows' values (needs the manifest's background data).
    Interventional,
    /// Missing features follow the node covers.
    TreePathDependent,
}

/// TreeSHAP parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TreeShapParams {
    /// Default: `interventional` when the model has background data, else `tree_path_dependent`.
    pub feature_perturbation: Option<FeaturePerturbation>,
    /// Background rows (k-means summary beyond this; shap warns above 100).
    #[schema(default = 100, minimum = 1, maximum = 1000)]
    pub background_rows: usize,
}

impl Default for TreeShapParams {
    fn default() -> Self {
        Self {
            feature_perturbation: None,
            background_rows: 100,
        }
    }
}

impl TreeShapParams {
    /// The game played: the one asked for, else `interventional` when there is background data.
    pub fn game(&self, has_background: bool) -> FeaturePerturbation {
        self.feature_perturbation.unwrap_or(if has_background {
            FeaturePerturbation::Interventional
        } else {
            FeaturePerturbation::TreePathDependent
        })
    }
}

/// TreeSHAP.
pub struct TreeShap;

impl Method for TreeShap {
    type Params = TreeShapParams;
    const NAME: &'static str = "tree-shap";
    const SUMMARY: &'static str = "Exact Shapley values of ONNX-ML tree ensembles (Lundberg et al. 2020)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::None,
        inputs: Inputs::Tabular,
        layer: false,
        random: false,
        examples: false,
        decision: false,
        text: false,
    };

    fn plan(p: &mut TreeShapParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        check_range("background_rows", p.background_rows, 1, 1000)?;
        let model = cx.model;
        // Decoded once per model (at start), so this is a lookup.
        let forest = model
            .forest()
            .map_err(|why| Invalid::Unsupported(format!("tree-shap cannot explain model `{}`: {why}", model.name)))?;
        p.feature_perturbation = Some(p.game(model.background.is_some()));
        let nodes: usize = forest.trees.iter().map(|t| t.nodes.len()).sum();
        let background = model.background.as_ref().map_or(0, |rows| rows.len());
        Ok(Cost {
            samples: 0,
            rows: 0,
            bytes: bytes(background.saturating_add(p.background_rows), 4)
                .saturating_mul(cx.input_len() as u64)
                .saturating_add(bytes(nodes, 64))
                .saturating_add(bytes(cx.input_len(), 8).saturating_mul(cx.classes() as u64))
                .saturating_add(cx.answer_bytes()),
        })
    }

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<TreeShapDetails>())
    }

    fn explain(
        _: &mut Cx,
        job: &ExplainJob,
        p: &TreeShapParams,
        targets: &[Prediction],
        scores: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        explain(job, p, targets, scores)
    }
}

/// Per feature, per raw column: the Shapley values; and per column the base value.
pub struct Values {
    pub phi: Vec<Vec<f64>>,
    pub base: Vec<f64>,
}

fn explain(
    job: &ExplainJob,
    p: &TreeShapParams,
    targets: &[Prediction],
    scores: &[f64],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let unsupported = |m: String| RuntimeError::from(InputError::WrongKind(format!("tree-shap: {m}")));
    let forest = job.model.forest().map_err(unsupported)?;
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    if forest.features > x.len() {
        return Err(unsupported(format!(
            "the trees read feature {} of an input with {}",
            forest.features - 1,
            x.len()
        )));
    }
    let raw = forest.raw(&x);
    let checked = match forest.transformed(&raw) {
        Some(expected) => {
            let gap = expected
                .iter()
                .zip(scores)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            if expected.len() != scores.len() || gap > 1e-4 {
                return Err(RuntimeError::Inference {
                    model: job.model.name.clone(),
                    message: format!(
                        "TreeSHAP's reading of node `{}` disagrees with ONNX Runtime's output by {gap:.3e}",
                        forest.node
                    ),
                });
            }
            true
        }
        None => false,
    };
    let with_background = job.model.background.is_some();
    let perturbation = p.game(with_background);
    let (values, bg_details, covers) = match perturbation {
        FeaturePerturbation::Interventional => {
            let (bg, of) = background::for_job(job, p.background_rows)?;
            (interventional(&forest, &x, &bg), Some(bg.describe(of)), None)
        }
        FeaturePerturbation::TreePathDependent => {
            if forest.has_covers {
                let covers: Vec<Vec<f64>> = forest
                    .trees
                    .iter()
                    .map(|t| t.nodes.iter().map(|n| n.cover).collect())
                    .collect();
                (
                    path_dependent(&forest, &covers, &x),
                    None,
                    Some("model (nodes_hitrates)"),
                )
            } else if with_background {
                let (bg, of) = background::for_job(job, usize::MAX)?;
                let covers = counted_covers(&forest, &bg);
                (
                    path_dependent(&forest, &covers, &x),
                    Some(bg.describe(of)),
                    Some("background rows"),
                )
            } else {
                return Err(unsupported(
                    "tree_path_dependent needs node covers: the model records none (nodes_hitrates) and names no \
                     background data to count them from"
                        .into(),
                ));
            }
        }
    };
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        let (col, sign, offset) = forest
            .class_column(t.index)
            .ok_or_else(|| unsupported(format!("the ensemble has no raw score for class {}", t.index)))?;
        let phi: Vec<f64> = values.phi.iter().map(|f| sign * f[col]).collect();
        let base = offset + sign * values.base[col];
        let value = offset + sign * raw[col];
        let details = TreeShapDetails {
            efficiency_gap: phi.iter().sum::<f64>() - (value - base),
            shapley_values: phi.clone(),
            base_value: base,
            value,
            output_space: "raw".into(),
            post_transform: format!("{:?}", forest.post_transform).to_uppercase(),
            feature_perturbation: perturbation,
            background: bg_details.clone(),
            covers: covers.map(String::from),
            trees: forest.trees.len(),
            checked_against_runtime: checked,
        };
        out.push(TargetAttribution::from_values(
            t,
            &phi,
            serde_json::to_value(details).unwrap_or_default(),
        ));
    }
    Ok(out)
}

/// 1 / (a * C(a + b, a)): the Shapley weight of a feature among `a` that must be present, with `b`
/// that must be absent (each present one is pivotal in that share of orderings).
fn pivotal(a: usize, b: usize) -> f64 {
    let mut c = 1.0f64;
    for i in 1..=b {
        c = c * (a + i) as f64 / i as f64;
    }
    1.0 / (a as f64 * c)
}

/// Interventional TreeSHAP: per background row z, the game v(S) = f(x_S, z_rest) is, per leaf, an
/// indicator "features A present, features B absent" (A: splits where x and z part and the leaf is
/// on x's side, B: on z's side); each such game's Shapley values are closed-form.
pub fn interventional(forest: &Forest, x: &[f32], bg: &Background) -> Values {
    let n = x.len();
    let columns = forest.columns;
    let mut phi = vec![vec![0.0; columns]; n];
    let mut on_x = Vec::new();
    let mut on_z = Vec::new();
    for (z, w) in bg.rows.iter().zip(&bg.weights) {
        for tree in &forest.trees {
            walk(tree, 0, x, z, &mut on_x, &mut on_z, *w, &mut phi);
        }
    }
    let mut base = forest.base.clone();
    for (z, w) in bg.rows.iter().zip(&bg.weights) {
        for tree in &forest.trees {
            for (b, v) in base.iter_mut().zip(&tree.nodes[tree.leaf(z)].values) {
                *b += w * v;
            }
        }
    }
    Values { phi, base }
}

#[allow(clippy::too_many_arguments)]
fn walk(
    tree: &Tree,
    node: usize,
    x: &[f32],
    z: &[f32],
    on_x: &mut Vec<usize>,
    on_z: &mut Vec<usize>,
    weight: f64,
    phi: &mut [Vec<f64>],
) {
    let n = &tree.nodes[node];
    let Some(s) = &n.split else {
        let (a, b) = (on_x.len(), on_z.len());
        if a > 0 {
            let w = weight * pivotal(a, b);
            for &f in on_x.iter() {
                for (p, v) in phi[f].iter_mut().zip(&n.values) {
                    *p += w * v;
                }
            }
        }
        if b > 0 {
            let w = weight * pivotal(b, a);
            for &f in on_z.iter() {
                for (p, v) in phi[f].iter_mut().zip(&n.values) {
                    *p -= w * v;
                }
            }
        }
        return;
    };
    let (xc, zc) = (s.child(x), s.child(z));
    // Where x and z agree, or the feature is already on x's side, the path follows x.
    if xc == zc || on_x.contains(&s.feature) {
        walk(tree, xc, x, z, on_x, on_z, weight, phi);
    } else if on_z.contains(&s.feature) {
        walk(tree, zc, x, z, on_x, on_z, weight, phi);
    } else {
        on_x.push(s.feature);
        walk(tree, xc, x, z, on_x, on_z, weight, phi);
        on_x.pop();
        on_z.push(s.feature);
        walk(tree, zc, x, z, on_x, on_z, weight, phi);
        on_z.pop();
    }
}

/// Node covers counted from weighted background rows.
pub fn counted_covers(forest: &Forest, bg: &Background) -> Vec<Vec<f64>> {
    forest
        .trees
        .iter()
        .map(|tree| {
            let mut covers = vec![0.0; tree.nodes.len()];
            for (z, w) in bg.rows.iter().zip(&bg.weights) {
                let mut i = 0;
                loop {
                    covers[i] += w;
                    match &tree.nodes[i].split {
                        Some(s) => i = s.child(z),
                        None => break,
                    }
                }
            }
            covers
        })
        .collect()
}

/// One feature's slot on the path: the fractions of coalitions that go on without it (zero) and
/// with it (one), and the permutation weight.
#[derive(Debug, Clone, Copy)]
struct Slot {
    feature: usize,
    zero: f64,
    one: f64,
    weight: f64,
}

fn extend(path: &mut Vec<Slot>, zero: f64, one: f64, feature: usize) {
    let l = path.len();
    path.push(Slot {
        feature,
        zero,
        one,
        weight: if l == 0 { 1.0 } else { 0.0 },
    });
    for i in (0..l).rev() {
        path[i + 1].weight += one * path[i].weight * (i + 1) as f64 / (l + 1) as f64;
        path[i].weight = zero * path[i].weight * (l - i) as f64 / (l + 1) as f64;
    }
}

fn unwind(path: &mut Vec<Slot>, idx: usize) {
    let l = path.len() - 1;
    let (one, zero) = (path[idx].one, path[idx].zero);
    let mut next = path[l].weight;
    for i in (0..l).rev() {
        if one != 0.0 {
            let kept = path[i].weight;
            path[i].weight = next * (l + 1) as f64 / ((i + 1) as f64 * one);
            next = kept - path[i].weight * zero * (l - i) as f64 / (l + 1) as f64;
        } else {
            path[i].weight = path[i].weight * (l + 1) as f64 / (zero * (l - i) as f64);
        }
    }
    for i in idx..l {
        path[i].feature = path[i + 1].feature;
        path[i].zero = path[i + 1].zero;
        path[i].one = path[i + 1].one;
    }
    path.pop();
}

/// The path's total weight with slot `idx` taken out, without changing the path.
fn unwound_sum(path: &[Slot], idx: usize) -> f64 {
    let l = path.len() - 1;
    let (one, zero) = (path[idx].one, path[idx].zero);
    let mut next = path[l].weight;
    let mut total = 0.0;
    for i in (0..l).rev() {
        if one != 0.0 {
            let t = next * (l + 1) as f64 / ((i + 1) as f64 * one);
            total += t;
            next = path[i].weight - t * zero * (l - i) as f64 / (l + 1) as f64;
        } else if zero != 0.0 {
            total += path[i].weight / zero / ((l - i) as f64 / (l + 1) as f64);
        }
    }
    total
}

/// Path-dependent TreeSHAP (Lundberg et al. 2018, Algorithm 2), all output columns at once.
pub fn path_dependent(forest: &Forest, covers: &[Vec<f64>], x: &[f32]) -> Values {
    let mut phi = vec![vec![0.0; forest.columns]; x.len()];
    let mut base = forest.base.clone();
    for (tree, cover) in forest.trees.iter().zip(covers) {
        recurse(tree, cover, x, 0, Vec::new(), 1.0, 1.0, usize::MAX, &mut phi);
        for (b, v) in base.iter_mut().zip(expected(tree, cover, 0)) {
            *b += v;
        }
    }
    Values { phi, base }
}

/// The subtree's mean leaf weights under the covers' split proportions.
fn expected(tree: &Tree, cover: &[f64], node: usize) -> Vec<f64> {
    match &tree.nodes[node].split {
        None => tree.nodes[node].values.clone(),
        Some(s) => {
            let (fy, fn_) = fractions(cover, node, s.yes, s.no);
            let (a, b) = (expected(tree, cover, s.yes), expected(tree, cover, s.no));
            a.iter().zip(&b).map(|(a, b)| fy * a + fn_ * b).collect()
        }
    }
}

/// The shares of a node's cover that go to each child; a node no row reached splits evenly, so
/// the arithmetic stays finite where the covers say nothing.
fn fractions(cover: &[f64], node: usize, yes: usize, no: usize) -> (f64, f64) {
    let c = cover[node];
    if c > 0.0 {
        (cover[yes] / c, cover[no] / c)
    } else {
        (0.5, 0.5)
    }
}

#[allow(clippy::too_many_arguments)]
fn recurse(
    tree: &Tree,
    cover: &[f64],
    x: &[f32],
    node: usize,
    mut path: Vec<Slot>,
    zero: f64,
    one: f64,
    feature: usize,
    phi: &mut [Vec<f64>],
) {
    extend(&mut path, zero, one, feature);
    let n = &tree.nodes[node];
    let Some(s) = &n.split else {
        for i in 1..path.len() {
            let w = unwound_sum(&path, i) * (path[i].one - path[i].zero);
            for (p, v) in phi[path[i].feature].iter_mut().zip(&n.values) {
                *p += w * v;
            }
        }
        return;
    };
    let hot = s.child(x);
    let cold = if hot == s.yes { s.no } else { s.yes };
    let (f_yes, f_no) = fractions(cover, node, s.yes, s.no);
    let (f_hot, f_cold) = if hot == s.yes { (f_yes, f_no) } else { (f_no, f_yes) };
    let (mut in_zero, mut in_one) = (1.0, 1.0);
    if let Some(k) = (1..path.len()).find(|&k| path[k].feature == s.feature) {
        in_zero = path[k].zero;
        in_one = path[k].one;
        unwind(&mut path, k);
    }
    // A branch no coalition reaches (no cover and not x's side) adds nothing: skip it.
    if in_zero * f_hot != 0.0 || in_one != 0.0 {
        recurse(
            tree,
            cover,
            x,
            hot,
            path.clone(),
            in_zero * f_hot,
            in_one,
            s.feature,
            phi,
        );
    }
    if in_zero * f_cold != 0.0 {
        recurse(tree, cover, x, cold, path, in_zero * f_cold, 0.0, s.feature, phi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::trees::{Mode, Node, PostTransform, Split};

    /// f = 1[x0 <= 0.5] * (1[x1 <= 0.5] * 4 + 2) + 1, one tree; covers as given.
    fn forest(covers: [f64; 5]) -> Forest {
        let split = |feature, yes, no| {
            Some(Split {
                feature,
                threshold: 0.5,
                mode: Mode::Leq,
                yes,
                no,
                missing_yes: false,
            })
        };
        let leaf = |v: f64| (None, vec![v]);
        let parts = [
            (split(0, 1, 2), vec![]),
            (split(1, 3, 4), vec![]),
            leaf(0.0),
            leaf(6.0),
            leaf(2.0),
        ];
        let nodes = parts
            .into_iter()
            .zip(covers)
            .map(|((split, values), cover)| Node { split, values, cover })
            .collect();
        Forest {
            trees: vec![Tree { nodes }],
            columns: 1,
            base: vec![1.0],
            post_transform: PostTransform::None,
            binary: None,
            features: 2,
            has_covers: true,
            node: "t".into(),
        }
    }

    /// Exact Shapley values by enumeration of a 2-player game.
    fn shapley2(v: impl Fn(bool, bool) -> f64) -> [f64; 2] {
        [
            0.5 * (v(true, false) - v(false, false)) + 0.5 * (v(true, true) - v(false, true)),
            0.5 * (v(false, true) - v(false, false)) + 0.5 * (v(true, true) - v(true, false)),
        ]
    }

    #[test]
    fn interventional_matches_enumeration_for_every_background_row() {
        let f = forest([1.0; 5]);
        let x = [0.0f32, 1.0];
        for z in [[1.0f32, 0.0], [0.0, 0.0], [1.0, 1.0]] {
            let bg = Background {
                rows: vec![z.to_vec()],
                weights: vec![1.0],
                summary: "all rows",
            };
            let got = interventional(&f, &x, &bg);
            let eval = |a: bool, b: bool| f.raw(&[if a { x[0] } else { z[0] }, if b { x[1] } else { z[1] }])[0];
            let want = shapley2(eval);
            for j in 0..2 {
                assert!(
                    (got.phi[j][0] - want[j]).abs() < 1e-12,
                    "z {z:?}: {:?} vs {want:?}",
                    got.phi
                );
            }
            assert!((got.base[0] - f.raw(&z)[0]).abs() < 1e-12);
        }
    }

    #[test]
    fn path_dependent_matches_enumeration_of_the_cover_weighted_game() {
        // Covers: root 10, left 6 (of which 2 go to x1 <= .5), right 4.
        let covers = [10.0, 6.0, 4.0, 2.0, 4.0];
        let f = forest(covers);
        let x = [0.0f32, 1.0];
        // E[f | features in S fixed to x] with covers: average over unknown branches by cover.
        let eval = |a: bool, b: bool| -> f64 {
            let inner = if b { 2.0 } else { (2.0 * 6.0 + 4.0 * 2.0) / 6.0 };
            let left = inner;
            1.0 + if a { left } else { (6.0 * left + 4.0 * 0.0) / 10.0 }
        };
        let want = shapley2(eval);
        let all: Vec<Vec<f64>> = vec![covers.to_vec()];
        let got = path_dependent(&f, &all, &x);
        for j in 0..2 {
            assert!((got.phi[j][0] - want[j]).abs() < 1e-12, "{:?} vs {want:?}", got.phi);
        }
        assert!((got.base[0] - eval(false, false)).abs() < 1e-12);
    }
}

/// TreeSHAP's `details`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TreeShapDetails {
    /// One value per feature, in the ensemble's raw score.
    pub shapley_values: Vec<f64>,
    /// The expected raw score.
    pub base_value: f64,
    /// The input's raw score.
    pub value: f64,
    /// The values' sum minus (`value` - `base_value`): zero up to rounding.
    pub efficiency_gap: f64,
    /// Always `raw`: the ensemble's score before its post transform.
    pub output_space: String,
    /// The ensemble's post transform (`NONE`, `SOFTMAX`, `LOGISTIC`, ...).
    pub post_transform: String,
    /// The game played.
    pub feature_perturbation: FeaturePerturbation,
    /// The background rows (interventional; tree-path-dependent with covers counted from them).
    pub background: Option<background::BackgroundDetails>,
    /// Where the node covers came from (tree-path-dependent).
    pub covers: Option<String>,
    /// Trees in the ensemble.
    pub trees: usize,
    /// Whether the raw scores were checked against ONNX Runtime's.
    pub checked_against_runtime: bool,
}
