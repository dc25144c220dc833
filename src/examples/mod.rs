//! Example-based explanations: a model's labelled reference set (usually its training data) run
//! through the model once, and the questions asked of it: which reference rows are most like an
//! input ([`ReferenceSet::similar`]), which pulled the model towards or away from its decision
//! (TracIn on the last layer, [`ReferenceSet::influence`]), and which labels are likely wrong
//! (self-influence, [`ReferenceSet::suspects`]).
//!
//! Per row and checkpoint the set keeps the last linear layer's input `a` and the loss gradient on
//! its output `g = softmax(z) - onehot(y)` (cross-entropy on the logits `z`; a model whose scores
//! are `softmax(z)` gives the same `g`, computed from `z`). The last layer's parameter gradient is
//! `g (a, 1)^T` (the 1 for the bias), so TracInCP restricted to it factors exactly (Pruthi et al.
//! 2020, appendix F; Captum's TracInCPFast):
//! `influence(x, x_i) = sum over checkpoints of lr * (a . a_i + 1) * (g . g_i)`.

pub mod build;
pub mod concepts;
mod sets;
pub mod source;
pub mod store;
pub mod upload;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use sets::Sets;

use crate::onnx::head::Head;

/// How similarity is measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
// Its own schema name: `Metric` is the evaluation metrics' (in `eval`).
#[schema(as = SimilarityMetric)]
pub enum Metric {
    /// Cosine of the embeddings (higher is more similar).
    #[default]
    Cosine,
    /// Euclidean distance of the embeddings (lower is more similar).
    L2,
    /// Cosine of the last layer's loss gradients, `g (a, 1)^T` (Hanawa et al. 2021's "GC").
    GradientCosine,
}

/// One checkpoint's rows: the last layer's inputs and loss gradients.
#[derive(Debug, Clone)]
pub struct CheckpointRows {
    /// The loaded model holding this checkpoint.
    pub model: String,
    /// Its ONNX file's sha256 (the cache is valid only for these weights).
    pub sha256: String,
    /// Its learning rate.
    pub lr: f64,
    /// Whether its last layer adds a bias.
    pub bias: bool,
    /// The tensor holding its last layer's input `a`.
    pub input: String,
    /// The tensor holding its logits `z`.
    pub logits: String,
    /// Values per row of `a`.
    pub features_len: usize,
    /// `a` per row, rows one after another.
    pub features: Vec<f32>,
    /// `g` per row (one value per class).
    pub grads: Vec<f32>,
}

impl CheckpointRows {
    fn a(&self, i: usize) -> &[f32] {
        &self.features[i * self.features_len..(i + 1) * self.features_len]
    }

    fn g(&self, i: usize, classes: usize) -> &[f32] {
        &self.grads[i * classes..(i + 1) * classes]
    }

    /// The squared norm of row `i`'s last-layer gradient, `(|a|^2 + 1) |g|^2`.
    fn grad_norm2(&self, i: usize, classes: usize) -> f64 {
        (norm2(self.a(i)) + self.bias_term()) * norm2(self.g(i, classes))
    }

    fn bias_term(&self) -> f64 {
        if self.bias {
            1.0
        } else {
            0.0
        }
    }
}

/// An input's vectors, as the set keeps them per row.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The embedding.
    pub embedding: Vec<f32>,
    /// Per checkpoint: `a` and `g` (for the label asked).
    pub checkpoints: Vec<(Vec<f32>, Vec<f32>)>,
}

/// A model's reference set, run through the model.
#[derive(Debug, Clone)]
pub struct ReferenceSet {
    /// Row ids (image file names, or row numbers of a CSV).
    pub ids: Vec<String>,
    /// Each row's label (class index).
    pub labels: Vec<u32>,
    /// Each row's prediction (class index).
    pub predictions: Vec<u32>,
    /// Class count.
    pub classes: usize,
    /// Where the embedding and the last layer were read.
    pub head: Head,
    /// The embedding per row when it is not checkpoint 0's `a` (a named `embedding_layer`, or a
    /// model without a linear last layer); empty otherwise.
    pub embeddings: Vec<f32>,
    /// The model itself, then the manifest's further checkpoints; empty when the model has no
    /// linear last layer (influence is then refused).
    pub checkpoints: Vec<CheckpointRows>,
    /// sha256 of the model file the set was computed with.
    pub model_sha256: String,
    /// sha256 over the reference files (labels, and every image's name and bytes).
    pub source_sha256: String,
    /// Self-influence per row.
    pub self_influence: Vec<f64>,
    /// Rows by self-influence, highest first.
    by_self_influence: Vec<u32>,
    /// Each row's embedding norm.
    embedding_norms: Vec<f64>,
    /// Per checkpoint, each row's last-layer gradient norm `sqrt((|a|^2 + 1) |g|^2)`.
    grad_norms: Vec<Vec<f64>>,
    /// Where each row's input is (an image file, or the feature row).
    pub inputs: source::Inputs,
    /// Row index by id.
    index: HashMap<String, usize>,
    /// Whether the set was loaded from the data directory (not run through the model at start).
    pub loaded: bool,
}

/// What the model page says of a reference set.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReferenceSummary {
    /// Rows in the set.
    pub rows: usize,
    /// The tensor the embedding is read from.
    pub embedding_layer: String,
    /// Values per row of the embedding.
    pub embedding_len: usize,
    /// Whether influence (and gradient similarity) can be computed; else why not.
    pub influence: bool,
    /// Why influence cannot be computed, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_influence: Option<String>,
    /// The checkpoints influence sums over (the model itself first).
    pub checkpoints: Vec<String>,
    /// Bytes the set holds in memory.
    pub bytes: u64,
    /// Whether it was loaded from the data directory rather than computed at start.
    pub loaded: bool,
}

/// A row's place in an answer.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RowScore {
    /// The row's id.
    pub id: String,
    /// Its label.
    pub label: String,
    /// The model's prediction for it.
    pub prediction: String,
    /// Similarity, distance or influence (the answer says which).
    pub score: f64,
}

impl ReferenceSet {
    /// A set of these rows, completed: the id index and each row's self-influence.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        listing: source::Listing,
        predictions: Vec<u32>,
        classes: usize,
        head: Head,
        embeddings: Vec<f32>,
        checkpoints: Vec<CheckpointRows>,
        model_sha256: String,
    ) -> Self {
        Self {
            ids: listing.ids,
            labels: listing.labels,
            predictions,
            classes,
            head,
            embeddings,
            checkpoints,
            model_sha256,
            source_sha256: listing.sha256,
            self_influence: Vec::new(),
            by_self_influence: Vec::new(),
            embedding_norms: Vec::new(),
            grad_norms: Vec::new(),
            inputs: listing.inputs,
            index: HashMap::new(),
            loaded: false,
        }
        .finish()
    }

    /// What the model page says of the set.
    pub fn summary(&self) -> ReferenceSummary {
        ReferenceSummary {
            rows: self.len(),
            embedding_layer: self.head.embedding.clone(),
            embedding_len: self.head.embedding_len,
            influence: !self.checkpoints.is_empty(),
            no_influence: self.head.no_influence.clone(),
            checkpoints: self.checkpoints.iter().map(|c| c.model.clone()).collect(),
            bytes: self.bytes(),
            loaded: self.loaded,
        }
    }

    /// Completes a set from its rows: the id index and each row's self-influence.
    fn finish(mut self) -> Self {
        self.index = self.ids.iter().enumerate().map(|(i, id)| (id.clone(), i)).collect();
        let (rows, classes) = (self.ids.len(), self.classes);
        self.grad_norms = self
            .checkpoints
            .iter()
            .map(|c| (0..rows).map(|i| c.grad_norm2(i, classes).sqrt()).collect())
            .collect();
        self.self_influence = (0..rows)
            .map(|i| {
                self.checkpoints
                    .iter()
                    .zip(&self.grad_norms)
                    .map(|(c, norms)| c.lr * norms[i] * norms[i])
                    .sum()
            })
            .collect();
        let mut order: Vec<u32> = (0..rows as u32).collect();
        order.sort_by(|&a, &b| {
            self.self_influence[b as usize]
                .total_cmp(&self.self_influence[a as usize])
                .then(a.cmp(&b))
        });
        self.by_self_influence = order;
        self.embedding_norms = (0..rows).map(|i| norm2(self.embedding(i)).sqrt()).collect();
        self
    }

    /// Every row's embedding, rows one after another, and the values per row.
    fn embedding_rows(&self) -> &[f32] {
        match self.embeddings.is_empty() {
            true => &self.checkpoints[0].features,
            false => &self.embeddings,
        }
    }

    /// Rows in the set.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the set has no rows.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Rows `start..end`'s inputs as one batch for `model` (images decoded again from their files).
    pub fn input_batch(
        &self,
        model: &crate::runtime::LoadedModel,
        start: usize,
        end: usize,
        max_pixels: u64,
    ) -> Result<crate::runtime::Tensor, String> {
        let rows: Vec<usize> = (start..end).collect();
        source::rows_tensor(&self.inputs, &self.ids, &rows, model, max_pixels)
    }

    /// The row with this id.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Values per row of the embedding.
    pub fn embedding_len(&self) -> usize {
        self.head.embedding_len
    }

    /// Row `i`'s embedding.
    pub fn embedding(&self, i: usize) -> &[f32] {
        let len = self.head.embedding_len;
        &self.embedding_rows()[i * len..(i + 1) * len]
    }

    /// Bytes the set holds in memory.
    pub fn bytes(&self) -> u64 {
        let floats = self.embeddings.len()
            + self
                .checkpoints
                .iter()
                .map(|c| c.features.len() + c.grads.len())
                .sum::<usize>();
        held_bytes(&self.ids, floats as u64, self.checkpoints.len())
    }

    /// Row `i` as an answer names it, with `score`.
    pub fn row(&self, i: usize, labels: &[String], score: f64) -> RowScore {
        let name = |c: u32| labels.get(c as usize).cloned().unwrap_or_else(|| c.to_string());
        RowScore {
            id: self.ids[i].clone(),
            label: name(self.labels[i]),
            prediction: name(self.predictions[i]),
            score,
        }
    }

    /// The `k` rows most similar to `query` among those `allowed` (all when `None`), most similar
    /// first, with their similarity (cosine metrics) or distance (`l2`).
    pub fn similar(&self, query: &Query, metric: Metric, allowed: Option<&[bool]>, k: usize) -> Vec<(usize, f64)> {
        let keep = |i: &usize| allowed.is_none_or(|a| a[self.labels[*i] as usize]);
        let scores: Vec<f64> = match metric {
            Metric::Cosine | Metric::L2 => {
                let q = &query.embedding;
                let qn = norm2(q).sqrt();
                let products = dots(self.embedding_rows(), self.head.embedding_len, q);
                products
                    .iter()
                    .zip(&self.embedding_norms)
                    .map(|(&p, &n)| match metric {
                        Metric::Cosine => cosine(p as f64, qn * n),
                        // |q - e| from the product and the norms; negated so that one ranking
                        // (largest first) serves every metric.
                        _ => -(qn * qn + n * n - 2.0 * p as f64).max(0.0).sqrt(),
                    })
                    .collect()
            }
            Metric::GradientCosine => {
                // The cosine form of the model's own checkpoint, without its learning rate.
                let lr = self.checkpoints.first().map_or(1.0, |c| c.lr);
                let scores = self.influence(&query.checkpoints[..1], true);
                scores.into_iter().map(|s| s / lr).collect()
            }
        };
        let scored = scores.into_iter().enumerate().filter(|(i, _)| keep(i)).collect();
        let mut best = top(scored, k, |s| s);
        if metric == Metric::L2 {
            for b in &mut best {
                b.1 = -b.1;
            }
        }
        best
    }

    /// TracIn's influence of every row on the query (`normalize`: each checkpoint's gradients
    /// scaled to unit length, the cosine form).
    pub fn influence(&self, query: &[(Vec<f32>, Vec<f32>)], normalize: bool) -> Vec<f64> {
        let classes = self.classes;
        let mut out = vec![0.0; self.len()];
        for ((c, (a, g)), norms) in self.checkpoints.iter().zip(query).zip(&self.grad_norms) {
            let query_norm = ((norm2(a) + c.bias_term()) * norm2(g)).sqrt();
            let a_dots = dots(&c.features, c.features_len, a);
            let g_dots = dots(&c.grads, classes, g);
            for (((o, &ad), &gd), &n) in out.iter_mut().zip(&a_dots).zip(&g_dots).zip(norms) {
                let value = (ad as f64 + c.bias_term()) * gd as f64;
                *o += c.lr
                    * match normalize {
                        true => cosine(value, query_norm * n),
                        false => value,
                    };
            }
        }
        out
    }

    /// Whether `query` has the lengths the set's rows have (the model's tensors for this input).
    pub fn fits(&self, query: &Query) -> bool {
        query.embedding.len() == self.head.embedding_len
            && query.checkpoints.len() <= self.checkpoints.len()
            && query
                .checkpoints
                .iter()
                .zip(&self.checkpoints)
                .all(|((a, g), c)| a.len() == c.features_len && g.len() == self.classes)
    }

    /// Rows by self-influence, highest first, among those whose label is `allowed`.
    pub fn suspects<'a>(&'a self, allowed: Option<&'a [bool]>) -> impl Iterator<Item = usize> + 'a {
        self.by_self_influence
            .iter()
            .map(|&i| i as usize)
            .filter(move |&i| allowed.is_none_or(|a| a[self.labels[i] as usize]))
    }
}

/// Why a request that needs a reference set cannot have one: the manifest section to add.
pub fn no_set(model: &str) -> String {
    format!(
        "model `{model}` has no reference set: declare one in the `[reference]` section of its model.toml \
         (a declared set that failed at start is listed with why in GET /v1/models/{model})"
    )
}

/// Bytes a set of rows `ids` holds with `floats` values in all over `checkpoints` checkpoints:
/// the values, the ids kept twice (the list and the index) with their heads, and per row the
/// label, prediction and rank (4 bytes each), self-influence and the norms (8 each).
pub fn held_bytes(ids: &[String], floats: u64, checkpoints: usize) -> u64 {
    let id_bytes: u64 = ids.iter().map(|s| 2 * s.len() as u64 + 56).sum();
    let per_row = 12 + 8 * (2 + checkpoints) as u64;
    floats
        .saturating_mul(4)
        .saturating_add(id_bytes)
        .saturating_add((ids.len() as u64).saturating_mul(per_row))
}

/// The loss gradient on the logits for `label`: `softmax(z) - onehot(label)`.
pub fn loss_gradient(logits: &[f32], label: usize) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f64> = logits.iter().map(|z| ((z - max) as f64).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter()
        .enumerate()
        .map(|(c, e)| (e / sum - if c == label { 1.0 } else { 0.0 }) as f32)
        .collect()
}

/// The `k` entries with the largest score, largest first (ties: lower index first).
pub fn top(mut scored: Vec<(usize, f64)>, k: usize, key: impl Fn(f64) -> f64) -> Vec<(usize, f64)> {
    let order = |a: &(usize, f64), b: &(usize, f64)| key(b.1).total_cmp(&key(a.1)).then(a.0.cmp(&b.0));
    if k < scored.len() {
        scored.select_nth_unstable_by(k, order);
        scored.truncate(k);
    }
    scored.sort_by(order);
    scored
}

/// Each row's dot product with `q`: `rows` (`width` values each, one after another) times `q`, by
/// ndarray's matrix-vector product (unrolled f32 lanes, vectorised; a query is one memory-bound
/// pass over the set, where a BLAS call's setup would cost more than it saves).
fn dots(rows: &[f32], width: usize, q: &[f32]) -> Vec<f32> {
    let n = rows.len().checked_div(width).unwrap_or(0);
    match ndarray::ArrayView2::from_shape((n, width), rows) {
        Ok(m) if q.len() == width => m.dot(&ndarray::ArrayView1::from(q)).to_vec(),
        _ => vec![0.0; n],
    }
}

fn norm2(a: &[f32]) -> f64 {
    a.iter().map(|x| *x as f64 * *x as f64).sum()
}

/// `value / norm`, 0 for a zero norm (a row of zeros is like nothing).
fn cosine(value: f64, norm: f64) -> f64 {
    if norm > 0.0 {
        value / norm
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> ReferenceSet {
        // Three rows, 2 features, 2 classes, one checkpoint with a bias.
        let features = vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let grads = vec![0.5, -0.5, -0.2, 0.2, 0.1, -0.1];
        ReferenceSet {
            ids: vec!["a".into(), "b".into(), "c".into()],
            labels: vec![1, 0, 1],
            predictions: vec![0, 0, 1],
            classes: 2,
            head: Head {
                embedding: "e".into(),
                embedding_len: 2,
                linear: None,
                no_influence: None,
            },
            embeddings: Vec::new(),
            checkpoints: vec![CheckpointRows {
                model: "m".into(),
                sha256: String::new(),
                lr: 0.5,
                bias: true,
                input: "a".into(),
                logits: "z".into(),
                features_len: 2,
                features,
                grads,
            }],
            model_sha256: String::new(),
            source_sha256: String::new(),
            self_influence: Vec::new(),
            by_self_influence: Vec::new(),
            embedding_norms: Vec::new(),
            grad_norms: Vec::new(),
            inputs: source::Inputs::Rows(Vec::new()),
            index: HashMap::new(),
            loaded: false,
        }
        .finish()
    }

    #[test]
    fn influence_is_the_last_layers_gradient_product_and_self_influence_its_diagonal() {
        let s = set();
        for i in 0..3 {
            let q = vec![(s.checkpoints[0].a(i).to_vec(), s.checkpoints[0].g(i, 2).to_vec())];
            let inf = s.influence(&q, false);
            assert!(
                (inf[i] - s.self_influence[i]).abs() < 1e-6,
                "{inf:?} {:?}",
                s.self_influence
            );
            // Row 0 against row 2: lr (a.a' + 1)(g.g') = 0.5 * (1 + 1) * (0.05 + 0.05).
            if i == 0 {
                assert!((inf[2] - 0.1).abs() < 1e-7, "{inf:?}");
            }
            let cos = s.influence(&q, true);
            assert!(
                (cos[i] - 0.5).abs() < 1e-6,
                "the cosine form of a row with itself is lr: {cos:?}"
            );
        }
        assert_eq!(s.suspects(None).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(s.suspects(Some(&[false, true])).collect::<Vec<_>>(), vec![0, 2]);
    }

    #[test]
    fn similar_rows_come_in_order_and_respect_the_label_filter() {
        let s = set();
        let q = Query {
            embedding: vec![1.0, 0.1],
            checkpoints: vec![],
        };
        let best = s.similar(&q, Metric::Cosine, None, 2);
        assert_eq!(best.iter().map(|b| b.0).collect::<Vec<_>>(), vec![0, 2]);
        let near = s.similar(&q, Metric::L2, Some(&[true, false]), 5);
        assert_eq!(near.len(), 1);
        assert_eq!(near[0].0, 1);
        assert!((near[0].1 - (1.0f64 + 0.81).sqrt()).abs() < 1e-6, "{near:?}");
    }

    #[test]
    fn the_loss_gradient_is_softmax_minus_onehot() {
        let g = loss_gradient(&[0.0, 0.0], 1);
        assert_eq!(g, vec![0.5, -0.5]);
    }
}
