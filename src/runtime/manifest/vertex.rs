//! `[vertex]`: how a model answers on the Vertex AI endpoint routes: the endpoint id that names it,
//! and the image visualisation Vertex configures in a model's `ExplanationMetadata` (it cannot be
//! given per request: Vertex's `ExplanationMetadataOverride` carries baselines only).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FieldError, ManifestError, Task};

/// The `[vertex]` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VertexSpec {
    /// The endpoint id of `/v1/projects/{project}/locations/{location}/endpoints/{endpoint}`;
    /// default: the model's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Image models: the attribution drawn over the image (Vertex's `InputMetadata.Visualization`,
    /// field names as in its proto), answered as the image feature's `b64_jpeg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visualization: Option<Visualization>,
}

/// Vertex's `ExplanationMetadata.InputMetadata.Visualization`, values as its enums spell them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Visualization {
    /// `PIXELS` or `OUTLINES` (Vertex's default for integrated gradients); explaind draws pixels.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<VisualizationType>,
    /// Which signs are drawn (default `POSITIVE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polarity: Option<VertexPolarity>,
    /// The colour map (default `PINK_GREEN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color_map: Option<VertexColorMap>,
    /// Percentile above which values are clipped (default 99.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_percent_upperbound: Option<f32>,
    /// Percentile below which values are hidden (default 62).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_percent_lowerbound: Option<f32>,
    /// What is under the drawn attribution (default `NONE` in Vertex; `ORIGINAL` is explaind's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_type: Option<VertexOverlay>,
}

/// Vertex's `Visualization.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VisualizationType {
    /// Every pixel's attribution.
    Pixels,
    /// Vertex outlines the regions; explaind draws their pixels.
    Outlines,
}

/// Vertex's `Visualization.Polarity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VertexPolarity {
    /// Evidence for the output.
    Positive,
    /// Evidence against it.
    Negative,
    /// Both.
    Both,
}

/// Vertex's `Visualization.ColorMap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VertexColorMap {
    /// Pink and green (explaind: its diverging map).
    PinkGreen,
    /// Viridis.
    Viridis,
    /// Red (explaind: inferno, black to yellow through red).
    Red,
    /// Green (explaind: viridis).
    Green,
    /// Red and green (explaind: its diverging map).
    RedGreen,
    /// Pink, white, green (explaind: its diverging map).
    PinkWhiteGreen,
}

/// Vertex's `Visualization.OverlayType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VertexOverlay {
    /// The bare attribution.
    None,
    /// Over the original image.
    Original,
    /// Over the image in grey.
    Grayscale,
    /// The image masked by the attribution (explaind: the bare attribution, as `NONE`).
    MaskBlack,
}

/// The section checked: an endpoint id that fits in a URL segment, a visualisation for images
/// only, percentiles in range.
pub(super) fn check(v: VertexSpec, task: Task, err: &FieldError) -> Result<VertexSpec, ManifestError> {
    if let Some(e) = &v.endpoint {
        let fits = !e.is_empty()
            && e.len() <= 128
            && e.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !fits {
            return Err(err(
                "vertex.endpoint",
                "1 to 128 characters of letters, digits, `-`, `_` and `.`".into(),
            ));
        }
    }
    if let Some(vis) = &v.visualization {
        if task != Task::ImageClassification {
            return Err(err("vertex.visualization", "only image models are visualised".into()));
        }
        let lo = vis.clip_percent_lowerbound.unwrap_or(62.0);
        let hi = vis.clip_percent_upperbound.unwrap_or(99.9);
        if !(0.0..=100.0).contains(&lo) || !(0.0..=100.0).contains(&hi) || lo >= hi {
            return Err(err(
                "vertex.visualization",
                "clip_percent_lowerbound < clip_percent_upperbound, both percentiles (0 to 100)".into(),
            ));
        }
    }
    Ok(v)
}
