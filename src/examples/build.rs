//! Running a reference set through its model (and the manifest's further checkpoints) once,
//! batched (as a job: `jobs::reference`); and whether a kept set is still the one the model, the
//! checkpoints and the reference files would give.

use std::sync::Arc;

use super::source::{self, Listing};
use super::{loss_gradient, CheckpointRows, ReferenceSet};
use crate::config::Config;
use crate::onnx::head::{Head, Linear};
use crate::runtime::gradients::GradientCache;
use crate::runtime::manifest::ReferenceSpec;
use crate::runtime::sessions::Sizing;
use crate::runtime::{JobContext, LoadedModel, Registry, RuntimeError, Tensor, WorkerRuntime};

/// Rows decoded and run per step (each step runs as many passes as the pass budget needs).
const STEP_ROWS: usize = 256;

/// What one build runs: the model, its head, each checkpoint with its learning rate and head,
/// and the rows.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The model the set belongs to.
    pub model: Arc<LoadedModel>,
    /// Its embedding and last linear layer.
    pub head: Head,
    /// The model itself first, then the manifest's checkpoints (empty without a linear head).
    pub checkpoints: Vec<(Arc<LoadedModel>, f64, Linear)>,
    /// The rows.
    pub listing: Listing,
    /// Largest image accepted (`max_image_pixels`).
    pub max_pixels: u64,
}

impl Plan {
    /// Works out what to build for `model` (whose manifest has `[reference]`), refusing a set that
    /// would pass `max_reference_bytes`.
    pub fn new(
        model: &Arc<LoadedModel>,
        spec: &ReferenceSpec,
        registry: &Registry,
        gradients: &GradientCache,
        config: &Config,
    ) -> Result<Self, String> {
        let head = gradients.head(model, spec.embedding_layer.as_deref())?;
        let mut checkpoints = Vec::new();
        if let Some(linear) = &head.linear {
            checkpoints.push((model.clone(), spec.lr, linear.clone()));
            for c in &spec.checkpoints {
                let other = registry
                    .get(&c.model)
                    .ok_or_else(|| format!("reference.checkpoints: no model named `{}` is loaded", c.model))?;
                if other.spec.labels != model.spec.labels || other.spec.input != model.spec.input {
                    return Err(format!(
                        "reference.checkpoints: `{}` differs from `{}` in its labels or input",
                        c.model, model.name
                    ));
                }
                let theirs = gradients
                    .head(other, None)?
                    .linear
                    .ok_or_else(|| format!("reference.checkpoints: `{}` has no linear last layer", c.model))?;
                if theirs.input_len != linear.input_len {
                    return Err(format!(
                        "reference.checkpoints: `{}`'s last layer reads {} values, `{}`'s {}",
                        c.model, theirs.input_len, model.name, linear.input_len
                    ));
                }
                checkpoints.push((other.clone(), c.lr, theirs));
            }
        } else {
            tracing::info!(model = %model.name, reason = ?head.no_influence, "reference set without influence");
        }
        let listing = source::read(model, spec, config.max_reference_rows)?;
        let plan = Self {
            model: model.clone(),
            head,
            checkpoints,
            listing,
            max_pixels: config.max_image_pixels,
        };
        let bytes = plan.bytes();
        if bytes > config.max_reference_bytes {
            return Err(format!(
                "the reference set would hold {} MiB; the limit is {} MiB (max_reference_bytes)",
                bytes.div_ceil(1 << 20),
                config.max_reference_bytes >> 20
            ));
        }
        Ok(plan)
    }

    /// Whether the embedding is kept apart from checkpoint 0's last-layer input.
    fn separate_embedding(&self) -> bool {
        self.head.linear.as_ref().is_none_or(|l| l.input != self.head.embedding)
    }

    /// Bytes the built set holds.
    pub fn bytes(&self) -> u64 {
        let classes = self.model.spec.labels.len();
        let mut per_row = if self.separate_embedding() {
            self.head.embedding_len
        } else {
            0
        };
        for (_, _, l) in &self.checkpoints {
            per_row = per_row.saturating_add(l.input_len).saturating_add(classes);
        }
        let floats = (self.listing.ids.len() as u64).saturating_mul(per_row as u64);
        super::held_bytes(&self.listing.ids, floats, self.checkpoints.len())
    }

    /// Whether `kept` was computed from exactly this plan's model, checkpoints, head and rows.
    pub fn matches(&self, kept: &ReferenceSet) -> Result<(), String> {
        let same_checkpoints = kept.checkpoints.len() == self.checkpoints.len()
            && kept
                .checkpoints
                .iter()
                .zip(&self.checkpoints)
                .all(|(k, (m, lr, _))| k.model == m.name && k.sha256 == m.sha256 && k.lr == *lr);
        let why = if kept.model_sha256 != self.model.sha256 {
            "the model file changed"
        } else if kept.source_sha256 != self.listing.sha256 {
            "the reference files changed"
        } else if kept.head != self.head {
            "the embedding layer changed"
        } else if !same_checkpoints {
            "the checkpoints changed"
        } else {
            return Ok(());
        };
        Err(why.into())
    }
}

impl Plan {
    /// Builds the set on a worker's sessions, polling `ctx` between passes.
    pub fn build(self, rt: &mut WorkerRuntime, ctx: &JobContext) -> Result<ReferenceSet, RuntimeError> {
        let plan = self;
        let model = &plan.model;
        let n = plan.listing.ids.len();
        let classes = model.spec.labels.len();
        ctx.plan(n);
        let mut out = Collected {
            embeddings: Vec::new(),
            predictions: Vec::with_capacity(n),
            rows: plan.checkpoint_rows(n, classes),
        };
        // The next steps' images are decoded on other threads (one per core, up to 4; step `i` on
        // thread `i % threads`) while this step's passes run.
        let listing = &plan.listing;
        // The same outputs a query's scoring pass asks for: one derived session serves both.
        let first_pass = plan.head.outputs(&model.spec.output);
        let steps: Vec<(usize, usize)> = (0..n).step_by(STEP_ROWS).map(|s| (s, (s + STEP_ROWS).min(n))).collect();
        let threads = std::thread::available_parallelism().map_or(1, |p| p.get()).clamp(1, 4);
        std::thread::scope(|scope| -> Result<(), RuntimeError> {
            let mut receivers = Vec::with_capacity(threads);
            for t in 0..threads {
                let (send, decoded) = std::sync::mpsc::sync_channel::<Result<Tensor, String>>(1);
                receivers.push(decoded);
                let mine: Vec<(usize, usize)> = steps.iter().copied().skip(t).step_by(threads).collect();
                scope.spawn(move || {
                    for (start, end) in mine {
                        // A closed channel: the build stopped (an error, or cancelled).
                        if send.send(listing.batch(model, start, end, plan.max_pixels)).is_err() {
                            return;
                        }
                    }
                });
            }
            for (i, &(start, end)) in steps.iter().enumerate() {
                ctx.checkpoint()?;
                let batch = receivers[i % threads]
                    .recv()
                    .map_err(|_| plan.fail("the decoding thread stopped".into()))?
                    .map_err(|e| plan.fail(e))?;
                plan.run_step(rt, &first_pass, &batch, (start, end), &mut out)?;
                ctx.advance(end - start);
            }
            Ok(())
        })?;
        Ok(ReferenceSet::new(
            plan.listing,
            out.predictions,
            classes,
            plan.head,
            out.embeddings,
            out.rows,
            model.sha256.clone(),
        ))
    }

    /// Each checkpoint's empty rows, sized for `n` rows.
    fn checkpoint_rows(&self, n: usize, classes: usize) -> Vec<CheckpointRows> {
        self.checkpoints
            .iter()
            .map(|(m, lr, l)| CheckpointRows {
                model: m.name.clone(),
                sha256: m.sha256.clone(),
                lr: *lr,
                bias: l.bias,
                input: l.input.clone(),
                logits: l.logits.clone(),
                features_len: l.input_len,
                features: Vec::with_capacity(n * l.input_len),
                grads: Vec::with_capacity(n * classes),
            })
            .collect()
    }

    /// Runs rows `start..end` (`batch`): the model's predictions and embedding from `first_pass`,
    /// then each checkpoint's last-layer input and loss gradient (checkpoint 0 reuses the first pass).
    fn run_step(
        &self,
        rt: &mut WorkerRuntime,
        first_pass: &[String],
        batch: &Tensor,
        (start, end): (usize, usize),
        out: &mut Collected,
    ) -> Result<(), RuntimeError> {
        let model = &self.model;
        let classes = model.spec.labels.len();
        let take = |outs: &std::collections::HashMap<String, Tensor>, name: &str, len: usize| {
            let t = outs
                .get(name)
                .ok_or_else(|| self.fail(format!("the model gave no `{name}`")))?;
            let values = t.as_f32().unwrap_or(&[]).to_vec();
            if values.len() != (end - start) * len {
                return Err(self.fail(format!(
                    "`{name}` holds {} values for {} rows, {len} each were expected",
                    values.len(),
                    end - start
                )));
            }
            Ok(values)
        };
        let mut outs = rt.run_with_outputs(model, first_pass, batch, Sizing::budget())?;
        let scores = take(&outs, &model.spec.output, classes)?;
        out.predictions.extend(scores.chunks(classes).map(|r| argmax(r) as u32));
        if self.separate_embedding() {
            out.embeddings
                .extend(take(&outs, &self.head.embedding, self.head.embedding_len)?);
        }
        for (k, ((m, _, l), rows)) in self.checkpoints.iter().zip(&mut out.rows).enumerate() {
            if k > 0 {
                outs = rt.run_with_outputs(m, &[l.input.clone(), l.logits.clone()], batch, Sizing::budget())?;
            }
            rows.features.extend(take(&outs, &l.input, l.input_len)?);
            let logits = take(&outs, &l.logits, classes)?;
            for (z, &label) in logits.chunks(classes).zip(&self.listing.labels[start..end]) {
                rows.grads.extend(loss_gradient(z, label as usize));
            }
        }
        Ok(())
    }

    /// A build failure, naming the model.
    fn fail(&self, message: String) -> RuntimeError {
        RuntimeError::Inference {
            model: self.model.name.clone(),
            message,
        }
    }
}

/// What a build collects, step by step.
struct Collected {
    embeddings: Vec<f32>,
    predictions: Vec<u32>,
    rows: Vec<CheckpointRows>,
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .map_or(0, |(i, _)| i)
}
