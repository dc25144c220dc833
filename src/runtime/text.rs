//! Text models: the tokenizer (Hugging Face `tokenizer.json`, read by the `tokenizers` crate), and
//! the embedding table of the graph cut at its word-embedding lookup ([`crate::onnx::embedding`]).
//! A text becomes tokens with character offsets into the original string and the word each
//! belongs to, then one float row per token: what every method perturbs or differentiates.

use std::path::Path;

use serde::Serialize;
use utoipa::ToSchema;

use super::preprocess::InputError;
use super::Tensor;
use crate::onnx::embedding::Table;

/// What cuts a text into tokens.
enum Tokens {
    /// A Hugging Face tokenizer.
    Tokenizer(Box<tokenizers::Tokenizer>),
    /// None: the text is a sequence of ids below `vocab`, `window` positions a word, of exactly
    /// `length` ids where the graph fixes it.
    Ids {
        vocab: usize,
        window: usize,
        length: Option<usize>,
    },
}

/// A text model's tokenizer and embedding table, loaded at start.
pub struct TextModel {
    tokens: Tokens,
    /// The word-embedding table, or why the graph has none (then a token's row is its id).
    pub table: Result<Table, String>,
    /// Tokens per input at most; longer texts are truncated.
    pub max_length: usize,
    /// The token whose row hides a token (perturbation methods): `[MASK]`, else the pad token.
    pub hide: SpecialToken,
    /// The token of Integrated Gradients' baseline: the pad token.
    pub baseline: SpecialToken,
}

impl std::fmt::Debug for TextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextModel")
            .field("max_length", &self.max_length)
            .field("hide", &self.hide)
            .field("baseline", &self.baseline)
            .finish_non_exhaustive()
    }
}

/// A token named in the manifest or found in the vocabulary.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SpecialToken {
    /// Its text (`[PAD]`).
    pub token: String,
    /// Its id.
    pub id: u32,
}

/// One token of an input text.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Token {
    /// The token as the tokenizer writes it (`##ing`, `[CLS]`).
    pub text: String,
    /// First character (Unicode scalar value) in the original text.
    pub start: usize,
    /// One past the last character.
    pub end: usize,
    /// Its id.
    pub id: u32,
    /// The word it belongs to (none for special tokens).
    pub word: Option<u32>,
    /// Added by the tokenizer (`[CLS]`, `[SEP]`): never hidden, and kept in baselines.
    pub special: bool,
}

/// A tokenized input.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// The original text.
    pub text: String,
    /// Its tokens, in order.
    pub tokens: Vec<Token>,
    /// True when the text had more tokens than `max_length` and was cut.
    pub truncated: bool,
    /// The byte offset of every character of `text`, and its length last: offsets are characters.
    char_bytes: Vec<usize>,
}

impl Encoded {
    /// The tokens of `text` as the tokenizer cut it.
    pub fn new(text: String, tokens: Vec<Token>, truncated: bool) -> Self {
        let char_bytes = text.char_indices().map(|(b, _)| b).chain([text.len()]).collect();
        Self {
            text,
            tokens,
            truncated,
            char_bytes,
        }
    }

    /// Characters `start..end` of the text (clamped to it).
    pub fn slice(&self, start: usize, end: usize) -> &str {
        let last = self.char_bytes.len() - 1;
        let (a, b) = (start.min(last), end.clamp(start.min(last), last));
        &self.text[self.char_bytes[a]..self.char_bytes[b]]
    }

    /// Characters in the text.
    pub fn chars(&self) -> usize {
        self.char_bytes.len() - 1
    }

    /// The interpretable features over tokens: the words (tokens of one word together), or each
    /// token on its own; special tokens are in none. Each feature is a list of token positions.
    pub fn features(&self, words: bool) -> Vec<Vec<usize>> {
        let mut out: Vec<Vec<usize>> = Vec::new();
        let mut last_word = None;
        for (i, t) in self.tokens.iter().enumerate() {
            if t.special {
                last_word = None;
                continue;
            }
            match (words, t.word) {
                (true, Some(w)) if last_word == Some(w) => {
                    if let Some(f) = out.last_mut() {
                        f.push(i);
                    }
                }
                _ => out.push(vec![i]),
            }
            last_word = t.word;
        }
        out
    }

    /// A feature's text: the original characters from its first token's start to its last's end.
    pub fn span(&self, feature: &[usize]) -> (String, usize, usize) {
        let (Some(first), Some(last)) = (feature.first(), feature.last()) else {
            return (String::new(), 0, 0);
        };
        let (start, end) = (self.tokens[*first].start, self.tokens[*last].end);
        (self.slice(start, end).to_string(), start, end)
    }
}

/// A sequence of ids without a tokenizer.
#[derive(Debug, Clone)]
pub struct SequenceOptions {
    /// Ids run below this (default: the embedding table's rows).
    pub vocab_size: Option<usize>,
    /// Positions per word.
    pub window: usize,
    /// The length the graph fixes, when it fixes one: every sequence must have it.
    pub length: Option<usize>,
}

/// The `[text]` section of `model.toml`, resolved.
#[derive(Debug, Clone)]
pub struct TextOptions {
    /// A sequence of ids instead of a tokenizer.
    pub sequence: Option<SequenceOptions>,
    /// The tokenizer file, next to the manifest.
    pub tokenizer: String,
    /// Tokens per input at most.
    pub max_length: usize,
    /// The token that hides a token; default `[MASK]`, `<mask>`, else the pad token.
    pub hide_token: Option<String>,
    /// The baseline token; default the tokenizer's pad token, `[PAD]` or `<pad>`.
    pub baseline_token: Option<String>,
}

impl TextModel {
    /// Loads the tokenizer next to `folder`'s manifest; `table` comes from the cut graph.
    pub fn load(folder: &Path, options: &TextOptions, table: Result<Table, String>) -> Result<Self, String> {
        if let Some(sequence) = &options.sequence {
            return Self::sequence(options, sequence, table);
        }
        let path = folder.join(&options.tokenizer);
        let mut tokenizer = tokenizers::Tokenizer::from_file(&path).map_err(|e| {
            format!(
                "{}: not a tokenizer.json the tokenizers crate reads: {e}",
                path.display()
            )
        })?;
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: options.max_length,
                ..Default::default()
            }))
            .map_err(|e| format!("text.max_length {}: {e}", options.max_length))?;
        tokenizer.with_padding(None);
        let find = |names: &[&str]| {
            names.iter().find_map(|n| {
                tokenizer.token_to_id(n).map(|id| SpecialToken {
                    token: n.to_string(),
                    id,
                })
            })
        };
        let named = |field: &str, name: &Option<String>| -> Result<Option<SpecialToken>, String> {
            match name {
                Some(n) => find(&[n.as_str()])
                    .map(Some)
                    .ok_or_else(|| format!("{field}: `{n}` is not in the tokenizer's vocabulary")),
                None => Ok(None),
            }
        };
        let pad_name = tokenizer.get_padding().map(|p| p.pad_token.clone());
        let pad = named("text.baseline_token", &options.baseline_token)?
            .or_else(|| pad_name.as_deref().and_then(|n| find(&[n])))
            .or_else(|| find(&["[PAD]", "<pad>", "<|pad|>"]))
            .ok_or("text.baseline_token: the tokenizer has no pad token (`[PAD]`, `<pad>`): name one")?;
        let hide = named("text.hide_token", &options.hide_token)?
            .or_else(|| find(&["[MASK]", "<mask>"]))
            .unwrap_or_else(|| pad.clone());
        let vocab = tokenizer.get_vocab_size(true);
        if let Ok(t) = &table {
            if vocab > t.vocab {
                return Err(format!(
                    "the tokenizer has {vocab} tokens but the embedding table {} rows",
                    t.vocab
                ));
            }
        }
        Ok(Self {
            tokens: Tokens::Tokenizer(Box::new(tokenizer)),
            table,
            max_length: options.max_length,
            hide,
            baseline: pad,
        })
    }

    /// A model whose texts are sequences of ids: the vocabulary from the manifest or the
    /// embedding table, the hide and baseline tokens ids (default 0).
    fn sequence(
        options: &TextOptions,
        sequence: &SequenceOptions,
        table: Result<Table, String>,
    ) -> Result<Self, String> {
        let vocab = match (sequence.vocab_size, &table) {
            (Some(v), Ok(t)) if v > t.vocab => {
                return Err(format!(
                    "text.vocab_size {v} is more than the embedding table's {} rows",
                    t.vocab
                ))
            }
            (Some(v), _) => v,
            (None, Ok(t)) => t.vocab,
            (None, Err(_)) => {
                return Err("text.vocab_size: missing, and the graph has no embedding table to give it".into())
            }
        };
        if let Some(n) = sequence.length.filter(|n| *n > options.max_length) {
            return Err(format!(
                "text.max_length {} is below the {n} ids the graph takes",
                options.max_length
            ));
        }
        let id = |field: &str, given: &Option<String>| -> Result<SpecialToken, String> {
            let token = given.clone().unwrap_or_else(|| "0".into());
            match token.parse::<u32>() {
                Ok(id) if (id as usize) < vocab => Ok(SpecialToken { token, id }),
                _ => Err(format!("{field}: `{token}` is not an id below vocab_size {vocab}")),
            }
        };
        Ok(Self {
            hide: id("text.hide_token", &options.hide_token)?,
            baseline: id("text.baseline_token", &options.baseline_token)?,
            tokens: Tokens::Ids {
                vocab,
                window: sequence.window,
                length: sequence.length,
            },
            table,
            max_length: options.max_length,
        })
    }

    /// Values per token row (the embedding size, or 1 for ids).
    pub fn dim(&self) -> usize {
        self.table.as_ref().map_or(1, |t| t.dim)
    }

    /// Tokenizes `text` (at most `max_bytes` of UTF-8), truncating past `max_length` tokens.
    pub fn encode(&self, text: &str, max_bytes: usize) -> Result<Encoded, InputError> {
        if text.len() > max_bytes {
            return Err(InputError::TextTooLong {
                bytes: text.len(),
                limit: max_bytes,
            });
        }
        if text.trim().is_empty() {
            return Err(InputError::BadText("`text` is empty".into()));
        }
        let tokenizer = match &self.tokens {
            Tokens::Tokenizer(t) => t,
            Tokens::Ids { vocab, window, length } => return self.encode_ids(text, *vocab, *window, *length),
        };
        let e = tokenizer
            .encode_char_offsets(text, true)
            .map_err(|e| InputError::BadText(format!("the tokenizer refused the text: {e}")))?;
        let special = e.get_special_tokens_mask();
        let tokens: Vec<Token> = (0..e.len())
            .map(|i| Token {
                text: e.get_tokens()[i].clone(),
                start: e.get_offsets()[i].0,
                end: e.get_offsets()[i].1,
                id: e.get_ids()[i],
                word: e.get_word_ids()[i],
                special: special.get(i).is_some_and(|s| *s == 1),
            })
            .collect();
        if tokens.iter().all(|t| t.special) {
            return Err(InputError::BadText(match e.get_overflowing().is_empty() {
                true => "the text has no tokens the tokenizer knows".into(),
                false => format!(
                    "max_length {} leaves no room for the text's tokens beside the special ones",
                    self.max_length
                ),
            }));
        }
        Ok(Encoded::new(text.to_string(), tokens, !e.get_overflowing().is_empty()))
    }

    /// A sequence's ids (decimal, separated by white space) as tokens, one per position, each
    /// position's word its window; past `max_length` ids the sequence is cut.
    fn encode_ids(
        &self,
        text: &str,
        vocab: usize,
        window: usize,
        length: Option<usize>,
    ) -> Result<Encoded, InputError> {
        let mut tokens = Vec::new();
        let mut truncated = false;
        // Each run of non-space characters: (first char, first byte) to its end.
        let mut start: Option<(usize, usize)> = None;
        let ends = text
            .char_indices()
            .map(|(b, c)| (b, c.is_whitespace()))
            .chain([(text.len(), true)]);
        for (i, (byte, space)) in ends.enumerate() {
            match (space, start) {
                (false, None) => start = Some((i, byte)),
                (true, Some((s, s_byte))) => {
                    start = None;
                    if tokens.len() == self.max_length {
                        truncated = true;
                        break;
                    }
                    let word = &text[s_byte..byte];
                    let position = tokens.len();
                    let id = word
                        .parse::<u32>()
                        .ok()
                        .filter(|id| (*id as usize) < vocab)
                        .ok_or_else(|| {
                            InputError::BadText(format!(
                                "position {position}: `{}` is not an id below {vocab}",
                                word.chars().take(20).collect::<String>()
                            ))
                        })?;
                    tokens.push(Token {
                        text: word.to_string(),
                        start: s,
                        end: i,
                        id,
                        word: Some((position / window) as u32),
                        special: false,
                    });
                }
                _ => {}
            }
        }
        if let Some(n) = length.filter(|n| *n != tokens.len()) {
            return Err(InputError::BadText(format!(
                "the model takes exactly {n} ids; the text has {}{}",
                tokens.len(),
                if truncated { " or more" } else { "" }
            )));
        }
        Ok(Encoded::new(text.to_string(), tokens, truncated))
    }

    /// The row of token `id`: its embedding, or the id itself.
    pub fn row(&self, id: u32) -> Vec<f32> {
        match &self.table {
            Ok(t) => {
                let at = (id as usize).min(t.vocab.saturating_sub(1)) * t.dim;
                t.values[at..at + t.dim].to_vec()
            }
            Err(_) => vec![id as f32],
        }
    }

    /// The model's input for `tokens`: `[1, tokens, dim]`.
    pub fn embed(&self, tokens: &[Token]) -> Tensor {
        let data: Vec<f32> = tokens.iter().flat_map(|t| self.row(t.id)).collect();
        Tensor::f32(vec![1, tokens.len(), self.dim()], data)
    }

    /// The input with every non-special token replaced by `with`'s row (special tokens kept):
    /// Integrated Gradients' baseline (the pad token) or the fully hidden text (the hide token).
    pub fn replaced(&self, tokens: &[Token], with: &SpecialToken) -> Tensor {
        let data: Vec<f32> = tokens
            .iter()
            .flat_map(|t| self.row(if t.special { t.id } else { with.id }))
            .collect();
        Tensor::f32(vec![1, tokens.len(), self.dim()], data)
    }
}

/// Sums a `[.., tokens, dim]` attribution row over the embedding axis: one value per token
/// (Captum's text summary before normalising); with `abs`, of absolute values.
pub fn per_token(values: &[f32], tokens: usize, abs: bool) -> Vec<f32> {
    let dim = values.len() / tokens.max(1);
    values
        .chunks(dim.max(1))
        .take(tokens)
        .map(|c| c.iter().map(|v| if abs { v.abs() } else { *v }).sum())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str, start: usize, end: usize, word: Option<u32>, special: bool) -> Token {
        Token {
            text: text.into(),
            start,
            end,
            id: 0,
            word,
            special,
        }
    }

    #[test]
    fn words_gather_their_tokens_and_spans_are_characters() {
        let e = Encoded::new(
            "Café déjà vu".into(),
            vec![
                token("[CLS]", 0, 0, None, true),
                token("caf", 0, 3, Some(0), false),
                token("##é", 3, 4, Some(0), false),
                token("déjà", 5, 9, Some(1), false),
                token("vu", 10, 12, Some(2), false),
                token("[SEP]", 0, 0, None, true),
            ],
            false,
        );
        assert_eq!(e.features(true), vec![vec![1, 2], vec![3], vec![4]]);
        assert_eq!(e.features(false), vec![vec![1], vec![2], vec![3], vec![4]]);
        assert_eq!(e.span(&[1, 2]), ("Café".to_string(), 0, 4));
        assert_eq!(e.span(&[3]), ("déjà".to_string(), 5, 9));
        assert_eq!(e.chars(), 12);
        assert_eq!(e.slice(4, 5), " ");
        assert_eq!(e.slice(10, 99), "vu", "clamped to the text");
        assert_eq!(per_token(&[1.0, -2.0, 3.0, 4.0], 2, false), vec![-1.0, 7.0]);
        assert_eq!(per_token(&[1.0, -2.0, 3.0, 4.0], 2, true), vec![3.0, 7.0]);
    }

    #[test]
    fn a_sequence_is_its_ids_one_token_a_position_and_a_word_a_window() {
        let options = TextOptions {
            tokenizer: String::new(),
            sequence: Some(SequenceOptions {
                vocab_size: Some(300),
                window: 2,
                length: None,
            }),
            max_length: 3,
            hide_token: Some("256".into()),
            baseline_token: None,
        };
        let m = TextModel::load(Path::new("."), &options, Err("no table".into())).unwrap();
        assert_eq!((m.hide.id, m.baseline.id), (256, 0));
        let e = m.encode(" 104\t105  7 99", 1 << 10).unwrap();
        assert!(e.truncated, "four ids, max_length 3");
        let ids: Vec<(u32, usize, usize, Option<u32>)> =
            e.tokens.iter().map(|t| (t.id, t.start, t.end, t.word)).collect();
        assert_eq!(ids, [(104, 1, 4, Some(0)), (105, 5, 8, Some(0)), (7, 10, 11, Some(1))]);
        assert_eq!(e.features(true), vec![vec![0, 1], vec![2]]);
        let err = m.encode("1 300", 1 << 10).unwrap_err().to_string();
        assert!(err.contains("position 1: `300` is not an id below 300"), "{err}");
        let none = TextOptions {
            hide_token: Some("300".into()),
            ..options
        };
        assert!(TextModel::load(Path::new("."), &none, Err("no table".into())).is_err());
        let fixed = TextOptions {
            sequence: Some(SequenceOptions {
                vocab_size: Some(300),
                window: 1,
                length: Some(2),
            }),
            hide_token: None,
            ..none
        };
        let m = TextModel::load(Path::new("."), &fixed, Err("no table".into())).unwrap();
        assert_eq!(m.encode("1 2", 1 << 10).unwrap().tokens.len(), 2);
        let err = m.encode("1", 1 << 10).unwrap_err().to_string();
        assert!(err.contains("exactly 2 ids; the text has 1"), "{err}");
    }
}
