//! The methods' workbench: a job's model passes through the worker's sessions, counted and timed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{one_hot, zeroed_batch, ExplainJob, JobContext, Primed};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::predict::{decided, probabilities};
use crate::runtime::sessions::{GradientPass, Sizing};
use crate::runtime::{LoadedModel, RuntimeError, Tensor, WorkerRuntime};

/// The methods' workbench: batched passes through the worker's sessions, counted.
pub struct Cx<'a> {
    pub(super) rt: &'a mut WorkerRuntime,
    pub(super) job_ctx: &'a JobContext,
    pub(super) model: Arc<LoadedModel>,
    pub(super) rows: usize,
    pub(super) runs: usize,
    pub(super) gradient_rows: usize,
    pub(super) primed: Option<Primed>,
    /// The further outputs of the pass that scored the input ([`Method::with_scores`]).
    pub(super) scored: Option<std::collections::HashMap<String, Tensor>>,
    /// A post-NMS detector's detections of the explained input: each forward pass's scores are
    /// read at their matches ([`crate::common::detection_targets::matched`]).
    pub(super) matched: Option<Vec<crate::runtime::detect::Detection>>,
    /// Time inside ONNX Runtime runs so far.
    pub(super) model_time: Duration,
    /// Values in one row of the job's input (passes of a short text fit more rows).
    pub(super) row_len: usize,
}

impl<'a> Cx<'a> {
    /// A workbench for a task other than an explanation (fitting a model's patterns as a job of
    /// its own): `model`'s passes, counted into `job_ctx`'s progress.
    pub fn new(rt: &'a mut WorkerRuntime, job_ctx: &'a JobContext, model: Arc<LoadedModel>) -> Self {
        Self {
            rt,
            job_ctx,
            model,
            rows: 0,
            runs: 0,
            gradient_rows: 0,
            primed: None,
            scored: None,
            matched: None,
            model_time: Duration::ZERO,
            // Rows of the model's full size: the pass budget as its input shape says.
            row_len: usize::MAX,
        }
    }

    /// Fails once the job is past its deadline or cancelled: for a method's long loops that run
    /// no passes (every pass checks this itself).
    pub fn checkpoint(&self) -> Result<(), RuntimeError> {
        self.job_ctx.checkpoint()
    }

    /// The class the model decides for each of `rows` (tabular feature rows, batched through
    /// [`Cx::forward`]), with the row's class probabilities.
    pub fn decide(&mut self, rows: &[Vec<f32>]) -> Result<Vec<(usize, Vec<f64>)>, RuntimeError> {
        let Some(width) = rows.first().map(Vec::len) else {
            return Ok(Vec::new());
        };
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let scores = self.forward(&Tensor::f32(vec![rows.len(), width], flat))?.to_f64();
        let classes = (scores.len() / rows.len()).max(1);
        Ok(scores
            .chunks(classes)
            .map(|row| {
                let probs = probabilities(&self.model, row);
                (decided(&probs, None), probs)
            })
            .collect())
    }

    /// Scores of the model's output for `input` rows.
    pub fn forward(&mut self, input: &Tensor) -> Result<Tensor, RuntimeError> {
        self.job_ctx.checkpoint()?;
        let model = self.model.clone();
        let mut outputs = self.passes(usize::MAX, false, |rt, sizing| rt.run_sized(&model, input, sizing))?;
        let scores = outputs
            .remove(&model.spec.output)
            .ok_or_else(|| RuntimeError::Inference {
                model: model.name.clone(),
                message: format!("output `{}` missing", model.spec.output),
            })?;
        // A graph that changes the batch (pads or crops the batch axis) answers another number of
        // rows than it was given: refuse it here rather than index past its answer. (A graph that
        // fixes its batch at one row is found at load and runs one row per pass.)
        if scores.rows() != input.rows() {
            return Err(RuntimeError::UnsupportedModel {
                model: model.name.clone(),
                message: format!(
                    "the model answered {} rows for {}: its graph changes the batch size, so explaind cannot tell which answer belongs to which input",
                    scores.rows(),
                    input.rows()
                ),
            });
        }
        match &self.matched {
            Some(reference) => Ok(crate::common::detection_targets::matched(
                &model, reference, &outputs, scores,
            )?),
            None => Ok(scores),
        }
    }

    /// Every output of `model` (this job's model, or another loaded one: a checkpoint) on `input`
    /// rows, with the tensors `names` as further outputs.
    pub fn forward_with(
        &mut self,
        model: &LoadedModel,
        names: &[String],
        input: &Tensor,
    ) -> Result<std::collections::HashMap<String, Tensor>, RuntimeError> {
        self.job_ctx.checkpoint()?;
        self.passes(usize::MAX, false, |rt, sizing| {
            rt.run_with_outputs(model, names, input, sizing)
        })
    }

    /// The pattern statistics of this job's model on `input` rows, one row per pass
    /// ([`WorkerRuntime::run_statistics`]; `row_bytes`: what they add to a forward row).
    pub fn pattern_statistics(
        &mut self,
        input: &Tensor,
        row_bytes: u64,
    ) -> Result<std::collections::HashMap<String, Tensor>, RuntimeError> {
        self.job_ctx.checkpoint()?;
        let model = self.model.clone();
        self.passes(usize::MAX, false, |rt, sizing| {
            rt.run_statistics(&model, input, row_bytes, sizing)
        })
    }

    /// The further outputs of the pass that scored the input, once ([`Method::with_scores`]).
    pub fn scored(&mut self) -> Option<std::collections::HashMap<String, Tensor>> {
        self.scored.take()
    }

    /// Another loaded model (a checkpoint of this one).
    pub fn loaded(&self, name: &str) -> Result<Arc<LoadedModel>, RuntimeError> {
        self.rt.model(name)
    }

    /// Gradients for `input` rows with per-row `weights`, at most `chunk` rows a pass (the runtime
    /// cuts the passes by the pass budget; DeepLIFT's pairs stay in one pass whatever the budget).
    pub fn gradients(
        &mut self,
        layers: &[String],
        rules: RuleSet,
        input: &Tensor,
        weights: &Tensor,
        chunk: usize,
    ) -> Result<GradientPass, RuntimeError> {
        if let Some(primed) = self.primed.take_if(|p| p.answers(layers, rules, input, weights)) {
            return Ok(primed.pass);
        }
        let model = self.model.clone();
        self.passes(chunk, true, |rt, sizing| {
            rt.gradients(&model, layers, rules, input, weights, sizing)
        })
    }

    /// The activations and gradients of `layers` for `input` rows with per-row `weights`, from a
    /// backward pass that stops at the layers (the pass's `input_grad` holds no values), at most
    /// `chunk` rows a pass.
    pub fn layer_gradients(
        &mut self,
        layers: &[String],
        input: &Tensor,
        weights: &Tensor,
        chunk: usize,
    ) -> Result<GradientPass, RuntimeError> {
        if let Some(primed) = self
            .primed
            .take_if(|p| p.answers(layers, RuleSet::Exact, input, weights))
        {
            return Ok(primed.pass);
        }
        let model = self.model.clone();
        self.passes(chunk, true, |rt, sizing| {
            rt.layer_gradients(&model, layers, input, weights, sizing)
        })
    }

    /// Input gradients of `sum(seed * weights)` for `input` rows, `seed` an intermediate tensor
    /// (a layer, weights shaped like it) rather than the model's output.
    pub fn seeded_gradients(
        &mut self,
        seed: &str,
        input: &Tensor,
        weights: &Tensor,
    ) -> Result<GradientPass, RuntimeError> {
        let model = self.model.clone();
        self.passes(usize::MAX, true, |rt, sizing| {
            rt.seeded_gradients(&model, seed, input, weights, sizing)
        })
    }

    /// One pass over the job's (one-row) input that chooses the top prediction inside the graph and
    /// differentiates it: the pass, the position of the output row it chose (a class; a detector's
    /// highest class score), and the input's scores.
    pub(super) fn top_gradients(
        &mut self,
        layers: &[String],
        rules: RuleSet,
        job: &ExplainJob,
    ) -> Result<(GradientPass, usize, Vec<f64>), RuntimeError> {
        self.job_ctx.checkpoint()?;
        self.count(1, 1);
        self.gradient_rows += 1;
        // All-zero weights: the graph weights the row by its top class.
        let width = crate::common::detection_targets::width(&self.model);
        let zeros = Tensor::f32(vec![1, width], vec![0.0; width]);
        let model = self.model.clone();
        // A method's one pass with layers reads only theirs ([`super::method::Method::one_pass`]).
        let pass = self.timed(|rt| match layers {
            [] => rt.gradients(&model, layers, rules, &job.input, &zeros, Sizing::budget()),
            _ => rt.layer_gradients(&model, layers, &job.input, &zeros, Sizing::budget()),
        })?;
        let chosen = pass.chosen.as_ref().and_then(|c| c.first().copied());
        let scores = pass.scores.to_f64();
        let chosen = chosen.ok_or_else(|| RuntimeError::NotDifferentiable {
            model: self.model.name.clone(),
            message: "the backward model cannot rank this model's output".into(),
        })?;
        Ok((pass, chosen, scores))
    }

    /// Streams `rows` rows shaped `like` (one row) through the backward model, `chunk` at a time,
    /// without building them all:
    /// `make(r, buffer)` writes row `r`'s input and returns the class it targets; `take(r, pass, i)`
    /// reads row `r`, which is row `i` of the chunk's `pass`. Memory is one chunk, whatever `rows` is.
    #[allow(clippy::too_many_arguments)] // the pass (layers, rules, row shape), its size, and two closures
    pub fn gradient_stream(
        &mut self,
        layers: &[String],
        rules: RuleSet,
        like: &Tensor,
        rows: usize,
        chunk: usize,
        mut make: impl FnMut(usize, &mut [f32]) -> usize,
        mut take: impl FnMut(usize, &GradientPass, usize),
    ) -> Result<(), RuntimeError> {
        let model = self.model.clone();
        let one = like.shape.clone();
        let n = like.row_len();
        let classes = crate::common::detection_targets::width(&model);
        // The rows of one pass are built at a time, so the stream asks the runtime how many fit.
        let chunk = self.rt.gradient_rows_for(&model, like.row_len()).min(chunk).max(1);
        let mut start = 0;
        while start < rows {
            let end = (start + chunk).min(rows);
            let mut data = zeroed_batch(&model.name, (end - start) * n)?;
            let mut indices = Vec::with_capacity(end - start);
            for r in start..end {
                let i = r - start;
                indices.push(make(r, &mut data[i * n..(i + 1) * n]).min(classes - 1));
            }
            let mut shape = one.clone();
            shape[0] = end - start;
            let input = Tensor::f32(shape, data);
            let pass = self.gradients(layers, rules, &input, &one_hot(&indices, classes), chunk)?;
            for r in start..end {
                take(r, &pass, r - start);
            }
            start = end;
        }
        Ok(())
    }

    /// Runs `run`'s passes, at most `most` rows each, checking the job's deadline and cancellation
    /// before each and counting its rows (`backward`: as gradient rows too); their time is counted
    /// in `model_time`.
    fn passes<T>(
        &mut self,
        most: usize,
        backward: bool,
        run: impl FnOnce(&mut WorkerRuntime, Sizing) -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        let Cx {
            rt,
            job_ctx,
            rows,
            runs,
            gradient_rows,
            model_time,
            ..
        } = self;
        let job_ctx: &JobContext = job_ctx;
        let mut before = |n: usize| {
            job_ctx.checkpoint()?;
            job_ctx.advance(n);
            *rows += n;
            *runs += 1;
            if backward {
                *gradient_rows += n;
            }
            Ok(())
        };
        let began = Instant::now();
        let out = run(
            rt,
            Sizing {
                most,
                before: Some(&mut before),
            },
        );
        *model_time += began.elapsed();
        out
    }

    /// Runs one ONNX Runtime call, its time counted in `model_time`.
    fn timed<T>(&mut self, run: impl FnOnce(&mut WorkerRuntime) -> T) -> T {
        let began = Instant::now();
        let out = run(self.rt);
        self.model_time += began.elapsed();
        out
    }

    fn count(&mut self, rows: usize, per_pass: usize) {
        self.job_ctx.advance(rows);
        self.rows += rows;
        self.runs += rows.div_ceil(per_pass.max(1));
    }

    /// Most rows per pass.
    pub fn max_batch(&self) -> usize {
        self.rt.max_batch()
    }

    /// Rows per forward pass of this model within the pass budget (at most `max_batch`), for
    /// rows the size of this job's input.
    pub fn forward_rows(&self) -> usize {
        self.rt.forward_rows_for(&self.model, self.row_len)
    }

    /// The model being explained.
    pub fn model(&self) -> &LoadedModel {
        &self.model
    }
}
