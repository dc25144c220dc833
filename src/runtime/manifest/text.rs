//! `[text]`: the tokenizer and the graph inputs that take token ids, mask, type ids and position
//! ids. The registry reads this section before the rest, to cut the graph at its word embedding.
//! Any other input of a text model is a constant side input (`[inputs.NAME] role = "constant"`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::onnx::TensorInfo;

/// `[text]`: how a text model's input is tokenized and fed.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TextManifest {
    /// A Hugging Face `tokenizer.json`, next to the manifest.
    pub tokenizer: Option<String>,
    /// Tokens per input at most (default 128); longer texts are truncated.
    pub max_length: Option<usize>,
    /// The graph input that takes token ids (default `input_ids`, or the only integer input).
    pub input_ids: Option<String>,
    /// The graph input that takes the attention mask (default `attention_mask` when present).
    pub attention_mask: Option<String>,
    /// The graph input that takes token type ids (default `token_type_ids` when present).
    pub token_type_ids: Option<String>,
    /// The graph input that takes position ids (default `position_ids` when present).
    pub position_ids: Option<String>,
    /// The token that hides a word for occlusion, LIME and KernelSHAP (default `[MASK]` /
    /// `<mask>`, else the pad token).
    pub hide_token: Option<String>,
    /// Integrated Gradients' baseline token (default the pad token).
    pub baseline_token: Option<String>,
    /// A sequence of ids without a tokenizer (byte or token ids): a text is its ids written in
    /// decimal, separated by spaces; `hide_token` and `baseline_token` are ids (default 0).
    pub sequence: Option<bool>,
    /// Sequences: ids run from 0 to `vocab_size - 1` (default: the embedding table's rows).
    pub vocab_size: Option<usize>,
    /// Sequences: positions per window, the players of `words` (default 1: each position).
    pub window: Option<usize>,
}

/// What a sequence model's `tokenizer` reads: its texts are ids.
pub const SEQUENCE_TOKENIZER: &str = "(ids)";

/// Longest `text.max_length` accepted.
pub const MAX_TEXT_TOKENS: usize = 4096;

impl TextManifest {
    /// The graph inputs for ids, mask, type ids and position ids, read from `inputs` (the original
    /// graph's) where the manifest names none. `constants`: the inputs `[inputs]` feeds a constant
    /// (never taken by a default name); any input left is an error.
    pub fn inputs(
        &self,
        inputs: &[TensorInfo],
        constants: &[String],
    ) -> Result<crate::onnx::embedding::TextInputs, String> {
        let has = |n: &str| inputs.iter().any(|t| t.name == n);
        let ids = match &self.input_ids {
            Some(n) => n.clone(),
            None if has("input_ids") => "input_ids".into(),
            None => {
                let ints: Vec<&TensorInfo> = inputs.iter().filter(|t| t.dtype.starts_with("int")).collect();
                match ints.as_slice() {
                    [one] => one.name.clone(),
                    _ => return Err("text.input_ids: no input named `input_ids`: name the token-id input".into()),
                }
            }
        };
        let constant = |n: &str| constants.iter().any(|c| c == n);
        let optional = |given: &Option<String>, default: &str| {
            given
                .clone()
                .or_else(|| (has(default) && !constant(default)).then(|| default.to_string()))
        };
        let mask = optional(&self.attention_mask, "attention_mask");
        let types = optional(&self.token_type_ids, "token_type_ids");
        let positions = optional(&self.position_ids, "position_ids");
        let named = [
            ("input_ids", Some(&ids)),
            ("attention_mask", mask.as_ref()),
            ("token_type_ids", types.as_ref()),
            ("position_ids", positions.as_ref()),
        ];
        for (field, name) in named {
            let Some(name) = name else { continue };
            if !has(name) {
                let names: Vec<&str> = inputs.iter().map(|t| t.name.as_str()).collect();
                return Err(format!(
                    "text.{field}: no graph input `{name}` (inputs: {})",
                    names.join(", ")
                ));
            }
            if constant(name) {
                return Err(format!(
                    "text.{field}: `{name}` is derived from the tokens, so [inputs.{name}] cannot make it a constant"
                ));
            }
        }
        let known: Vec<&String> = std::iter::once(&ids)
            .chain(&mask)
            .chain(&types)
            .chain(&positions)
            .collect();
        let other: Vec<&str> = inputs
            .iter()
            .filter(|t| !known.contains(&&t.name) && !constant(&t.name))
            .map(|t| t.name.as_str())
            .collect();
        if !other.is_empty() {
            return Err(format!(
                "text: the graph takes inputs explaind does not know how to feed: {} (it derives token ids, an \
                 attention mask, token type ids and position ids from the text; give any other input \
                 [inputs.NAME] role = \"constant\" and its value)",
                other.join(", ")
            ));
        }
        Ok(crate::onnx::embedding::TextInputs {
            ids,
            mask,
            types,
            positions,
        })
    }

    /// The tokenizer options, checked.
    pub fn options(&self) -> Result<crate::runtime::text::TextOptions, String> {
        let max_length = self.max_length.unwrap_or(128);
        if !(2..=MAX_TEXT_TOKENS).contains(&max_length) {
            return Err(format!(
                "text.max_length must be between 2 and {MAX_TEXT_TOKENS}, got {max_length}"
            ));
        }
        let sequence = match self.sequence.unwrap_or(false) {
            true => {
                if self.tokenizer.is_some() {
                    return Err("text.tokenizer: a sequence of ids takes no tokenizer".into());
                }
                let window = self.window.unwrap_or(1);
                if !(1..=max_length).contains(&window) {
                    return Err(format!(
                        "text.window must be between 1 and max_length ({max_length}), got {window}"
                    ));
                }
                if self.vocab_size.is_some_and(|v| !(1..=1 << 24).contains(&v)) {
                    return Err("text.vocab_size must be between 1 and 2^24".into());
                }
                Some(crate::runtime::text::SequenceOptions {
                    vocab_size: self.vocab_size,
                    window,
                    length: None,
                })
            }
            false if self.window.is_some() || self.vocab_size.is_some() => {
                return Err("text.window and text.vocab_size are for sequences of ids (sequence = true)".into())
            }
            false => None,
        };
        Ok(crate::runtime::text::TextOptions {
            tokenizer: match &sequence {
                Some(_) => SEQUENCE_TOKENIZER.into(),
                None => self
                    .tokenizer
                    .clone()
                    .ok_or("text.tokenizer: missing (a tokenizer.json file, or sequence = true for ids)")?,
            },
            sequence,
            max_length,
            hide_token: self.hide_token.clone(),
            baseline_token: self.baseline_token.clone(),
        })
    }
}

/// Input of a text model, resolved.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TextSpec {
    /// The tokenizer file (`(ids)` for a sequence of ids without one).
    pub tokenizer: String,
    /// Sequences of ids: positions per window (the players of `words`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    /// Tokens per input at most; longer texts are truncated (the answer says so).
    pub max_length: usize,
    /// The graph input fed token ids (the graph is cut after their embedding lookup).
    pub input_ids: String,
    /// The graph input fed the attention mask (all ones: one unpadded text per row).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_mask: Option<String>,
    /// The graph input fed token type ids (zeros).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type_ids: Option<String>,
    /// The graph input fed position ids (`0, 1, ..., tokens - 1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position_ids: Option<String>,
    /// The word-embedding lookup (Gather) the graph is cut at, where gradients start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<String>,
    /// Values per token the methods see (the embedding size; 1 when no lookup was found).
    pub embedding_size: usize,
    /// Why gradient methods cannot explain this model (no embedding lookup), when they cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gradients_refused: Option<String>,
    /// The token that hides a word (occlusion, LIME, KernelSHAP).
    pub hide_token: crate::runtime::text::SpecialToken,
    /// Integrated Gradients' baseline token.
    pub baseline_token: crate::runtime::text::SpecialToken,
}
