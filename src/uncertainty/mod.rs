//! How sure the model is: several passes per input that should agree if the model is sure (MC
//! dropout masks, test-time augmentations, ensemble members), summarised per input as mean class
//! probabilities, their spread, entropies, mutual information and variation ratio.
//!
//! Requests are validated once into a [`ValidUncertainty`] (sites, views or members resolved, costs
//! checked); workers only run it.

mod detection;
pub mod ensemble;
pub mod mc_dropout;
mod segmentation;
pub mod spread;
pub mod stats;
pub mod tta;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::common::targets::RegionMask;
use crate::common::{Invalid, Limits, CONFIGURED_MAX_SAMPLES};
use crate::onnx::dropout::MaskSite;
use crate::runtime::detect::{self, Detection};
use crate::runtime::gradients::GradientCache;
use crate::runtime::predict::{probabilities, ranked, Prediction};
use crate::runtime::preprocess::InputError;
use crate::runtime::JobContext;
use crate::runtime::{LoadedModel, Registry, RuntimeError, Tensor, WorkerRuntime};
pub use detection::{DetectionUncertainty, DetectorUncertainty};
pub use spread::{Spread, SpreadMethod};
pub use stats::Summary;

/// MC-dropout samples when the request gives none (Baal's examples use 20).
pub const DEFAULT_SAMPLES: usize = 20;
/// Dropout rate of inserted masks when the request gives none.
pub const DEFAULT_P: f32 = 0.1;
/// Classes ranked in each answer's `predictions`.
const RANKED: usize = 5;

/// Where the samples come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Dropout masks drawn by explaind (the model's own Dropout layers, or inserted ones).
    #[default]
    McDropout,
    /// Test-time augmentation: flips, rotations, zooms of the input (image models).
    Tta,
    /// The model and the members named in its manifest's `ensemble`, each run once.
    Ensemble,
}

/// Test-time augmentations, by ttach's names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Transforms {
    /// The input and its mirror image (2 views).
    #[default]
    Hflip,
    /// The dihedral group: no flip and a horizontal flip, each rotated 0, 90, 180, 270 degrees (8
    /// views; square inputs).
    D4,
    /// Zoomed about the centre by each of `scales`, at the model's input size.
    Multiscale,
}

/// Parameters of an uncertainty estimate; each applies to one source, and is refused with another.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UncertaintyParams {
    /// mc-dropout: samples per input (default 20, at most `max_samples`).
    #[schema(minimum = 1, extensions(("x-maximum" = json!(CONFIGURED_MAX_SAMPLES))))]
    pub samples: Option<usize>,
    /// mc-dropout: dropout rate in [0, 1) (default: the model's own Dropout ratios, else 0.1).
    #[schema(minimum = 0.0, exclusive_maximum = 1.0)]
    pub p: Option<f32>,
    /// mc-dropout: tensors to mask (default: the model's Dropout layers, else the input of its
    /// last linear layer: Gemm or MatMul, or a fully convolutional network's last Conv).
    pub dropout_layers: Option<Vec<String>>,
    /// mc-dropout: also this gradient method's map for every sample, summarised per pixel (mean
    /// and standard deviation): where the explanation itself is unstable.
    pub explain_method: Option<SpreadMethod>,
    /// tta: `hflip` (default), `d4` or `multiscale`.
    pub transforms: Option<Transforms>,
    /// tta multiscale: zoom factors, each in [0.5, 2] (default [0.9, 1.0, 1.1]; at most 16).
    #[schema(min_items = 1, max_items = 16, extensions(("x-minimum" = json!(0.5)), ("x-maximum" = json!(2.0))))]
    pub scales: Option<Vec<f32>>,
}

/// Extra parts of an uncertainty answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UncertaintyInclude {
    /// Every sample's class probabilities (values, for regression).
    Samples,
}

/// What a request asks for.
#[derive(Debug, Clone, Default)]
pub struct UncertaintyOptions {
    /// Source of samples.
    pub method: Option<Source>,
    /// Its parameters.
    pub params: Option<UncertaintyParams>,
    /// Seed of the masks (drawn and echoed when absent).
    pub seed: Option<u64>,
    /// Extra parts.
    pub include: Option<Vec<UncertaintyInclude>>,
}

/// What validation needs to reach.
pub struct PlanContext<'a> {
    /// Prepared models and their shapes (where masks can go).
    pub gradients: &'a GradientCache,
    /// Every model (ensemble members).
    pub registry: &'a Registry,
    /// Work limits.
    pub limits: Limits,
}

/// A validated plan, per source.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Masks at these sites, at these rates, `samples` of them per input.
    McDropout {
        /// Where masks go.
        sites: Vec<MaskSite>,
        /// Dropout rate per site.
        rates: Vec<f32>,
        /// Samples per input.
        samples: usize,
        /// The gradient method whose spread over the samples is measured.
        spread: Option<SpreadMethod>,
    },
    /// These views of each input.
    Tta {
        /// Which family.
        transforms: Transforms,
        /// The views, the identity first.
        views: Vec<tta::View>,
    },
    /// These models, the asked one first.
    Ensemble {
        /// Members.
        members: Vec<Arc<LoadedModel>>,
    },
}

/// An uncertainty request checked against its model and the limits: the only thing queued.
#[derive(Debug, Clone)]
pub struct ValidUncertainty {
    /// The model.
    pub model: Arc<LoadedModel>,
    /// The source.
    pub source: Source,
    /// What runs.
    pub plan: Plan,
    /// Seed of the masks.
    pub seed: u64,
    /// Return every sample.
    pub include_samples: bool,
}

/// How an estimate was made, echoed in every answer (and so in the audit record).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Setup {
    /// Source of samples.
    pub method: Source,
    /// Samples per input.
    pub samples: usize,
    /// Seed of the masks.
    pub seed: u64,
    /// mc-dropout: where masks went, with the rate used at each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<SiteUsed>,
    /// tta: the family of views.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transforms: Option<Transforms>,
    /// tta: the views, in sample order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<tta::View>,
    /// ensemble: the members, in sample order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// mc-dropout: the gradient method whose spread over the samples is measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain_method: Option<SpreadMethod>,
}

/// A masked tensor and its rate.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SiteUsed {
    /// The site.
    #[serde(flatten)]
    pub site: MaskSite,
    /// Dropout rate used there.
    pub p: f32,
}

/// One input's estimate.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Estimate {
    /// The mean probabilities' top classes (the regression value's mean).
    pub predictions: Vec<Prediction>,
    /// The figures.
    #[serde(flatten)]
    pub summary: Summary,
    /// Every sample's probabilities, when `include` asks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<Vec<Vec<f64>>>,
    /// The explanation's spread over the samples, when `explain_method` asks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation_spread: Option<Spread>,
    /// A detector's: each of the input's own detections as the samples saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection: Option<DetectorUncertainty>,
    /// A segmenter's, for the request's `region`: the same figures over the region's pixels only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<RegionUncertainty>,
}

/// A segmenter's figures over a region: each class's mean probability over the region's pixels
/// per sample (`mean`, `std` over the samples, the classes ranked by it in `predictions`), and the
/// per-pixel entropies and mutual information averaged over the region.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RegionUncertainty {
    /// Pixels of the segmenter's output grid inside the region.
    pub pixels: usize,
    /// The classes by their mean share of the region.
    pub predictions: Vec<Prediction>,
    /// The figures, over the region.
    #[serde(flatten)]
    pub summary: Summary,
}

impl ValidUncertainty {
    /// Samples per input.
    pub fn samples(&self) -> usize {
        match &self.plan {
            Plan::McDropout { samples, .. } => *samples,
            Plan::Tta { views, .. } => views.len(),
            Plan::Ensemble { members } => members.len(),
        }
    }

    /// How the estimate is made.
    pub fn setup(&self) -> Setup {
        let mut setup = Setup {
            method: self.source,
            samples: self.samples(),
            seed: self.seed,
            sites: vec![],
            transforms: None,
            views: vec![],
            members: vec![],
            explain_method: None,
        };
        match &self.plan {
            Plan::McDropout {
                sites, rates, spread, ..
            } => {
                setup.explain_method = *spread;
                setup.sites = sites
                    .iter()
                    .zip(rates)
                    .map(|(s, &p)| SiteUsed { site: s.clone(), p })
                    .collect();
            }
            Plan::Tta { transforms, views } => {
                setup.transforms = Some(*transforms);
                setup.views = views.clone();
            }
            Plan::Ensemble { members } => setup.members = members.iter().map(|m| m.name.clone()).collect(),
        }
        setup
    }
}

/// Validates a request for `inputs` inputs of `model`: 400 for a parameter wrong on its own, 422 for
/// one that does not fit the model.
pub fn validate(
    model: &Arc<LoadedModel>,
    options: UncertaintyOptions,
    cx: &PlanContext,
    inputs: usize,
) -> Result<ValidUncertainty, Invalid> {
    let source = options.method.unwrap_or_default();
    let params = options.params.unwrap_or_default();
    let refuse = |field: &str, applies: &str| {
        Invalid::Request(format!("`{field}` applies to {applies} only, not to {}", name(source)))
    };
    if source != Source::McDropout {
        for (given, field) in [
            (params.samples.is_some(), "samples"),
            (params.p.is_some(), "p"),
            (params.dropout_layers.is_some(), "dropout_layers"),
            (params.explain_method.is_some(), "explain_method"),
        ] {
            if given {
                return Err(refuse(field, "mc-dropout"));
            }
        }
    }
    if source != Source::Tta {
        for (given, field) in [
            (params.transforms.is_some(), "transforms"),
            (params.scales.is_some(), "scales"),
        ] {
            if given {
                return Err(refuse(field, "tta"));
            }
        }
    }
    let include_samples = options
        .include
        .as_ref()
        .is_some_and(|i| i.contains(&UncertaintyInclude::Samples));
    if model.spec.detection.is_some() && (include_samples || params.explain_method.is_some()) {
        return Err(Invalid::Unsupported(format!(
            "model `{}` is a detector: its samples are lists of detections, answered detection by \
             detection; `include: [\"samples\"]` and `explain_method` apply to classifiers",
            model.name
        )));
    }
    if model.spec.segmentation.is_some() && include_samples {
        return Err(Invalid::Unsupported(format!(
            "model `{}` is a segmenter: its samples are whole maps of per-pixel scores; the answer \
             gives their summary only",
            model.name
        )));
    }
    if model.spec.segmentation.is_some() && params.explain_method.is_some() {
        return Err(Invalid::Unsupported(format!(
            "model `{}` is a segmenter: explain_method's spread is that of a class score's map, and a \
             segmenter's scalar is a region's sum, which an uncertainty request does not name",
            model.name
        )));
    }
    let plan = match source {
        Source::McDropout => mc_dropout::plan(model, &params, cx)?,
        Source::Tta => tta::plan(model, &params)?,
        Source::Ensemble => ensemble::plan(model, cx.registry)?,
    };
    let valid = ValidUncertainty {
        model: model.clone(),
        source,
        plan,
        seed: options.seed.unwrap_or_else(rand::random),
        include_samples,
    };
    check_bytes(&valid, inputs, cx.limits)?;
    Ok(valid)
}

fn name(source: Source) -> &'static str {
    match source {
        Source::McDropout => "mc-dropout",
        Source::Tta => "tta",
        Source::Ensemble => "ensemble",
    }
}

/// The bytes a plan holds at its peak, inputs x samples rows of input, masks and scores, within
/// `max_job_bytes` (checked arithmetic: every factor comes from the request).
fn check_bytes(valid: &ValidUncertainty, inputs: usize, limits: Limits) -> Result<(), Invalid> {
    let model = &valid.model;
    let input_len: usize = crate::runtime::gradients::sample_dims(&model.spec).iter().product();
    let mask_len: usize = match &valid.plan {
        Plan::McDropout { sites, spread, .. } => {
            let masks = sites.iter().map(MaskSite::len).fold(0, usize::saturating_add);
            // A spread adds each sample's input gradient and map.
            masks.saturating_add(if spread.is_some() { 2 * input_len } else { 0 })
        }
        _ => 0,
    };
    // A segmenter's row of scores is one per class and pixel (its grid at most the image's).
    let scores_len = match (&model.spec.segmentation, &model.spec.image) {
        (Some(_), Some(i)) => model.spec.labels.len().saturating_mul(i.height.saturating_mul(i.width)),
        // A detector's row is every output's (a YOLO head's candidates x values, or the boxes,
        // scores and classes); an axis the graph leaves open counts as the image's pixels.
        _ if model.spec.detection.is_some() => {
            let open = model
                .spec
                .image
                .as_ref()
                .map_or(1, |i| i.height.saturating_mul(i.width));
            model
                .summary
                .outputs
                .iter()
                .map(|o| {
                    o.shape
                        .iter()
                        .flatten()
                        .skip(1)
                        .fold(1usize, |n, d| n.saturating_mul(d.fixed().unwrap_or(open)))
                })
                .fold(0usize, usize::saturating_add)
        }
        _ => model.spec.labels.len(),
    };
    let per_row = input_len.saturating_add(mask_len).saturating_add(scores_len);
    let bytes = (inputs as u64)
        .checked_mul(valid.samples() as u64)
        .and_then(|r| r.checked_mul(per_row as u64))
        .and_then(|v| v.checked_mul(4 * 2))
        .unwrap_or(u64::MAX);
    if bytes > limits.max_job_bytes {
        return Err(Invalid::Model(format!(
            "{inputs} input(s) x {} samples would hold {} MiB; at most {} MiB per job (max_job_bytes)",
            valid.samples(),
            bytes >> 20,
            limits.max_job_bytes >> 20
        )));
    }
    Ok(())
}

/// Runs `valid` on `input` (one row per input): one estimate per input. A segmenter's input with a
/// region in `regions` (on the model's input grid) also gets the region's figures.
pub fn run(
    rt: &mut WorkerRuntime,
    ctx: &JobContext,
    valid: &ValidUncertainty,
    input: &Tensor,
    regions: &[Option<Arc<RegionMask>>],
) -> Result<Vec<Estimate>, RuntimeError> {
    ctx.checkpoint()?;
    // MC dropout's masks, drawn once: the estimate and its explanation spread share them, so each
    // map belongs to one of the estimate's samples.
    let masks = match &valid.plan {
        Plan::McDropout {
            sites, rates, samples, ..
        } => mc_dropout::masks(sites, rates, *samples, valid.seed),
        _ => Vec::new(),
    };
    let per_input = match &valid.plan {
        Plan::McDropout { sites, .. } => mc_dropout::sample(rt, &valid.model, sites, &masks, input)?,
        Plan::Tta { views, .. } => tta::sample(rt, &valid.model, views, input)?,
        Plan::Ensemble { members } => ensemble::sample(rt, members, input)?,
    };
    ctx.advance(input.rows().saturating_mul(valid.samples()));
    // A detector's samples are compared with the input's own detections: one more row per input.
    let own = match valid.model.spec.detection {
        Some(_) => {
            ctx.checkpoint()?;
            let outputs = rt.run(&valid.model, input)?;
            ctx.advance(input.rows());
            split(&valid.model, &outputs, 1, &[])?
        }
        None => Vec::new(),
    };
    let classifier = !valid.model.spec.task.is_regression();
    let mut kept_samples = None;
    let mut estimates = Vec::with_capacity(per_input.len());
    for (row, samples) in per_input.into_iter().enumerate() {
        ctx.checkpoint()?;
        let mut detection = None;
        let mut region = None;
        let summary = match (samples, own.get(row)) {
            (Samples::Detections(samples), Some(Samples::Detections(own))) => {
                let own = own.first().map(Vec::as_slice).unwrap_or_default();
                let (summary, found) = detection::summarize(&valid.model.spec.labels, own, &samples);
                detection = Some(found);
                summary
            }
            (Samples::Pixels { rows, grid }, _) => {
                let unfit = || RuntimeError::Inference {
                    model: valid.model.name.clone(),
                    message: "the segmenter's output rows do not hold whole pixels of its classes".into(),
                };
                if let Some(r) = regions.get(row).and_then(Option::as_ref) {
                    let inside = r.resized(grid.0, grid.1).inside;
                    let pixels = inside.iter().filter(|v| **v).count();
                    let summary = segmentation::summarize(&valid.model, &rows, Some(&inside)).ok_or_else(|| {
                        if pixels == 0 {
                            RuntimeError::from(InputError::BadFeatures(format!(
                                "empty region: it covers no pixel of the segmenter's {}x{} output",
                                grid.0, grid.1
                            )))
                        } else {
                            unfit()
                        }
                    })?;
                    region = Some(RegionUncertainty {
                        pixels,
                        predictions: ranked(&valid.model, &summary.mean, RANKED),
                        summary,
                    });
                }
                segmentation::summarize(&valid.model, &rows, None).ok_or_else(unfit)?
            }
            (Samples::Rows(samples), _) => {
                let summary = stats::summarize(&samples, classifier);
                if valid.include_samples {
                    kept_samples = Some(samples);
                }
                summary
            }
            (Samples::Detections(_), _) => {
                return Err(RuntimeError::Inference {
                    model: valid.model.name.clone(),
                    message: "the detector's own pass gave no row for an input".into(),
                })
            }
        };
        let predictions = ranked(&valid.model, &summary.mean, RANKED);
        let explanation_spread = match (&valid.plan, predictions.first()) {
            (
                Plan::McDropout {
                    sites,
                    samples,
                    spread: Some(method),
                    ..
                },
                Some(top),
            ) => {
                ctx.checkpoint()?;
                let one = input.slice_rows(row, row + 1);
                let found = spread::spread(rt, &valid.model, sites, &masks, *method, &one, top.clone())?;
                ctx.advance(*samples);
                Some(found)
            }
            _ => None,
        };
        estimates.push(Estimate {
            predictions,
            summary,
            samples: kept_samples.take(),
            explanation_spread,
            detection,
            region,
        });
    }
    Ok(estimates)
}

/// One input's samples.
enum Samples {
    /// Each sample's class probabilities (a regression's values).
    Rows(Vec<Vec<f64>>),
    /// Each sample's raw output row of a segmenter, on its `width x height` grid.
    Pixels {
        /// The rows.
        rows: Vec<Vec<f64>>,
        /// The output's grid: width, height.
        grid: (usize, usize),
    },
    /// Each sample's detections, boxes on the input's grid.
    Detections(Vec<Vec<Detection>>),
}

/// Splits a pass's outputs into each input's samples, `per` consecutive rows per input. A
/// detector's rows are decoded, each box seen through `views[row % views]` brought back onto the
/// input's grid; other models' score rows as [`split_rows`] gives them.
fn split(
    model: &LoadedModel,
    outputs: &HashMap<String, Tensor>,
    per: usize,
    views: &[tta::View],
) -> Result<Vec<Samples>, RuntimeError> {
    let failed = |message: String| RuntimeError::Inference {
        model: model.name.clone(),
        message,
    };
    let scores = outputs
        .get(&model.spec.output)
        .ok_or_else(|| failed(format!("output `{}` missing from the run", model.spec.output)))?;
    if model.spec.segmentation.is_some() {
        return segmenter_rows(model, scores, per);
    }
    let (Some(_), Some(image)) = (&model.spec.detection, &model.spec.image) else {
        return Ok(split_rows(model, scores, per).into_iter().map(Samples::Rows).collect());
    };
    let rows = scores.rows();
    let mut decoded = Vec::with_capacity(rows);
    for r in 0..rows {
        let row: HashMap<&str, Vec<f64>> = outputs
            .iter()
            .filter(|(_, t)| t.rows() == rows)
            .map(|(name, t)| (name.as_str(), t.slice_rows(r, r + 1).to_f64()))
            .collect();
        let mut found = detect::decode(&model.spec, |name| row.get(name).map(Vec::as_slice)).map_err(failed)?;
        if let Some(view) = views.get(r % views.len().max(1)) {
            for d in &mut found {
                d.bbox = tta::box_back(view, d.bbox, image.width, image.height);
            }
        }
        decoded.push(found);
    }
    Ok(decoded
        .chunks(per.max(1))
        .map(|c| Samples::Detections(c.to_vec()))
        .collect())
}

/// A segmenter's output rows, `per` consecutive rows per input, with the output's grid.
fn segmenter_rows(model: &LoadedModel, scores: &Tensor, per: usize) -> Result<Vec<Samples>, RuntimeError> {
    let grid = model
        .spec
        .segmentation
        .as_ref()
        .and_then(|seg| crate::runtime::segmentation::grid(seg, &scores.shape))
        .ok_or_else(|| RuntimeError::Inference {
            model: model.name.clone(),
            message: format!("output `{}` is {:?}, not 4-D", model.spec.output, scores.shape),
        })?;
    Ok(split_rows(model, scores, per)
        .into_iter()
        .map(|rows| Samples::Pixels {
            rows,
            grid: (grid.2, grid.1),
        })
        .collect())
}

/// Splits a pass's score output into rows of probabilities, `per` consecutive rows per input (a
/// segmenter's rows raw: their probabilities are per pixel, [`segmentation::summarize`]).
fn split_rows(model: &LoadedModel, scores: &Tensor, per: usize) -> Vec<Vec<Vec<f64>>> {
    let values = scores.to_f64();
    let width = scores.row_len().max(1);
    let rows: Vec<Vec<f64>> = match model.spec.segmentation {
        Some(_) => values.chunks(width).map(<[f64]>::to_vec).collect(),
        None => values.chunks(width).map(|r| probabilities(model, r)).collect(),
    };
    rows.chunks(per.max(1)).map(<[Vec<f64>]>::to_vec).collect()
}

/// An estimate as answered: how it was made, and its figures.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Uncertainty {
    /// How the estimate was made.
    pub setup: Setup,
    /// The figures.
    #[serde(flatten)]
    pub estimate: Estimate,
}
