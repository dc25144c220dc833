//! How good an explanation is: faithfulness metrics that perturb the input in the order the
//! attribution ranks its features and watch the target's score (deletion, insertion, pixel
//! flipping, mu-fidelity), and properties of the map alone (sparseness, complexity). Names and
//! defaults follow the RISE paper, Quantus and Xplique; each metric reports its value, the model
//! rows it ran, and its curve where it has one.
//!
//! A feature is a pixel of the model's input (every channel of it perturbed together) or a tabular
//! feature. Requests are validated once into [`ValidMetric`]s; running them needs only a way to
//! score batches of inputs, so explanations and `POST /evaluate` share this code.

mod complexity;
mod curves;
mod fidelity;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::common::baselines::{self, Baseline};
use crate::common::{Invalid, Limits, MAX_FEATURES};
use crate::runtime::detect::Detection;
use crate::runtime::manifest::{FeatureType, Layout};
use crate::runtime::{LoadedModel, RuntimeError, Tensor};

/// Steps of the deletion and insertion curves when the request gives none (OpenVINO XAI's 30).
pub const DEFAULT_STEPS: usize = 30;
/// Most steps of a curve.
const MAX_STEPS: usize = 1024;
/// Most layers the randomisation check re-draws.
pub const MAX_RANDOMIZED: usize = 64;
/// Most runs of mu-fidelity.
const MAX_RUNS: usize = 1000;
/// Points of a pixel-flipping curve when `features_in_step` is not given (Quantus flips one
/// feature per step: a pass per pixel).
const DEFAULT_FLIP_STEPS: usize = 128;

/// The metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Area under the target's probability as features are removed, most attributed first
    /// (lower is better).
    Deletion,
    /// Area under the target's probability as features are revealed on a substrate, most
    /// attributed first (higher is better).
    Insertion,
    /// Pearson correlation between the attribution summed over random subsets and the score drop
    /// when they are removed (Bhatt et al.; Quantus's FaithfulnessCorrelation; higher is better).
    MuFidelity,
    /// The target's probability after each step of cumulative removal (Bach et al.; lower area is
    /// better).
    PixelFlipping,
    /// Gini index of |attribution| (higher: fewer features carry it).
    Sparseness,
    /// Entropy of |attribution| / sum (lower: fewer features carry it).
    Complexity,
    /// Spearman rank correlation between the map and the same method's map on copies of the model
    /// whose last layers' weights are re-drawn, cascading from the output (Adebayo et al.; low is
    /// good: the explanation depends on the weights). Explain requests only.
    ModelRandomization,
}

const METRICS: [(&str, Metric); 7] = [
    ("deletion", Metric::Deletion),
    ("insertion", Metric::Insertion),
    ("mu_fidelity", Metric::MuFidelity),
    ("pixel_flipping", Metric::PixelFlipping),
    ("sparseness", Metric::Sparseness),
    ("complexity", Metric::Complexity),
    ("model_randomization", Metric::ModelRandomization),
];

/// What replaces a removed feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Substrate {
    /// Black pixels (pixel 0), or zero features.
    Black,
    /// The input blurred (images).
    Blur,
    /// The input's per-channel mean (images), or the background data's mean row (tabular).
    Mean,
}

/// A metric as asked: its name, or an object with its parameters.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MetricRequest {
    /// The metric with its defaults (`"deletion"`).
    Name(String),
    /// The metric with parameters (`{"metric": "deletion", "steps": 50}`).
    Options(MetricOptions),
}

/// A metric's parameters; each applies to the metrics that name it.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricOptions {
    /// The metric's name.
    pub metric: String,
    /// deletion, insertion: points of the curve past the first (default 30, at most 1024).
    #[schema(minimum = 1, extensions(("x-maximum" = json!(MAX_STEPS))))]
    pub steps: Option<usize>,
    /// deletion, insertion, mu_fidelity, pixel_flipping: what replaces removed features
    /// (deletion, mu_fidelity, pixel_flipping: `black`; insertion starts from `blur`, or `black`
    /// for tabular models).
    pub substrate: Option<Substrate>,
    /// mu_fidelity: random subsets (default 100, at most 1000).
    #[schema(minimum = 2, extensions(("x-maximum" = json!(MAX_RUNS))))]
    pub nr_runs: Option<usize>,
    /// mu_fidelity: features per subset (default 224, at most half the features).
    #[schema(minimum = 1, extensions(("x-maximum" = json!(MAX_FEATURES))))]
    pub subset_size: Option<usize>,
    /// pixel_flipping: features flipped per step (default: features / 128, rounded up).
    #[schema(minimum = 1, extensions(("x-maximum" = json!(MAX_FEATURES))))]
    pub features_in_step: Option<usize>,
    /// model_randomization: layers re-drawn, one more per step from the output (default: every
    /// layer with weights, at most 64).
    #[schema(minimum = 1, extensions(("x-maximum" = json!(MAX_RANDOMIZED))))]
    pub layers: Option<usize>,
}

/// A metric checked against the model: everything fixed but the attribution.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidMetric {
    /// A causal curve (deletion, insertion, pixel flipping).
    Curve {
        /// Which one.
        metric: Metric,
        /// Features changed per step.
        per_step: usize,
        /// What removed features become.
        substrate: Substrate,
    },
    /// mu-fidelity.
    MuFidelity {
        /// Subsets drawn.
        runs: usize,
        /// Features per subset.
        subset: usize,
        /// What removed features become.
        substrate: Substrate,
    },
    /// A property of the map alone.
    Map(Metric),
    /// The model randomisation check: the method re-run on this many cascading randomised copies
    /// (`None`: every layer with weights).
    Randomization {
        /// Layers re-drawn at the last step.
        layers: Option<usize>,
    },
}

/// One metric's result.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Evaluation {
    /// The metric.
    pub metric: Metric,
    /// Its value (absent where it is undefined: a correlation with a constant).
    pub value: Option<f64>,
    /// Model rows it ran.
    pub passes: usize,
    /// Curves: the score after each step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub curve: Option<Vec<f64>>,
    /// Curves: the fraction of features changed at each point.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Vec<f64>>,
    /// The parameters used, defaults filled in.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
}

impl ValidMetric {
    /// Model rows one evaluation runs on `features` features.
    pub fn rows(&self, features: usize) -> usize {
        match self {
            ValidMetric::Curve { metric, per_step, .. } => curves::points(*metric, features, *per_step),
            ValidMetric::MuFidelity { runs, .. } => runs + 1,
            // Counted against the method's own cost by the explain request's validation.
            ValidMetric::Map(_) | ValidMetric::Randomization { .. } => 0,
        }
    }
}

/// Features of `model`'s input: pixels, or tabular features.
pub fn feature_count(model: &LoadedModel) -> usize {
    match (&model.spec.image, &model.spec.tabular) {
        (Some(i), _) => i.height.saturating_mul(i.width),
        (None, Some(t)) => t.features.len(),
        // Texts: tokens, at most `max_length` (a plan's bound; a text has its own count).
        (None, None) => model.spec.text.as_ref().map_or(1, |t| t.max_length),
    }
}

/// Validates the metrics asked for `targets` explanations of `model`; 400 names the metric or
/// parameter at fault.
pub fn plan(
    requests: &[MetricRequest],
    model: &LoadedModel,
    targets: usize,
    limits: Limits,
) -> Result<Vec<ValidMetric>, Invalid> {
    if requests.len() > METRICS.len() {
        return Err(Invalid::Request(format!("evaluate: at most {} metrics", METRICS.len())));
    }
    let features = feature_count(model);
    let image = model.spec.image.is_some();
    let valid = requests
        .iter()
        .map(|request| {
            let options = match request {
                MetricRequest::Name(name) => MetricOptions {
                    metric: name.clone(),
                    ..Default::default()
                },
                MetricRequest::Options(o) => o.clone(),
            };
            let metric = metric_named(&options.metric)?;
            refuse_foreign_fields(metric, &options)?;
            let substrate = substrate_for(metric, &options, image)?;
            check_metric(metric, &options, features, substrate)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rows = valid
        .iter()
        .map(|m| m.rows(features))
        .fold(0usize, usize::saturating_add)
        .saturating_mul(targets);
    if rows > limits.max_samples {
        return Err(Invalid::Model(format!(
            "the metrics would run {rows} model rows; at most {} (max_samples)",
            limits.max_samples
        )));
    }
    Ok(valid)
}

/// The metric called `name`; 400 lists the metrics.
fn metric_named(name: &str) -> Result<Metric, Invalid> {
    METRICS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, m)| *m)
        .ok_or_else(|| {
            let names: Vec<&str> = METRICS.iter().map(|(n, _)| *n).collect();
            Invalid::Request(format!(
                "no metric `{}`; metrics: {}",
                name.chars().take(100).collect::<String>(),
                names.join(", ")
            ))
        })
}

/// Refuses a parameter given to a metric it does not apply to, rather than ignoring it.
fn refuse_foreign_fields(metric: Metric, options: &MetricOptions) -> Result<(), Invalid> {
    let refuse = |field: &str, given: bool| match given {
        true => Err(Invalid::Request(format!(
            "`{field}` does not apply to {}",
            options.metric
        ))),
        false => Ok(()),
    };
    let curve = matches!(metric, Metric::Deletion | Metric::Insertion);
    refuse("steps", options.steps.is_some() && !curve)?;
    refuse("nr_runs", options.nr_runs.is_some() && metric != Metric::MuFidelity)?;
    refuse(
        "subset_size",
        options.subset_size.is_some() && metric != Metric::MuFidelity,
    )?;
    refuse(
        "features_in_step",
        options.features_in_step.is_some() && metric != Metric::PixelFlipping,
    )?;
    refuse(
        "substrate",
        options.substrate.is_some()
            && matches!(
                metric,
                Metric::Sparseness | Metric::Complexity | Metric::ModelRandomization
            ),
    )?;
    refuse(
        "layers",
        options.layers.is_some() && metric != Metric::ModelRandomization,
    )
}

/// The substrate removed features are replaced with: asked, or the metric's default for the model.
fn substrate_for(metric: Metric, options: &MetricOptions, image: bool) -> Result<Substrate, Invalid> {
    let substrate = options.substrate.unwrap_or(match metric {
        Metric::Insertion if image => Substrate::Blur,
        _ => Substrate::Black,
    });
    if substrate == Substrate::Blur && !image {
        return Err(Invalid::Request("substrate `blur` applies to image models".into()));
    }
    Ok(substrate)
}

/// One metric's parameters checked against their bounds on `features` features, defaults filled in.
fn check_metric(
    metric: Metric,
    options: &MetricOptions,
    features: usize,
    substrate: Substrate,
) -> Result<ValidMetric, Invalid> {
    let bad = |m: String| Err(Invalid::Request(m));
    Ok(match metric {
        Metric::Deletion | Metric::Insertion => {
            let steps = options.steps.unwrap_or(DEFAULT_STEPS);
            if steps == 0 || steps > MAX_STEPS {
                return bad(format!("steps must be between 1 and {MAX_STEPS}, got {steps}"));
            }
            ValidMetric::Curve {
                metric,
                per_step: features.div_ceil(steps.min(features).max(1)),
                substrate,
            }
        }
        Metric::PixelFlipping => {
            let per_step = options
                .features_in_step
                .unwrap_or(features.div_ceil(DEFAULT_FLIP_STEPS).max(1));
            if per_step == 0 || per_step > features.min(MAX_FEATURES) {
                return bad(format!(
                    "features_in_step must be between 1 and {features} (the features), got {per_step}"
                ));
            }
            ValidMetric::Curve {
                metric,
                per_step,
                substrate,
            }
        }
        Metric::MuFidelity => {
            let runs = options.nr_runs.unwrap_or(100);
            if !(2..=MAX_RUNS).contains(&runs) {
                return bad(format!("nr_runs must be between 2 and {MAX_RUNS}, got {runs}"));
            }
            let most = (features / 2).clamp(1, MAX_FEATURES);
            let subset = options.subset_size.unwrap_or(224.min(most));
            if subset == 0 || subset > most {
                return bad(format!(
                    "subset_size must be between 1 and {most} (half the features), got {subset}"
                ));
            }
            ValidMetric::MuFidelity {
                runs,
                subset,
                substrate,
            }
        }
        Metric::Sparseness | Metric::Complexity => ValidMetric::Map(metric),
        Metric::ModelRandomization => {
            if let Some(layers) = options.layers {
                if layers == 0 || layers > MAX_RANDOMIZED {
                    return bad(format!("layers must be between 1 and {MAX_RANDOMIZED}, got {layers}"));
                }
            }
            ValidMetric::Randomization { layers: options.layers }
        }
    })
}

/// Spearman's rank correlation (ties share their mean rank); `None` when either side is constant.
pub fn spearman(a: &[f32], b: &[f32]) -> Option<f64> {
    let ranks = |v: &[f32]| -> Vec<f64> {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0f64; v.len()];
        let mut start = 0;
        while start < order.len() {
            let mut end = start + 1;
            while end < order.len() && v[order[end]] == v[order[start]] {
                end += 1;
            }
            let mean = (start + end - 1) as f64 / 2.0 + 1.0;
            for &k in &order[start..end] {
                r[k] = mean;
            }
            start = end;
        }
        r
    };
    fidelity::pearson(&ranks(a), &ranks(b))
}

/// Scores batches of inputs: the model's outputs by name (the scores output, and a post-NMS
/// detector's boxes and classes beside it), one row per input.
pub type Scorer<'a> = dyn FnMut(&Tensor) -> Result<HashMap<String, Tensor>, RuntimeError> + 'a;

/// What every metric of one explanation shares.
pub struct Subject<'a> {
    /// The model.
    pub model: &'a LoadedModel,
    /// The input, `[1, ...]`, preprocessed.
    pub input: &'a Tensor,
    /// The attribution: one value per feature (pixel, or tabular feature).
    pub map: &'a [f32],
    /// The class explained (a detector's: the position of its detection's class score).
    pub target: usize,
    /// A detector's explained detection, on the unperturbed input: each perturbed input's score is
    /// then its best match's similarity to it as D-RISE measures it (IoU x cosine of the class
    /// probabilities x objectness), not the score at one position of the output, whose candidate
    /// need not be the one that detects the object once the input changes.
    pub detection: Option<&'a Detection>,
    /// Seed of random subsets.
    pub seed: u64,
    /// Rows per batch.
    pub batch: usize,
    /// Text models: the input's tokens (a feature is a token; the substrate hides the tokens).
    pub text: Option<&'a crate::runtime::text::Encoded>,
}

/// Runs `metrics` on one explanation.
pub fn evaluate(
    subject: &Subject,
    metrics: &[ValidMetric],
    score: &mut Scorer,
) -> Result<Vec<Evaluation>, RuntimeError> {
    metrics
        .iter()
        .map(|m| match m {
            ValidMetric::Curve {
                metric,
                per_step,
                substrate,
            } => curves::run(subject, *metric, *per_step, *substrate, score).map(Some),
            ValidMetric::MuFidelity {
                runs,
                subset,
                substrate,
            } => fidelity::run(subject, *runs, *subset, *substrate, score).map(Some),
            ValidMetric::Map(metric) => Ok(Some(complexity::run(subject.map, *metric))),
            // Re-runs the method: the explain job does it (see explain::sanity).
            ValidMetric::Randomization { .. } => Ok(None),
        })
        .filter_map(Result::transpose)
        .collect()
}

/// The substrate tensor for the subject's input.
fn substrate(subject: &Subject, kind: Substrate) -> Tensor {
    // A text's substrate, whatever `kind` says: every token but the special ones hidden by the
    // hide token, as the perturbation methods hide words.
    if let (Some(model), Some(text)) = (&subject.model.text, subject.text) {
        return model.replaced(&text.tokens, &model.hide);
    }
    let baseline = match kind {
        Substrate::Black => Baseline::Black,
        Substrate::Blur => Baseline::Blur,
        Substrate::Mean => Baseline::Mean,
    };
    let t = baselines::for_model(baseline, subject.input, subject.model, subject.seed);
    match &subject.model.spec.tabular {
        Some(tabular) => {
            let background = subject.model.background.as_deref().unwrap_or_default();
            let values = valid_values(t.as_f32().unwrap_or(&[]), &tabular.feature_types, background, kind);
            Tensor::f32(t.shape.clone(), values)
        }
        None => t,
    }
}

/// A tabular substrate restricted to the values each feature takes: an integer feature's value
/// rounded, a categorical one's the background's most common category for `mean` (the mean of
/// category codes is no category) and otherwise the category nearest the value. A removed
/// feature then shows the model a row it can see, not a point between its categories.
fn valid_values(row: &[f32], types: &[FeatureType], background: &[Vec<f32>], kind: Substrate) -> Vec<f32> {
    row.iter()
        .enumerate()
        .map(|(j, &v)| match types.get(j) {
            Some(FeatureType::Integer) => v.round(),
            Some(FeatureType::Categorical { categories, .. }) if !categories.is_empty() => {
                let most_common = || {
                    let mut counts = vec![0usize; categories.len()];
                    for r in background {
                        if let Some(k) = r
                            .get(j)
                            .and_then(|x| categories.iter().position(|c| *c == f64::from(*x)))
                        {
                            counts[k] += 1;
                        }
                    }
                    // The first of the most common (ties to the lower category).
                    let best = counts
                        .iter()
                        .enumerate()
                        .fold(0, |b, (k, n)| if *n > counts[b] { k } else { b });
                    categories[best] as f32
                };
                let nearest = || {
                    categories.iter().copied().fold(categories[0], |b, c| {
                        if (c - f64::from(v)).abs() < (b - f64::from(v)).abs() {
                            c
                        } else {
                            b
                        }
                    }) as f32
                };
                match kind {
                    Substrate::Mean if !background.is_empty() => most_common(),
                    _ if categories.contains(&f64::from(v)) => v,
                    _ => nearest(),
                }
            }
            _ => v,
        })
        .collect()
}

/// The element indices of feature `f` in one input row: every channel of a pixel, the feature,
/// or a token's embedding.
fn elements(model: &LoadedModel, f: usize) -> impl Iterator<Item = usize> + '_ {
    let (channels, pixels, layout) = match (&model.spec.image, &model.text) {
        (Some(i), _) => (i.channels, i.height * i.width, i.layout),
        (None, Some(t)) => (t.dim(), 1, Layout::NHWC),
        (None, None) => (1, 0, Layout::NCHW),
    };
    (0..channels).map(move |c| match (pixels, layout) {
        (0, _) => f,
        (_, Layout::NCHW) => c * pixels + f,
        (_, Layout::NHWC) => f * channels + c,
    })
}

/// The target's score in each row of `outputs`: its probability (softmax of logits), or its raw
/// value; a detector's detection: the similarity of the row's best match to it.
fn target_scores(
    subject: &Subject,
    outputs: &HashMap<String, Tensor>,
    probability: bool,
) -> Result<Vec<f64>, RuntimeError> {
    let model = subject.model;
    let failed = |message: String| RuntimeError::Inference {
        model: model.name.clone(),
        message,
    };
    let scores = outputs
        .get(&model.spec.output)
        .ok_or_else(|| failed(format!("output `{}` missing", model.spec.output)))?;
    let rows = scores.rows();
    if let Some(target) = subject.detection {
        let values: HashMap<&str, (Vec<f64>, usize)> = outputs
            .iter()
            .map(|(name, t)| (name.as_str(), (t.to_f64(), t.row_len())))
            .collect();
        return (0..rows)
            .map(|r| {
                let found = crate::runtime::detect::decode(&model.spec, |name| {
                    let (v, len) = values.get(name)?;
                    v.get(r * len..(r + 1) * len)
                })
                .map_err(failed)?;
                Ok(found
                    .iter()
                    .map(|d| crate::runtime::detect::similarity(target, d))
                    .fold(0f64, f64::max))
            })
            .collect();
    }
    let target = subject.target;
    let values = scores.to_f64();
    let width = scores.row_len().max(1);
    Ok(values
        .chunks(width)
        .map(|row| {
            if probability {
                crate::runtime::predict::probabilities(model, row)[target.min(width - 1)]
            } else {
                row[target.min(width - 1)]
            }
        })
        .collect())
}

/// Scores `rows` inputs built one at a time by `build(i, row)`, `batch` rows per pass.
fn score_rows(
    subject: &Subject,
    rows: usize,
    probability: bool,
    score: &mut Scorer,
    mut build: impl FnMut(usize, &mut [f32]),
) -> Result<Vec<f64>, RuntimeError> {
    let len = subject.input.row_len();
    let mut out = Vec::with_capacity(rows);
    let mut start = 0;
    while start < rows {
        let n = (rows - start).min(subject.batch.max(1));
        let mut data = crate::common::batch::zeroed_batch(&subject.model.name, n * len)?;
        for (i, row) in data.chunks_mut(len).enumerate() {
            build(start + i, row);
        }
        let mut shape = subject.input.shape.clone();
        shape[0] = n;
        let outputs = score(&Tensor::f32(shape, data))?;
        out.extend(target_scores(subject, &outputs, probability)?);
        start += n;
    }
    Ok(out)
}

/// Feature indices by decreasing attribution (ties by index, so the order is reproducible).
fn ranked(map: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..map.len()).collect();
    order.sort_by(|&a, &b| map[b].total_cmp(&map[a]).then(a.cmp(&b)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_ranks_with_ties_and_sees_monotone_maps_as_equal() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 300.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        // Ranks [1.5, 1.5, 3] against [1, 2, 3].
        let r = spearman(&[1.0, 1.0, 2.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!((r - 0.866_025_403_784_438_6).abs() < 1e-12, "{r}");
    }

    #[test]
    fn tabular_substrates_take_only_values_the_features_take() {
        let types = [
            FeatureType::Continuous,
            FeatureType::Integer,
            FeatureType::Categorical {
                categories: vec![1.0, 5.0, 9.0],
                names: vec![],
            },
        ];
        let background = vec![vec![0.0, 1.0, 9.0], vec![0.5, 2.0, 5.0], vec![1.0, 4.0, 9.0]];
        // The mean row (0.5, 2.33, 7.67): the integer rounded, the category the most common one.
        let mean = [0.5, 7.0 / 3.0, 23.0 / 3.0];
        assert_eq!(
            valid_values(&mean, &types, &background, Substrate::Mean),
            vec![0.5, 2.0, 9.0]
        );
        // Zeros: 0 is no category; the nearest is.
        assert_eq!(
            valid_values(&[0.0; 3], &types, &background, Substrate::Black),
            vec![0.0, 0.0, 1.0]
        );
        assert_eq!(
            valid_values(&[0.2, 2.6, 5.0], &[], &background, Substrate::Mean),
            vec![0.2, 2.6, 5.0]
        );
    }

    #[test]
    fn ranking_is_by_decreasing_attribution_and_stable() {
        assert_eq!(ranked(&[0.1, 0.5, 0.5, -1.0]), vec![1, 2, 0, 3]);
    }
}
