//! A worker's handle on the shared sessions: runs forward, masked and backward passes, each split
//! into as many passes as the pass budget needs.

use std::collections::HashMap;
use std::sync::Arc;

use super::build::build_session;
use super::cache::Backward;
use super::rows::Pass;
use super::{SessionStore, Shared};
use crate::onnx::autodiff::WEIGHTS_INPUT;
use crate::onnx::dropout::{mask_input, MaskSite};
use crate::runtime::batching::{Batching, Named};
use crate::runtime::gradients::GradientKey;
use crate::runtime::tensor::{Tensor, TensorData};
use crate::runtime::{LoadedModel, RuntimeError};

/// What one gradient pass returns, rows concatenated over batches.
#[derive(Debug)]
pub struct GradientPass {
    /// The model's score output.
    pub scores: Tensor,
    /// Gradient of `sum(scores * weights)` w.r.t. the input.
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
}

impl WorkerRuntime {
    /// A handle on `store`.
    pub fn new(store: Arc<SessionStore>) -> Self {
        let max_batch = store.options.batching.max_batch;
        Self { store, max_batch }
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
            .insert(model.name.clone(), (model.clone(), shared));
        Ok(LentModel {
            store: self.store.clone(),
            model,
        })
    }

    /// Runs `model` on `input` (first axis = batch) and returns every tensor output, rows
    /// concatenated back together.
    pub fn run(
        &mut self,
        model: &str,
        input_name: &str,
        input: &Tensor,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let session = match self.store.forward.get(model) {
            Some(s) => s.clone(),
            None => self
                .store
                .lent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(model)
                .map(|(_, s)| s.clone())
                .ok_or_else(|| RuntimeError::UnknownModel(model.to_string()))?,
        };
        let row_bytes = self.row_bytes(model, Pass::Forward);
        self.run_batched(&session, model, &[(input_name, input)], row_bytes, false)
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
        let row_bytes = self.row_bytes(&model.name, Pass::Forward);
        self.run_batched(&session, &model.name, &feeds, row_bytes, false)
    }

    /// Runs `model` on `input` (first axis = batch) with the tensors `names` as further outputs;
    /// returns every output.
    pub fn run_with_outputs(
        &mut self,
        model: &LoadedModel,
        names: &[String],
        input: &Tensor,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let session = self.store.outputs_session(model, names)?;
        let row_bytes = self.row_bytes(&model.name, Pass::Forward);
        self.run_batched(
            &session,
            &model.name,
            &[(model.spec.input.as_str(), input)],
            row_bytes,
            false,
        )
    }

    /// Runs the backward model for `key` on `input` with target `weights` (shaped like the
    /// scores); a row of all-zero weights explains its top class, chosen in the graph, when the
    /// model's output can be ranked (the pass's `chosen` says which class each row had).
    pub fn gradients(
        &mut self,
        key: &GradientKey,
        input: &Tensor,
        weights: &Tensor,
    ) -> Result<GradientPass, RuntimeError> {
        self.masked_gradients(key, &[], input, weights, &[])
    }

    /// [`Self::gradients`] through the model with dropout masks at `sites`, `masks[k]` holding one
    /// row of site `k`'s mask per input row.
    pub fn masked_gradients(
        &mut self,
        key: &GradientKey,
        sites: &[MaskSite],
        input: &Tensor,
        weights: &Tensor,
        masks: &[Tensor],
    ) -> Result<GradientPass, RuntimeError> {
        let model = self.model(&key.model)?;
        let plain = key;
        let (key, unasked) = with_cam_layer(&model, key);
        let backward = match self.store.backward_session(&model, &key, sites) {
            Err(_) if unasked => self.store.backward_session(&model, plain, sites)?,
            built => built?,
        };
        let mut pass = self.gradient_pass(&model, &backward, input, weights, masks, key.rules)?;
        if unasked {
            pass.layers.clear();
        }
        Ok(pass)
    }

    fn gradient_pass(
        &mut self,
        model: &LoadedModel,
        (session, built): &Backward,
        input: &Tensor,
        weights: &Tensor,
        masks: &[Tensor],
        rules: crate::onnx::autodiff::RuleSet,
    ) -> Result<GradientPass, RuntimeError> {
        // DeepLIFT's rows pair up by halves of their pass.
        let whole = rules == crate::onnx::autodiff::RuleSet::Rescale;
        let names: Vec<String> = (0..masks.len()).map(mask_input).collect();
        let mut feeds = vec![(model.spec.input.as_str(), input), (WEIGHTS_INPUT, weights)];
        feeds.extend(names.iter().map(String::as_str).zip(masks));
        let row_bytes = self.row_bytes(&model.name, Pass::Backward);
        let mut outputs = self.run_batched(session, &model.name, &feeds, row_bytes, whole)?;
        let mut take = |name: &str| {
            outputs.remove(name).ok_or_else(|| RuntimeError::Inference {
                model: model.name.clone(),
                message: format!("the backward model gave no `{name}`"),
            })
        };
        let scores = take(&model.spec.output)?;
        let input_grad = take(&built.input_grad)?;
        let mut layers = Vec::new();
        for (activation, grad) in &built.layers {
            layers.push((take(activation)?, take(grad)?));
        }
        let chosen = match &built.target_index {
            Some(name) => Some(match take(name)?.data {
                TensorData::I64(v) => v.into_iter().map(|i| i.max(0) as usize).collect(),
                TensorData::F32(_) => Vec::new(),
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

    /// Runs a session on feeds that share their first (batch) axis, as many rows per pass as the
    /// pass budget allows (`row_bytes` each), each pass holding a lease on the budget shared by
    /// every worker.
    fn run_batched(
        &mut self,
        session: &Shared,
        model: &str,
        feeds: &[(&str, &Tensor)],
        row_bytes: u64,
        whole: bool,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let rows = feeds.first().map(|(_, t)| t.rows()).unwrap_or(0);
        let row_bytes = self.scaled(model, row_bytes, feeds.first().map_or(usize::MAX, |(_, t)| t.row_len()));
        if feeds.iter().any(|(_, t)| t.rows() != rows) {
            return Err(RuntimeError::Inference {
                model: model.to_string(),
                message: "feeds differ in batch size".into(),
            });
        }
        let mut parts: HashMap<String, Vec<Tensor>> = HashMap::new();
        let mut start = 0;
        // A pass whose rows depend on each other (DeepLIFT's pairs) is never split; the budget
        // still lets it run alone.
        let per_pass = if whole {
            if rows > 1 && self.store.one_row(model) {
                return Err(RuntimeError::UnsupportedModel {
                    model: model.to_string(),
                    message: format!(
                        "the graph fixes its batch at one row, and this pass needs its {rows} rows together \
                         (DeepLIFT's input and reference)"
                    ),
                });
            }
            rows.max(1)
        } else {
            self.rows_per_pass(model, row_bytes)
        };
        while start < rows {
            let end = (start + per_pass).min(rows);
            let _lease = self.store.budget.lease(row_bytes.saturating_mul((end - start) as u64));
            let chunk: Named = feeds
                .iter()
                .map(|(n, t)| {
                    let part = if start == 0 && end == rows {
                        (*t).clone()
                    } else {
                        t.slice_rows(start, end)
                    };
                    (n.to_string(), part)
                })
                .collect();
            for (name, t) in session.run(model, chunk)? {
                parts.entry(name).or_default().push(t);
            }
            start = end;
        }
        parts
            .into_iter()
            .map(|(name, ts)| {
                let joined = Tensor::concat_rows(ts).ok_or_else(|| RuntimeError::Inference {
                    model: model.to_string(),
                    message: format!("output `{name}` changed shape between batches"),
                })?;
                Ok((name, joined))
            })
            .collect()
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

/// The key whose backward graph serves `key`: plain gradients come from the graph that also gives
/// the default CAM layer's activation and gradient (a few more outputs), so saliency, Integrated
/// Gradients and Grad-CAM share one session instead of holding two copies of the model's weights.
/// True when the layer was added here, not asked for.
fn with_cam_layer<'k>(model: &LoadedModel, key: &'k GradientKey) -> (std::borrow::Cow<'k, GradientKey>, bool) {
    let cam = model.gradient_report.get().and_then(|r| r.default_cam_layer.clone());
    match cam {
        Some(layer) if key.layers.is_empty() && key.rules == crate::onnx::autodiff::RuleSet::Exact => (
            std::borrow::Cow::Owned(GradientKey {
                layers: vec![layer],
                ..key.clone()
            }),
            true,
        ),
        _ => (std::borrow::Cow::Borrowed(key), false),
    }
}
