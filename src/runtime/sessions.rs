//! The sessions a worker thread owns (ONNX Runtime's `Session::run` takes `&mut self`), and the one
//! way methods run model passes: forward or backward, batched up to `max_batch` rows per pass.

use std::collections::HashMap;
use std::sync::Arc;

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::{Tensor as OrtTensor, ValueType};

use super::gradients::{GradientCache, GradientKey};
use super::tensor::{Tensor, TensorData};
use super::{LoadedModel, Registry, RuntimeError};
use crate::onnx::autodiff::WEIGHTS_INPUT;

/// Creates a session for model bytes with the given intra-op thread count.
pub fn create_session_from_bytes(
    env: &ort::environment::Environment,
    bytes: &[u8],
    intra_op_threads: usize,
) -> Result<Session, String> {
    // ort's builder errors carry the builder and are not Send: turn each into text right away.
    let builder = Session::builder(env).map_err(|e| e.to_string())?;
    let builder = builder
        .with_intra_threads(intra_op_threads)
        .map_err(|e| e.to_string())?;
    let builder = builder.with_inter_threads(1).map_err(|e| e.to_string())?;
    let mut builder = builder
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| e.to_string())?;
    builder.commit_from_memory(bytes).map_err(|e| e.to_string())
}

/// Creates a session for `model`.
pub fn create_session(
    env: &ort::environment::Environment,
    model: &LoadedModel,
    intra_op_threads: usize,
) -> Result<Session, String> {
    create_session_from_bytes(env, &model.bytes, intra_op_threads)
}

/// What one gradient pass returns, rows concatenated over batches.
#[derive(Debug)]
pub struct GradientPass {
    /// The model's score output.
    pub scores: Tensor,
    /// Gradient of `sum(scores * weights)` w.r.t. the input.
    pub input_grad: Tensor,
    /// Per requested layer: (activation, gradient).
    pub layers: Vec<(Tensor, Tensor)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SessionKey {
    Forward(String),
    Backward(GradientKey),
}

/// One worker's view of the models: its own sessions, forward ones created when the worker starts,
/// backward ones on first use.
pub struct WorkerRuntime {
    env: &'static ort::environment::Environment,
    registry: Arc<Registry>,
    gradients: Arc<GradientCache>,
    sessions: HashMap<SessionKey, Session>,
    intra_op_threads: usize,
    max_batch: usize,
}

impl WorkerRuntime {
    /// Creates a forward session for every model in the registry.
    pub fn new(
        env: &'static ort::environment::Environment,
        registry: Arc<Registry>,
        gradients: Arc<GradientCache>,
        intra_op_threads: usize,
        max_batch: usize,
    ) -> Result<Self, String> {
        let mut sessions = HashMap::new();
        for model in registry.iter() {
            let session =
                create_session(env, model, intra_op_threads).map_err(|e| format!("model `{}`: {e}", model.name))?;
            sessions.insert(SessionKey::Forward(model.name.clone()), session);
        }
        Ok(Self {
            env,
            registry,
            gradients,
            sessions,
            intra_op_threads,
            max_batch,
        })
    }

    /// The model of that name.
    pub fn model(&self, name: &str) -> Result<Arc<LoadedModel>, RuntimeError> {
        self.registry
            .get(name)
            .cloned()
            .ok_or_else(|| RuntimeError::UnknownModel(name.to_string()))
    }

    /// Most rows per pass.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Runs `model` on `input` (first axis = batch) and returns every tensor output, rows
    /// concatenated back together.
    pub fn run(
        &mut self,
        model: &str,
        input_name: &str,
        input: &Tensor,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        if !self.sessions.contains_key(&SessionKey::Forward(model.to_string())) {
            return Err(RuntimeError::UnknownModel(model.to_string()));
        }
        self.run_batched(&SessionKey::Forward(model.to_string()), model, &[(input_name, input)])
    }

    /// Runs the backward model for `key` on `input` with target `weights` (shaped like the scores).
    pub fn gradients(
        &mut self,
        key: &GradientKey,
        input: &Tensor,
        weights: &Tensor,
    ) -> Result<GradientPass, RuntimeError> {
        let model = self.model(&key.model)?;
        let built = self.gradients.get(&model, key)?;
        let session_key = SessionKey::Backward(key.clone());
        if !self.sessions.contains_key(&session_key) {
            let session =
                create_session_from_bytes(self.env, &built.bytes, self.intra_op_threads).map_err(|message| {
                    RuntimeError::NotDifferentiable {
                        model: model.name.clone(),
                        message,
                    }
                })?;
            self.sessions.insert(session_key.clone(), session);
        }
        let mut outputs = self.run_batched(
            &session_key,
            &model.name,
            &[(&model.spec.input, input), (WEIGHTS_INPUT, weights)],
        )?;
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
        Ok(GradientPass {
            scores,
            input_grad,
            layers,
        })
    }

    /// Runs a session on feeds that share their first (batch) axis, `max_batch` rows at a time.
    fn run_batched(
        &mut self,
        key: &SessionKey,
        model: &str,
        feeds: &[(&str, &Tensor)],
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let rows = feeds.first().map(|(_, t)| t.rows()).unwrap_or(0);
        if feeds.iter().any(|(_, t)| t.rows() != rows) {
            return Err(RuntimeError::Inference {
                model: model.to_string(),
                message: "feeds differ in batch size".into(),
            });
        }
        let mut parts: HashMap<String, Vec<Tensor>> = HashMap::new();
        let mut start = 0;
        while start < rows {
            let end = (start + self.max_batch).min(rows);
            let chunk: Vec<(&str, Tensor)> = feeds
                .iter()
                .map(|(n, t)| {
                    (
                        *n,
                        if start == 0 && end == rows {
                            (*t).clone()
                        } else {
                            t.slice_rows(start, end)
                        },
                    )
                })
                .collect();
            for (name, t) in self.run_once(key, model, chunk)? {
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

    fn run_once(
        &mut self,
        key: &SessionKey,
        model: &str,
        feeds: Vec<(&str, Tensor)>,
    ) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        let fail = |message: String| RuntimeError::Inference {
            model: model.to_string(),
            message,
        };
        let session = self
            .sessions
            .get_mut(key)
            .ok_or_else(|| RuntimeError::UnknownModel(model.to_string()))?;
        let mut values: Vec<(String, ort::session::SessionInputValue<'static>)> = Vec::new();
        for (name, tensor) in feeds {
            let data = match tensor.data {
                TensorData::F32(v) => v,
                TensorData::I64(_) => return Err(fail("explaind feeds float32 inputs only".into())),
            };
            let value = OrtTensor::from_array((tensor.shape.clone(), data)).map_err(|e| fail(e.to_string()))?;
            values.push((name.to_string(), value.into()));
        }
        let outputs = session.run(values).map_err(|e| fail(e.to_string()))?;
        let mut out = Vec::new();
        for (name, value) in outputs.iter() {
            let tensor = match value.dtype() {
                ValueType::Tensor {
                    ty: ort::value::TensorElementType::Float32,
                    ..
                } => {
                    let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| fail(e.to_string()))?;
                    Tensor {
                        shape: dims(shape),
                        data: TensorData::F32(data.to_vec()),
                    }
                }
                ValueType::Tensor {
                    ty: ort::value::TensorElementType::Int64,
                    ..
                } => {
                    let (shape, data) = value.try_extract_tensor::<i64>().map_err(|e| fail(e.to_string()))?;
                    Tensor {
                        shape: dims(shape),
                        data: TensorData::I64(data.to_vec()),
                    }
                }
                // Sequences of maps (ZipMap) and other element types are not read back.
                _ => continue,
            };
            out.push((name.to_string(), tensor));
        }
        Ok(out)
    }
}

fn dims(shape: &ort::value::Shape) -> Vec<usize> {
    shape.iter().map(|&d| d.max(0) as usize).collect()
}
