//! Derived sessions: models made from a loaded one (backward graphs, graphs with dropout masks as
//! inputs or with further outputs), built on first use and dropped, least recently used first,
//! beyond `max_model_memory`.

use std::sync::{Arc, OnceLock};

use super::build::build_session;
use super::{SessionStore, Shared};
use crate::onnx::dropout::MaskSite;
use crate::runtime::batching::Batching;
use crate::runtime::gradients::{GradientKey, GradientOutputs};
use crate::runtime::{LoadedModel, RuntimeError};

/// A backward session and its outputs.
pub(super) type Backward = (Shared, GradientOutputs);
/// A derived session and, for a backward model, its outputs.
type Slot = Arc<OnceLock<Result<(Shared, Option<GradientOutputs>), String>>>;

/// A model derived from a loaded one, built on first use and kept under `max_model_memory`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum DerivedKey {
    /// The backward model of a gradient key.
    Backward(GradientKey),
    /// The model with dropout masks as inputs at these sites.
    Masked(String, SiteKey),
    /// The backward model of a gradient key through the model with dropout masks at these sites.
    MaskedBackward(GradientKey, SiteKey),
    /// The model with these tensors as further outputs (a reference set's embeddings).
    Outputs(String, Vec<String>),
    /// The model cut down to computing these tensors, its only outputs (a layer's activations).
    Layers(String, Vec<String>),
    /// The backward model of a gradient key whose target is the weighted sum of this tensor (a
    /// layer's channel, for activation maximisation) instead of the model's output.
    Seeded(GradientKey, String),
    /// The model with its pattern statistics as outputs (PatternNet's fitting): sums over a
    /// pass's rows, so its passes never take in another request's rows.
    Statistics(String),
}

/// Mask sites as a key: (tensor, only this node).
type SiteKey = Vec<(String, Option<String>)>;

fn site_key(sites: &[MaskSite]) -> SiteKey {
    sites.iter().map(|s| (s.tensor.clone(), s.only_node.clone())).collect()
}

impl DerivedKey {
    pub(super) fn model(&self) -> &str {
        match self {
            DerivedKey::Backward(k) | DerivedKey::MaskedBackward(k, _) | DerivedKey::Seeded(k, _) => &k.model,
            DerivedKey::Masked(model, _)
            | DerivedKey::Outputs(model, _)
            | DerivedKey::Layers(model, _)
            | DerivedKey::Statistics(model) => model,
        }
    }
}

/// A derived session kept under the memory budget.
pub(super) struct Kept {
    slot: Slot,
    bytes: u64,
    last_used: u64,
}

impl SessionStore {
    /// The backward session for `key` (through the model with dropout masks at `sites`, when
    /// any) and its output names.
    pub(super) fn backward_session(
        &self,
        model: &LoadedModel,
        key: &GradientKey,
        sites: &[MaskSite],
    ) -> Result<Backward, RuntimeError> {
        let derived = match sites {
            [] => DerivedKey::Backward(key.clone()),
            _ => DerivedKey::MaskedBackward(key.clone(), site_key(sites)),
        };
        let (session, outputs) = self
            .derived_session(model, &derived, || {
                let built = match sites {
                    [] => self.gradients.build(model, key)?,
                    _ => self.gradients.build_masked(model, key, sites)?,
                };
                Ok((built.bytes, Some(built.outputs)))
            })
            .map_err(|message| RuntimeError::NotDifferentiable {
                model: model.name.clone(),
                message,
            })?;
        let outputs = outputs.ok_or_else(|| RuntimeError::Inference {
            model: model.name.clone(),
            message: "a backward session without outputs".into(),
        })?;
        Ok((session, outputs))
    }

    /// The backward session for `key` whose target is `sum(seed * weights)`, `seed` an
    /// intermediate tensor (weights shaped like it), and its output names.
    pub(super) fn seeded_session(
        &self,
        model: &LoadedModel,
        key: &GradientKey,
        seed: &str,
    ) -> Result<Backward, RuntimeError> {
        let derived = DerivedKey::Seeded(key.clone(), seed.to_string());
        let (session, outputs) = self
            .derived_session(model, &derived, || {
                let built = self.gradients.build_seeded(model, key, seed)?;
                Ok((built.bytes, Some(built.outputs)))
            })
            .map_err(|message| RuntimeError::NotDifferentiable {
                model: model.name.clone(),
                message,
            })?;
        let outputs = outputs.ok_or_else(|| RuntimeError::Inference {
            model: model.name.clone(),
            message: "a backward session without outputs".into(),
        })?;
        Ok((session, outputs))
    }

    /// The session of `model` with dropout masks as inputs at `sites`.
    pub(super) fn masked_session(&self, model: &LoadedModel, sites: &[MaskSite]) -> Result<Shared, RuntimeError> {
        let key = DerivedKey::Masked(model.name.clone(), site_key(sites));
        let (session, _) = self
            .derived_session(model, &key, || Ok((self.gradients.masked(model, sites)?, None)))
            .map_err(|message| RuntimeError::Inference {
                model: model.name.clone(),
                message: format!("cannot build the model with dropout masks: {message}"),
            })?;
        Ok(session)
    }

    /// The session of `model` with `names` as further outputs.
    pub(super) fn outputs_session(&self, model: &LoadedModel, names: &[String]) -> Result<Shared, RuntimeError> {
        let key = DerivedKey::Outputs(model.name.clone(), names.to_vec());
        let (session, _) = self
            .derived_session(model, &key, || Ok((self.gradients.with_outputs(model, names)?, None)))
            .map_err(|message| RuntimeError::Inference {
                model: model.name.clone(),
                message: format!("cannot build the model with further outputs: {message}"),
            })?;
        Ok(session)
    }

    /// The session of `model` with its pattern statistics as outputs.
    pub(super) fn statistics_session(&self, model: &LoadedModel) -> Result<Shared, RuntimeError> {
        let key = DerivedKey::Statistics(model.name.clone());
        let (session, _) = self
            .derived_session(model, &key, || Ok((self.gradients.statistics(model)?, None)))
            .map_err(|message| RuntimeError::NotDifferentiable {
                model: model.name.clone(),
                message: format!("its patterns cannot be fitted: {message}"),
            })?;
        Ok(session)
    }

    /// The session of `model` cut down to computing `names`, its only outputs.
    pub(super) fn layers_session(&self, model: &LoadedModel, names: &[String]) -> Result<Shared, RuntimeError> {
        let key = DerivedKey::Layers(model.name.clone(), names.to_vec());
        let (session, _) = self
            .derived_session(model, &key, || Ok((self.gradients.to_outputs(model, names)?, None)))
            .map_err(|message| RuntimeError::Inference {
                model: model.name.clone(),
                message: format!("cannot build the model up to its layers: {message}"),
            })?;
        Ok(session)
    }

    /// The derived session for `key`, built by `build` on first use (other callers wait for that
    /// build); the least recently used ones beyond `max_model_memory` are dropped (a run holding
    /// one finishes first) and built again when next needed.
    fn derived_session(
        &self,
        model: &LoadedModel,
        key: &DerivedKey,
        build: impl FnOnce() -> Result<(Vec<u8>, Option<GradientOutputs>), String>,
    ) -> Result<(Shared, Option<GradientOutputs>), String> {
        let slot = {
            let mut kept = self.derived.lock().unwrap_or_else(|p| p.into_inner());
            kept.1 += 1;
            let now = kept.1;
            let entry = kept.0.entry(key.clone()).or_insert_with(|| Kept {
                slot: Slot::default(),
                bytes: 0,
                last_used: now,
            });
            entry.last_used = now;
            entry.slot.clone()
        };
        let mut size = None;
        let made = slot
            .get_or_init(|| {
                let (bytes, outputs) = build()?;
                size = Some(bytes.len() as u64);
                let prepacked = self.prepacked.get(key.model());
                let session = build_session(
                    self.env,
                    &bytes,
                    prepacked,
                    self.options.provider,
                    self.options.memory_arena,
                )?;
                // DeepLIFT's rows pair up by halves of their pass: another request's rows must not
                // join it.
                // Nor the statistics' passes, whose outputs sum over their rows.
                let pairs = matches!(key, DerivedKey::Backward(k) | DerivedKey::MaskedBackward(k, _)
                    if k.rules == crate::onnx::autodiff::RuleSet::Rescale)
                    || matches!(key, DerivedKey::Statistics(_));
                let batching = Batching {
                    enabled: self.options.batching.enabled && !pairs && !self.one_row(model),
                    ..self.options.batching
                };
                Ok((self.share_derived(key.model(), session, batching, &bytes), outputs))
            })
            .clone()?;
        // Only a build adds bytes: then count them, and drop others beyond the budget.
        if let Some(bytes) = size {
            {
                let mut kept = self.derived.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(entry) = kept.0.get_mut(key) {
                    entry.bytes = bytes;
                }
            }
            self.evict_beyond_budget(key);
        }
        Ok(made)
    }

    fn evict_beyond_budget(&self, keep: &DerivedKey) {
        let mut kept = self.derived.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let total: u64 = kept.0.values().map(|k| k.bytes).sum();
            if total <= self.options.max_model_memory {
                return;
            }
            let oldest = kept
                .0
                .iter()
                .filter(|(k, _)| *k != keep)
                .min_by_key(|(_, v)| v.last_used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    tracing::info!(key = ?k, "derived session dropped (max_model_memory)");
                    kept.0.remove(&k);
                }
                None => return,
            }
        }
    }

    /// Forgets every derived session of `model` (a lent model going away).
    pub(super) fn forget_derived(&self, model: &str) {
        self.derived
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .retain(|k, _| k.model() != model);
    }
}
