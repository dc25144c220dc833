//! The sessions a worker thread owns (ONNX Runtime's `Session::run` takes `&mut self`), and the one
//! way methods run model passes: batched up to `max_batch` rows per pass.

use std::collections::HashMap;
use std::sync::Arc;

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::{Tensor as OrtTensor, ValueType};

use super::tensor::{Tensor, TensorData};
use super::{LoadedModel, Registry, RuntimeError};

/// Creates a session for `model` with the given intra-op thread count.
pub fn create_session(
    env: &ort::environment::Environment,
    model: &LoadedModel,
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
    builder.commit_from_memory(&model.bytes).map_err(|e| e.to_string())
}

/// One worker's view of the models: its own sessions, created when the worker starts.
pub struct WorkerRuntime {
    registry: Arc<Registry>,
    sessions: HashMap<String, Session>,
    max_batch: usize,
}

impl WorkerRuntime {
    /// Creates a session for every model in the registry.
    pub fn new(
        env: &ort::environment::Environment,
        registry: Arc<Registry>,
        intra_op_threads: usize,
        max_batch: usize,
    ) -> Result<Self, String> {
        let mut sessions = HashMap::new();
        for model in registry.iter() {
            let session =
                create_session(env, model, intra_op_threads).map_err(|e| format!("model `{}`: {e}", model.name))?;
            sessions.insert(model.name.clone(), session);
        }
        Ok(Self {
            registry,
            sessions,
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

    /// Runs `model` on `input` (first axis = batch), in passes of at most `max_batch` rows, and
    /// returns every tensor output with its rows concatenated back together.
    pub fn run(
        &mut self,
        model: &str,
        input_name: &str,
        input: &Tensor,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let rows = input.rows();
        let mut parts: HashMap<String, Vec<Tensor>> = HashMap::new();
        let mut start = 0;
        while start < rows {
            let end = (start + self.max_batch).min(rows);
            let chunk = if start == 0 && end == rows {
                input.clone()
            } else {
                input.slice_rows(start, end)
            };
            for (name, t) in self.run_once(model, input_name, chunk)? {
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
        model: &str,
        input_name: &str,
        input: Tensor,
    ) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        let fail = |message: String| RuntimeError::Inference {
            model: model.to_string(),
            message,
        };
        let session = self
            .sessions
            .get_mut(model)
            .ok_or_else(|| RuntimeError::UnknownModel(model.to_string()))?;
        let data = match input.data {
            TensorData::F32(v) => v,
            TensorData::I64(_) => return Err(fail("explaind feeds float32 inputs only".into())),
        };
        let value = OrtTensor::from_array((input.shape.clone(), data)).map_err(|e| fail(e.to_string()))?;
        let outputs = session
            .run(vec![(input_name.to_string(), value)])
            .map_err(|e| fail(e.to_string()))?;
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
