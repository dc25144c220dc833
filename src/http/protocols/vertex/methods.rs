//! Vertex AI's `explanationSpecOverride` as explaind's explain options: the method with its
//! parameters, the outputs explained, the baseline, and the model's `[vertex.visualization]` as
//! drawing options. Ranges are Vertex's own (so its messages name Vertex's fields); explaind's
//! limits are checked after, by the methods' own plans.

use serde_json::{json, Map, Value};

use super::shapes::{
    BlurBaselineConfig, ExplanationMetadataOverride, ExplanationParameters, ExplanationSpecOverride, ProtoInt,
    SmoothGradConfig,
};
use crate::explain::{TargetRef, TargetSpec};
use crate::http::error::{ApiError, ProblemKind};
use crate::http::ExplainOptions;
use crate::render::{Background, Colormap, Polarity, RenderOptions};
use crate::runtime::manifest::{VertexColorMap, VertexOverlay, VertexPolarity, Visualization};
use crate::runtime::LoadedModel;

/// explaind's method for Vertex's `integratedGradientsAttribution`, and the one used without an
/// override.
pub const INTEGRATED_GRADIENTS: &str = "integrated-gradients";
/// explaind's method for `sampledShapleyAttribution`.
pub const SAMPLED_SHAPLEY: &str = "sampled-shapley";
/// explaind's method for `xraiAttribution`.
pub const XRAI: &str = "xrai";

/// Vertex's default `stepCount`.
const DEFAULT_STEPS: i64 = 50;

/// The method and options an override asks for, on `model`.
pub struct Asked {
    /// explaind's method name.
    pub method: &'static str,
    /// Its options.
    pub options: ExplainOptions,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ProblemKind::InvalidRequest, message.into())
}

/// An integer field within Vertex's range (`default` when absent or 0, proto3's unset).
fn ranged(value: Option<&ProtoInt>, field: &str, lo: i64, hi: i64, default: i64) -> Result<i64, ApiError> {
    let v = value.map(|v| v.value(field)).transpose().map_err(bad)?.unwrap_or(0);
    let v = if v == 0 { default } else { v };
    if !(lo..=hi).contains(&v) {
        return Err(bad(format!("{field} must be between {lo} and {hi}, got {v}")));
    }
    Ok(v)
}

/// The options of an `explanationSpecOverride` (none: integrated gradients, 50 steps, top-1).
pub fn asked(spec: Option<ExplanationSpecOverride>, model: &LoadedModel) -> Result<Asked, ApiError> {
    let spec = spec.unwrap_or_default();
    if spec.examples_override.is_some() {
        return Err(bad(
            "explanationSpecOverride.examplesOverride: example-based explanations are explaind's `similar-examples` \
             method, at POST /v1/models/{model}/explain/similar-examples",
        ));
    }
    let p = spec.parameters.unwrap_or_default();
    let baseline = baseline(spec.metadata, model)?;
    let target = target(&p, model)?;
    let (method, mut params) = method(&p, model)?;
    if let Some(b) = baseline {
        if params.contains_key("baseline") {
            return Err(bad(
                "give the baseline once: blurBaselineConfig or metadata.inputs[].inputBaselines",
            ));
        }
        params.insert("baseline".into(), Value::from(b));
    }
    let render = model
        .spec
        .vertex
        .as_ref()
        .and_then(|v| v.visualization.as_ref())
        .map(render_options);
    Ok(Asked {
        method,
        options: ExplainOptions {
            region: None,
            params: Some(Value::Object(params)),
            target,
            seed: None,
            include: None,
            render,
            evaluate: None,
        },
    })
}

/// The method (at most one of Vertex's) and its parameters.
fn method(p: &ExplanationParameters, model: &LoadedModel) -> Result<(&'static str, Map<String, Value>), ApiError> {
    let given = [
        p.sampled_shapley_attribution.is_some(),
        p.integrated_gradients_attribution.is_some(),
        p.xrai_attribution.is_some(),
        p.examples.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(bad(
            "explanationSpecOverride.parameters: give one of sampledShapleyAttribution, \
             integratedGradientsAttribution, xraiAttribution",
        ));
    }
    if p.examples.is_some() {
        return Err(bad(
            "parameters.examples: example-based explanations are explaind's `similar-examples` method, at \
             POST /v1/models/{model}/explain/similar-examples",
        ));
    }
    if let Some(s) = &p.sampled_shapley_attribution {
        let paths = ranged(s.path_count.as_ref(), "sampledShapleyAttribution.pathCount", 1, 50, 0)?;
        return Ok((SAMPLED_SHAPLEY, Map::from_iter([("permutations".into(), json!(paths))])));
    }
    if let Some(x) = &p.xrai_attribution {
        let mut params = path_params(
            x.step_count.as_ref(),
            x.smooth_grad_config.as_ref(),
            x.blur_baseline_config.as_ref(),
            "xraiAttribution",
            model,
        )?;
        // XRAI integrates from its own two baselines (black and white).
        if params.remove("baseline").is_some() {
            return Err(bad(
                "xraiAttribution.blurBaselineConfig: explaind's xrai integrates from black and white baselines",
            ));
        }
        return Ok((XRAI, params));
    }
    let ig = p.integrated_gradients_attribution.as_ref();
    let params = path_params(
        ig.and_then(|i| i.step_count.as_ref()),
        ig.and_then(|i| i.smooth_grad_config.as_ref()),
        ig.and_then(|i| i.blur_baseline_config.as_ref()),
        "integratedGradientsAttribution",
        model,
    )?;
    Ok((INTEGRATED_GRADIENTS, params))
}

/// The parameters of a path method: `steps`, `smooth_grad`, a blurred `baseline`.
fn path_params(
    steps: Option<&ProtoInt>,
    smooth: Option<&SmoothGradConfig>,
    blur: Option<&BlurBaselineConfig>,
    field: &str,
    model: &LoadedModel,
) -> Result<Map<String, Value>, ApiError> {
    let steps = ranged(steps, &format!("{field}.stepCount"), 1, 100, DEFAULT_STEPS)?;
    if steps < 2 {
        return Err(bad(format!(
            "{field}.stepCount: explaind integrates over at least 2 points, got 1"
        )));
    }
    let mut params = Map::from_iter([("steps".into(), json!(steps))]);
    if let Some(s) = smooth {
        params.insert("smooth_grad".into(), smooth_grad(s, field, model)?);
    }
    if blur.and_then(|b| b.max_blur_sigma).is_some() {
        // explaind's blur has its own sigma (5% of the image's larger side); see the README.
        params.insert("baseline".into(), json!("blur"));
    }
    Ok(params)
}

/// `smoothGradConfig` as the method's `smooth_grad`: the copies, and one sigma or one per value.
fn smooth_grad(s: &SmoothGradConfig, field: &str, model: &LoadedModel) -> Result<Value, ApiError> {
    let samples = ranged(
        s.noisy_sample_count.as_ref(),
        &format!("{field}.smoothGradConfig.noisySampleCount"),
        1,
        50,
        3,
    )?;
    let sigma = match (&s.noise_sigma, &s.feature_noise_sigma) {
        (Some(_), Some(_)) => {
            return Err(bad(format!(
                "{field}.smoothGradConfig: give noiseSigma or featureNoiseSigma, not both"
            )))
        }
        (Some(sigma), None) => json!(sigma),
        (None, None) => json!(0.1),
        (None, Some(per)) => {
            let named = |name: &str| {
                per.noise_sigma
                    .iter()
                    .find(|n| n.name == name)
                    .map(|n| n.sigma.unwrap_or(0.1))
            };
            for n in &per.noise_sigma {
                let known = match &model.spec.tabular {
                    Some(t) => t.features.contains(&n.name),
                    None => n.name == model.spec.input,
                };
                if !known {
                    return Err(ApiError::new(
                        ProblemKind::InvalidInput,
                        format!(
                            "{field}.smoothGradConfig.featureNoiseSigma: no feature `{}` (GET /v1/models/{} lists them)",
                            n.name.chars().take(100).collect::<String>(),
                            model.name
                        ),
                    ));
                }
            }
            match &model.spec.tabular {
                Some(t) => json!(t.features.iter().map(|f| named(f).unwrap_or(0.0)).collect::<Vec<_>>()),
                None => json!(named(&model.spec.input).unwrap_or(0.0)),
            }
        }
    };
    Ok(json!({"samples": samples, "sigma": sigma}))
}

/// `topK` / `outputIndices` as targets (`outputIndices` first; neither: the top output).
fn target(p: &ExplanationParameters, model: &LoadedModel) -> Result<Option<TargetSpec>, ApiError> {
    if let Some(indices) = &p.output_indices {
        let list = indices
            .as_array()
            .ok_or_else(|| bad("outputIndices must be a list of output indices"))?;
        // A list of indices, or of one-element lists (an ndarray of the output's rank, 1).
        let index = |v: &Value| {
            let v = match v.as_array().map(Vec::as_slice) {
                Some([one]) => one,
                _ => v,
            };
            // proto3's ListValue holds doubles: a client's `3` may arrive as `3.0`.
            v.as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.fract() == 0.0 && (0.0..1e9).contains(f))
                        .map(|f| f as u64)
                })
                .and_then(|i| usize::try_from(i).ok())
                .ok_or_else(|| bad("outputIndices holds output indices (non-negative integers)"))
        };
        let refs = list
            .iter()
            .map(|v| index(v).map(TargetRef::Index))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Some(TargetSpec::Many(refs)));
    }
    let Some(k) = &p.top_k else { return Ok(None) };
    match k.value("topK").map_err(bad)? {
        0 => Ok(None),
        -1 => Ok(Some(TargetSpec::TopK {
            top_k: model.spec.labels.len().max(1),
        })),
        k if k > 0 => Ok(Some(TargetSpec::TopK {
            top_k: usize::try_from(k).unwrap_or(usize::MAX),
        })),
        k => Err(bad(format!("topK must be -1 (every output) or at least 1, got {k}"))),
    }
}

/// `metadata.inputs[].inputBaselines`: one of explaind's named baselines, for the model's input.
fn baseline(metadata: Option<ExplanationMetadataOverride>, model: &LoadedModel) -> Result<Option<String>, ApiError> {
    let mut found = None;
    for (name, input) in metadata.map(|m| m.inputs).unwrap_or_default() {
        match input.input_baselines.as_slice() {
            [] => {}
            [Value::String(b)] if ["black", "white", "blur", "uniform", "mean"].contains(&b.as_str()) => {
                if found.replace(b.clone()).is_some() {
                    return Err(bad("metadata.inputs: the model has one input; give its baseline once"));
                }
            }
            _ => {
                return Err(bad(format!(
                    "metadata.inputs[{}].inputBaselines: explaind takes one named baseline (\"black\", \"white\", \
                     \"blur\", \"uniform\", \"mean\") for model `{}`, not values",
                    name.chars().take(100).collect::<String>(),
                    model.name
                )))
            }
        }
    }
    Ok(found)
}

/// Vertex's visualisation as explaind's drawing options (README: the colour maps it has).
pub fn render_options(v: &Visualization) -> RenderOptions {
    let polarity = match v.polarity {
        None | Some(VertexPolarity::Positive) => Polarity::Positive,
        Some(VertexPolarity::Negative) => Polarity::Negative,
        Some(VertexPolarity::Both) => Polarity::Both,
    };
    let colormap = match v.color_map {
        None | Some(VertexColorMap::PinkGreen | VertexColorMap::RedGreen | VertexColorMap::PinkWhiteGreen) => {
            Colormap::Diverging
        }
        Some(VertexColorMap::Viridis | VertexColorMap::Green) => Colormap::Viridis,
        Some(VertexColorMap::Red) => Colormap::Inferno,
    };
    let overlay = match v.overlay_type {
        None | Some(VertexOverlay::None | VertexOverlay::MaskBlack) => Background::None,
        Some(VertexOverlay::Original) => Background::Original,
        Some(VertexOverlay::Grayscale) => Background::Grayscale,
    };
    let defaults = RenderOptions::default();
    RenderOptions {
        colormap: Some(colormap),
        polarity,
        clip_percentiles: [
            v.clip_percent_lowerbound.unwrap_or(defaults.clip_percentiles[0]),
            v.clip_percent_upperbound.unwrap_or(defaults.clip_percentiles[1]),
        ],
        overlay,
        ..defaults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vertex_visualization_maps_onto_overlay_options() {
        let v = Visualization {
            polarity: Some(VertexPolarity::Both),
            color_map: Some(VertexColorMap::Viridis),
            clip_percent_upperbound: Some(99.0),
            clip_percent_lowerbound: Some(10.0),
            overlay_type: Some(VertexOverlay::Grayscale),
            ..Visualization::default()
        };
        let r = render_options(&v);
        assert_eq!(
            (r.polarity, r.colormap, r.clip_percentiles, r.overlay),
            (
                Polarity::Both,
                Some(Colormap::Viridis),
                [10.0, 99.0],
                Background::Grayscale
            )
        );
        // Vertex's defaults: positive, pink-green (explaind's diverging map), 62 / 99.9, no image.
        let r = render_options(&Visualization::default());
        assert_eq!(
            (r.polarity, r.colormap, r.clip_percentiles, r.overlay),
            (
                Polarity::Positive,
                Some(Colormap::Diverging),
                [62.0, 99.9],
                Background::None
            )
        );
        assert!(r.validate().is_ok());
    }

    #[test]
    fn proto_integers_may_be_strings_and_zero_is_unset() {
        let n = ProtoInt::Text("32".into());
        assert_eq!(ranged(Some(&n), "stepCount", 1, 100, 50).ok(), Some(32));
        assert_eq!(
            ranged(Some(&ProtoInt::Number(0)), "stepCount", 1, 100, 50).ok(),
            Some(50)
        );
        assert_eq!(ranged(None, "stepCount", 1, 100, 50).ok(), Some(50));
        assert!(ranged(Some(&ProtoInt::Number(101)), "stepCount", 1, 100, 50).is_err());
        assert!(ranged(Some(&ProtoInt::Text("x".into())), "stepCount", 1, 100, 50).is_err());
    }
}
