//! The players of the perturbation methods on images and texts: groups of input values switched
//! on and off together (an image's superpixels; a text's words or tokens, special tokens never),
//! what a switched-off player shows (the hidden image; the hide token's row), and how one value
//! per player becomes the answer's map (`[height, width]`; one value per token).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::lime::{hidden_image, Hide};
use super::perturb::segment_indices;
use super::{segments, ExplainJob};
use crate::runtime::preprocess::InputError;
use crate::runtime::{RuntimeError, Tensor};

/// What the players of a text are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TextUnit {
    /// Words: the tokens of one word together (LIME's text explainer).
    #[default]
    Words,
    /// Every token on its own.
    Tokens,
}

enum Layout {
    Image {
        labels: Vec<usize>,
        height: usize,
        width: usize,
    },
    Text {
        groups: Vec<Vec<usize>>,
        tokens: usize,
    },
}

/// The players of one input.
pub(super) struct Players {
    /// How many.
    pub count: usize,
    /// Per player, the indices of the input values it switches.
    pub indices: Vec<Vec<usize>>,
    /// The input with every player switched off.
    pub hidden: Vec<f32>,
    layout: Layout,
}

impl Players {
    /// The job's players: SLIC superpixels of an image (`segments`, `compactness`, shown as
    /// `hide`), or the words or tokens of a text. `check` runs between the segmentation's steps.
    pub fn of(
        check: &super::regression::Check,
        job: &ExplainJob,
        (segments, compactness): (u32, u8),
        hide: Hide,
        unit: TextUnit,
    ) -> Result<Self, RuntimeError> {
        match (&job.model.text, &job.text) {
            (Some(model), Some(text)) => {
                let groups = text.features(unit == TextUnit::Words);
                let dim = model.dim();
                let indices = groups
                    .iter()
                    .map(|g| g.iter().flat_map(|&t| t * dim..(t + 1) * dim).collect())
                    .collect();
                let hidden = model.replaced(&text.tokens, &model.hide);
                Ok(Self {
                    count: groups.len(),
                    indices,
                    hidden: hidden.as_f32().unwrap_or(&[]).to_vec(),
                    layout: Layout::Text {
                        groups,
                        tokens: text.tokens.len(),
                    },
                })
            }
            _ => {
                let spec = job.image_spec("this method")?;
                let (labels, m) = segments::slic(&job.input, spec, segments, compactness, check)?;
                Ok(Self {
                    count: m,
                    indices: segment_indices(spec, &labels, m),
                    hidden: hidden_image(job, spec, hide),
                    layout: Layout::Image {
                        labels,
                        height: spec.height,
                        width: spec.width,
                    },
                })
            }
        }
    }

    /// An error unless there are at least `n` players.
    pub fn at_least(&self, n: usize, method: &str) -> Result<(), RuntimeError> {
        if self.count >= n {
            return Ok(());
        }
        let what = match self.layout {
            Layout::Image { .. } => "the image gave fewer than 2 segments; ask for more",
            Layout::Text { .. } => "the text has fewer than 2 words",
        };
        Err(InputError::BadFeatures(format!("{method}: {what}")).into())
    }

    /// The map of one value per player: each pixel takes its segment's; each token an equal
    /// share of its word's, so a word's tokens sum to the word's value.
    pub fn map(&self, values: &[f64]) -> Tensor {
        match &self.layout {
            Layout::Image { labels, height, width } => Tensor::f32(
                vec![*height, *width],
                labels.iter().map(|&s| values[s] as f32).collect(),
            ),
            Layout::Text { groups, tokens } => {
                let mut map = vec![0f32; *tokens];
                for (g, v) in groups.iter().zip(values) {
                    for &t in g {
                        map[t] = (*v / g.len() as f64) as f32;
                    }
                }
                Tensor::f32(vec![*tokens], map)
            }
        }
    }

    /// Adds what the players are to a method's `details`: the segment map, or the token
    /// positions of each word.
    pub fn describe(&self, details: &mut serde_json::Value) {
        details["segments"] = self.count.into();
        match &self.layout {
            Layout::Image { labels, height, width } => {
                details["segment_map"] = serde_json::json!({"shape": [height, width], "values": labels});
            }
            Layout::Text { groups, .. } => {
                details["player_tokens"] = serde_json::json!(groups);
            }
        }
    }
}

/// An image's segments in an answer's `details`: each pixel's segment, row by row.
#[derive(ToSchema)]
#[allow(dead_code)] // The answer's shape for the document; `describe` writes it as JSON.
#[serde(deny_unknown_fields)]
pub struct SegmentMap {
    /// `[height, width]`.
    #[schema(min_items = 2, max_items = 2)]
    shape: Vec<usize>,
    /// Each pixel's segment.
    values: Vec<usize>,
}
