//! Vertex AI's JSON shapes, field for field as `google.cloud.aiplatform.v1` writes them in JSON
//! (camelCase; `PredictRequest`, `ExplainRequest`, `ExplanationSpecOverride`,
//! `ExplanationParameters`, `PredictResponse`, `ExplainResponse`, `Explanation`, `Attribution`).
//! Requests refuse fields explaind does not know, as its own endpoints do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// `PredictRequest` (the path names the endpoint).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VertexPredictRequest {
    /// The inputs: an image as `{"b64": ...}` (or under one key, `{"image_bytes": {"b64": ...}}`,
    /// `{"content": ...}`), a tabular row as an array or an object by feature name, a text as a
    /// string or under one key.
    #[schema(value_type = Vec<Object>)]
    pub instances: Vec<Value>,
    /// Model parameters: explaind's models take none (an empty object or null is accepted).
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    /// Billing labels: accepted, not used.
    #[allow(dead_code)] // Read so that Vertex clients may send it.
    pub labels: Option<BTreeMap<String, String>>,
}

/// `ExplainRequest` (the path names the endpoint).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VertexExplainRequest {
    /// The inputs, as for `:predict`.
    #[schema(value_type = Vec<Object>)]
    pub instances: Vec<Value>,
    /// Model parameters: explaind's models take none (an empty object or null is accepted).
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    /// The method and its parameters for this request.
    pub explanation_spec_override: Option<ExplanationSpecOverride>,
    /// The deployed model to explain: the endpoint's one (the explaind model's name) if given.
    pub deployed_model_id: Option<String>,
}

/// `ExplanationSpecOverride`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExplanationSpecOverride {
    /// The method and the outputs explained.
    pub parameters: Option<ExplanationParameters>,
    /// Per input, its baselines.
    pub metadata: Option<ExplanationMetadataOverride>,
    /// Example-based explanations: not served here (explaind's `similar-examples` method is).
    #[schema(value_type = Option<Object>)]
    pub examples_override: Option<Value>,
}

/// `ExplanationParameters`: at most one method, and which outputs are explained.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExplanationParameters {
    /// Sampled Shapley (explaind's `sampled-shapley`).
    pub sampled_shapley_attribution: Option<SampledShapleyAttribution>,
    /// Integrated Gradients (explaind's `integrated-gradients`).
    pub integrated_gradients_attribution: Option<IntegratedGradientsAttribution>,
    /// XRAI (explaind's `xrai`).
    pub xrai_attribution: Option<XraiAttribution>,
    /// Example-based explanations: not served here.
    #[schema(value_type = Option<Object>)]
    pub examples: Option<Value>,
    /// The top k outputs (default 1); -1: all of them.
    #[schema(value_type = Option<i32>)]
    pub top_k: Option<ProtoInt>,
    /// These outputs' indices, in this order (before `topK`).
    #[schema(value_type = Option<Vec<i32>>)]
    pub output_indices: Option<Value>,
}

/// `SampledShapleyAttribution`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SampledShapleyAttribution {
    /// Feature permutations, 1 to 50.
    #[schema(value_type = Option<i32>)]
    pub path_count: Option<ProtoInt>,
}

/// `IntegratedGradientsAttribution`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IntegratedGradientsAttribution {
    /// Points on the path, 1 to 100 (explaind: at least 2; default 50).
    #[schema(value_type = Option<i32>)]
    pub step_count: Option<ProtoInt>,
    /// SmoothGrad's noisy copies of each point.
    pub smooth_grad_config: Option<SmoothGradConfig>,
    /// A blurred baseline instead of the black one.
    pub blur_baseline_config: Option<BlurBaselineConfig>,
}

/// `XraiAttribution`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct XraiAttribution {
    /// Points on each integrated-gradients path, 1 to 100 (default 50).
    #[schema(value_type = Option<i32>)]
    pub step_count: Option<ProtoInt>,
    /// SmoothGrad's noisy copies of each point.
    pub smooth_grad_config: Option<SmoothGradConfig>,
    /// A blurred baseline.
    pub blur_baseline_config: Option<BlurBaselineConfig>,
}

/// `SmoothGradConfig`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SmoothGradConfig {
    /// The noise's standard deviation for every value (default 0.1).
    pub noise_sigma: Option<f32>,
    /// Or one per feature (features not named get none).
    pub feature_noise_sigma: Option<FeatureNoiseSigma>,
    /// Noisy copies per point, 1 to 50 (default 3).
    #[schema(value_type = Option<i32>)]
    pub noisy_sample_count: Option<ProtoInt>,
}

/// `FeatureNoiseSigma`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FeatureNoiseSigma {
    /// One entry per feature.
    #[serde(default)]
    pub noise_sigma: Vec<NoiseSigmaForFeature>,
}

/// `FeatureNoiseSigma.NoiseSigmaForFeature`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NoiseSigmaForFeature {
    /// The feature's name (a tabular model's feature; an image or text model's input name).
    #[serde(default)]
    pub name: String,
    /// Its standard deviation (default 0.1).
    pub sigma: Option<f32>,
}

/// `BlurBaselineConfig`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlurBaselineConfig {
    /// The blur's standard deviation; unset: the black baseline.
    pub max_blur_sigma: Option<f32>,
}

/// `ExplanationMetadataOverride`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExplanationMetadataOverride {
    /// Per input name, its baselines.
    #[serde(default)]
    pub inputs: BTreeMap<String, InputMetadataOverride>,
}

/// `ExplanationMetadataOverride.InputMetadataOverride`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InputMetadataOverride {
    /// Baselines: explaind takes its named ones only (`[]`, or one of `"black"`, `"white"`,
    /// `"blur"`, `"uniform"`, `"mean"`).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub input_baselines: Vec<Value>,
}

/// A proto3 JSON integer: a number, or a string of one (as proto3's JSON mapping allows).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ProtoInt {
    /// `50`.
    Number(i64),
    /// `"50"`.
    Text(String),
}

impl ProtoInt {
    /// The value, or why `field` is not an integer.
    pub fn value(&self, field: &str) -> Result<i64, String> {
        match self {
            ProtoInt::Number(n) => Ok(*n),
            ProtoInt::Text(t) => t.trim().parse().map_err(|_| {
                format!(
                    "{field} must be an integer, got `{}`",
                    t.chars().take(40).collect::<String>()
                )
            }),
        }
    }
}

/// `PredictResponse`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VertexPredictResponse {
    /// One per instance: the model's output (an object by output name when it has several).
    #[schema(value_type = Vec<Object>)]
    pub predictions: Vec<Value>,
    /// The deployed model: the explaind model's name.
    pub deployed_model_id: String,
    /// `projects/{project}/locations/{location}/models/{model}`.
    pub model: String,
    /// The explaind model's name.
    pub model_display_name: String,
    /// The model file's sha256.
    pub model_version_id: String,
}

/// `ExplainResponse`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VertexExplainResponse {
    /// One per instance.
    pub explanations: Vec<Explanation>,
    /// The deployed model: the explaind model's name.
    pub deployed_model_id: String,
    /// One per instance, as `:predict` answers them.
    #[schema(value_type = Vec<Object>)]
    pub predictions: Vec<Value>,
}

/// `Explanation`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// One per explained output.
    pub attributions: Vec<Attribution>,
}

/// `Attribution`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attribution {
    /// The model's output at the baseline.
    pub baseline_output_value: f64,
    /// The model's output at the instance.
    pub instance_output_value: f64,
    /// By feature name (tabular), or under the input's name: the attribution in the model's input
    /// space as nested arrays (images), per token (text), or `{"b64_jpeg": ...}` when the model's
    /// manifest sets `[vertex.visualization]`.
    #[schema(value_type = Object)]
    pub feature_attributions: Value,
    /// The explained output's index.
    pub output_index: Vec<usize>,
    /// Its label.
    pub output_display_name: String,
    /// Integrated gradients: |sum of attributions - (instance - baseline output)| / |instance -
    /// baseline output|; sampled Shapley: the attributions' largest standard error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approximation_error: Option<f64>,
    /// The model's output tensor.
    pub output_name: String,
}

/// Google's error object (`google.rpc.Status` in JSON), as Google APIs answer errors.
#[derive(Debug, Serialize, ToSchema)]
pub struct GoogleError {
    /// The error.
    pub error: GoogleStatus,
}

/// `google.rpc.Status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GoogleStatus {
    /// The HTTP status.
    pub code: u16,
    /// What went wrong, and what to do about it.
    pub message: String,
    /// The canonical code's name (`INVALID_ARGUMENT`, `NOT_FOUND`, ...).
    pub status: String,
    /// One `google.rpc.ErrorInfo`: `reason` is explaind's problem slug in capitals, `metadata`
    /// holds its problem `type` and `title`.
    pub details: Vec<ErrorInfo>,
}

/// `google.rpc.ErrorInfo`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorInfo {
    /// `type.googleapis.com/google.rpc.ErrorInfo`.
    #[serde(rename = "@type")]
    pub type_url: String,
    /// explaind's problem slug, UPPER_SNAKE_CASE (`INVALID_REQUEST`).
    pub reason: String,
    /// `explaind`.
    pub domain: String,
    /// `type`: explaind's problem type (`/problems/invalid-request`); `title`: its title.
    pub metadata: BTreeMap<String, String>,
}
