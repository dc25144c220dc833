//! Runs ONNX graphs that explaind builds itself (shape probes, Resize matrices, tests) through ONNX
//! Runtime, on the calling thread.

use ort::session::Session;
use ort::value::{Tensor as OrtTensor, ValueType};
use prost::Message;

use crate::onnx::autodiff::{Dense, GraphRunner};
use crate::onnx::proto::ModelProto;
use crate::runtime::tensor::TensorData;

/// A [`GraphRunner`] backed by ONNX Runtime.
pub struct OrtRunner {
    env: &'static ort::environment::Environment,
}

/// One output of a run: name, element type (ONNX code), shape, and float values when it is float.
pub struct RunOutput {
    /// Output name.
    pub name: String,
    /// ONNX element type code.
    pub elem_type: i32,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, for float32 outputs.
    pub values: Option<Vec<f32>>,
}

impl OrtRunner {
    /// A runner on the process's ONNX Runtime environment.
    pub fn new(env: &'static ort::environment::Environment) -> Self {
        Self { env }
    }

    /// Builds a session for `model` (one intra-op thread, full optimisation).
    pub fn session(&self, model: &ModelProto) -> Result<Session, String> {
        let bytes = model.encode_to_vec();
        let builder = Session::builder(self.env).map_err(|e| e.to_string())?;
        let mut builder = builder.with_intra_threads(1).map_err(|e| e.to_string())?;
        builder.commit_from_memory(&bytes).map_err(|e| e.to_string())
    }

    /// Runs `model` with float inputs (and int64 inputs) and returns every tensor output.
    pub fn run(
        &self,
        model: &ModelProto,
        float_inputs: &[(&str, Vec<usize>, Vec<f32>)],
        int_inputs: &[(&str, Vec<usize>, Vec<i64>)],
    ) -> Result<Vec<RunOutput>, String> {
        let mut session = self.session(model)?;
        run_session(&mut session, float_inputs, int_inputs)
    }

    /// Runs `model` on inputs of any element type explaind feeds, returning every tensor output.
    pub fn run_typed(
        &self,
        model: &ModelProto,
        inputs: &[(&str, Vec<usize>, TensorData)],
    ) -> Result<Vec<RunOutput>, String> {
        let mut session = self.session(model)?;
        let mut feeds: Vec<(String, ort::session::SessionInputValue<'static>)> = Vec::new();
        for (name, shape, data) in inputs {
            let shape = shape.clone();
            let value: ort::session::SessionInputValue<'static> = match data {
                TensorData::F32(v) => OrtTensor::from_array((shape, v.clone())).map(Into::into),
                TensorData::I64(v) => OrtTensor::from_array((shape, v.clone())).map(Into::into),
                TensorData::I32(v) => OrtTensor::from_array((shape, v.clone())).map(Into::into),
                TensorData::Bool(v) => OrtTensor::from_array((shape, v.clone())).map(Into::into),
                TensorData::U8(v) => OrtTensor::from_array((shape, v.clone())).map(Into::into),
            }
            .map_err(|e| e.to_string())?;
            feeds.push((name.to_string(), value));
        }
        let outputs = session.run(feeds).map_err(|e| e.to_string())?;
        read_outputs(outputs)
    }
}

/// Runs an existing session with float and int64 inputs, returning every tensor output.
pub fn run_session(
    session: &mut Session,
    float_inputs: &[(&str, Vec<usize>, Vec<f32>)],
    int_inputs: &[(&str, Vec<usize>, Vec<i64>)],
) -> Result<Vec<RunOutput>, String> {
    let mut feeds: Vec<(String, ort::session::SessionInputValue<'static>)> = Vec::new();
    for (name, shape, values) in float_inputs {
        let t = OrtTensor::from_array((shape.clone(), values.clone())).map_err(|e| e.to_string())?;
        feeds.push((name.to_string(), t.into()));
    }
    for (name, shape, values) in int_inputs {
        let t = OrtTensor::from_array((shape.clone(), values.clone())).map_err(|e| e.to_string())?;
        feeds.push((name.to_string(), t.into()));
    }
    let outputs = session.run(feeds).map_err(|e| e.to_string())?;
    read_outputs(outputs)
}

/// Every tensor output of a run: float ones with their values.
fn read_outputs(outputs: ort::session::SessionOutputs<'_>) -> Result<Vec<RunOutput>, String> {
    let mut result = Vec::new();
    for (name, value) in outputs.iter() {
        let ValueType::Tensor { ty, .. } = value.dtype() else {
            continue;
        };
        let elem_type = element_code(*ty);
        let (shape, values) = match ty {
            ort::value::TensorElementType::Float32 => {
                let (s, d) = value.try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
                (s.iter().map(|&v| v as usize).collect(), Some(d.to_vec()))
            }
            _ => {
                let shape = match value.dtype() {
                    ValueType::Tensor { shape, .. } => shape.iter().map(|&v| v.max(0) as usize).collect(),
                    _ => Vec::new(),
                };
                (shape, None)
            }
        };
        result.push(RunOutput {
            name: name.to_string(),
            elem_type,
            shape,
            values,
        });
    }
    Ok(result)
}

fn element_code(t: ort::value::TensorElementType) -> i32 {
    use ort::value::TensorElementType as T;
    match t {
        T::Float32 => 1,
        T::Uint8 => 2,
        T::Int8 => 3,
        T::Uint16 => 4,
        T::Int16 => 5,
        T::Int32 => 6,
        T::Int64 => 7,
        T::String => 8,
        T::Bool => 9,
        T::Float16 => 10,
        T::Float64 => 11,
        T::Uint32 => 12,
        T::Uint64 => 13,
        T::Bfloat16 => 16,
        _ => 0,
    }
}

impl GraphRunner for OrtRunner {
    fn run_f32(&self, model: &ModelProto, inputs: &[(&str, Vec<usize>, Vec<f32>)]) -> Result<Vec<Dense>, String> {
        Ok(self
            .run(model, inputs, &[])?
            .into_iter()
            .filter_map(|o| o.values.map(|v| (o.shape, v)))
            .collect())
    }
}
