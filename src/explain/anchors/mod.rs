//! Anchors (Ribeiro et al., AAAI 2018; alibi's AnchorTabular): an if-then rule over the input's
//! features that keeps the model's prediction with precision at least `threshold` and covers as
//! much of the background data as it can.
//!
//! Each feature is discretised into the background data's quartiles (as tabular LIME bins them);
//! the input's bin gives up to two conditions per feature, `f > lower cut` and `f <= upper cut`.
//! A rule's precision is the share of the model's predictions that keep the input's class on
//! samples from a perturbation distribution conditioned on the rule (Ribeiro et al.'s D(z | A)):
//! background rows with each feature, with probability 1/4, taken from another background row.
//! Because it is a conditioning, a sample drawn under a rule that satisfies one more condition is
//! an exact sample of the longer rule, so every sample serves every rule it is a draw for (the
//! reuse Ribeiro et al. and alibi count on; their samplers force the anchored features instead,
//! under which the reused samples read more precise than fresh ones). Its coverage is the share of
//! background rows that satisfy it. Rules grow by one condition per round from the `beam_size`
//! best of the last (best by KL-LUCB, Kaufmann and Kalyanakrishnan 2013, to `tau`, with
//! confidence `1 - delta`, within a third of the budget left); a rule is an anchor once its
//! precision on samples drawn after it was picked, and on all of its samples, reaches `threshold`
//! (the lower confidence bound within 0.05 of it, as alibi), and the anchor with the largest
//! coverage wins. Every sample is a model row; the search stops at the `samples` budget, less a
//! reserve of `2 x batch_size` rows (at least 100, at most a quarter of the budget) on which the
//! chosen rule's precision is estimated afresh (the answer's `precision`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::background::all_rows;
use super::method::{
    bytes, check_range, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext, CONFIGURED_MAX_SAMPLES,
    MAX_FEATURES,
};
use super::method::{schemas_of, NamedSchemas};
use super::{Cx, ExplainJob, TargetAttribution};
use crate::runtime::manifest::Task;
use crate::runtime::predict::{decided, probabilities, Prediction};
use crate::runtime::RuntimeError;

mod bounds;
mod sampler;
mod search;

use sampler::Op;
use search::Search;

/// Anchors parameters (alibi's AnchorTabular defaults).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AnchorsParams {
    /// Precision the rule must reach.
    #[schema(default = 0.95, minimum = 0.0, maximum = 1.0)]
    pub threshold: f64,
    /// 1 - confidence of the precision bounds.
    #[schema(default = 0.1, exclusive_minimum = 0.0, maximum = 1.0)]
    pub delta: f64,
    /// KL-LUCB's tolerance when choosing the best rules of a round.
    #[schema(default = 0.15, minimum = 0.0, maximum = 1.0)]
    pub tau: f64,
    /// Samples drawn per rule at a time.
    #[schema(default = 100, minimum = 1, maximum = 1000)]
    pub batch_size: usize,
    /// Rules kept from one round to the next.
    #[schema(default = 1, minimum = 1, maximum = 10)]
    pub beam_size: usize,
    /// Samples every new rule starts with (alibi: 100; 20 here, so the service's default budget
    /// of 4,096 model rows reaches past the first rounds on 30 features).
    #[schema(default = 20, minimum = 1, maximum = 1000)]
    pub min_samples_start: usize,
    /// Most conditions in a rule (default: every feature).
    #[schema(minimum = 1, extensions(("x-maximum" = json!(MAX_FEATURES))))]
    pub max_anchor_size: Option<usize>,
    /// Most model rows the search may run. Default: the service's `max_samples`, at most 20,000.
    #[schema(minimum = 100, extensions(("x-maximum" = json!(CONFIGURED_MAX_SAMPLES))))]
    pub samples: Option<usize>,
    /// Background rows shown that satisfy the rule, per outcome.
    #[schema(default = 10, minimum = 0, maximum = 100)]
    pub examples: usize,
}

impl Default for AnchorsParams {
    fn default() -> Self {
        Self {
            threshold: 0.95,
            delta: 0.1,
            tau: 0.15,
            batch_size: 100,
            beam_size: 1,
            min_samples_start: 20,
            max_anchor_size: None,
            samples: None,
            examples: 10,
        }
    }
}

/// Anchors.
pub struct Anchors;

impl Method for Anchors {
    type Params = AnchorsParams;
    const NAME: &'static str = "anchors";
    const SUMMARY: &'static str =
        "An if-then rule that keeps the prediction with high precision (Ribeiro et al. 2018, KL-LUCB beam search)";
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

    fn plan(p: &mut AnchorsParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        let model = cx.model;
        if model.spec.task != Task::TabularClassification {
            return Err(Invalid::Model(format!(
                "anchors needs a classifier; `{}` is not a tabular classifier",
                model.name
            )));
        }
        if model.background.as_ref().is_none_or(|rows| rows.len() < 2) {
            return Err(Invalid::Model(format!(
                "anchors samples from background data; model `{}` names none (tabular.background)",
                model.name
            )));
        }
        for (name, v) in [("threshold", p.threshold), ("delta", p.delta), ("tau", p.tau)] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(Invalid::Request(format!("params.{name}: {v} is not in [0, 1]")));
            }
        }
        if p.delta == 0.0 {
            return Err(Invalid::Request("params.delta: must be above 0".into()));
        }
        check_range("batch_size", p.batch_size, 1, 1000)?;
        check_range("beam_size", p.beam_size, 1, 10)?;
        check_range("min_samples_start", p.min_samples_start, 1, 1000)?;
        check_range("examples", p.examples, 0, 100)?;
        let features = cx.input_len();
        let size = p.max_anchor_size.unwrap_or(features);
        check_range("max_anchor_size", size, 1, features.clamp(1, MAX_FEATURES))?;
        p.max_anchor_size = Some(size);
        let samples = p.samples.unwrap_or(cx.limits.max_samples.min(20_000));
        check_range("samples", samples, 100, cx.limits.max_samples.max(100))?;
        p.samples = Some(samples);
        let background = model.background.as_ref().map_or(0, Vec::len);
        Ok(Cost {
            samples,
            rows: samples.saturating_add(p.examples.saturating_mul(10)),
            bytes: bytes(p.batch_size.max(background), 8)
                .saturating_mul(features.saturating_add(cx.classes()) as u64)
                // The sample pool: per sample a bit per condition (two per feature at most) and
                // the rule and outcome it was drawn with.
                .saturating_add(bytes(samples, 8).saturating_mul((features / 32 + 2) as u64))
                .saturating_add(cx.answer_bytes()),
        })
    }

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<AnchorsDetails>())
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &AnchorsParams,
        targets: &[Prediction],
        scores: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        let background = all_rows(job)?.to_vec();
        let features = job
            .model
            .spec
            .tabular
            .as_ref()
            .map(|t| t.features.clone())
            .unwrap_or_default();
        let x: Vec<f32> = job.input.as_f32().unwrap_or(&[]).to_vec();
        let label = decided(&probabilities(&job.model, scores), None);
        let mut search = Search::new(cx, job, p, &background, &x, label);
        let found = search.run(p)?;
        let anchor = &found.rule;
        let conditions: Vec<AnchorCondition> = anchor
            .iter()
            .map(|&c| {
                let c = &search.s.conditions[c];
                let name = &features[c.feature];
                let (op, text) = match c.op {
                    Op::AtMost => ("<=", format!("{name} <= {:.4}", c.cut)),
                    Op::Above => (">", format!("{name} > {:.4}", c.cut)),
                    Op::Equals => ("=", format!("{name} = {}", category_name(job, c.feature, c.cut))),
                };
                AnchorCondition {
                    feature: name.clone(),
                    op: op.into(),
                    value: c.cut,
                    text,
                }
            })
            .collect();
        let examples = search.examples(anchor, p.examples)?;
        let mut weight = vec![0f64; x.len()];
        for &c in anchor {
            weight[search.s.conditions[c].feature] = 1.0;
        }
        let details = serde_json::to_value(AnchorsDetails {
            anchor: conditions,
            precision: found.precision,
            precision_samples: found.samples,
            precision_lower_bound: found.lower,
            coverage: search.s.coverage(anchor),
            meets_threshold: found.valid,
            threshold: p.threshold,
            samples: search.used,
            budget_exhausted: search.used >= p.samples.unwrap_or(100),
            prediction: DecidedClass {
                index: label,
                label: job.model.spec.labels.get(label).cloned(),
            },
            examples,
        })
        .unwrap_or_default();
        Ok(targets
            .iter()
            .map(|t| TargetAttribution::from_values(t, &weight, details.clone()))
            .collect())
    }
}

/// Anchors' `details`: the rule, its precision and coverage, and background rows it covers.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnchorsDetails {
    /// The rule's conditions.
    pub anchor: Vec<AnchorCondition>,
    /// Share of samples under the rule that keep the prediction.
    pub precision: f64,
    /// Samples that estimate `precision`.
    pub precision_samples: usize,
    /// The lower confidence bound of `precision`.
    pub precision_lower_bound: f64,
    /// Share of the background rows the rule covers.
    pub coverage: f64,
    /// Whether the lower bound reaches `threshold`.
    pub meets_threshold: bool,
    /// The precision asked for.
    pub threshold: f64,
    /// Model rows sampled.
    pub samples: usize,
    /// Whether the sample budget ran out.
    pub budget_exhausted: bool,
    /// The decision the rule keeps.
    pub prediction: DecidedClass,
    /// Background rows the rule covers, by whether the model decides as for the input.
    pub examples: CoveredRows,
}

/// A categorical feature's value as the manifest names it (else the number).
fn category_name(job: &ExplainJob, feature: usize, v: f32) -> String {
    let types = job.model.spec.tabular.as_ref().map(|t| t.feature_types.as_slice());
    match types.unwrap_or_default().get(feature) {
        Some(crate::runtime::manifest::FeatureType::Categorical { categories, names }) => categories
            .iter()
            .position(|c| *c == f64::from(v))
            .and_then(|i| names.get(i).cloned())
            .unwrap_or_else(|| v.to_string()),
        _ => v.to_string(),
    }
}

/// One condition of an anchor.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnchorCondition {
    /// The feature.
    pub feature: String,
    /// `<=` or `>` (a range of a numeric feature's values), or `=` (a categorical feature's
    /// category).
    #[schema(pattern = "^(<=|>|=)$")]
    pub op: String,
    /// The cut, or the category's value.
    pub value: f32,
    /// The condition as text.
    pub text: String,
}

/// A class the model decides.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecidedClass {
    /// Its index.
    pub index: usize,
    /// Its label.
    pub label: Option<String>,
}

/// Background rows an anchor covers.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CoveredRows {
    /// Rows the model decides as it decides the input.
    pub same: Vec<CoveredRow>,
    /// Rows it decides otherwise.
    pub different: Vec<CoveredRow>,
}

/// A background row.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CoveredRow {
    /// Its index in the background data.
    pub row: usize,
    /// Its values.
    pub values: Vec<f32>,
    /// The class the model decides for it.
    pub prediction: usize,
}
