//! Which outputs to explain: a class index, a label, several of them, the top k, or (by default)
//! the top-1 prediction.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Invalid;
use crate::runtime::predict::{rank, Prediction};
use crate::runtime::preprocess::InputError;
use crate::runtime::LoadedModel;

/// One requested target: a class index or a label.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum TargetRef {
    /// Class index.
    Index(usize),
    /// Class label, as the manifest names it.
    Label(String),
}

/// Targets as requested.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum TargetSpec {
    /// `{"top_k": k}`: the k highest-scoring classes (a detector's k best detections).
    TopK {
        /// How many classes.
        top_k: usize,
    },
    /// `{"detection": i}`: a detector's i-th detection of this input, by decreasing score (0 is
    /// the best), as predict lists them.
    Detection {
        /// Index in the input's detections.
        detection: usize,
    },
    /// `{"box": [x0, y0, x1, y1], "label": "..."}`: a detector's detection of that label whose box
    /// overlaps this one most (IoU), the box in the original image's pixels.
    Box {
        /// Corner box in the original image's pixels.
        #[serde(rename = "box")]
        bbox: [f64; 4],
        /// Class label (any class when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
    /// One class.
    One(TargetRef),
    /// Several classes, one attribution each.
    Many(Vec<TargetRef>),
}

/// Resolves targets against the model's labels and the input's scores (one row of the output).
pub fn resolve(
    spec: Option<&TargetSpec>,
    model: &LoadedModel,
    scores: &[f64],
    max_targets: usize,
) -> Result<Vec<Prediction>, InputError> {
    resolve_with(spec, model, scores, &|_| None, max_targets)
}

/// [`resolve`], with `others` giving a row of the model's other outputs (a post-NMS detector's
/// boxes and classes).
pub fn resolve_with(
    spec: Option<&TargetSpec>,
    model: &LoadedModel,
    scores: &[f64],
    others: &dyn Fn(&str) -> Option<Vec<f64>>,
    max_targets: usize,
) -> Result<Vec<Prediction>, InputError> {
    if model.spec.detection.is_some() {
        return super::detection_targets::resolve(spec, model, scores, others, max_targets);
    }
    if scores.is_empty() {
        return Err(InputError::BadFeatures(format!(
            "model `{}` gave no scores to explain",
            model.name
        )));
    }
    let ranked = rank(model, scores, scores.len());
    let by_index = |i: usize| -> Result<Prediction, InputError> {
        ranked.iter().find(|p| p.index == i).cloned().ok_or_else(|| {
            InputError::BadFeatures(format!(
                "target {i} is out of range: the model has {} outputs",
                scores.len()
            ))
        })
    };
    let by_ref = |r: &TargetRef| -> Result<Prediction, InputError> {
        match r {
            TargetRef::Index(i) => by_index(*i),
            TargetRef::Label(l) => match model.spec.labels.iter().position(|x| x == l) {
                Some(i) => by_index(i),
                None => Err(InputError::BadFeatures(format!(
                    "no class labelled `{l}`; GET /v1/models/{} lists the labels",
                    model.name
                ))),
            },
        }
    };
    let targets = match spec {
        None => vec![ranked[0].clone()],
        Some(TargetSpec::TopK { top_k }) => {
            if *top_k == 0 {
                return Err(InputError::BadFeatures("top_k must be at least 1".into()));
            }
            ranked.into_iter().take(*top_k).collect()
        }
        Some(TargetSpec::One(r)) => vec![by_ref(r)?],
        Some(TargetSpec::Many(list)) => {
            if list.is_empty() {
                return Err(InputError::BadFeatures("the target list is empty".into()));
            }
            list.iter().map(by_ref).collect::<Result<_, _>>()?
        }
        Some(TargetSpec::Detection { .. } | TargetSpec::Box { .. }) => {
            return Err(InputError::BadFeatures(format!(
                "model `{}` is not a detector: name a class (index or label) or top_k",
                model.name
            )))
        }
    };
    if targets.len() > max_targets {
        return Err(InputError::BadFeatures(format!(
            "{} targets; at most {max_targets} per request",
            targets.len()
        )));
    }
    Ok(targets)
}

/// Checks targets before any work: list and top-k lengths within `max_targets`, indices within the
/// model's classes, labels it has. Returns how many targets the request explains.
pub fn check(spec: Option<&TargetSpec>, model: &LoadedModel, max_targets: usize) -> Result<usize, Invalid> {
    if model.spec.detection.is_some() {
        return super::detection_targets::check(spec, model, max_targets);
    }
    let labels = &model.spec.labels;
    let check_ref = |r: &TargetRef| match r {
        TargetRef::Index(i) if !labels.is_empty() && *i >= labels.len() => Err(Invalid::Model(format!(
            "target {i} is out of range: the model has {} outputs",
            labels.len()
        ))),
        TargetRef::Label(l) if !labels.contains(l) => Err(Invalid::Model(format!(
            "no class labelled `{l}`; GET /v1/models/{} lists the labels",
            model.name
        ))),
        _ => Ok(()),
    };
    let count = match spec {
        None => 1,
        Some(TargetSpec::TopK { top_k: 0 }) => return Err(Invalid::Request("top_k must be at least 1".into())),
        Some(TargetSpec::TopK { top_k }) => {
            if !labels.is_empty() && *top_k > labels.len() {
                return Err(Invalid::Model(format!(
                    "top_k {top_k}: the model has {} outputs",
                    labels.len()
                )));
            }
            *top_k
        }
        Some(TargetSpec::One(r)) => {
            check_ref(r)?;
            1
        }
        Some(TargetSpec::Many(list)) => {
            if list.is_empty() {
                return Err(Invalid::Request("the target list is empty".into()));
            }
            if list.len() <= max_targets {
                list.iter().try_for_each(check_ref)?;
            }
            list.len()
        }
        Some(TargetSpec::Detection { .. } | TargetSpec::Box { .. }) => {
            return Err(Invalid::Model(format!(
                "model `{}` is not a detector: name a class (index or label) or top_k",
                model.name
            )))
        }
    };
    if count > max_targets {
        return Err(Invalid::Model(format!(
            "{count} targets; at most {max_targets} per request (max_targets)"
        )));
    }
    Ok(count)
}

/// The region a segmentation target sums its class's scores over, in the original image's
/// pixels; absent, each class's own predicted region.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Region {
    /// `[x0, y0, x1, y1]`: left, top, right, bottom edges, within the image.
    Box([f64; 4]),
    /// Vertices `[[x, y], ...]` (3 to 1,000, within the image), even-odd filled.
    Polygon(Vec<[f64; 2]>),
    /// A PNG of the image's size, base64: its non-zero pixels are the region.
    Mask(String),
}

/// Most vertices a polygon region may have.
pub const MAX_POLYGON_VERTICES: usize = 1000;

impl Region {
    /// Checks what needs no image: a segmenter to apply it to, finite numbers, enough vertices.
    pub fn check(&self, model: &LoadedModel) -> Result<(), Invalid> {
        if model.spec.segmentation.is_none() {
            return Err(Invalid::Model(format!(
                "model `{}` is not a segmenter: a `region` target needs per-pixel scores",
                model.name
            )));
        }
        match self {
            Region::Box(b) if b.iter().any(|v| !v.is_finite()) => {
                Err(Invalid::Request("region.box: four finite numbers".into()))
            }
            Region::Polygon(p) if !(3..=MAX_POLYGON_VERTICES).contains(&p.len()) => Err(Invalid::Request(format!(
                "region.polygon: 3 to {MAX_POLYGON_VERTICES} vertices, got {}",
                p.len()
            ))),
            Region::Polygon(p) if p.iter().flatten().any(|v| !v.is_finite()) => {
                Err(Invalid::Request("region.polygon: finite coordinates".into()))
            }
            _ => Ok(()),
        }
    }
}

/// A region on the model's input grid: the pixels a segmentation target sums over.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionMask {
    /// Grid width.
    pub width: usize,
    /// Grid height.
    pub height: usize,
    /// Row-major, `height * width`.
    pub inside: Vec<bool>,
}

impl RegionMask {
    /// Pixels inside.
    pub fn count(&self) -> usize {
        self.inside.iter().filter(|v| **v).count()
    }

    /// The mask resampled (nearest pixel centre) to a `width x height` grid.
    pub fn resized(&self, width: usize, height: usize) -> RegionMask {
        let mut inside = Vec::with_capacity(width * height);
        for y in 0..height {
            let sy = ((y * 2 + 1) * self.height / (height * 2)).min(self.height.saturating_sub(1));
            for x in 0..width {
                let sx = ((x * 2 + 1) * self.width / (width * 2)).min(self.width.saturating_sub(1));
                inside.push(self.inside.get(sy * self.width + sx).copied().unwrap_or(false));
            }
        }
        RegionMask { width, height, inside }
    }
}
