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
//!
//! Here: the parameters, the plan and the answer. `space`: the constraints and the cost both
//! engines share; `trees` and `gradient`: the two engines; `select`: checking, sparsifying and
//! choosing the answers among the candidates.

mod gradient;
mod random;
mod select;
mod space;
mod trees;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::anchors::DecidedClass;
use super::method::{bytes, check_range, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext};
use super::method::{schemas_of, NamedSchemas};
use super::{Cx, ExplainJob, TargetAttribution};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::manifest::{Constraints, Task};
use crate::runtime::predict::{decided, probabilities, Prediction};
use crate::runtime::preprocess::InputError;
use crate::runtime::{LoadedModel, RuntimeError};
use gradient::gradient_candidates;
use select::{checked, diversity, sparsify, Found};
use space::Space;
use trees::{favouring_leaves, tree_candidates};

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
    /// DiCE's random search: candidates drawn from the features' allowed values, forward passes
    /// only (models whose explained input is integer or bool).
    Random,
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
    /// Default: `trees` for tree ensembles `tree-shap` can read, else `gradient`, or `random`
    /// where the explained input is not float.
    pub search: Option<Search>,
    /// Extra distance past each threshold a tweak crosses, in units of the feature's scale (trees).
    #[schema(default = 0.0, minimum = 0.0, maximum = 10.0)]
    pub epsilon: f32,
    /// Gradient steps (gradient search); random search draws `steps x count` candidates.
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

impl CounterfactualParams {
    /// Every number within its documented bounds.
    fn check_bounds(&self) -> Result<(), Invalid> {
        check_range("count", self.count, 1, 10)?;
        check_range("steps", self.steps, 1, 5000)?;
        for (name, v, hi) in [
            ("epsilon", self.epsilon, 10.0),
            ("learning_rate", self.learning_rate, 10.0),
            ("distance_weight", self.distance_weight, 100.0),
            ("margin", self.margin, 100.0),
            ("diversity_weight", self.diversity_weight, 100.0),
        ] {
            if !(v.is_finite() && (0.0..=hi).contains(&v)) {
                return Err(Invalid::Request(format!("params.{name}: {v} is not in [0, {hi}]")));
            }
        }
        Ok(())
    }

    /// The search asked for, or the one `model` suggests: `trees` on an ensemble explaind can
    /// read, else `gradient`; refused when a tree search cannot reach `target_class`.
    fn resolve_search(&self, model: &LoadedModel) -> Result<Search, Invalid> {
        let forest = model.forest().ok();
        let search = match (self.search, &forest) {
            (Some(Search::Trees), None) => {
                return Err(Invalid::Unsupported(format!(
                    "search `trees` needs a tree ensemble; `{}` is not one explaind can read",
                    model.name
                )))
            }
            (Some(Search::Gradient), _) if model.spec.gradients_refused().is_some() => {
                return Err(crate::explain::method::gradients_refused(model)
                    .unwrap_or_else(|| Invalid::Unsupported("search `gradient` needs gradients".into())))
            }
            (Some(s), _) => s,
            (None, Some(_)) => Search::Trees,
            (None, None) if model.spec.gradients_refused().is_some() => Search::Random,
            (None, None) => Search::Gradient,
        };
        if let (Search::Trees, Some(forest), Some(t)) = (search, &forest, &self.target_class) {
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
        Ok(search)
    }

    /// What `search` costs with these parameters.
    fn cost(&self, search: Search, cx: &PlanContext) -> Cost {
        let features = cx.input_len();
        // Sparsifying runs one pass of up to 3 x `count` rows per feature.
        let sparsify = features.saturating_mul(self.count).saturating_mul(3);
        let (samples, rows) = match search {
            // Scored on the trees read from the graph, up to `max_samples`; the flipped ones (256
            // at most) checked by ONNX Runtime.
            Search::Trees => (cx.limits.max_samples, 256usize.saturating_add(sparsify)),
            // A forward and a backward row per chain and step.
            Search::Gradient => {
                let rows = self.steps.saturating_mul(self.count).saturating_mul(2);
                (rows, rows.saturating_add(sparsify))
            }
            // One forward row per candidate drawn.
            Search::Random => {
                let rows = self.steps.saturating_mul(self.count);
                (rows, rows.saturating_add(sparsify))
            }
        };
        Cost {
            samples,
            rows,
            bytes: bytes(rows.max(self.count), 8)
                .saturating_mul(features.saturating_add(cx.classes()) as u64)
                .saturating_add(cx.answer_bytes()),
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
        makes_image: false,
    };

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<CounterfactualDetails>())
    }

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
        p.check_bounds()?;
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
        let search = p.resolve_search(model)?;
        p.search = Some(search);
        Ok(p.cost(search, cx))
    }

    /// Forward passes for trees; the gradient search needs exact gradients.
    fn rules(p: &Self::Params) -> Vec<RuleSet> {
        match p.search {
            Some(Search::Gradient) => vec![RuleSet::Exact],
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
        let (found, reason, search_stats) = if target == current {
            let reason = "the model already decides the target class".to_string();
            (Vec::new(), Some(reason), None)
        } else {
            let (found, stats) = answers(cx, job, p, search, &space, &x, (target, current))?;
            (found, None, Some(stats))
        };
        let reason = reason.or_else(|| {
            found
                .is_empty()
                .then(|| format!("no valid counterfactual within the budget ({search:?} search) and the constraints"))
        });
        // The attribution: the cheapest counterfactual's change per feature (zero when none).
        let change: Vec<f64> = match found.first() {
            Some(best) => best.values.iter().zip(&x).map(|(a, b)| f64::from(a - b)).collect(),
            None => vec![0.0; x.len()],
        };
        let class = |index: usize| DecidedClass {
            index,
            label: model.spec.labels.get(index).cloned(),
        };
        let details = serde_json::to_value(CounterfactualDetails {
            target_class: class(target),
            current_class: class(current),
            search,
            distance: p.distance,
            scale: space.scale_source.into(),
            constraints: constraints.clone(),
            reason,
            search_stats,
            counterfactuals: found
                .iter()
                .map(|c| c.describe(&model, &tabular.features, &x))
                .collect(),
            diversity: diversity(&space, &found),
        })
        .unwrap_or_default();
        Ok(targets
            .iter()
            .map(|t| TargetAttribution::from_values(t, &change, details.clone()))
            .collect())
    }
}

/// Searches with the engine `search` names, then checks, sparsifies and chooses among the
/// candidates: the answers, and the search's statistics.
fn answers(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &CounterfactualParams,
    search: Search,
    space: &Space,
    x: &[f32],
    (target, current): (usize, usize),
) -> Result<(Vec<Found>, serde_json::Value), RuntimeError> {
    let model = &job.model;
    let (candidates, stats) = match search {
        Search::Trees => {
            let forest = model
                .forest()
                .map_err(|why| RuntimeError::from(InputError::BadFeatures(format!("counterfactual: {why}"))))?;
            let classes = model.spec.labels.len().max(1);
            tree_candidates(&forest, space, x, (target, current, classes), p, job.limits.max_samples)
        }
        Search::Gradient => gradient_candidates(cx, job, space, x, target, p)?,
        Search::Random => random::random_candidates(cx, job, space, x, p)?,
    };
    let found = checked(cx, space, x, candidates, target, p)?;
    let found = sparsify(cx, space, x, target, found, p.count, f64::from(p.diversity_weight))?;
    Ok((found, stats))
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

/// Counterfactual's `details`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CounterfactualDetails {
    /// The class the counterfactuals reach.
    pub(super) target_class: DecidedClass,
    /// The class the model decides for the input.
    pub(super) current_class: DecidedClass,
    /// The search that ran.
    pub(super) search: Search,
    /// The distance that costs a change.
    pub(super) distance: Distance,
    /// Where each feature's scale came from.
    pub(super) scale: String,
    /// The constraints the changes kept.
    pub(super) constraints: Constraints,
    /// Why there are none, when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reason: Option<String>,
    /// The search's own counts (per search kind).
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) search_stats: Option<serde_json::Value>,
    /// The counterfactuals, cheapest first.
    pub(super) counterfactuals: Vec<CounterfactualFound>,
    /// With two or more: the mean distance between pairs (DiCE's diversity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) diversity: Option<f64>,
}

/// One counterfactual.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CounterfactualFound {
    /// The features it changes.
    pub(super) changes: Vec<FeatureChange>,
    /// Its values.
    pub(super) values: Vec<f32>,
    /// What the model decides for it.
    pub(super) prediction: ScoredClass,
    /// Its distance from the input.
    pub(super) cost: f64,
    /// Always true: answers are checked by the model.
    pub(super) valid: bool,
}

/// A feature's change.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct FeatureChange {
    /// The feature.
    pub(super) feature: String,
    /// The input's value.
    pub(super) from: f32,
    /// The counterfactual's.
    pub(super) to: f32,
}

/// A decided class with its probability.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ScoredClass {
    /// Its index.
    pub(super) index: usize,
    /// Its label.
    pub(super) label: Option<String>,
    /// Its probability.
    pub(super) score: Option<f64>,
}
