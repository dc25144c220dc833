//! KernelSHAP over superpixels (Lundberg and Lee 2017), in its unbiased form (Covert and Lee 2021):
//! coalitions drawn from the Shapley kernel distribution in complementary pairs, the exact kernel
//! matrix, and the efficiency constraint solved exactly, so values always sum to f(x) - f(hidden).
//! The paired samples' variance gives each value's standard error; `samples: "auto"` stops as soon
//! as every standard error is below `tolerance`. Seeded: the same seed gives the same bytes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod estimator;

use super::lime::Hide;
use super::lime::{check_positive, interpretable_features, perturbation_cost};
use super::method::{
    check_range, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext, CONFIGURED_MAX_SAMPLES,
};
use super::method::{schemas_of, NamedSchemas};
use super::perturb::{compose, run_copies};
use super::players::{Players, TextUnit};
use super::{background, Cx, ExplainJob, TargetAttribution};
use crate::runtime::predict::Prediction;
use crate::runtime::preprocess::InputError;
use crate::runtime::RuntimeError;
use estimator::solve;

/// A sample budget: a number, or `"auto"` (stop when every standard error is below `tolerance`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Samples {
    /// Exactly this many coalitions (rounded up to an even number: they come in pairs).
    Fixed(usize),
    /// `"auto"`.
    Auto(AutoSamples),
}

/// The word `auto`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutoSamples {
    /// Stop at the tolerance.
    Auto,
}

/// Fewest coalitions a fixed KernelSHAP budget may name.
const MIN_SAMPLES: usize = 2;

/// The schema of a `samples` field: a number from `min` to the service's `max_samples`, or
/// `"auto"`. Written out because the bounds differ by method and a derived variant takes none.
pub(super) fn samples_schema(min: usize, description: &str, nullable: bool) -> utoipa::openapi::Schema {
    use utoipa::openapi::extensions::ExtensionsBuilder;
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    let fixed = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(min))
        .extensions(Some(
            ExtensionsBuilder::new()
                .add("x-maximum", CONFIGURED_MAX_SAMPLES)
                .build(),
        ));
    let auto = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["auto"]));
    let mut schema = OneOfBuilder::new()
        .description(Some(description))
        .item(fixed)
        .item(auto);
    if nullable {
        schema = schema.item(ObjectBuilder::new().schema_type(Type::Null));
    }
    utoipa::openapi::Schema::OneOf(schema.build())
}

/// The schema of KernelSHAP's `samples`.
fn samples_param_schema() -> utoipa::openapi::Schema {
    samples_schema(
        MIN_SAMPLES,
        "Coalitions: a number (default 2M + 2048, shap's \"auto\" budget; rounded up to an even number: they \
         come in pairs) or `\"auto\"` (stop when every standard error is below `tolerance`).",
        true,
    )
}

/// KernelSHAP parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KernelShapParams {
    /// Superpixels (players) asked of SLIC.
    #[schema(default = 50, minimum = 2, maximum = 500)]
    pub segments: u32,
    /// SLIC compactness, 1 to 20.
    #[schema(default = 10, minimum = 1, maximum = 20)]
    pub compactness: u8,
    /// Coalitions: a number (default 2M + 2048, shap's "auto" budget) or `"auto"`.
    #[schema(schema_with = samples_param_schema)]
    pub samples: Option<Samples>,
    /// With `samples: "auto"`: the largest standard error accepted, in score units.
    #[schema(default = 0.01, exclusive_minimum = 0.0, maximum = 1000000.0)]
    pub tolerance: f64,
    /// What a missing player (segment) shows.
    #[schema(default = "gray")]
    pub hide: Hide,
    /// Tabular models: background rows a missing feature is drawn from (a k-means summary with
    /// this many rows when the file has more; shap's kmeans).
    #[schema(default = 20, minimum = 1, maximum = 1000)]
    pub background_rows: usize,
    /// Text models: the players are words (default) or tokens; a missing one shows the hide token.
    #[schema(default = "words")]
    pub text_features: TextUnit,
}

impl Default for KernelShapParams {
    fn default() -> Self {
        Self {
            segments: 50,
            compactness: 10,
            samples: None,
            tolerance: 0.01,
            hide: Hide::Gray,
            background_rows: 20,
            text_features: TextUnit::Words,
        }
    }
}

/// KernelSHAP.
pub struct KernelShap;

impl Method for KernelShap {
    type Params = KernelShapParams;
    const NAME: &'static str = "kernel-shap";
    const SUMMARY: &'static str = "Shapley values from coalitions drawn by the Shapley kernel (Lundberg and Lee 2017)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Forward,
        inputs: Inputs::Any,
        layer: false,
        random: true,
        examples: false,
        decision: false,
        text: true,
        makes_image: false,
    };

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<KernelShapDetails>())
    }

    fn plan(p: &mut KernelShapParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        check_range("segments", p.segments, 2, 500)?;
        check_range("compactness", p.compactness, 1, 20)?;
        check_range("background_rows", p.background_rows, 1, 1000)?;
        check_positive("tolerance", p.tolerance)?;
        let budget = cx.limits.max_samples.saturating_sub(1);
        let players = interpretable_features(cx, p.segments as usize, "KernelSHAP")?;
        let coalitions = match &p.samples {
            None => (2 * players + 2048).min(budget),
            Some(Samples::Fixed(n)) => {
                check_range("samples", *n, MIN_SAMPLES, cx.limits.max_samples)?;
                (*n).min(budget)
            }
            Some(Samples::Auto(_)) => budget,
        };
        // Tabular coalitions are each scored over the background rows.
        let per_coalition = match (&cx.model.spec.tabular, cx.model.background.as_deref()) {
            (Some(_), Some(rows)) => rows.len().min(p.background_rows),
            _ => 1,
        };
        Ok(perturbation_cost(cx, coalitions, players, per_coalition))
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &KernelShapParams,
        targets: &[Prediction],
        scores: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        explain(cx, job, p, targets, scores)
    }
}

fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &KernelShapParams,
    targets: &[Prediction],
    scores: &[f64],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let weighed = job.weighed_scores(scores);
    let v1: Vec<f64> = targets.iter().map(|t| weighed[t.index]).collect();
    if job.model.spec.tabular.is_some() {
        return explain_tabular(cx, job, p, targets, &v1);
    }
    let players = Players::of(
        &|| cx.checkpoint(),
        job,
        (p.segments, p.compactness),
        p.hide,
        p.text_features,
    )?;
    players.at_least(2, "KernelSHAP")?;
    let (m, pixels, hidden) = (players.count, &players.indices, &players.hidden);
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    let empty = run_copies(cx, &job.input, 1, |_, buf| buf.copy_from_slice(hidden))?;
    let empty = job.weighed_scores(&empty[0]);
    let v0: Vec<f64> = targets.iter().map(|t| empty[t.index]).collect();
    let input = job.input.clone();
    let mut evaluate = |cx: &mut Cx, coalitions: &[Vec<bool>]| -> Result<Vec<Vec<f64>>, RuntimeError> {
        let rows = run_copies(cx, &input, coalitions.len(), |r, buf| {
            compose(buf, &x, hidden, &coalitions[r], pixels)
        })?;
        Ok(rows.iter().map(|row| job.weighed_scores(row)).collect())
    };
    let solved = solve(cx, job, p, targets, m, &v0, &v1, &mut evaluate)?;
    let mut out = Vec::new();
    for (ti, t) in targets.iter().enumerate() {
        let phi = &solved.phi[ti];
        let map = players.map(phi);
        let mut details = solved.details(ti, v0[ti], v1[ti]);
        players.describe(&mut details);
        out.push(TargetAttribution::from_map(t, map, None, Some(details)));
    }
    Ok(out)
}

/// Tabular KernelSHAP: features are the players; a missing feature takes the background rows'
/// values, and a coalition's value is the mean score over those rows (shap's KernelExplainer).
fn explain_tabular(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &KernelShapParams,
    targets: &[Prediction],
    v1: &[f64],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let (bg, of) = background::for_job(job, p.background_rows)?;
    let b = bg.rows.len();
    let m = job.input.as_f32().map(<[f32]>::len).unwrap_or(0);
    if m < 2 {
        return Err(InputError::BadFeatures("KernelSHAP needs at least 2 features".into()).into());
    }
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    // v0, the expected value: the mean over the background rows of each row's own value.
    let own = run_copies(cx, &job.input, b, |r, buf| buf.copy_from_slice(&bg.rows[r]))?;
    let own: Vec<Vec<f64>> = own.iter().map(|row| job.weighed_scores(row)).collect();
    let v0: Vec<f64> = targets.iter().map(|t| bg.mean(|r| own[r][t.index])).collect();
    let mut evaluate = |cx: &mut Cx, coalitions: &[Vec<bool>]| -> Result<Vec<Vec<f64>>, RuntimeError> {
        let all = run_copies(cx, &job.input, coalitions.len() * b, |r, buf| {
            let (z, row) = (&coalitions[r / b], &bg.rows[r % b]);
            for j in 0..m {
                buf[j] = if z[j] { x[j] } else { row[j] };
            }
        })?;
        // Per coalition, per class: the weighted mean over the background rows of the weighed
        // scores (the mean of probabilities, not the probability of mean logits).
        Ok(all
            .chunks(b)
            .map(|chunk| {
                let weighed: Vec<Vec<f64>> = chunk.iter().map(|row| job.weighed_scores(row)).collect();
                (0..weighed[0].len()).map(|k| bg.mean(|r| weighed[r][k])).collect()
            })
            .collect())
    };
    let solved = solve(cx, job, p, targets, m, &v0, v1, &mut evaluate)?;
    let mut out = Vec::new();
    for (ti, t) in targets.iter().enumerate() {
        let phi = &solved.phi[ti];
        let mut details = solved.details(ti, v0[ti], v1[ti]);
        details["background"] = serde_json::json!(bg.describe(of));
        out.push(TargetAttribution::from_values(t, phi, details));
    }
    Ok(out)
}

/// KernelSHAP's `details`, as `explain` writes them.
#[derive(ToSchema)]
#[allow(dead_code)] // The answer's shape for the document; `explain` writes it as JSON.
#[serde(deny_unknown_fields)]
pub struct KernelShapDetails {
    /// One value per player (feature, segment or word).
    shapley_values: Vec<f64>,
    /// Each value's standard error (null until two pairs of samples exist).
    standard_errors: Vec<Option<f64>>,
    /// The score with every player absent.
    base_value: f64,
    /// The score with every player present.
    value: f64,
    /// The values' sum minus (`value` - `base_value`).
    efficiency_gap: f64,
    /// Coalitions drawn.
    samples: usize,
    /// Why sampling stopped.
    stopped: String,
    /// Image and text models: the players (segments or words).
    segments: Option<usize>,
    /// Image models: each pixel's segment.
    segment_map: Option<super::players::SegmentMap>,
    /// Text models: each player's token positions.
    player_tokens: Option<Vec<Vec<usize>>>,
    /// Tabular models: the background rows absent features take.
    background: Option<super::background::BackgroundDetails>,
}
