//! LIME (Ribeiro et al. 2016). Images (lime_image's defaults): superpixels switched off at random,
//! an exponential kernel on the cosine distance to the full image. Tabular models (lime_tabular's
//! defaults): each feature discretised into the background data's quartiles, samples drawn bin by
//! bin with the background's frequencies, an exponential kernel of width 0.75 sqrt(features) on the
//! distance in the binary "same bin as the input" space. Both fit a weighted ridge regression whose
//! coefficients are the weights, report each weight's standard error (grouped jackknife over the
//! samples) and accept `samples: "auto"`, stopping once every standard error is below `tolerance`.
//! Seeded: the same seed gives the same bytes.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::background::Bins;
use super::baselines::{self, Baseline};
use super::kernel_shap::{samples_schema, Samples};
use super::method::{bytes, check_range, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext};
use super::method::{schemas_of, NamedSchemas};
use super::perturb::{compose, index, run_copies};
use super::players::{Players, TextUnit};
use super::regression::{Fit, LocalModel};
use super::{Cx, ExplainJob, TargetAttribution};
use crate::runtime::predict::Prediction;
use crate::runtime::{RuntimeError, Tensor};

/// What replaces a switched-off segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Hide {
    /// Mid grey (pixel 128).
    Gray,
    /// Black.
    Black,
    /// The image blurred.
    Blur,
}

/// Fewest samples a fixed LIME budget may name.
const MIN_SAMPLES: usize = 10;

/// Narrowest kernel: below it the width's square underflows and the input's own sample, at
/// distance 0, weighs 0 / 0 (every answer NaN, written as null).
const MIN_KERNEL_WIDTH: f64 = 1e-6;

/// The schema of LIME's `samples`.
fn samples_param_schema() -> utoipa::openapi::Schema {
    samples_schema(
        MIN_SAMPLES,
        "Perturbed samples (each one model row): a number (default 1000) or `\"auto\"` (stop when every \
         standard error is below `tolerance`).",
        false,
    )
}

/// LIME parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimeParams {
    /// Superpixels asked of SLIC (it may return a few more or fewer).
    #[schema(default = 50, minimum = 2, maximum = 1000)]
    pub segments: u32,
    /// SLIC compactness, 1 to 20: higher gives squarer segments.
    #[schema(default = 10, minimum = 1, maximum = 20)]
    pub compactness: u8,
    /// Perturbed samples (each one model row): a number (default 1000) or `"auto"`.
    #[schema(schema_with = samples_param_schema)]
    pub samples: Samples,
    /// With `samples: "auto"`: the largest standard error accepted, in score units.
    #[schema(default = 0.01, exclusive_minimum = 0.0, maximum = 1000000.0)]
    pub tolerance: f64,
    /// What switched-off segments show.
    #[schema(default = "gray")]
    pub hide: Hide,
    /// Width of the exponential kernel: images 0.25 on cosine distance (lime_image), tabular
    /// 0.75 sqrt(features) (lime_tabular); at least 1e-6.
    #[schema(maximum = 1000000.0, extensions(("x-minimum" = json!(MIN_KERNEL_WIDTH))))]
    pub kernel_width: Option<f64>,
    /// Ridge regularisation (scikit-learn's Ridge default, as LIME uses).
    #[schema(default = 1.0, minimum = 0.0, maximum = 1000000.0)]
    pub alpha: f64,
    /// Text models: the players are words (default) or tokens; a hidden one shows the hide token.
    #[schema(default = "words")]
    pub text_features: TextUnit,
}

impl Default for LimeParams {
    fn default() -> Self {
        Self {
            segments: 50,
            compactness: 10,
            samples: Samples::Fixed(1000),
            tolerance: 0.01,
            hide: Hide::Gray,
            kernel_width: None,
            alpha: 1.0,
            text_features: TextUnit::Words,
        }
    }
}

/// LIME.
pub struct Lime;

impl Method for Lime {
    type Params = LimeParams;
    const NAME: &'static str = "lime";
    const SUMMARY: &'static str = "A weighted linear model fitted to perturbed samples (Ribeiro et al. 2016)";
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
        Some(schemas_of::<LimeDetails>())
    }

    fn plan(p: &mut LimeParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        check_range("segments", p.segments, 2, 1000)?;
        check_range("compactness", p.compactness, 1, 20)?;
        let budget = match p.samples {
            Samples::Fixed(n) => {
                check_range("samples", n, MIN_SAMPLES, cx.limits.max_samples)?;
                n
            }
            Samples::Auto(_) => cx.limits.max_samples.saturating_sub(1),
        };
        if let Some(w) = p.kernel_width {
            check_positive("kernel_width", w)?;
            if w < MIN_KERNEL_WIDTH {
                return Err(Invalid::Request(format!(
                    "params.kernel_width must be at least {MIN_KERNEL_WIDTH}, got {w}"
                )));
            }
        }
        if !(p.alpha.is_finite() && (0.0..=1e6).contains(&p.alpha)) {
            return Err(Invalid::Request("params.alpha must be between 0 and 1000000".into()));
        }
        check_positive("tolerance", p.tolerance)?;
        let players = interpretable_features(cx, p.segments as usize, "LIME")?;
        Ok(perturbation_cost(cx, budget, players, 1))
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &LimeParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        explain(cx, job, p, targets)
    }
}

/// `Err(Invalid::Request)` unless `value` is a positive number up to a million.
pub(super) fn check_positive(name: &str, value: f64) -> Result<(), Invalid> {
    if !(value.is_finite() && value > 0.0 && value <= 1e6) {
        return Err(Invalid::Request(format!(
            "params.{name} must be a positive number up to 1000000, got {value}"
        )));
    }
    Ok(())
}

/// The players of a perturbation method: an image's segments (SLIC may return a few more than
/// asked), a tabular model's features, which then need background data, or a text's tokens at
/// most.
pub(super) fn interpretable_features(cx: &PlanContext, segments: usize, method: &str) -> Result<usize, Invalid> {
    let model = cx.model;
    if let Some(text) = &model.spec.text {
        return Ok(text.max_length);
    }
    match &model.spec.tabular {
        Some(tab) => {
            if model.background.is_none() {
                return Err(Invalid::Model(format!(
                    "tabular {method} draws missing features from background data; model `{}` names none \
                     (tabular.background in model.toml)",
                    model.name
                )));
            }
            Ok(tab.features.len())
        }
        None => Ok(segments.saturating_mul(2)),
    }
}

/// The cost of a perturbation method with `samples` samples over `players` interpretable features,
/// each sample scored over `rows_per_sample` model rows: the samples, one batch, every row's scores,
/// per target a few vectors of the players (the jackknife groups' sums and values), and the
/// regression's working matrices, shared by the targets: a few copies of the smaller of the
/// features' (m x m) and the samples' (n x n) Gram matrix, as the solvers pick the smaller.
pub(super) fn perturbation_cost(cx: &PlanContext, samples: usize, players: usize, rows_per_sample: usize) -> Cost {
    let rows = samples.saturating_add(1).saturating_mul(rows_per_sample.max(1));
    let side = samples.min(players).saturating_add(1);
    let per_target = bytes(players.saturating_add(1), 8).saturating_mul(2 * 21);
    // Four n x n or m x m matrices at once at most, and two blocks of 256 dense sample rows.
    let solver = bytes(side.saturating_mul(side), 8)
        .saturating_mul(4)
        .saturating_add(bytes(players.saturating_mul(256), 16));
    Cost {
        samples,
        rows,
        bytes: bytes(samples, 1)
            .saturating_mul(players as u64)
            .saturating_add(cx.batch_bytes(cx.limits.max_batch, false))
            .saturating_add(bytes(rows, 8).saturating_mul(cx.classes() as u64))
            .saturating_add(per_target.saturating_mul(cx.targets as u64 + 1))
            .saturating_add(solver)
            .saturating_add(bytes(cx.pixels(), 32))
            .saturating_add(cx.answer_bytes()),
    }
}

/// The input with every segment switched off, in the model's input space.
pub(super) fn hidden_image(job: &ExplainJob, spec: &crate::runtime::manifest::ImageSpec, hide: Hide) -> Vec<f32> {
    let t = match hide {
        Hide::Black => baselines::build(Baseline::Black, &job.input, Some(spec), job.seed),
        Hide::Blur => baselines::build(Baseline::Blur, &job.input, Some(spec), job.seed),
        Hide::Gray => {
            let mut t = vec![0f32; job.input.as_f32().map(<[f32]>::len).unwrap_or(0)];
            for ch in 0..spec.channels {
                for y in 0..spec.height {
                    for xx in 0..spec.width {
                        t[index(spec, ch, y, xx)] = (128.0 * spec.scale - spec.mean[ch]) / spec.std[ch];
                    }
                }
            }
            Tensor::f32(job.input.shape.clone(), t)
        }
    };
    t.as_f32().unwrap_or(&[]).to_vec()
}

/// One perturbed sample: its interpretable features and kernel weight.
struct Sample {
    z: Vec<bool>,
    weight: f64,
}

/// Draws `n` samples (the `start`-th onward) and scores them: one score row per sample.
type Round<'a> =
    dyn FnMut(&mut Cx, &mut ChaCha8Rng, usize, usize) -> Result<(Vec<Sample>, Vec<Vec<f64>>), RuntimeError> + 'a;

/// Samples drawn and fitted, with how many and why the sampling stopped.
struct Fitted {
    fits: Vec<Fit>,
    drawn: usize,
    stopped: &'static str,
}

/// Draws samples in rounds and fits every target's local model; with `samples: "auto"`, stops as
/// soon as every weight's standard error is below the tolerance.
fn sample_and_fit(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &LimeParams,
    targets: &[Prediction],
    m: usize,
    round: &mut Round,
) -> Result<Fitted, RuntimeError> {
    let (auto, budget) = match p.samples {
        Samples::Fixed(n) => (false, n),
        Samples::Auto(_) => (true, job.limits.max_samples.saturating_sub(1)),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(job.seed);
    let mut model = LocalModel::new(m, targets.len());
    let first = (4 * m).max(64);
    let (mut drawn, mut stopped) = (0usize, "sample budget reached");
    while drawn < budget {
        let n = match (auto, drawn) {
            (false, _) => budget,
            (true, 0) => first,
            (true, _) => 64,
        }
        .min(budget - drawn);
        let (samples, outputs) = round(cx, &mut rng, drawn, n)?;
        for (s, row) in samples.iter().zip(&outputs) {
            let scores = job.weighed_scores(row);
            model.add(&s.z, targets.iter().map(|t| scores[t.index]).collect(), s.weight);
        }
        drawn += n;
        if auto {
            let worst = model
                .fit(p.alpha, &|| cx.checkpoint())?
                .iter()
                .flat_map(|fit| fit.se.iter().copied())
                .fold(0.0, f64::max);
            if worst < p.tolerance {
                stopped = "every standard error is below the tolerance";
                break;
            }
        }
    }
    Ok(Fitted {
        fits: model.fit(p.alpha, &|| cx.checkpoint())?,
        drawn,
        stopped,
    })
}

impl Fitted {
    /// The details every LIME answer carries for target `ti`; callers add their own fields.
    fn details(&self, ti: usize, kernel_width: f64) -> serde_json::Value {
        let fit = &self.fits[ti];
        serde_json::json!({
            "weights": fit.coef,
            "standard_errors": fit.se,
            "intercept": fit.intercept,
            "r2": fit.r2,
            "samples": self.drawn,
            "stopped": self.stopped,
            "kernel_width": kernel_width,
        })
    }
}

fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &LimeParams,
    targets: &[Prediction],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    if job.model.spec.tabular.is_some() {
        return explain_tabular(cx, job, p, targets);
    }
    let players = Players::of(
        &|| cx.checkpoint(),
        job,
        (p.segments, p.compactness),
        p.hide,
        p.text_features,
    )?;
    let m = players.count;
    players.at_least(1, "LIME")?;
    let (pixels, hidden) = (&players.indices, &players.hidden);
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    let width = p.kernel_width.unwrap_or(0.25);
    let input = job.input.clone();
    let mut round = |cx: &mut Cx, rng: &mut ChaCha8Rng, start: usize, n: usize| {
        // The first sample is the whole image, as lime_image does.
        let samples: Vec<Sample> = (start..start + n)
            .map(|r| {
                cx.checkpoint()?;
                let z: Vec<bool> = (0..m).map(|_| r == 0 || rng.random::<bool>()).collect();
                let on = z.iter().filter(|b| **b).count() as f64;
                let distance = 1.0 - (on / m as f64).sqrt();
                let weight = (-(distance * distance) / (width * width)).exp().sqrt();
                Ok(Sample { z, weight })
            })
            .collect::<Result<_, RuntimeError>>()?;
        let outputs = run_copies(cx, &input, n, |r, buf| compose(buf, &x, hidden, &samples[r].z, pixels))?;
        Ok((samples, outputs))
    };
    let fitted = sample_and_fit(cx, job, p, targets, m, &mut round)?;
    let mut out = Vec::new();
    for (ti, t) in targets.iter().enumerate() {
        let coef = &fitted.fits[ti].coef;
        let map = players.map(coef);
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by(|a, b| coef[*b].total_cmp(&coef[*a]));
        let mut details = fitted.details(ti, width);
        players.describe(&mut details);
        details["segment_weights"] = details["weights"].take();
        details["top_positive"] =
            serde_json::json!(order.iter().take(5).filter(|s| coef[**s] > 0.0).collect::<Vec<_>>());
        details["top_negative"] = serde_json::json!(order
            .iter()
            .rev()
            .take(5)
            .filter(|s| coef[**s] < 0.0)
            .collect::<Vec<_>>());
        if let Some(o) = details.as_object_mut() {
            o.remove("weights");
        }
        out.push(TargetAttribution::from_map(t, map, None, Some(details)));
    }
    Ok(out)
}

/// Tabular LIME over features, sampling from the manifest's background data.
fn explain_tabular(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &LimeParams,
    targets: &[Prediction],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let background = super::background::all_rows(job)?;
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    let m = x.len();
    let types = job
        .model
        .spec
        .tabular
        .as_ref()
        .map(|t| t.feature_types.as_slice())
        .unwrap_or_default();
    let bins: Vec<Bins> = (0..m)
        .map(|j| Bins::of_feature(&background.iter().map(|r| r[j]).collect::<Vec<_>>(), types.get(j)))
        .collect();
    let x_bin: Vec<usize> = (0..m).map(|j| Bins::bin_of(&bins[j].cuts, x[j])).collect();
    let width = p.kernel_width.unwrap_or(0.75 * (m as f64).sqrt());
    let rows = background.len();
    let input = job.input.clone();
    let mut round = |cx: &mut Cx, rng: &mut ChaCha8Rng, start: usize, n: usize| {
        let mut values = Vec::with_capacity(n);
        let mut samples = Vec::with_capacity(n);
        for r in start..start + n {
            // A wide table's rows take a while to draw: stop between them when the job is over.
            cx.checkpoint()?;
            // The first sample is the input itself, as lime_tabular's is.
            let row: Vec<f32> = if r == 0 {
                x.clone()
            } else {
                // A bin with the background's frequency (a random row's bin), then a value from
                // that bin's background values.
                (0..m)
                    .map(|j| {
                        let b = Bins::bin_of(&bins[j].cuts, background[rng.random_range(0..rows)][j]);
                        let pool = &bins[j].members[b];
                        pool[rng.random_range(0..pool.len())]
                    })
                    .collect()
            };
            let z: Vec<bool> = (0..m)
                .map(|j| Bins::bin_of(&bins[j].cuts, row[j]) == x_bin[j])
                .collect();
            let distance = (z.iter().filter(|same| !**same).count() as f64).sqrt();
            let weight = (-(distance * distance) / (width * width)).exp().sqrt();
            samples.push(Sample { z, weight });
            values.push(row);
        }
        let outputs = run_copies(cx, &input, n, |r, buf| buf.copy_from_slice(&values[r]))?;
        Ok((samples, outputs))
    };
    let fitted = sample_and_fit(cx, job, p, targets, m, &mut round)?;
    let names = job
        .model
        .spec
        .tabular
        .as_ref()
        .map(|t| t.features.clone())
        .unwrap_or_default();
    let conditions: Vec<String> = (0..m)
        .map(|j| bins[j].condition(names.get(j).map(String::as_str).unwrap_or("?"), x_bin[j]))
        .collect();
    let mut out = Vec::new();
    for (ti, t) in targets.iter().enumerate() {
        let coef = &fitted.fits[ti].coef;
        let mut details = fitted.details(ti, width);
        details["conditions"] = conditions.clone().into();
        details["background_rows"] = rows.into();
        out.push(TargetAttribution::from_values(t, coef, details));
    }
    Ok(out)
}

/// LIME's `details`, as `explain` writes them: the local model's fit, and over images and texts the
/// players, over tables the conditions.
#[derive(ToSchema)]
#[allow(dead_code)] // The answer's shape for the document; `explain` writes it as JSON.
#[serde(deny_unknown_fields)]
pub struct LimeDetails {
    /// Tabular models: one weight per feature's condition.
    weights: Option<Vec<f64>>,
    /// Image and text models: one weight per player.
    segment_weights: Option<Vec<f64>>,
    /// Each weight's standard error (null until two groups of samples exist).
    standard_errors: Vec<Option<f64>>,
    /// The local model's intercept.
    intercept: f64,
    /// Its weighted R^2 on the samples (null when undefined).
    r2: Option<f64>,
    /// Samples drawn.
    samples: usize,
    /// Why sampling stopped.
    stopped: String,
    /// The kernel's width.
    kernel_width: f64,
    /// Image and text models: the players (segments or words).
    segments: Option<usize>,
    /// Image models: each pixel's segment.
    segment_map: Option<super::players::SegmentMap>,
    /// Text models: each player's token positions.
    player_tokens: Option<Vec<Vec<usize>>>,
    /// Image and text models: the (at most 5) players with the largest positive weights.
    top_positive: Option<Vec<usize>>,
    /// Image and text models: the (at most 5) players with the largest negative weights.
    top_negative: Option<Vec<usize>>,
    /// Tabular models: each feature's condition on the input.
    conditions: Option<Vec<String>>,
    /// Tabular models: the background rows sampled from.
    background_rows: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartile_bins_follow_numpy_and_lime() {
        let values: Vec<f32> = (1..=8).map(|v| v as f32).collect();
        let b = Bins::of(&values);
        // numpy.percentile([1..8], [25, 50, 75]) = 2.75, 4.5, 6.25.
        assert_eq!(b.cuts, vec![2.75, 4.5, 6.25]);
        assert_eq!(b.members.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 2, 2]);
        assert_eq!(Bins::bin_of(&b.cuts, 4.5), 1);
        assert_eq!(b.condition("x", 0), "x <= 2.75");
        assert_eq!(b.condition("x", 2), "4.50 < x <= 6.25");
        assert_eq!(b.condition("x", 3), "x > 6.25");
        // Ties collapse bins.
        let b = Bins::of(&[0.0, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(b.cuts, vec![0.0]);
    }
}
