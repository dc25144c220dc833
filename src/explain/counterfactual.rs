//! Counterfactuals for tabular decisions: the cheapest changes to the input that make the model
//! decide `target_class`, within the constraints the manifest and the request declare.
//! - Tree ensembles (ONNX-ML, read as `tree-shap` reads them): actionable feature tweaking
//!   (Tolomei et al., KDD 2017). Every leaf that raises the target class's raw score (or lowers
//!   the current class's) gives one candidate: the input moved into that leaf's path box, each
//!   feature to the nearest point of its interval within the constraints (just past an open
//!   threshold). Candidates are ranked by cost and checked on the whole ensemble by ONNX Runtime,
//!   the cheapest `max_samples` of them, in one batched pass.
//! - Differentiable models: Wachter et al. (2017)'s search through the backward model: a hinge on
//!   the target's score margin over the best other class plus the weighted L1 distance, by
//!   proximal gradient steps (the L1 term soft-thresholded, so untouched features stay exactly
//!   put), projected onto the constraints after every step. `count` > 1 runs that many chains in
//!   one batch from seeded starting points and keeps the distinct valid answers.
//!
//! Distances are in units of each feature's median absolute deviation over the background rows
//! (Wachter et al.'s choice), times the per-feature costs; integer features are rounded inside
//! their interval; every returned counterfactual is re-run through ONNX Runtime (`valid`).

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::method::{bytes, check_range, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext};
use super::{Cx, ExplainJob, TargetAttribution};
use crate::onnx::autodiff::RuleSet;
use crate::onnx::trees::{Forest, Mode};
use crate::runtime::manifest::{Constraints, Direction, Task};
use crate::runtime::predict::{decided, probabilities, Prediction};
use crate::runtime::preprocess::InputError;
use crate::runtime::{LoadedModel, RuntimeError, Tensor};

/// A class by index or by label.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ClassRef {
    Index(usize),
    Label(String),
}

/// How changes are summed into a cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Distance {
    /// Sum of scaled changes (sparse answers).
    #[default]
    L1,
    /// Euclidean norm of scaled changes.
    L2,
}

/// How counterfactuals are searched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Search {
    /// Actionable feature tweaking on the ensemble's leaves (tree ensembles).
    Trees,
    /// Wachter et al.'s search through the backward model (differentiable models).
    Gradient,
}

/// Counterfactual parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CounterfactualParams {
    /// The decision wanted: a label or class index. Default: the best class other than the
    /// predicted one.
    pub target_class: Option<ClassRef>,
    /// How many counterfactuals to answer, cheapest first.
    #[schema(default = 1, minimum = 1, maximum = 10)]
    pub count: usize,
    /// How scaled changes add up to a cost.
    pub distance: Distance,
    /// Constraints added to the manifest's `[tabular.constraints]` for this request; they may add or
    /// tighten the manifest's, never relax them (422). The answer echoes those in force.
    pub constraints: Constraints,
    /// Default: `trees` for tree ensembles `tree-shap` can read, else `gradient`.
    pub search: Option<Search>,
    /// Extra distance past each threshold a tweak crosses, in units of the feature's scale (trees).
    #[schema(default = 0.0, minimum = 0.0, maximum = 10.0)]
    pub epsilon: f32,
    /// Gradient steps (gradient search).
    #[schema(default = 300, minimum = 1, maximum = 5000)]
    pub steps: usize,
    /// Step size in scaled units (gradient search).
    #[schema(default = 0.2, minimum = 0.0, maximum = 10.0)]
    pub learning_rate: f32,
    /// Weight of the distance against the hinge on the score margin (gradient search); quartered
    /// for a chain after each quarter of the steps that found nothing.
    #[schema(default = 1.0, minimum = 0.0, maximum = 100.0)]
    pub distance_weight: f32,
    /// The target's score must beat the best other class's by this much (gradient search; in
    /// the model's score space).
    #[schema(default = 0.0, minimum = 0.0, maximum = 100.0)]
    pub margin: f32,
    /// With `count` > 1, how much the set's diversity counts against its cost (DiCE's
    /// `diversity_weight`): the answers are chosen from the valid candidates to maximise
    /// `weight x det(K) - 0.5 x proximity`, `K_ij = 1 / (1 + distance(i, j))` (DiCE's
    /// determinantal diversity; proximity the mean scaled change per answer and feature, DiCE's
    /// weight 0.5); 0 keeps the cheapest distinct ones.
    #[schema(default = 1.0, minimum = 0.0, maximum = 100.0)]
    pub diversity_weight: f32,
}

impl Default for CounterfactualParams {
    fn default() -> Self {
        Self {
            target_class: None,
            count: 1,
            distance: Distance::L1,
            constraints: Constraints::default(),
            search: None,
            epsilon: 0.0,
            steps: 300,
            learning_rate: 0.2,
            distance_weight: 1.0,
            margin: 0.0,
            diversity_weight: 1.0,
        }
    }
}

/// Counterfactuals.
pub struct Counterfactual;

impl Method for Counterfactual {
    type Params = CounterfactualParams;
    const NAME: &'static str = "counterfactual";
    const SUMMARY: &'static str =
        "The cheapest changes that flip a tabular decision (Tolomei et al. 2017 on trees, Wachter et al. 2017)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Forward,
        inputs: Inputs::Tabular,
        layer: false,
        random: true,
        examples: false,
        decision: true,
        text: false,
    };

    fn plan(p: &mut CounterfactualParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        let model = cx.model;
        let tabular = model.spec.tabular.as_ref().ok_or_else(|| {
            Invalid::Model(format!(
                "counterfactual explains tabular models; `{}` takes images",
                model.name
            ))
        })?;
        if model.spec.task != Task::TabularClassification {
            return Err(Invalid::Model(format!(
                "counterfactual needs a classifier; `{}` is a regression model",
                model.name
            )));
        }
        check_range("count", p.count, 1, 10)?;
        check_range("steps", p.steps, 1, 5000)?;
        for (name, v, hi) in [
            ("epsilon", p.epsilon, 10.0),
            ("learning_rate", p.learning_rate, 10.0),
            ("distance_weight", p.distance_weight, 100.0),
            ("margin", p.margin, 100.0),
            ("diversity_weight", p.diversity_weight, 100.0),
        ] {
            if !(v.is_finite() && (0.0..=hi).contains(&v)) {
                return Err(Invalid::Request(format!("params.{name}: {v} is not in [0, {hi}]")));
            }
        }
        p.constraints
            .check(&tabular.features)
            .map_err(|why| Invalid::Request(format!("params.constraints: {why}")))?;
        // From here on (the run, the answer's `details.constraints` and its `params` echo) the
        // constraints are those in force: the manifest's, added to and tightened by the request's.
        p.constraints = tabular
            .constraints
            .tightened(&p.constraints)
            .map_err(|why| Invalid::Model(format!("params.constraints: {why}")))?;
        if let Some(t) = &p.target_class {
            class_index(model, t, "target_class")?;
        }
        let forest = model.forest().ok();
        let search = match (p.search, &forest) {
            (Some(Search::Trees), None) => {
                return Err(Invalid::Unsupported(format!(
                    "search `trees` needs a tree ensemble; `{}` is not one explaind can read",
                    model.name
                )))
            }
            (Some(s), _) => s,
            (None, Some(_)) => Search::Trees,
            (None, None) => Search::Gradient,
        };
        p.search = Some(search);
        if let (Search::Trees, Some(forest), Some(t)) = (search, &forest, &p.target_class) {
            let t = class_index(model, t, "target_class")?;
            if !forest
                .trees
                .iter()
                .any(|tree| !favouring_leaves(forest, tree, t, None).is_empty())
            {
                return Err(Invalid::Model(format!(
                    "target_class `{}` is unreachable: no leaf of the ensemble raises its score",
                    model.spec.labels.get(t).cloned().unwrap_or_else(|| t.to_string())
                )));
            }
        }
        let features = cx.input_len();
        // Sparsifying runs one pass of up to 3 x `count` rows per feature.
        let sparsify = features.saturating_mul(p.count).saturating_mul(3);
        let (samples, rows) = match search {
            // Scored on the trees read from the graph, up to `max_samples`; the flipped ones (256
            // at most) checked by ONNX Runtime.
            Search::Trees => (cx.limits.max_samples, 256usize.saturating_add(sparsify)),
            // A forward and a backward row per chain and step.
            Search::Gradient => {
                let rows = p.steps.saturating_mul(p.count).saturating_mul(2);
                (rows, rows.saturating_add(sparsify))
            }
        };
        Ok(Cost {
            samples,
            rows,
            bytes: bytes(rows.max(p.count), 8)
                .saturating_mul(features.saturating_add(cx.classes()) as u64)
                .saturating_add(cx.answer_bytes()),
        })
    }

    /// Forward passes for trees; the gradient search needs exact gradients.
    fn rules(p: &Self::Params) -> Vec<RuleSet> {
        match p.search {
            Some(Search::Gradient) => vec![RuleSet::Standard],
            _ => Vec::new(),
        }
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &CounterfactualParams,
        targets: &[Prediction],
        scores: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        let model = job.model.clone();
        let bad = |m: String| RuntimeError::from(InputError::BadFeatures(m));
        let tabular = model
            .spec
            .tabular
            .as_ref()
            .ok_or_else(|| bad("not a tabular model".into()))?;
        let x: Vec<f32> = job.input.as_f32().unwrap_or(&[]).to_vec();
        let probs = probabilities(&model, scores);
        let current = decided(&probs, None);
        let target = match &p.target_class {
            Some(t) => class_index(&model, t, "target_class").map_err(|e| bad(e.to_string()))?,
            None => decided(&probs, Some(current)),
        };
        let constraints = &p.constraints;
        let space = Space::new(&model, &tabular.features, constraints, &x, p.distance);
        let search = p.search.unwrap_or(Search::Gradient);
        let mut details = json!({
            "target_class": {"index": target, "label": model.spec.labels.get(target)},
            "current_class": {"index": current, "label": model.spec.labels.get(current)},
            "search": search,
            "distance": p.distance,
            "scale": space.scale_source,
            "constraints": constraints,
        });
        let found = if target == current {
            details["reason"] = json!("the model already decides the target class");
            Vec::new()
        } else {
            let (candidates, stats) = match search {
                Search::Trees => {
                    let forest = model.forest().map_err(|why| bad(format!("counterfactual: {why}")))?;
                    let classes = model.spec.labels.len().max(1);
                    tree_candidates(
                        &forest,
                        &space,
                        &x,
                        (target, current, classes),
                        p,
                        job.limits.max_samples,
                    )
                }
                Search::Gradient => gradient_candidates(cx, job, &space, &x, target, p)?,
            };
            details["search_stats"] = stats;
            let found = checked(cx, &space, &x, candidates, target, p)?;
            sparsify(cx, &space, &x, target, found, p.count, f64::from(p.diversity_weight))?
        };
        if found.is_empty() && details.get("reason").is_none() {
            details["reason"] = json!(format!(
                "no valid counterfactual within the budget ({search:?} search) and the constraints"
            ));
        }
        // The attribution: the cheapest counterfactual's change per feature (zero when none).
        let change: Vec<f64> = match found.first() {
            Some(best) => best.values.iter().zip(&x).map(|(a, b)| f64::from(a - b)).collect(),
            None => vec![0.0; x.len()],
        };
        details["counterfactuals"] = json!(found
            .iter()
            .map(|c| c.describe(&model, &tabular.features, &x))
            .collect::<Vec<_>>());
        if found.len() > 1 {
            // DiCE's diversity of a set: the mean distance between its pairs, in the cost's units.
            let pairs: Vec<f64> = (0..found.len())
                .flat_map(|a| (a + 1..found.len()).map(move |b| (a, b)))
                .map(|(a, b)| space.cost(&found[a].values, &found[b].values))
                .collect();
            details["diversity"] = json!(pairs.iter().sum::<f64>() / pairs.len() as f64);
        }
        Ok(targets
            .iter()
            .map(|t| TargetAttribution::from_values(t, &change, details.clone()))
            .collect())
    }
}

/// The class a reference names, or why it names none.
pub(super) fn class_index(model: &LoadedModel, class: &ClassRef, param: &str) -> Result<usize, Invalid> {
    let labels = &model.spec.labels;
    match class {
        ClassRef::Index(i) if *i < labels.len().max(1) => Ok(*i),
        ClassRef::Label(l) => labels
            .iter()
            .position(|x| x == l)
            .ok_or_else(|| Invalid::Request(format!("params.{param}: `{l}` is not a label of `{}`", model.name))),
        ClassRef::Index(i) => Err(Invalid::Request(format!(
            "params.{param}: {i} is not a class of `{}` ({} classes)",
            model.name,
            labels.len()
        ))),
    }
}

/// Where each feature may go, and what moving it costs.
struct Space {
    /// Per feature: the interval the constraints allow (a single point for immutable ones).
    low: Vec<f64>,
    high: Vec<f64>,
    integer: Vec<bool>,
    /// Per feature: cost of one unit of change (its cost over its scale).
    unit_cost: Vec<f64>,
    scale: Vec<f64>,
    scale_source: &'static str,
    distance: Distance,
}

impl Space {
    fn new(model: &LoadedModel, features: &[String], c: &Constraints, x: &[f32], distance: Distance) -> Self {
        let n = features.len();
        let at = |name: &str| features.iter().position(|f| f == name);
        // Without a bound of its own, a feature stays within the background rows' range (widened
        // to the input's value), as DiCE keeps to the training data's: a counterfactual outside
        // everything seen is no advice.
        let (mut low, mut high) = (vec![f64::NEG_INFINITY; n], vec![f64::INFINITY; n]);
        if let Some(rows) = model.background.as_ref().filter(|rows| !rows.is_empty()) {
            for i in 0..n {
                let column = rows.iter().filter_map(|r| r.get(i)).map(|v| f64::from(*v));
                let (lo, hi) = column.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
                let v = f64::from(x[i]);
                (low[i], high[i]) = (lo.min(v), hi.max(v));
            }
        }
        let mut integer = vec![false; n];
        for (f, v) in &c.min {
            if let Some(i) = at(f) {
                low[i] = *v;
            }
        }
        for (f, v) in &c.max {
            if let Some(i) = at(f) {
                high[i] = *v;
            }
        }
        for (f, d) in &c.monotone {
            if let Some(i) = at(f) {
                match d {
                    Direction::Increase => low[i] = low[i].max(f64::from(x[i])),
                    Direction::Decrease => high[i] = high[i].min(f64::from(x[i])),
                }
            }
        }
        for f in &c.immutable {
            if let Some(i) = at(f) {
                (low[i], high[i]) = (f64::from(x[i]), f64::from(x[i]));
            }
        }
        for f in &c.integer {
            if let Some(i) = at(f) {
                integer[i] = true;
            }
        }
        // An input already outside its bounds keeps its own value as the allowed one, so the
        // interval never empties because of where the input starts.
        for i in 0..n {
            let v = f64::from(x[i]);
            if low[i] > high[i] {
                (low[i], high[i]) = (v, v);
            }
        }
        let (scale, scale_source) = match model.background.as_ref().filter(|rows| rows.len() > 1) {
            Some(rows) => (mad_scales(rows, n), "median absolute deviation of the background rows"),
            None => (vec![1.0; n], "none (the model has no background rows)"),
        };
        let unit_cost = (0..n)
            .map(|i| c.costs.get(&features[i]).copied().unwrap_or(1.0) / scale[i])
            .collect();
        Space {
            low,
            high,
            integer,
            unit_cost,
            scale,
            scale_source,
            distance,
        }
    }

    fn cost(&self, x: &[f32], y: &[f32]) -> f64 {
        let terms = x
            .iter()
            .zip(y)
            .zip(&self.unit_cost)
            .map(|((a, b), c)| (f64::from(*b) - f64::from(*a)).abs() * c);
        match self.distance {
            Distance::L1 => terms.sum(),
            Distance::L2 => terms.map(|t| t * t).sum::<f64>().sqrt(),
        }
    }

    /// `v` moved into the allowed interval of feature `i`, rounded when the feature is integer.
    /// `None` when no allowed value lies in [lo, hi].
    fn place(&self, i: usize, v: f64, lo: f64, hi: f64) -> Option<f32> {
        let (lo, hi) = (lo.max(self.low[i]), hi.min(self.high[i]));
        if lo > hi {
            return None;
        }
        let mut w = v.clamp(lo, hi);
        if self.integer[i] {
            w = w.round();
            if w < lo {
                w += 1.0;
            }
            if w > hi {
                w -= 1.0;
            }
            if w < lo || w > hi {
                return None;
            }
        }
        let f = w as f32;
        // f32 rounding must not step outside the interval.
        let f = if f64::from(f) < lo { step_up(f) } else { f };
        let f = if f64::from(f) > hi { step_down(f) } else { f };
        (f64::from(f) >= lo && f64::from(f) <= hi).then_some(f)
    }
}

/// The next float above `f` (`f32::next_up`, stable only since Rust 1.86).
fn step_up(f: f32) -> f32 {
    if f.is_nan() || f == f32::INFINITY {
        f
    } else if f == 0.0 {
        f32::from_bits(1)
    } else if f > 0.0 {
        f32::from_bits(f.to_bits() + 1)
    } else {
        f32::from_bits(f.to_bits() - 1)
    }
}

/// The next float below `f`.
fn step_down(f: f32) -> f32 {
    -step_up(-f)
}

/// Median absolute deviation per feature (1 where a feature does not vary).
fn mad_scales(rows: &[Vec<f32>], n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let mut col: Vec<f64> = rows.iter().filter_map(|r| r.get(i)).map(|v| f64::from(*v)).collect();
            let med = median(&mut col);
            let mut dev: Vec<f64> = col.iter().map(|v| (v - med).abs()).collect();
            let mad = median(&mut dev);
            if mad > 0.0 && mad.is_finite() {
                mad
            } else {
                1.0
            }
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Leaves of `tree` that raise class `target`'s raw score, or lower `current`'s.
fn favouring_leaves(
    forest: &Forest,
    tree: &crate::onnx::trees::Tree,
    target: usize,
    current: Option<usize>,
) -> Vec<usize> {
    let contribution = |leaf: &crate::onnx::trees::Node, class: usize| {
        forest
            .class_column(class)
            .and_then(|(col, sign, _)| leaf.values.get(col).map(|v| sign * v))
            .unwrap_or(0.0)
    };
    (0..tree.nodes.len())
        .filter(|&i| {
            let n = &tree.nodes[i];
            n.split.is_none() && (contribution(n, target) > 0.0 || current.is_some_and(|c| contribution(n, c) < 0.0))
        })
        .collect()
}

/// Per feature, the interval a path to `leaf` requires: (low, low open, high, high open).
type Box = Vec<(f64, bool, f64, bool)>;

fn path_box(tree: &crate::onnx::trees::Tree, leaf: usize, features: usize) -> Option<Box> {
    // Parents, to walk from the leaf up.
    let mut parent = vec![None; tree.nodes.len()];
    for (i, n) in tree.nodes.iter().enumerate() {
        if let Some(s) = &n.split {
            for c in [s.yes, s.no] {
                if let Some(p) = parent.get_mut(c) {
                    *p = Some((i, c == s.yes));
                }
            }
        }
    }
    let mut bounds: Box = vec![(f64::NEG_INFINITY, false, f64::INFINITY, false); features];
    let mut at = leaf;
    while let Some((p, yes)) = parent[at] {
        let s = tree.nodes[p].split.as_ref()?;
        let t = f64::from(s.threshold);
        let b = bounds.get_mut(s.feature)?;
        // (is an upper bound, open) for the branch taken.
        let upper = |b: &mut (f64, bool, f64, bool), open: bool| {
            if t < b.2 || (t == b.2 && open) {
                (b.2, b.3) = (t, open);
            }
        };
        let lower = |b: &mut (f64, bool, f64, bool), open: bool| {
            if t > b.0 || (t == b.0 && open) {
                (b.0, b.1) = (t, open);
            }
        };
        match (s.mode, yes) {
            (Mode::Leq, true) | (Mode::Gt, false) => upper(b, false),
            (Mode::Lt, true) | (Mode::Gte, false) => upper(b, true),
            (Mode::Gte, true) | (Mode::Lt, false) => lower(b, false),
            (Mode::Gt, true) | (Mode::Leq, false) => lower(b, true),
            (Mode::Eq, true) | (Mode::Neq, false) => {
                lower(b, false);
                upper(b, false);
            }
            // "not equal": an interval cannot say it; such paths are not tweaked into.
            (Mode::Eq, false) | (Mode::Neq, true) => return None,
        }
        at = p;
    }
    Some(bounds)
}

/// Most tweak rounds of the tree search, and states kept between rounds.
const ROUNDS: usize = 10;
const BEAM: usize = 10;

/// `state` moved into `bounds` (a leaf's path box), each feature to the nearest allowed point of
/// its interval (past an open threshold by the next float, or by `epsilon` scales).
fn tweak(space: &Space, state: &[f32], bounds: &Box, epsilon: f32) -> Option<Vec<f32>> {
    let mut y = state.to_vec();
    for (i, &(lo, lo_open, hi, hi_open)) in bounds.iter().enumerate() {
        let v = f64::from(state[i]);
        let inside = (v > lo || (v == lo && !lo_open)) && (v < hi || (v == hi && !hi_open));
        if inside {
            continue;
        }
        let margin = f64::from(epsilon) * space.scale[i];
        let room = if lo.is_finite() && hi.is_finite() {
            (hi - lo) / 2.0
        } else {
            f64::INFINITY
        };
        let lo = if lo_open {
            f64::from(step_up(lo as f32)).max(lo + margin)
        } else {
            lo + margin.min(room)
        };
        let hi = if hi_open {
            f64::from(step_down(hi as f32)).min(hi - margin)
        } else {
            hi - margin.min(room)
        };
        y[i] = space.place(i, v, lo, hi)?;
    }
    Some(y)
}

/// The target's raw score minus the best other class's, as the ensemble computes it.
fn raw_margin(forest: &Forest, y: &[f32], target: usize, classes: usize) -> f64 {
    let raw = forest.raw(y);
    let score = |j: usize| {
        forest
            .class_column(j)
            .map(|(col, sign, offset)| offset + sign * raw[col])
            .unwrap_or(f64::NEG_INFINITY)
    };
    let best_other = (0..classes)
        .filter(|&j| j != target)
        .map(score)
        .fold(f64::NEG_INFINITY, f64::max);
    score(target) - best_other
}

/// Actionable feature tweaking as a beam search: each round moves every kept state into the path
/// box of every leaf that favours the target (Tolomei et al.'s tweak) and scores the moved points
/// on the ensemble read from the graph; the flipped ones are kept, and of the others the states
/// that gained the most margin per unit of cost and are still cheaper than the cheapest flip go
/// on to the next round. A boosted ensemble rarely flips on one tree's path, and two cheap tweaks
/// can beat one dear one, so tweaks compose across rounds. At most `limit` points are scored;
/// the valid ones come back cheapest first.
fn tree_candidates(
    forest: &Forest,
    space: &Space,
    x: &[f32],
    (target, current, classes): (usize, usize, usize),
    p: &CounterfactualParams,
    limit: usize,
) -> (Vec<Vec<f32>>, serde_json::Value) {
    let mut boxes = Vec::new();
    let mut leaves = 0usize;
    for tree in &forest.trees {
        for leaf in favouring_leaves(forest, tree, target, Some(current)) {
            leaves += 1;
            boxes.extend(path_box(tree, leaf, x.len()));
        }
    }
    let start = raw_margin(forest, x, target, classes);
    let mut beam: Vec<Vec<f32>> = vec![x.to_vec()];
    let mut valid: Vec<(f64, Vec<f32>)> = Vec::new();
    let mut cheapest = f64::INFINITY;
    let (mut scored, mut rounds) = (0usize, 0usize);
    'rounds: for _ in 0..ROUNDS {
        rounds += 1;
        let mut next: Vec<(f64, Vec<f32>)> = Vec::new();
        for state in &beam {
            for b in &boxes {
                let Some(y) = tweak(space, state, b, p.epsilon) else {
                    continue;
                };
                if y == *state {
                    continue;
                }
                if scored == limit {
                    break 'rounds;
                }
                scored += 1;
                let (m, c) = (raw_margin(forest, &y, target, classes), space.cost(x, &y));
                if m > 0.0 {
                    cheapest = cheapest.min(c);
                    valid.push((c, y));
                } else if c < cheapest {
                    next.push(((m - start) / c.max(1e-12), y));
                }
            }
        }
        // A state already dearer than a flip found cannot lead to a cheaper one.
        next.retain(|(_, y)| space.cost(x, y) < cheapest);
        if next.is_empty() {
            break;
        }
        next.sort_by(|a, b| b.0.total_cmp(&a.0));
        next.dedup_by(|a, b| a.1 == b.1);
        beam = next.into_iter().take(BEAM).map(|(_, y)| y).collect();
    }
    valid.sort_by(|a, b| a.0.total_cmp(&b.0));
    valid.dedup_by(|a, b| a.1 == b.1);
    let found = valid.len();
    valid.truncate(256);
    let stats = json!({
        "favouring_leaves": leaves,
        "paths": boxes.len(),
        "rounds": rounds,
        "scored": scored,
        "flipped": found,
    });
    (valid.into_iter().map(|(_, y)| y).collect(), stats)
}

/// Wachter et al.'s search: `count` chains in one batch, proximal gradient steps on the scaled
/// change, projected onto the constraints. Returns each chain's cheapest point that decided the
/// target along the way (and its last point).
fn gradient_candidates(
    cx: &mut Cx,
    job: &ExplainJob,
    space: &Space,
    x: &[f32],
    target: usize,
    p: &CounterfactualParams,
) -> Result<(Vec<Vec<f32>>, serde_json::Value), RuntimeError> {
    let n = x.len();
    let classes = job.model.spec.labels.len().max(1);
    let chains = p.count;
    let mut rng = ChaCha8Rng::seed_from_u64(job.seed);
    // Chain 0 starts at the input; the others at seeded points around it (one scale apart).
    let mut rows: Vec<Vec<f32>> = (0..chains)
        .map(|k| {
            (0..n)
                .map(|i| {
                    let jitter = if k == 0 {
                        0.0
                    } else {
                        rng.random_range(-1.0f64..1.0) * space.scale[i]
                    };
                    space
                        .place(i, f64::from(x[i]) + jitter, f64::NEG_INFINITY, f64::INFINITY)
                        .unwrap_or(x[i])
                })
                .collect()
        })
        .collect();
    // Each chain's cheapest valid point in each quarter of the steps: candidates along the path
    // as well as at its end, for the answers to be chosen among (diversity).
    let mut best: Vec<Option<(f64, Vec<f32>)>> = vec![None; chains];
    let mut by_phase: Vec<Option<(f64, Vec<f32>)>> = vec![None; chains * 4];
    let lr = f64::from(p.learning_rate);
    // Wachter et al. tune the weight between the two terms: each chain starts at the given
    // distance weight and quarters it after every quarter of the steps that found nothing valid.
    let mut lambda = vec![f64::from(p.distance_weight); chains];
    let phase = (p.steps / 4).max(1);
    let mut steps_run = 0;
    for step in 0..p.steps {
        if step > 0 && step % phase == 0 {
            for (k, l) in lambda.iter_mut().enumerate() {
                if best[k].is_none() {
                    *l /= 4.0;
                }
            }
        }
        let input = Tensor::f32(vec![chains, n], rows.concat());
        // The pass's scores say which rows decide the target now, and which class to push down.
        let probe = cx.forward(&input)?;
        let s = probe.to_f64();
        let mut weights = vec![0f32; chains * classes];
        let mut active = false;
        for k in 0..chains {
            let row = &s[k * classes..(k + 1) * classes];
            let rival = decided(row, Some(target));
            let gap = row[target] - row[rival];
            if gap > 0.0 {
                let cost = space.cost(x, &rows[k]);
                if best[k].as_ref().is_none_or(|(c, _)| cost < *c) {
                    best[k] = Some((cost, rows[k].clone()));
                }
                let slot = &mut by_phase[k * 4 + (step / phase).min(3)];
                if slot.as_ref().is_none_or(|(c, _)| cost < *c) {
                    *slot = Some((cost, rows[k].clone()));
                }
            }
            if gap < f64::from(p.margin) + 1e-6 {
                weights[k * classes + target] = 1.0;
                weights[k * classes + rival] = -1.0;
                active = true;
            }
        }
        if !active && lambda.iter().all(|l| *l == 0.0) {
            break;
        }
        let pass = cx.gradients(
            &[],
            RuleSet::Standard,
            &input,
            &Tensor::f32(vec![chains, classes], weights),
            cx.max_batch(),
        )?;
        steps_run += 1;
        let g = pass.input_grad.as_f32().unwrap_or(&[]);
        for k in 0..chains {
            for i in 0..n {
                let scale = space.scale[i];
                // Ascend the margin (the hinge's gradient), in scaled units, then shrink the change
                // towards the input by the L1 term's proximal step.
                let u = (f64::from(rows[k][i]) - f64::from(x[i])) / scale;
                let step = u + lr * f64::from(g.get(k * n + i).copied().unwrap_or(0.0)) * scale;
                let shrink = lr * lambda[k] * space.unit_cost[i] * scale;
                let u = step.signum() * (step.abs() - shrink).max(0.0);
                let v = f64::from(x[i]) + u * scale;
                rows[k][i] = space.place(i, v, f64::NEG_INFINITY, f64::INFINITY).unwrap_or(x[i]);
            }
        }
    }
    let stats = json!({"chains": chains, "steps": steps_run, "final_distance_weights": lambda});
    let mut out: Vec<Vec<f32>> = best.into_iter().flatten().map(|(_, y)| y).collect();
    if chains > 1 {
        out.extend(by_phase.into_iter().flatten().map(|(_, y)| y));
    }
    out.extend(rows);
    Ok((out, stats))
}

/// A counterfactual that ONNX Runtime has checked.
struct Found {
    values: Vec<f32>,
    prediction: usize,
    probabilities: Vec<f64>,
    cost: f64,
}

impl Found {
    fn describe(&self, model: &LoadedModel, features: &[String], x: &[f32]) -> serde_json::Value {
        let changes: Vec<serde_json::Value> = features
            .iter()
            .zip(x.iter().zip(&self.values))
            .filter(|(_, (a, b))| a != b)
            .map(|(f, (a, b))| json!({"feature": f, "from": a, "to": b}))
            .collect();
        json!({
            "changes": changes,
            "values": self.values,
            "prediction": {
                "index": self.prediction,
                "label": model.spec.labels.get(self.prediction),
                "score": self.probabilities.get(self.prediction),
            },
            "cost": self.cost,
            "valid": true,
        })
    }
}

/// Greedy sparsity (DiCE's post-hoc step): reverts each counterfactual's changed features to the
/// input's values, smallest weighted change first, keeping every reversion that ONNX Runtime
/// still decides as the target. One batched pass per feature position, over all counterfactuals.
fn sparsify(
    cx: &mut Cx,
    space: &Space,
    x: &[f32],
    target: usize,
    mut found: Vec<Found>,
    count: usize,
    diversity_weight: f64,
) -> Result<Vec<Found>, RuntimeError> {
    let n = x.len();
    let orders: Vec<Vec<usize>> = found
        .iter()
        .map(|f| {
            let mut changed: Vec<usize> = (0..n).filter(|&i| f.values[i] != x[i]).collect();
            let weight = |i: usize| (f64::from(f.values[i]) - f64::from(x[i])).abs() * space.unit_cost[i];
            changed.sort_by(|a, b| weight(*a).total_cmp(&weight(*b)));
            changed
        })
        .collect();
    let longest = orders.iter().map(Vec::len).max().unwrap_or(0);
    // A counterfactual keeps at least one change.
    for j in 0..longest.saturating_sub(1) {
        let trials: Vec<(usize, Vec<f32>)> = found
            .iter()
            .enumerate()
            .filter(|(k, _)| orders[*k].len() > j + 1)
            .map(|(k, f)| {
                let mut y = f.values.clone();
                y[orders[k][j]] = x[orders[k][j]];
                (k, y)
            })
            .collect();
        if trials.is_empty() {
            break;
        }
        let rows: Vec<Vec<f32>> = trials.iter().map(|(_, y)| y.clone()).collect();
        for ((k, y), (class, probs)) in trials.into_iter().zip(cx.decide(&rows)?) {
            if class == target {
                found[k].cost = space.cost(x, &y);
                found[k].values = y;
                found[k].probabilities = probs;
            }
        }
    }
    Ok(diverse(space, x, found, count, diversity_weight))
}

/// At most `count` of `found`, mutually distinct, cheapest first: the cheapest, then greedily the
/// one that most raises `weight x det(K) - 0.5 x proximity` of the set (DiCE's objective without
/// its prediction term, which every candidate here already meets): `K_ij = 1 / (1 + cost(i, j))`,
/// proximity the mean scaled change per answer and feature.
fn diverse(space: &Space, x: &[f32], found: Vec<Found>, count: usize, weight: f64) -> Vec<Found> {
    let mut pool: Vec<Option<Found>> = distinct(space, x, found, usize::MAX).into_iter().map(Some).collect();
    if weight == 0.0 || pool.len() <= count {
        return pool.into_iter().flatten().take(count).collect();
    }
    let score = |set: &[&Found]| {
        let k = set.len();
        let kernel = nalgebra::DMatrix::from_fn(k, k, |i, j| match i == j {
            // DiCE's small jitter keeps the determinant of near-duplicates from vanishing exactly.
            true => 1.0 + 1e-4,
            false => 1.0 / (1.0 + space.cost(&set[i].values, &set[j].values)),
        });
        // DiCE's proximity: the mean over answers and features of the scaled change.
        let proximity = set.iter().map(|f| f.cost).sum::<f64>() / (k * x.len().max(1)) as f64;
        weight * kernel.determinant() - 0.5 * proximity
    };
    let mut chosen: Vec<Found> = pool[0].take().into_iter().collect();
    while chosen.len() < count {
        let best = (0..pool.len())
            .filter(|&i| pool[i].is_some())
            .map(|i| {
                let mut set: Vec<&Found> = chosen.iter().collect();
                set.extend(pool[i].as_ref());
                (i, score(&set))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        match best.and_then(|(i, _)| pool[i].take()) {
            Some(f) => chosen.push(f),
            None => break,
        }
    }
    chosen.sort_by(|a, b| a.cost.total_cmp(&b.cost));
    chosen
}

/// The cheapest of `found`, at most `count`, each distinct from those kept before it: it changes
/// another set of features, or lies at least one scale unit (weighted) from each of them.
fn distinct(space: &Space, x: &[f32], mut found: Vec<Found>, count: usize) -> Vec<Found> {
    found.sort_by(|a, b| a.cost.total_cmp(&b.cost));
    let changed = |v: &[f32]| -> Vec<bool> { v.iter().zip(x).map(|(a, b)| a != b).collect() };
    let mut kept: Vec<Found> = Vec::new();
    for f in found {
        if kept.len() == count {
            break;
        }
        let set = changed(&f.values);
        let far = |k: &Found| {
            let d: f64 = k
                .values
                .iter()
                .zip(&f.values)
                .zip(&space.unit_cost)
                .map(|((a, b), c)| (f64::from(*a) - f64::from(*b)).abs() * c)
                .sum();
            changed(&k.values) != set || d >= 1.0
        };
        if kept.iter().all(far) {
            kept.push(f);
        }
    }
    kept
}

/// Runs every candidate through ONNX Runtime in one batched pass and keeps the `count` cheapest
/// that it decides as `target`, distinct from each other.
fn checked(
    cx: &mut Cx,
    space: &Space,
    x: &[f32],
    candidates: Vec<Vec<f32>>,
    target: usize,
    p: &CounterfactualParams,
) -> Result<Vec<Found>, RuntimeError> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let decisions = cx.decide(&candidates)?;
    let found: Vec<Found> = candidates
        .into_iter()
        .zip(decisions)
        .filter_map(|(values, (prediction, probs))| {
            (prediction == target).then(|| Found {
                cost: space.cost(x, &values),
                values,
                prediction,
                probabilities: probs,
            })
        })
        .collect();
    // Sparsifying may bring two together, and diversity chooses among them: keep spares.
    Ok(distinct(space, x, found, p.count.saturating_mul(8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(values: [f32; 3], cost: f64) -> Found {
        Found {
            values: values.to_vec(),
            prediction: 1,
            probabilities: vec![0.0, 1.0],
            cost,
        }
    }

    #[test]
    fn diversity_trades_a_little_cost_for_answers_that_change_other_things() {
        let space = Space {
            low: vec![f64::NEG_INFINITY; 3],
            high: vec![f64::INFINITY; 3],
            integer: vec![false; 3],
            unit_cost: vec![1.0; 3],
            scale: vec![1.0; 3],
            scale_source: "test",
            distance: Distance::L1,
        };
        let x = [0.0f32; 3];
        // Two near one another on feature 0, one a little dearer on feature 2.
        let pool = || {
            vec![
                found([1.0, 0.0, 0.0], 1.0),
                found([1.2, 0.1, 0.0], 1.3),
                found([0.0, 0.0, 1.4], 1.4),
            ]
        };
        let cheapest = diverse(&space, &x, pool(), 2, 0.0);
        assert_eq!(cheapest.iter().map(|f| f.cost).collect::<Vec<_>>(), vec![1.0, 1.3]);
        let spread = diverse(&space, &x, pool(), 2, 1.0);
        assert_eq!(spread.iter().map(|f| f.cost).collect::<Vec<_>>(), vec![1.0, 1.4]);
        // Fewer candidates than asked: all of them, cheapest first.
        assert_eq!(diverse(&space, &x, pool(), 5, 1.0).len(), 3);
    }
}
