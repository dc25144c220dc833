//! Input preparation shared by predict and explain: decoding and preprocessing one input (on a
//! blocking thread; the image header's pixel count is checked before decoding), keeping what maps
//! results back onto the original, and the input's audit evidence.

use super::error::ApiError;
use super::input::RawInput;
use crate::audit::Evidence;
use crate::config::Config;
use crate::runtime::manifest::Task;
use crate::runtime::preprocess::{self, Features, Geometry, InputError};
use crate::runtime::text::Encoded;
use crate::runtime::{LoadedModel, Tensor};

/// The prepared input and what is needed to map results back.
pub struct Prepared {
    pub tensor: Tensor,
    pub original: Option<image::RgbImage>,
    pub geometry: Option<Geometry>,
    pub features: Option<Vec<f32>>,
    /// Text models: the tokens, whose rows the tensor holds.
    pub text: Option<std::sync::Arc<Encoded>>,
}

/// Decodes and preprocesses one input, keeping what maps results back onto it.
pub fn prepare(model: &LoadedModel, raw: RawInput, config: &Config) -> Result<Prepared, ApiError> {
    match (raw, model.spec.task) {
        (RawInput::Row(values), _) => {
            let tensor = preprocess::prepare_row(&model.spec, values)?;
            // A tabular row is its features; an image row maps back onto no picture.
            let features = model.spec.tabular.as_ref().and(tensor.as_f32().map(<[f32]>::to_vec));
            Ok(Prepared {
                tensor,
                original: None,
                geometry: None,
                features,
                text: None,
            })
        }
        (RawInput::Text(text), Task::TextClassification) => {
            let tm = model
                .text
                .as_ref()
                .ok_or_else(|| ApiError::internal("text model without tokenizer"))?;
            let encoded = tm.encode(&text, config.max_text_bytes)?;
            Ok(Prepared {
                tensor: tm.embed(&encoded.tokens),
                original: None,
                geometry: None,
                features: None,
                text: Some(std::sync::Arc::new(encoded)),
            })
        }
        (RawInput::Text(_), _) => Err(InputError::WrongKind(format!(
            "model `{}` is not a text model: send {}",
            model.name,
            if model.spec.image.is_some() {
                "an image"
            } else {
                "`features`"
            }
        ))
        .into()),
        (_, Task::TextClassification) => {
            Err(InputError::WrongKind(format!("model `{}` is a text model: send `text`", model.name)).into())
        }
        (RawInput::Image(bytes), Task::ImageClassification | Task::ObjectDetection) => {
            let img = preprocess::decode_image(&bytes, config.max_image_pixels)?;
            let spec = model
                .spec
                .image
                .as_ref()
                .ok_or_else(|| ApiError::internal("image model without image spec"))?;
            let p = preprocess::prepare_image(&img, spec);
            Ok(Prepared {
                tensor: p.tensor,
                original: Some(p.original),
                geometry: Some(p.geometry),
                features: None,
                text: None,
            })
        }
        (RawInput::Features(f), Task::TabularClassification | Task::TabularRegression) => {
            let spec = model
                .spec
                .tabular
                .as_ref()
                .ok_or_else(|| ApiError::internal("tabular model without tabular spec"))?;
            let tensor = preprocess::prepare_features(&f, spec)?;
            let values = tensor.as_f32().map(<[f32]>::to_vec);
            Ok(Prepared {
                tensor,
                original: None,
                geometry: None,
                features: values,
                text: None,
            })
        }
        (RawInput::Image(_), _) => Err(InputError::WrongKind(format!(
            "model `{}` is tabular: send `features`, not an image",
            model.name
        ))
        .into()),
        (RawInput::Features(Features::Named(_) | Features::Ordered(_)), _) => Err(InputError::WrongKind(format!(
            "model `{}` takes images: send an image, not `features`",
            model.name
        ))
        .into()),
    }
}

/// Decodes and preprocesses every input (on a blocking thread unless they are small).
pub async fn prepare_all(
    model: &std::sync::Arc<LoadedModel>,
    inputs: Vec<RawInput>,
    config: &Config,
) -> Result<Vec<Prepared>, ApiError> {
    let model = model.clone();
    let config = config.clone();
    let size = inputs
        .iter()
        .map(super::offload::decoded_size)
        .fold(0usize, usize::saturating_add);
    super::offload::cpu(size, move || {
        inputs.into_iter().map(|raw| prepare(&model, raw, &config)).collect()
    })
    .await?
}

/// Bytes of drawing the answer for these inputs: their originals, `targets` maps each; pictures
/// (a PNG, an embedded overlay, a tabular chart) count as large whatever the map's size.
pub fn drawing_size(prepared: &[Prepared], targets: usize, pictures: bool) -> usize {
    if pictures {
        return usize::MAX;
    }
    prepared
        .iter()
        .map(|p| {
            p.original.as_ref().map_or(1024, |o| {
                (o.width() as usize)
                    .saturating_mul(o.height() as usize)
                    .saturating_mul(4)
            })
        })
        .fold(0usize, usize::saturating_add)
        .saturating_mul(targets.max(1))
}

/// The batch tensor of prepared inputs.
pub fn batch(prepared: &[Prepared]) -> Result<Tensor, ApiError> {
    Tensor::concat_rows(prepared.iter().map(|p| p.tensor.clone()).collect())
        .ok_or_else(|| ApiError::internal("inputs of different shapes"))
}

/// An input's audit evidence: the uploaded image's bytes, or the features in the model's order.
pub fn evidence(model: &LoadedModel, raw: &RawInput, keep: bool) -> Evidence {
    match raw {
        RawInput::Image(bytes) => Evidence::image(bytes, keep),
        RawInput::Features(f) => {
            let values = model
                .spec
                .tabular
                .as_ref()
                .and_then(|spec| preprocess::prepare_features(f, spec).ok())
                .and_then(|t| t.as_f32().map(<[f32]>::to_vec))
                .unwrap_or_default();
            Evidence::features(&values, keep)
        }
        RawInput::Text(text) => Evidence::text(text, keep),
        RawInput::Row(values) => Evidence::features(values, keep),
    }
}
