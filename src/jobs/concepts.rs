//! Concept and layer questions as jobs: TCAV (does the model use a concept for a class?) and
//! layer information (what does each layer know about a label?). Each composes a concept set or
//! the reference set (examples/), the passes (the runtime: one forward pass with the layers as
//! outputs, one backward pass to the layers) and the estimators (explain/tcav.rs,
//! explain/layer_information.rs).

use std::sync::Arc;

use base64::Engine;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use utoipa::ToSchema;

use crate::audit::Receipt;
use crate::examples::concepts::ConceptSet;
use crate::examples::source::{rows_tensor, Inputs};
use crate::examples::ReferenceSet;
use crate::executor::Task;
use crate::explain::layer_information as info;
use crate::explain::one_hot;
use crate::explain::tcav::{self, CavKind};
use crate::runtime::preprocess::InputError;
use crate::runtime::sessions::Sizing;
use crate::runtime::{JobContext, LoadedModel, RuntimeError, Tensor, WorkerRuntime};

/// p-values below this are significant (tensorflow/tcav's `min_p_val`).
pub const SIGNIFICANCE: f64 = 0.05;

/// A checked TCAV request.
#[derive(Debug, Clone)]
pub struct TcavTask {
    /// The model.
    pub model: Arc<LoadedModel>,
    /// The concept's examples.
    pub concept: ConceptSet,
    /// Where random sets and the class's inputs come from.
    pub reference: Arc<ReferenceSet>,
    /// The class (index).
    pub target: usize,
    /// The layers, shallow to deep.
    pub layers: Vec<String>,
    /// Random sets the concept is tested against (and random CAVs scored).
    pub runs: usize,
    /// Examples of the concept and of each random set.
    pub examples: usize,
    /// The class's inputs scored, at most.
    pub class_examples: usize,
    /// How CAVs are found.
    pub cav: CavKind,
    /// Seed of every draw.
    pub seed: u64,
    /// Whether the answer carries the first run's unit CAV per layer.
    pub include_cavs: bool,
    /// Largest image decoded.
    pub max_pixels: u64,
}

/// One layer's TCAV result.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TcavLayer {
    /// The layer.
    pub layer: String,
    /// Mean TCAV score of the concept's CAVs (one per random set).
    pub score: f64,
    /// Their standard deviation (`ddof = 1`).
    pub score_std: f64,
    /// Mean TCAV score of random CAVs (each random set against the next).
    pub random_score: f64,
    /// Their standard deviation.
    pub random_score_std: f64,
    /// Two-sided p-value of Student's t-test between the two lists of scores.
    pub p_value: f64,
    /// `p_value < 0.05`.
    pub significant: bool,
    /// Mean share of examples the concept's CAVs classify right (training accuracy).
    pub cav_accuracy: f64,
    /// The concept's score per random set.
    pub scores: Vec<f64>,
    /// The random CAVs' scores (random set `r + 1` against set `r`, around a ring).
    pub random_scores: Vec<f64>,
    /// With `include_cavs`: the first concept CAV, unit length, over the layer's flattened values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cav: Option<Vec<f64>>,
}

/// A TCAV answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TcavAnswer {
    /// Model name.
    pub model: String,
    /// SHA-256 of the model file.
    pub model_sha256: String,
    /// SHA-256 of the rows the model ran on, as it read them (preprocessed, f32 little-endian: the
    /// concept's and the random sets' rows, then the class's): what the answer rests on.
    pub inputs_sha256: String,
    /// The concept set.
    pub concept: String,
    /// The class.
    pub target: String,
    /// How the CAVs were found.
    pub cav: CavKind,
    /// Seed of the draws.
    pub seed: u64,
    /// Concept examples used.
    pub concept_examples: usize,
    /// The class's reference inputs scored.
    pub class_examples: usize,
    /// Random sets (runs), each of `concept_examples` reference rows.
    pub runs: usize,
    /// The ids of each random set's rows.
    pub random_sets: Vec<Vec<String>>,
    /// Per layer, shallow to deep.
    pub layers: Vec<TcavLayer>,
    /// Where the time went.
    pub stats: TcavStats,
    /// A bar chart of the scores per layer (base64 PNG).
    pub chart_png: String,
    /// The audit record written for this answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_record: Option<Receipt>,
}

/// Where a TCAV run's time went, milliseconds on the worker.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct TcavStats {
    /// Reading and decoding the examples.
    pub decode_ms: f64,
    /// The forward pass with the layers as outputs (the concept's and the random sets' rows).
    pub activations_ms: f64,
    /// The backward pass to the layers (the class's rows).
    pub gradients_ms: f64,
    /// Fitting and scoring every CAV, the t-tests.
    pub cavs_ms: f64,
}

fn ms(since: std::time::Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// `amount` distinct indices of `0..n` drawn by `rng` (a partial Fisher-Yates shuffle).
fn draw(rng: &mut ChaCha8Rng, n: usize, amount: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    let amount = amount.min(n);
    for i in 0..amount {
        let j = rng.random_range(i..n);
        all.swap(i, j);
    }
    all.truncate(amount);
    all
}

/// SHA-256 of the tensors' values, f32 little-endian, one after another (the audit record's
/// evidence of the rows a question ran on).
fn rows_sha256(tensors: &[&Tensor]) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = Vec::with_capacity(4 * 4096);
    for t in tensors {
        for chunk in t.as_f32().unwrap_or(&[]).chunks(4096) {
            buffer.clear();
            buffer.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            hasher.update(&buffer);
        }
    }
    hex::encode(hasher.finalize())
}

fn input_error(e: String) -> RuntimeError {
    InputError::BadFeatures(e).into()
}

impl Task for TcavTask {
    type Output = TcavAnswer;

    fn run(self, rt: &mut WorkerRuntime, ctx: &JobContext) -> Result<TcavAnswer, RuntimeError> {
        let t = self;
        let model = &t.model;
        let mut rng = ChaCha8Rng::seed_from_u64(t.seed);
        // Units of progress: the two passes, then each layer's CAVs.
        ctx.plan(2 + t.layers.len() * 2 * t.runs);
        let concept_rows = draw(&mut rng, t.concept.len(), t.examples);
        let examples = concept_rows.len();
        let reference = &t.reference;
        // `runs` random sets of the concept's size from the reference set.
        let sets: Vec<Vec<usize>> = (0..t.runs).map(|_| draw(&mut rng, reference.len(), examples)).collect();
        let mut pool: Vec<usize> = sets.iter().flatten().copied().collect();
        pool.sort_unstable();
        pool.dedup();
        let class_rows: Vec<usize> = (0..reference.len())
            .filter(|&i| reference.labels[i] as usize == t.target)
            .collect();
        let class_rows: Vec<usize> = draw(&mut rng, class_rows.len(), t.class_examples)
            .into_iter()
            .map(|i| class_rows[i])
            .collect();
        ctx.checkpoint()?;
        let mut stats = TcavStats::default();
        let began = std::time::Instant::now();
        let concept_input =
            rows_tensor(&t.concept.inputs, &t.concept.ids, &concept_rows, model, t.max_pixels).map_err(input_error)?;
        let random_input =
            rows_tensor(&reference.inputs, &reference.ids, &pool, model, t.max_pixels).map_err(input_error)?;
        let class_input =
            rows_tensor(&reference.inputs, &reference.ids, &class_rows, model, t.max_pixels).map_err(input_error)?;
        let forward_input = Tensor::concat_rows(vec![concept_input, random_input])
            .ok_or_else(|| input_error("the concept's and the reference set's inputs differ in shape".into()))?;
        let inputs_sha256 = rows_sha256(&[&forward_input, &class_input]);
        stats.decode_ms = ms(began);
        let began = std::time::Instant::now();
        // One forward pass that outputs only the layers and stops at the deepest.
        let acts = rt.layer_activation_rows(model, &t.layers, &forward_input, Sizing::budget())?;
        stats.activations_ms = ms(began);
        ctx.advance(1);
        ctx.checkpoint()?;
        let began = std::time::Instant::now();
        let classes = model.spec.labels.len().max(1);
        // Only the layers' gradients: the pass stops there.
        let grads = rt.gradients_at_layers(
            model,
            &t.layers,
            &class_input,
            &one_hot(&vec![t.target; class_rows.len()], classes),
            Sizing::budget(),
        )?;
        stats.gradients_ms = ms(began);
        ctx.advance(1);
        let began = std::time::Instant::now();
        // Where each random set's rows are among the forward pass's rows.
        let at = |row: &usize| examples + pool.binary_search(row).unwrap_or(0);
        let sets_at: Vec<Vec<usize>> = sets.iter().map(|s| s.iter().map(at).collect()).collect();
        let concept_at: Vec<usize> = (0..examples).collect();
        let mut layers = Vec::with_capacity(t.layers.len());
        for ((name, act), grad) in t.layers.iter().zip(&acts).zip(&grads) {
            let rows = act.view();
            let pairs = match t.cav {
                CavKind::Logistic => tcav::cav_pairs(&concept_at, &sets_at),
                CavKind::MeanDifference => Vec::new(),
            };
            let ex = tcav::Examples::new(rows, &pairs, || ctx.checkpoint())?;
            let grads = grad.view();
            let (mut scores, mut random_scores, mut accuracy) = (Vec::new(), Vec::new(), 0.0);
            let mut first = None;
            for r in 0..t.runs {
                ctx.checkpoint()?;
                let cav = tcav::fit(&ex, &concept_at, &sets_at[r], t.cav);
                scores.push(tcav::score(&grads, &cav.weights));
                accuracy += cav.accuracy / t.runs as f64;
                if r == 0 && t.include_cavs {
                    first = Some(cav.unit());
                }
                ctx.advance(1);
                // Random CAVs around a ring (set r + 1 against set r): each set is once the
                // positive side and once the negative, so no one set's quirks tilt them all.
                let random = tcav::fit(&ex, &sets_at[(r + 1) % t.runs], &sets_at[r], t.cav);
                random_scores.push(tcav::score(&grads, &random.weights));
                ctx.advance(1);
            }
            let (score, score_std) = tcav::mean_std(&scores);
            let (random_score, random_score_std) = tcav::mean_std(&random_scores);
            let p_value = tcav::t_test(&scores, &random_scores);
            layers.push(TcavLayer {
                layer: name.clone(),
                score,
                score_std,
                random_score,
                random_score_std,
                p_value,
                significant: p_value < SIGNIFICANCE,
                cav_accuracy: accuracy,
                scores,
                random_scores,
                cav: first,
            });
        }
        stats.cavs_ms = ms(began);
        let target = model
            .spec
            .labels
            .get(t.target)
            .cloned()
            .unwrap_or_else(|| t.target.to_string());
        let bars: Vec<crate::render::concepts::LayerBar> = layers
            .iter()
            .map(|l| crate::render::concepts::LayerBar {
                layer: l.layer.clone(),
                score: l.score,
                std: l.score_std,
                random: l.random_score,
                significant: l.significant,
            })
            .collect();
        let title = format!("TCAV: concept `{}` for class `{target}`", t.concept.name);
        let png = crate::render::png(&crate::render::concepts::tcav_chart(&title, &bars));
        Ok(TcavAnswer {
            model: model.name.clone(),
            model_sha256: model.sha256.clone(),
            inputs_sha256,
            concept: t.concept.name.clone(),
            target,
            cav: t.cav,
            seed: t.seed,
            concept_examples: examples,
            class_examples: class_rows.len(),
            runs: t.runs,
            random_sets: sets
                .iter()
                .map(|s| s.iter().map(|&i| reference.ids[i].clone()).collect())
                .collect(),
            layers,
            stats,
            chart_png: base64::engine::general_purpose::STANDARD.encode(png),
            audit_record: None,
        })
    }
}

/// Where layer information's labelled rows come from.
#[derive(Debug, Clone)]
pub enum Labelled {
    /// The reference set, labelled by class.
    Reference(Arc<ReferenceSet>),
    /// A concept set, labelled by attribute.
    Concept(ConceptSet),
}

/// A checked layer-information request.
#[derive(Debug, Clone)]
pub struct LayerInformationTask {
    /// The model.
    pub model: Arc<LoadedModel>,
    /// The rows and their labels.
    pub rows: Labelled,
    /// The layers, in graph order.
    pub layers: Vec<String>,
    /// Each layer's channel axis (where the pooling keeps values).
    pub channel_axes: Vec<usize>,
    /// Rows used, at most.
    pub max_rows: usize,
    /// Seed of the draw, the jitter and the shuffled labels.
    pub seed: u64,
    /// Largest image decoded.
    pub max_pixels: u64,
}

/// One layer's information.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LayerInformation {
    /// The layer.
    pub layer: String,
    /// Pooled values per row (channels).
    pub channels: usize,
    /// Estimated mutual information with the labels, nats.
    pub mutual_information: f64,
    /// The same estimate with the labels shuffled: the estimator's floor for this layer.
    pub shuffled: f64,
    /// Co-information with the next layer, `I(this;Y) + I(next;Y) - I(this,next;Y)` (nats):
    /// redundancy minus synergy; absent for the last layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redundancy_with_next: Option<f64>,
}

/// A layer-information answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LayerInformationAnswer {
    /// Model name.
    pub model: String,
    /// SHA-256 of the model file.
    pub model_sha256: String,
    /// SHA-256 of the rows the model ran on, as it read them (preprocessed, f32 little-endian).
    pub inputs_sha256: String,
    /// `reference` or the concept set's name.
    pub source: String,
    /// Rows used.
    pub rows: usize,
    /// Label names, in index order.
    pub labels: Vec<String>,
    /// Plug-in entropy of the labels, nats: the most any layer can know.
    pub label_entropy: f64,
    /// What the estimator gives for a layer that separates the labels, `psi(N) - <psi(N_y)>`.
    pub estimator_ceiling: f64,
    /// Neighbours counted (k).
    pub neighbours: usize,
    /// Seed.
    pub seed: u64,
    /// Per layer, in graph order.
    pub layers: Vec<LayerInformation>,
    /// The curve over layers (base64 PNG).
    pub chart_png: String,
    /// The audit record written for this answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_record: Option<Receipt>,
}

/// Each row's mean over every axis but the batch and `channel_axis` (a 2-D tensor as it is).
pub fn pooled(t: &Tensor, channel_axis: usize) -> (Vec<f64>, usize) {
    let values = t.as_f32().unwrap_or(&[]);
    let shape = &t.shape;
    if shape.len() <= 2 || channel_axis == 0 || channel_axis >= shape.len() {
        let width = t.row_len();
        return (values.iter().map(|&v| v as f64).collect(), width);
    }
    let rows = shape[0];
    let channels = shape[channel_axis];
    let inner: usize = shape[channel_axis + 1..].iter().product();
    let outer: usize = shape[1..channel_axis].iter().product();
    let per_row = t.row_len();
    let count = (inner * outer).max(1) as f64;
    let mut out = vec![0.0; rows * channels];
    for r in 0..rows {
        let row = &values[r * per_row..(r + 1) * per_row];
        for o in 0..outer {
            for c in 0..channels {
                let base = (o * channels + c) * inner;
                out[r * channels + c] += row[base..base + inner].iter().map(|&v| v as f64).sum::<f64>();
            }
        }
    }
    for v in &mut out {
        *v /= count;
    }
    (out, channels)
}

impl Task for LayerInformationTask {
    type Output = LayerInformationAnswer;

    fn run(self, rt: &mut WorkerRuntime, ctx: &JobContext) -> Result<LayerInformationAnswer, RuntimeError> {
        let t = self;
        let model = &t.model;
        let mut rng = ChaCha8Rng::seed_from_u64(t.seed);
        let (inputs, ids, all_labels, names, source): (&Inputs, &[String], &[u32], Vec<String>, String) = match &t.rows
        {
            Labelled::Reference(set) => (
                &set.inputs,
                &set.ids,
                &set.labels,
                model.spec.labels.clone(),
                "reference".into(),
            ),
            Labelled::Concept(set) => (
                &set.inputs,
                &set.ids,
                &set.labels,
                set.attributes.clone(),
                set.name.clone(),
            ),
        };
        ctx.plan(1 + 2 * t.layers.len());
        let mut rows = draw(&mut rng, ids.len(), t.max_rows);
        rows.sort_unstable();
        let labels: Vec<u32> = rows.iter().map(|&r| all_labels[r]).collect();
        let mut shuffled = labels.clone();
        for i in (1..shuffled.len()).rev() {
            let j = rng.random_range(0..=i);
            shuffled.swap(i, j);
        }
        let input = rows_tensor(inputs, ids, &rows, model, t.max_pixels).map_err(input_error)?;
        let inputs_sha256 = rows_sha256(&[&input]);
        let acts = rt.layer_activations(model, &t.layers, &input, Sizing::budget())?;
        ctx.advance(1);
        let prepared: Vec<(Vec<f64>, usize)> = acts
            .iter()
            .zip(&t.channel_axes)
            .enumerate()
            .map(|(i, (a, &axis))| {
                let (values, width) = pooled(a, axis);
                // One jitter stream per layer.
                (info::prepare(&values, width, t.seed.wrapping_add(i as u64)), width)
            })
            .collect();
        let mut mi = Vec::with_capacity(prepared.len());
        let mut floor = Vec::with_capacity(prepared.len());
        for (values, width) in &prepared {
            ctx.checkpoint()?;
            mi.push(info::mutual_information(values, *width, &labels, info::NEIGHBOURS));
            floor.push(info::mutual_information(values, *width, &shuffled, info::NEIGHBOURS));
            ctx.advance(1);
        }
        let mut layers = Vec::with_capacity(prepared.len());
        for (i, name) in t.layers.iter().enumerate() {
            ctx.checkpoint()?;
            let redundancy = prepared.get(i + 1).map(|(next, wn)| {
                let (this, wt) = &prepared[i];
                let joint = info::side_by_side(this, *wt, next, *wn);
                let both = info::mutual_information(&joint, wt + wn, &labels, info::NEIGHBOURS);
                mi[i] + mi[i + 1] - both
            });
            ctx.advance(1);
            layers.push(LayerInformation {
                layer: name.clone(),
                channels: prepared[i].1,
                mutual_information: mi[i],
                shuffled: floor[i],
                redundancy_with_next: redundancy,
            });
        }
        let label_entropy = info::entropy(&labels);
        let mut counts = std::collections::HashMap::new();
        for l in &labels {
            *counts.entry(*l).or_insert(0usize) += 1;
        }
        let kept: Vec<usize> = labels.iter().map(|l| counts[l]).filter(|&c| c > 1).collect();
        let estimator_ceiling = match kept.len() {
            0 => 0.0,
            n => info::digamma(n as f64) - kept.iter().map(|&c| info::digamma(c as f64)).sum::<f64>() / n as f64,
        };
        let points: Vec<crate::render::concepts::LayerPoint> = layers
            .iter()
            .map(|l| crate::render::concepts::LayerPoint {
                layer: l.layer.clone(),
                information: l.mutual_information,
                shuffled: l.shuffled,
                redundancy: l.redundancy_with_next,
            })
            .collect();
        let title = format!("What each layer knows about `{source}` labels (nats)");
        let png = crate::render::png(&crate::render::concepts::information_chart(
            &title,
            &points,
            label_entropy,
        ));
        Ok(LayerInformationAnswer {
            model: model.name.clone(),
            model_sha256: model.sha256.clone(),
            inputs_sha256,
            source,
            rows: rows.len(),
            labels: names,
            label_entropy,
            estimator_ceiling,
            neighbours: info::NEIGHBOURS,
            seed: t.seed,
            layers,
            chart_png: base64::engine::general_purpose::STANDARD.encode(png),
            audit_record: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_keeps_the_channel_axis() {
        // Two rows of [2 channels, 2 x 1]: channel means.
        let t = Tensor::f32(vec![2, 2, 2, 1], vec![1.0, 3.0, 10.0, 20.0, 0.0, 0.0, 4.0, 6.0]);
        let (v, w) = pooled(&t, 1);
        assert_eq!((v, w), (vec![2.0, 15.0, 0.0, 5.0], 2));
        // Channels last: [rows, h, w, c].
        let t = Tensor::f32(vec![1, 2, 1, 2], vec![1.0, 10.0, 3.0, 20.0]);
        assert_eq!(pooled(&t, 3), (vec![2.0, 15.0], 2));
    }
}
