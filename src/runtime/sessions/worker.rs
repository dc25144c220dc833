//! A worker's handle on the shared sessions: runs forward, masked and backward passes, each split
//! into as many passes as the pass budget needs (here, and nowhere else).

use std::collections::HashMap;
use std::sync::Arc;

use super::build::build_session;
use super::cache::Backward;
use super::rows::Pass;
use super::{SessionStore, Shared};
use crate::onnx::autodiff::RuleSet;
use crate::onnx::autodiff::WEIGHTS_INPUT;
use crate::onnx::dropout::{mask_input, MaskSite};
use crate::runtime::batching::{Batching, Feed};
use crate::runtime::gradients::GradientKey;
use crate::runtime::job::JobContext;
use crate::runtime::kept::RowChunks;
use crate::runtime::tensor::{ElementType, Tensor, TensorData};
use crate::runtime::{LoadedModel, RuntimeError};

/// What one gradient pass returns, rows concatenated over batches.
#[derive(Debug)]
pub struct GradientPass {
    /// The model's score output.
    pub scores: Tensor,
    /// Gradient of `sum(scores * weights)` w.r.t. the input (no values from a pass that stops at
    /// its layers, [`WorkerRuntime::layer_gradients`]).
    pub input_grad: Tensor,
    /// Per requested layer: (activation, gradient).
    pub layers: Vec<(Tensor, Tensor)>,
    /// Each row's class, when the graph chose it ([`Seed::TopPrediction`]).
    pub chosen: Option<Vec<usize>>,
}

/// A worker's handle on the shared sessions.
pub struct WorkerRuntime {
    pub(super) store: Arc<SessionStore>,
    pub(super) max_batch: usize,
    /// The running job: every pass is counted into its meter, where it runs, and none starts
    /// (nor waits for memory) once it is cancelled.
    job: Option<JobContext>,
}

impl WorkerRuntime {
    /// A handle on `store`.
    pub fn new(store: Arc<SessionStore>) -> Self {
        let max_batch = store.options.batching.max_batch;
        Self {
            store,
            max_batch,
            job: None,
        }
    }

    /// Runs the passes that follow for `job`: counted into its meter, stopped when it is
    /// cancelled (`None` between jobs).
    pub fn run_for(&mut self, job: Option<JobContext>) {
        self.job = job;
    }

    /// The fitted patterns (PatternNet, PatternAttribution).
    pub fn patterns(&self) -> &crate::runtime::patterns::PatternStore {
        self.store.gradients.patterns()
    }

    /// `model`'s graph as its backward models are built from it (opset raised, nodes rewritten)
    /// with its probed shapes: the graph whose tensors [`Self::run_with_outputs`] exposes.
    pub fn prepared(
        &self,
        model: &LoadedModel,
    ) -> Result<Arc<(crate::onnx::proto::ModelProto, crate::onnx::autodiff::ShapeMap)>, RuntimeError> {
        self.store
            .gradients
            .prepared(model)
            .map_err(|message| RuntimeError::NotDifferentiable {
                model: model.name.clone(),
                message,
            })
    }

    /// The model of that name (a loaded one, or one lent for a job).
    pub fn model(&self, name: &str) -> Result<Arc<LoadedModel>, RuntimeError> {
        if let Some(m) = self.store.registry.get(name) {
            return Ok(m.clone());
        }
        let lent = self.store.lent.lock().unwrap_or_else(|p| p.into_inner());
        lent.get(name)
            .map(|(m, _)| m.clone())
            .ok_or_else(|| RuntimeError::UnknownModel(name.to_string()))
    }

    /// Serves `model` (a copy a job made, under a name of its own) until the returned guard drops.
    pub fn lend(&self, model: LoadedModel) -> Result<LentModel, RuntimeError> {
        let model = self.serve(model)?;
        Ok(LentModel {
            store: self.store.clone(),
            model,
        })
    }

    /// The model `name` derived from a loaded one for every job that needs it (a segmenter with
    /// its region sums as output, the region a fed input): made by `derive` on first use, then
    /// served, with the backward sessions built for it, as long as the service runs.
    pub fn derived_model(
        &self,
        name: &str,
        derive: impl FnOnce() -> Result<LoadedModel, RuntimeError>,
    ) -> Result<Arc<LoadedModel>, RuntimeError> {
        if let Some((m, _)) = self.store.lent.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(m.clone());
        }
        let model = derive()?;
        if model.name != name {
            return Err(RuntimeError::Inference {
                model: name.to_string(),
                message: format!("a model derived as `{name}` is named `{}`", model.name),
            });
        }
        // Two workers may derive it at once: the first one served is kept, the other dropped.
        if let Some((m, _)) = self.store.lent.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(m.clone());
        }
        self.serve(model)
    }

    /// Builds `model`'s session and serves it by name.
    fn serve(&self, model: LoadedModel) -> Result<Arc<LoadedModel>, RuntimeError> {
        let session = build_session(
            self.store.env,
            &model.bytes,
            None,
            self.store.options.provider,
            self.store.options.memory_arena,
        )
        .map_err(|message| RuntimeError::Inference {
            model: model.name.clone(),
            message,
        })?;
        let one_row = model.gradient_report.get().is_some_and(|r| r.one_row_per_pass);
        let model = Arc::new(model);
        let shared = self.store.share_with(
            session,
            Batching {
                enabled: self.store.options.batching.enabled && !one_row,
                ..self.store.options.batching
            },
        );
        self.store
            .lent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(model.name.clone())
            .or_insert((model.clone(), shared));
        Ok(model)
    }

    /// Runs `model` on `input` (first axis = batch) in as many passes as the pass budget needs,
    /// and returns every tensor output, rows concatenated back together.
    pub fn run(&mut self, model: &LoadedModel, input: &Tensor) -> Result<HashMap<String, Tensor>, RuntimeError> {
        self.run_sized(model, input, Sizing::budget())
    }

    /// [`Self::run`], its passes cut by `sizing`.
    pub fn run_sized(
        &mut self,
        model: &LoadedModel,
        input: &Tensor,
        sizing: Sizing,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let session = match self.store.forward.get(&model.name) {
            Some(s) => s.clone(),
            None => self
                .store
                .lent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&model.name)
                .map(|(_, s)| s.clone())
                .ok_or_else(|| RuntimeError::UnknownModel(model.name.clone()))?,
        };
        self.forward_on(&session, model, input, sizing)
    }

    /// Runs `model` with dropout masks at `sites` on `input` (first axis = batch), `masks[k]`
    /// holding one row of site `k`'s mask per input row; returns every tensor output.
    pub fn run_masked(
        &mut self,
        model: &LoadedModel,
        sites: &[MaskSite],
        input: &Tensor,
        masks: &[Tensor],
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let session = self.store.masked_session(model, sites)?;
        let names: Vec<String> = (0..masks.len()).map(mask_input).collect();
        let mut feeds = vec![(model.spec.input.as_str(), input)];
        feeds.extend(names.iter().map(String::as_str).zip(masks));
        self.run_batched(
            &session,
            model,
            &feeds,
            (Pass::Forward, None),
            Sizing::budget(),
            &|_| true,
        )
    }

    /// Runs `model` on `input` (first axis = batch) with the tensors `names` as further outputs,
    /// its passes cut by `sizing`; returns every output.
    pub fn run_with_outputs(
        &mut self,
        model: &LoadedModel,
        names: &[String],
        input: &Tensor,
        sizing: Sizing,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let session = self.store.outputs_session(model, names)?;
        self.forward_on(&session, model, input, sizing)
    }

    /// Runs `model` with its pattern statistics as outputs
    /// ([`crate::onnx::patterns::statistics_outputs`]) on `input` rows, each pass holding at most
    /// the pass budget at `row_bytes` a row (what the statistics add to a forward row); each
    /// output has one row per pass, its sums over the pass's rows.
    pub fn run_statistics(
        &mut self,
        model: &LoadedModel,
        input: &Tensor,
        row_bytes: u64,
        sizing: Sizing,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let session = self.store.statistics_session(model)?;
        let fit = usize::try_from(self.store.options.max_pass_bytes / row_bytes.max(1)).unwrap_or(usize::MAX);
        let sizing = Sizing {
            most: sizing.most.min(fit.max(1)),
            before: sizing.before,
        };
        self.forward_on(&session, model, input, sizing)
    }

    /// The values of the tensors `names` of `model` for `input` (first axis = batch), in that
    /// order, from a graph that outputs only them and stops at the deepest (not the scores), its
    /// passes cut by `sizing`.
    pub fn layer_activations(
        &mut self,
        model: &LoadedModel,
        names: &[String],
        input: &Tensor,
        sizing: Sizing,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        let session = self.store.layers_session(model, names)?;
        let out = self.forward_on(&session, model, input, sizing)?;
        layers_of(model, names, out)
    }

    /// [`Self::layer_activations`], each layer's passes kept where ONNX Runtime made them
    /// (read a row at a time, with no copy into one buffer: TCAV's activations).
    pub fn layer_activation_rows(
        &mut self,
        model: &LoadedModel,
        names: &[String],
        input: &Tensor,
        sizing: Sizing,
    ) -> Result<Vec<RowChunks>, RuntimeError> {
        let session = self.store.layers_session(model, names)?;
        let feeds = [(model.spec.input.as_str(), input)];
        let out = self.run_batched_kept(&session, model, &feeds, (Pass::Forward, None), sizing, &|_| true)?;
        layers_of(model, names, out)
    }

    /// Runs `model`'s backward model exposing `layers` under `rules` on `input` with target
    /// `weights` (shaped like the scores), its passes cut by `sizing`; a row of all-zero weights
    /// explains its top class, chosen in the graph, when the model's output can be ranked (the
    /// pass's `chosen` says which class each row had).
    pub fn gradients(
        &mut self,
        model: &LoadedModel,
        layers: &[String],
        rules: RuleSet,
        input: &Tensor,
        weights: &Tensor,
        sizing: Sizing,
    ) -> Result<GradientPass, RuntimeError> {
        self.backward(model, (layers, rules, true), &[], (input, weights, &[]), sizing)
    }

    /// The activations and gradients of `layers` (standard rules) for `input` with target
    /// `weights`, from a backward pass that stops at the layers: no input gradient (the pass's
    /// `input_grad` holds no values), at a fraction of the cost of [`Self::gradients`] on a CNN
    /// whose layer is its last feature map. The top class is chosen in the graph as there.
    pub fn layer_gradients(
        &mut self,
        model: &LoadedModel,
        layers: &[String],
        input: &Tensor,
        weights: &Tensor,
        sizing: Sizing,
    ) -> Result<GradientPass, RuntimeError> {
        self.backward(
            model,
            (layers, RuleSet::Exact, false),
            &[],
            (input, weights, &[]),
            sizing,
        )
    }

    /// The gradients of `layers` alone ([`Self::layer_gradients`]'s pass: standard rules, the
    /// backward pass stops at the layers), in that order: the pass's activations, scores and
    /// chosen classes are not read back (TCAV's directional derivatives need only the gradients),
    /// and each pass's gradients are kept where ONNX Runtime made them.
    pub fn gradients_at_layers(
        &mut self,
        model: &LoadedModel,
        layers: &[String],
        input: &Tensor,
        weights: &Tensor,
        sizing: Sizing,
    ) -> Result<Vec<RowChunks>, RuntimeError> {
        let key = GradientKey {
            model: model.name.clone(),
            layers: layers.to_vec(),
            rules: RuleSet::Exact,
            input_grad: false,
        };
        let (session, built) = self.store.backward_session(model, &key, &[])?;
        let shaped = weights_as_output(model, weights);
        let weights = shaped.as_ref().unwrap_or(weights);
        let feeds = [(model.spec.input.as_str(), input), (WEIGHTS_INPUT, weights)];
        let wanted: Vec<&str> = built.layers.iter().map(|(_, g)| g.as_str()).collect();
        let pass = (Pass::Backward { whole: false }, Some(RuleSet::Exact.label()));
        // Kept as ONNX Runtime made them, read a row at a time.
        let mut out = self.run_batched_kept(&session, model, &feeds, pass, sizing, &|n| wanted.contains(&n))?;
        built
            .layers
            .iter()
            .map(|(_, g)| {
                out.remove(g).ok_or_else(|| RuntimeError::Inference {
                    model: model.name.clone(),
                    message: format!("the backward model gave no `{g}`"),
                })
            })
            .collect()
    }

    /// Input gradients of `sum(seed * weights)`, `seed` an intermediate tensor of `model` (a
    /// layer) and `weights` shaped like it, one row per input row, standard rules; the pass's
    /// scores are the model's output as ever.
    pub fn seeded_gradients(
        &mut self,
        model: &LoadedModel,
        seed: &str,
        input: &Tensor,
        weights: &Tensor,
        sizing: Sizing,
    ) -> Result<GradientPass, RuntimeError> {
        let key = GradientKey {
            model: model.name.clone(),
            layers: Vec::new(),
            rules: RuleSet::Exact,
            input_grad: true,
        };
        let backward = self.store.seeded_session(model, &key, seed)?;
        self.gradient_pass(model, &backward, (input, weights, &[]), RuleSet::Exact, sizing)
    }

    /// Input gradients ([`Self::gradients`], no layers, standard rules) through the model with
    /// dropout masks at `sites`, `masks[k]` holding one row of site `k`'s mask per input row.
    pub fn masked_gradients(
        &mut self,
        model: &LoadedModel,
        sites: &[MaskSite],
        input: &Tensor,
        weights: &Tensor,
        masks: &[Tensor],
    ) -> Result<GradientPass, RuntimeError> {
        self.backward(
            model,
            (&[], RuleSet::Exact, true),
            sites,
            (input, weights, masks),
            Sizing::budget(),
        )
    }

    fn backward(
        &mut self,
        model: &LoadedModel,
        (layers, rules, input_grad): (&[String], RuleSet, bool),
        sites: &[MaskSite],
        (input, weights, masks): (&Tensor, &Tensor, &[Tensor]),
        sizing: Sizing,
    ) -> Result<GradientPass, RuntimeError> {
        let key = GradientKey {
            model: model.name.clone(),
            layers: layers.to_vec(),
            rules,
            input_grad,
        };
        let backward = self.store.backward_session(model, &key, sites)?;
        self.gradient_pass(model, &backward, (input, weights, masks), rules, sizing)
    }

    fn gradient_pass(
        &mut self,
        model: &LoadedModel,
        (session, built): &Backward,
        (input, weights, masks): (&Tensor, &Tensor, &[Tensor]),
        rules: RuleSet,
        sizing: Sizing,
    ) -> Result<GradientPass, RuntimeError> {
        let names: Vec<String> = (0..masks.len()).map(mask_input).collect();
        let shaped = weights_as_output(model, weights);
        let weights = shaped.as_ref().unwrap_or(weights);
        let mut feeds = vec![(model.spec.input.as_str(), input), (WEIGHTS_INPUT, weights)];
        feeds.extend(names.iter().map(String::as_str).zip(masks));
        // DeepLIFT's rows pair up by halves of their pass.
        let pass = Pass::Backward {
            whole: rules == RuleSet::Rescale,
        };
        let mut outputs = self.run_batched(session, model, &feeds, (pass, Some(rules.label())), sizing, &|_| true)?;
        let mut take = |name: &str| {
            outputs.remove(name).ok_or_else(|| RuntimeError::Inference {
                model: model.name.clone(),
                message: format!("the backward model gave no `{name}`"),
            })
        };
        let scores = take(&model.spec.output)?;
        let input_grad = match built.input_grad.as_str() {
            "" => Tensor::f32(vec![0], Vec::new()),
            name => take(name)?,
        };
        let mut layers = Vec::new();
        for (activation, grad) in &built.layers {
            layers.push((take(activation)?, take(grad)?));
        }
        let chosen = match &built.target_index {
            Some(name) => Some(match take(name)?.data {
                TensorData::I64(v) => v.into_iter().map(|i| i.max(0) as usize).collect(),
                _ => Vec::new(),
            }),
            None => None,
        };
        Ok(GradientPass {
            scores,
            input_grad,
            layers,
            chosen,
        })
    }

    /// A forward pass of `session` (the model or one derived from it) on `input` rows, every
    /// output kept.
    fn forward_on(
        &mut self,
        session: &Shared,
        model: &LoadedModel,
        input: &Tensor,
        sizing: Sizing,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        self.run_batched(
            session,
            model,
            &[(model.spec.input.as_str(), input)],
            (Pass::Forward, None),
            sizing,
            &|_| true,
        )
    }

    /// Runs a session on feeds that share their first (batch) axis, each output's rows gathered
    /// straight from ONNX Runtime's buffers into one of room for every row (one copy; no buffer
    /// per pass, none grown as passes come). The outputs `keep` accepts are read back.
    fn run_batched(
        &mut self,
        session: &Shared,
        model: &LoadedModel,
        feeds: &[(&str, &Tensor)],
        pass: (Pass, Option<&'static str>),
        sizing: Sizing,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let fail = |message: String| RuntimeError::Inference {
            model: model.name.clone(),
            message,
        };
        let rows = feeds.first().map(|(_, t)| t.rows()).unwrap_or(0);
        let mut gathered: HashMap<String, Tensor> = HashMap::new();
        self.each_pass(model, feeds, pass, sizing, &mut |chunk, pass_rows| {
            session.run_into(&model.name, chunk, &mut |name, shape, values| {
                if !keep(name) {
                    return Ok(());
                }
                let Some(out) = gathered.get_mut(name) else {
                    // Room for every row when the output's first axis is the pass's rows (not
                    // for a pass of one row: an output of one row per pass, as the pattern
                    // statistics' sums, would reserve a pass's worth for every row).
                    let room = match shape.first() {
                        Some(&r) if r == pass_rows && r > 1 => values.len() / r * rows,
                        _ => values.len(),
                    };
                    let mut data = values.empty_like(room);
                    data.extend_from(values);
                    gathered.insert(
                        name.to_string(),
                        Tensor {
                            shape: shape.to_vec(),
                            data,
                        },
                    );
                    return Ok(());
                };
                if shape.is_empty() || out.shape.get(1..) != shape.get(1..) || !out.data.extend_from(values) {
                    return Err(fail(format!("output `{name}` changed shape between batches")));
                }
                out.shape[0] += shape[0];
                Ok(())
            })
        })?;
        Ok(gathered)
    }

    /// [`Self::run_batched`], each output's passes kept where ONNX Runtime made them rather than
    /// gathered: for many rows of large outputs read a row at a time (TCAV's layers), the copy
    /// into one buffer would cost a fifth of the passes.
    fn run_batched_kept(
        &mut self,
        session: &Shared,
        model: &LoadedModel,
        feeds: &[(&str, &Tensor)],
        pass: (Pass, Option<&'static str>),
        sizing: Sizing,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<HashMap<String, RowChunks>, RuntimeError> {
        let mut kept: HashMap<String, RowChunks> = HashMap::new();
        self.each_pass(model, feeds, pass, sizing, &mut |chunk, _| {
            for (name, output) in session.run_kept(&model.name, chunk, keep)? {
                kept.entry(name.clone())
                    .or_default()
                    .push(output)
                    .map_err(|message| RuntimeError::Inference {
                        model: model.name.clone(),
                        message: format!("output `{name}`: {message}"),
                    })?;
            }
            Ok(())
        })?;
        Ok(kept)
    }

    /// Cuts feeds that share their first (batch) axis into passes and calls `run` on each (its
    /// feeds and rows): the one place a caller's rows are cut into passes, as many rows a pass as
    /// the pass budget allows (at most `sizing.most`), each pass holding a lease on the budget
    /// shared by every worker. The passes read the feeds in place (a pass's rows are a contiguous
    /// run of each feed's values). Each pass is counted into the running job's cost (`rules`: the
    /// backward model's rule set, `None` forward).
    fn each_pass(
        &mut self,
        model: &LoadedModel,
        feeds: &[(&str, &Tensor)],
        (pass, rules): (Pass, Option<&'static str>),
        mut sizing: Sizing,
        run: &mut PassRun,
    ) -> Result<(), RuntimeError> {
        let fail = |message: String| RuntimeError::Inference {
            model: model.name.clone(),
            message,
        };
        let rows = feeds.first().map(|(_, t)| t.rows()).unwrap_or(0);
        if feeds.iter().any(|(_, t)| t.rows() != rows) {
            return Err(fail("feeds differ in batch size".into()));
        }
        // The explained input goes in the graph's own element type (an integer or bool input gets
        // the f32 values explaind's methods make, rounded); every other feed is float32 already.
        let input_type = model.spec.input_type();
        let cast: Option<TensorData> = feeds
            .iter()
            .find(|(name, _)| *name == model.spec.input)
            .filter(|_| input_type != ElementType::Float32)
            .map(|(_, t)| input_type.cast(t.as_f32().unwrap_or(&[])));
        let mut values = Vec::with_capacity(feeds.len());
        for (name, t) in feeds {
            let data = match (&cast, *name == model.spec.input) {
                (Some(c), true) => c.view(),
                _ => t.data.view(),
            };
            values.push((*name, data, t.row_len(), t.shape.get(1..).unwrap_or(&[])));
        }
        let row_len = feeds.first().map_or(usize::MAX, |(_, t)| t.row_len());
        let (per_pass, row_bytes) = self.pass_rows(model, pass, row_len, rows, sizing.most)?;
        // The model's constant side inputs, fed on every pass: one row per row of the pass where
        // the input has a batch axis (made once, for the largest pass), else whole.
        let constants: Vec<(&str, &[usize], TensorData, bool)> = model
            .spec
            .constants
            .iter()
            .map(|c| match c.batched {
                true => (
                    c.name.as_str(),
                    c.shape.as_slice(),
                    c.value.repeated(per_pass.min(rows)),
                    true,
                ),
                false => (c.name.as_str(), c.shape.as_slice(), c.value.clone(), false),
            })
            .collect();
        let mut start = 0;
        while start < rows {
            let end = start.saturating_add(per_pass).min(rows);
            if let Some(before) = sizing.before.as_mut() {
                before(end - start)?;
            }
            let bytes = row_bytes.saturating_mul((end - start) as u64);
            let _lease = match &self.job {
                Some(job) => {
                    job.checkpoint()?;
                    // A cancelled job stops waiting for memory the others hold.
                    self.store
                        .budget
                        .lease_unless(bytes, || job.is_cancelled())
                        .ok_or(RuntimeError::Cancelled)?
                }
                None => self.store.budget.lease(bytes),
            };
            let mut chunk: Vec<Feed> = values
                .iter()
                .map(|&(name, data, len, row_shape)| Feed::rows_of(name, data, len, row_shape, start, end))
                .collect();
            for (name, shape, data, batched) in &constants {
                chunk.push(match batched {
                    true => Feed::rows_of(name, data.view(), shape.iter().product(), shape, 0, end - start),
                    false => Feed::whole(name, shape.to_vec(), data.view()),
                });
            }
            run(&chunk, end - start)?;
            if let Some(job) = &self.job {
                job.meter().pass(end - start, rules);
            }
            start = end;
        }
        Ok(())
    }
}

/// The outputs named `names`, in that order; a layer missing from `out` is refused.
fn layers_of<T>(model: &LoadedModel, names: &[String], mut out: HashMap<String, T>) -> Result<Vec<T>, RuntimeError> {
    names
        .iter()
        .map(|l| {
            out.remove(l).ok_or_else(|| RuntimeError::UnsupportedModel {
                model: model.name.clone(),
                message: format!("layer `{l}` gave no values"),
            })
        })
        .collect()
}

/// Runs one pass: its feeds and its rows.
type PassRun<'r> = dyn FnMut(&[Feed], usize) -> Result<(), RuntimeError> + 'r;

/// How a caller's rows go into passes, besides the pass budget: at most `most` rows a pass, and
/// `before`, when given, called with each pass's rows before it runs (a job's deadline and
/// cancellation check, and its progress); its error stops the passes.
pub struct Sizing<'a> {
    /// Most rows in one pass (a method's own limit, such as Integrated Gradients'
    /// `internal_batch_size`).
    pub most: usize,
    /// Called before each pass with its rows.
    pub before: Option<&'a mut dyn FnMut(usize) -> Result<(), RuntimeError>>,
}

impl Sizing<'_> {
    /// Passes as large as the pass budget allows, unchecked.
    pub fn budget() -> Self {
        Sizing {
            most: usize::MAX,
            before: None,
        }
    }
}

/// A model lent to the store for one job: served by name like a loaded one until dropped, when its
/// sessions and prepared graph go.
pub struct LentModel {
    store: Arc<SessionStore>,
    /// The lent model.
    pub model: Arc<LoadedModel>,
}

impl Drop for LentModel {
    fn drop(&mut self) {
        let name = &self.model.name;
        self.store.lent.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.store.forget_derived(name);
        self.store.gradients.forget(name);
    }
}

/// Target weights given as rows of the output's flattened values (`[rows, n]`), shaped as the
/// output's rows when its rows have more axes (a detector's `[rows, 4 + classes, candidates]`):
/// the backward graph's weights input has the output's shape. `None` when they have it already.
fn weights_as_output(model: &LoadedModel, weights: &Tensor) -> Option<Tensor> {
    let dims = model
        .summary
        .outputs
        .iter()
        .find(|t| t.name == model.spec.output)?
        .shape
        .as_ref()?;
    let row: Vec<usize> = dims
        .iter()
        .skip(1)
        .map(crate::onnx::Dim::fixed)
        .collect::<Option<_>>()?;
    if weights.shape.len() != 2 || row.len() < 2 || row.iter().product::<usize>() != weights.row_len() {
        return None;
    }
    let mut shape = vec![weights.rows()];
    shape.extend(row);
    Some(Tensor {
        shape,
        data: weights.data.clone(),
    })
}
