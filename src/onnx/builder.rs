//! A small builder for ONNX graphs: used to make test and benchmark models reproducibly, and by
//! graph transformations that emit new nodes.

use super::proto::{
    attribute_type, data_type, tensor_shape_proto::dimension::Value as DimValue, tensor_shape_proto::Dimension,
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};

/// An attribute value for [`GraphBuilder::node`].
#[derive(Debug, Clone)]
pub enum Attr {
    /// A single integer.
    Int(i64),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A single float.
    Float(f32),
    /// A list of floats.
    Floats(Vec<f32>),
    /// A string.
    Str(String),
    /// A list of strings.
    Strs(Vec<String>),
    /// A tensor.
    Tensor(Box<TensorProto>),
}

/// Builds an attribute proto named `name`.
pub fn attribute(name: &str, value: Attr) -> AttributeProto {
    let mut a = AttributeProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    match value {
        Attr::Int(i) => {
            a.r#type = Some(attribute_type::INT);
            a.i = Some(i);
        }
        Attr::Ints(v) => {
            a.r#type = Some(attribute_type::INTS);
            a.ints = v;
        }
        Attr::Float(f) => {
            a.r#type = Some(attribute_type::FLOAT);
            a.f = Some(f);
        }
        Attr::Floats(v) => {
            a.r#type = Some(attribute_type::FLOATS);
            a.floats = v;
        }
        Attr::Str(s) => {
            a.r#type = Some(attribute_type::STRING);
            a.s = Some(s.into_bytes());
        }
        Attr::Strs(v) => {
            a.r#type = Some(attribute_type::STRINGS);
            a.strings = v.into_iter().map(String::into_bytes).collect();
        }
        Attr::Tensor(t) => {
            a.r#type = Some(attribute_type::TENSOR);
            a.t = Some(*t);
        }
    }
    a
}

/// A float32 tensor with `dims` and row-major `values`.
pub fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        dims: dims.to_vec(),
        data_type: Some(data_type::FLOAT),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into()),
        ..Default::default()
    }
}

/// An int64 tensor with `dims` and row-major `values`.
pub fn int64_tensor(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        dims: dims.to_vec(),
        data_type: Some(data_type::INT64),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into()),
        ..Default::default()
    }
}

/// A tensor value-info; a negative dimension becomes a symbolic one named `batch` (first axis) or `d{i}`.
pub fn value_info(name: &str, elem_type: i32, dims: Option<&[i64]>) -> ValueInfoProto {
    let shape = dims.map(|dims| TensorShapeProto {
        dim: dims
            .iter()
            .enumerate()
            .map(|(i, &d)| Dimension {
                value: Some(if d >= 0 {
                    DimValue::DimValue(d)
                } else if i == 0 {
                    DimValue::DimParam("batch".into())
                } else {
                    DimValue::DimParam(format!("d{i}"))
                }),
                denotation: None,
            })
            .collect(),
    });
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem_type),
                shape,
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

/// Accumulates nodes, initializers, inputs and outputs of one graph.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
    opset: i64,
    counter: usize,
}

impl GraphBuilder {
    /// A new graph targeting the given default-domain opset.
    pub fn new(name: &str, opset: i64) -> Self {
        Self {
            graph: GraphProto {
                name: Some(name.into()),
                ..Default::default()
            },
            opset,
            counter: 0,
        }
    }

    /// Declares a float32 graph input (negative dims are symbolic).
    pub fn input(&mut self, name: &str, dims: &[i64]) -> String {
        self.graph.input.push(value_info(name, data_type::FLOAT, Some(dims)));
        name.to_string()
    }

    /// Declares a float32 graph output (negative dims are symbolic).
    pub fn output(&mut self, name: &str, dims: &[i64]) {
        self.graph.output.push(value_info(name, data_type::FLOAT, Some(dims)));
    }

    /// Declares a float32 graph output without a fixed shape.
    pub fn output_any(&mut self, name: &str) {
        self.graph.output.push(value_info(name, data_type::FLOAT, None));
    }

    /// Declares a graph input of another element type (negative dims are symbolic).
    pub fn input_typed(&mut self, name: &str, elem_type: i32, dims: &[i64]) -> String {
        self.graph.input.push(value_info(name, elem_type, Some(dims)));
        name.to_string()
    }

    /// Adds a float32 initializer and returns its name.
    pub fn constant(&mut self, name: &str, dims: &[i64], values: &[f32]) -> String {
        assert_eq!(
            dims.iter().product::<i64>() as usize,
            values.len(),
            "initializer {name}: dims and values differ"
        );
        self.graph.initializer.push(float_tensor(name, dims, values));
        name.to_string()
    }

    /// Adds an int64 initializer and returns its name.
    pub fn constant_i64(&mut self, name: &str, dims: &[i64], values: &[i64]) -> String {
        self.graph.initializer.push(int64_tensor(name, dims, values));
        name.to_string()
    }

    /// Adds a node with one output named after the node, and returns that output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        self.counter += 1;
        let out = format!("{}_{}", op.to_ascii_lowercase(), self.counter);
        self.node_with_outputs(op, inputs, &[&out], attrs);
        out
    }

    /// Adds a node with explicit output names.
    pub fn node_with_outputs(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<(&str, Attr)>) {
        self.counter += 1;
        self.graph.node.push(NodeProto {
            name: Some(format!("{op}_{}", self.counter)),
            op_type: Some(op.to_string()),
            domain: Some(String::new()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs.into_iter().map(|(n, v)| attribute(n, v)).collect(),
            ..Default::default()
        });
    }

    /// Renames the last node's output to `name` (to give a graph output a chosen name).
    pub fn rename_last_output(&mut self, name: &str) -> String {
        if let Some(n) = self.graph.node.last_mut() {
            n.output[0] = name.to_string();
        }
        name.to_string()
    }

    /// Adds a node with `n` outputs named after the node, and returns their names.
    pub fn node_n(&mut self, op: &str, inputs: &[&str], n: usize, attrs: Vec<(&str, Attr)>) -> Vec<String> {
        self.counter += 1;
        let outs: Vec<String> = (0..n)
            .map(|i| format!("{}_{}_{i}", op.to_ascii_lowercase(), self.counter))
            .collect();
        let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
        self.node_with_outputs(op, inputs, &refs, attrs);
        outs
    }

    /// Finishes the model (IR version 8 for opsets up to 18, 9 above).
    pub fn build(self) -> ModelProto {
        let mut model = model_of(self.graph, self.opset);
        model.producer_name = Some("explaind".into());
        model.producer_version = Some(env!("CARGO_PKG_VERSION").into());
        model
    }
}

/// A model of `graph` in the default domain at `opset` (IR version 8 for opsets up to 18, 9 above).
pub fn model_of(graph: GraphProto, opset: i64) -> ModelProto {
    ModelProto {
        ir_version: Some(if opset <= 18 { 8 } else { 9 }),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(graph),
        ..Default::default()
    }
}
