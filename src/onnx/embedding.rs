//! Text models take token ids, which have no gradient. explaind cuts the graph at the word
//! embedding: the table lookup (a `Gather` on a float `[vocab, dim]` constant with the ids) is
//! replaced by a float graph input `embeddings` `[batch, tokens, dim]`, so the backward graph
//! differentiates with respect to embeddings (as Captum's `LayerIntegratedGradients` on
//! `model.embeddings` does), and every method sees one float input, as for images and tables.
//! The explained text is one unpadded sequence, so the attention mask is all ones, the token
//! type ids zeros and the position ids `0, 1, ..., tokens - 1`: all three are derived in the graph
//! from the embeddings' first two axes. Every other input stays a graph input, which the manifest
//! feeds a constant (`[inputs.NAME] role = "constant"`).
//!
//! The table may be a float constant or one dequantized in the graph from an integer constant
//! (int8 exports: `Mul(Cast(q), scale)` or `DequantizeLinear(q, scale, zero_point)`); explaind
//! reads the dequantized values, and the nodes that computed the table leave the graph with it.
//!
//! A graph without such a lookup is still served by the perturbation methods: its input is then
//! the token ids written as floats `[batch, tokens, 1]` and cast back to integers in the graph.

use super::builder::{attribute, int64_tensor, value_info, Attr};
use super::node::{attr_int, constant, op_type, tensor_f32, tensor_ints_f32};
use super::proto::{data_type, type_proto, GraphProto, ModelProto, NodeProto, TensorProto};

/// The float input of a cut text graph.
pub const EMBEDDINGS: &str = "embeddings";

/// Which graph inputs take the token ids, the attention mask and the token type ids.
#[derive(Debug, Clone)]
pub struct TextInputs {
    /// Token ids `[batch, tokens]` (int64 or int32).
    pub ids: String,
    /// Attention mask, fed all ones.
    pub mask: Option<String>,
    /// Token type (segment) ids, fed zeros.
    pub types: Option<String>,
    /// Position ids, fed `0, 1, ..., tokens - 1` in every row.
    pub positions: Option<String>,
}

/// The word-embedding table read from the graph: `values` is `[vocab, dim]`, row-major.
#[derive(Debug, Clone)]
pub struct Table {
    /// The Gather node that looked tokens up.
    pub node: String,
    /// Rows.
    pub vocab: usize,
    /// Values per row.
    pub dim: usize,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// A cut text model.
#[derive(Debug, Clone)]
pub struct Cut {
    /// The graph with the float input [`EMBEDDINGS`] in place of the ids, mask and type ids.
    pub model: ModelProto,
    /// The embedding table, or why none was found (the input is then the ids as floats).
    pub table: Result<Table, String>,
}

impl Cut {
    /// Values per token of the cut graph's input.
    pub fn dim(&self) -> usize {
        self.table.as_ref().map_or(1, |t| t.dim)
    }
}

/// Cuts `model` at its word embedding (see the module's text). Errors name the input at fault.
pub fn cut(model: &ModelProto, inputs: &TextInputs) -> Result<Cut, String> {
    let mut model = model.clone();
    let graph = model.graph.as_mut().ok_or("the model has no graph")?;
    let ids_type = input_type(graph, &inputs.ids)?;
    if ids_type != data_type::INT64 && ids_type != data_type::INT32 {
        return Err(format!(
            "input `{}` holds {}, token ids are int64 or int32",
            inputs.ids,
            data_type::name(ids_type)
        ));
    }
    for name in inputs.mask.iter().chain(&inputs.types).chain(&inputs.positions) {
        input_type(graph, name)?;
    }
    let table = find_table(graph, &inputs.ids);
    let mut front: Vec<NodeProto> = Vec::new();
    // [batch, tokens] of the embeddings, for the constants that stand in for the other inputs.
    graph.initializer.push(int64_tensor("embeddings.cut.start", &[1], &[0]));
    graph.initializer.push(int64_tensor("embeddings.cut.end", &[1], &[2]));
    front.push(node("Shape", &[EMBEDDINGS], "embeddings.cut.shape", vec![]));
    front.push(node(
        "Slice",
        &["embeddings.cut.shape", "embeddings.cut.start", "embeddings.cut.end"],
        "embeddings.cut.tokens_shape",
        vec![],
    ));
    let dim = match &table {
        Ok(found) => {
            replace_lookup(graph, &inputs.ids, found, &mut front)?;
            front.push(filled(&inputs.ids, ids_type, 0));
            found.table.dim
        }
        Err(_) => {
            // Ids as floats [batch, tokens, 1], cast back: perturbation methods only.
            front.push(node(
                "Reshape",
                &[EMBEDDINGS, "embeddings.cut.tokens_shape"],
                "embeddings.cut.ids_f32",
                vec![],
            ));
            front.push(node(
                "Cast",
                &["embeddings.cut.ids_f32"],
                &inputs.ids,
                vec![("to", Attr::Int(ids_type as i64))],
            ));
            1
        }
    };
    if let Some(mask) = &inputs.mask {
        let t = input_type(graph, mask)?;
        front.push(filled(mask, t, 1));
    }
    if let Some(types) = &inputs.types {
        let t = input_type(graph, types)?;
        front.push(filled(types, t, 0));
    }
    if let Some(positions) = &inputs.positions {
        let t = input_type(graph, positions)?;
        positions_of(graph, positions, t, &mut front);
    }
    let replaced: Vec<&str> = std::iter::once(inputs.ids.as_str())
        .chain(inputs.mask.as_deref())
        .chain(inputs.types.as_deref())
        .chain(inputs.positions.as_deref())
        .collect();
    graph
        .input
        .retain(|i| !replaced.contains(&i.name.as_deref().unwrap_or("")));
    graph
        .input
        .insert(0, value_info(EMBEDDINGS, data_type::FLOAT, Some(&[-1, -1, dim as i64])));
    front.append(&mut graph.node);
    graph.node = front;
    Ok(Cut {
        model,
        table: table.map(|f| f.table),
    })
}

/// Removes the lookup `found` from `graph` and adds to `front` the Identity that gives its output
/// from [`EMBEDDINGS`]; refused when another node reads the ids' values.
fn replace_lookup(graph: &mut GraphProto, ids: &str, found: &Found, front: &mut Vec<NodeProto>) -> Result<(), String> {
    // Other readers of the ids may only ask their shape: they get zeros of that shape.
    let readers: Vec<String> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(i, n)| *i != found.at && n.input.iter().any(|x| x == ids))
        .filter(|(_, n)| op_type(n) != "Shape" && !only_feeds(graph, n, found.at))
        .map(|(_, n)| format!("{} `{}`", op_type(n), n.name.clone().unwrap_or_default()))
        .collect();
    if !readers.is_empty() {
        return Err(format!(
            "input `{}` is read by {} for its values, not only by the embedding lookup: explaind cannot \
             feed embeddings to this graph",
            ids,
            readers.join(", ")
        ));
    }
    // The lookup's output is now the input, through an Identity of the same name.
    let out = graph.node[found.at].output[0].clone();
    let lookup = graph.node.remove(found.at);
    // The table now lives in explaind (it looks tokens up); the graph keeps it, and the nodes
    // that dequantized it, only if another node reads it (tied weights).
    drop_unread(graph, &lookup.input[0], 0);
    front.push(node("Identity", &[EMBEDDINGS], &out, vec![]));
    Ok(())
}

/// Removes tensor `name` from `graph` when no node reads it and it is no output: its initializer
/// (older exports also list initializers among the graph's inputs), or the node that computed
/// it, and then that node's own unread inputs, a few levels up (a dequantized table's chain).
fn drop_unread(graph: &mut GraphProto, name: &str, depth: usize) {
    let read = graph.node.iter().any(|n| n.input.iter().any(|i| i == name))
        || graph.output.iter().any(|o| o.name.as_deref() == Some(name));
    if read || depth > 3 {
        return;
    }
    if let Some(at) = graph.node.iter().position(|n| n.output.iter().any(|o| o == name)) {
        if graph.node[at].output.len() != 1 {
            return;
        }
        let producer = graph.node.remove(at);
        for input in &producer.input {
            drop_unread(graph, input, depth + 1);
        }
    } else if graph.initializer.iter().any(|t| t.name.as_deref() == Some(name)) {
        graph.initializer.retain(|t| t.name.as_deref() != Some(name));
        graph.input.retain(|i| i.name.as_deref() != Some(name));
    }
}

/// Position ids `0, 1, ..., tokens - 1` in every row, of element type `elem_type`, named `name`:
/// a Range over the embeddings' token count, broadcast over the batch.
fn positions_of(graph: &mut GraphProto, name: &str, elem_type: i32, front: &mut Vec<NodeProto>) {
    graph.initializer.push(int64_tensor("embeddings.cut.zero", &[], &[0]));
    graph.initializer.push(int64_tensor("embeddings.cut.one", &[], &[1]));
    graph
        .initializer
        .push(int64_tensor("embeddings.cut.row", &[2], &[1, -1]));
    front.push(node(
        "Gather",
        &["embeddings.cut.shape", "embeddings.cut.one"],
        "embeddings.cut.tokens",
        vec![("axis", Attr::Int(0))],
    ));
    front.push(node(
        "Range",
        &["embeddings.cut.zero", "embeddings.cut.tokens", "embeddings.cut.one"],
        "embeddings.cut.range",
        vec![],
    ));
    front.push(node(
        "Reshape",
        &["embeddings.cut.range", "embeddings.cut.row"],
        "embeddings.cut.range_row",
        vec![],
    ));
    front.push(node(
        "Expand",
        &["embeddings.cut.range_row", "embeddings.cut.tokens_shape"],
        "embeddings.cut.positions",
        vec![],
    ));
    front.push(node(
        "Cast",
        &["embeddings.cut.positions"],
        name,
        vec![("to", Attr::Int(elem_type as i64))],
    ));
}

/// A found lookup: the table and the node's position in the graph.
struct Found {
    table: Table,
    at: usize,
}

/// The one Gather (axis 0) of a float `[vocab, dim]` constant by the ids, or by a Cast of them.
fn find_table(graph: &GraphProto, ids: &str) -> Result<Found, String> {
    let casts: Vec<&str> = graph
        .node
        .iter()
        .filter(|n| op_type(n) == "Cast" && n.input.first().map(String::as_str) == Some(ids))
        .filter_map(|n| n.output.first().map(String::as_str))
        .collect();
    let mut found = Vec::new();
    for (at, n) in graph.node.iter().enumerate().filter(|(_, n)| op_type(n) == "Gather") {
        let (Some(data), Some(index)) = (n.input.first(), n.input.get(1)) else {
            continue;
        };
        let by_ids = index == ids || casts.contains(&index.as_str());
        if !by_ids || attr_int(n, "axis", 0).unwrap_or(-1) != 0 {
            continue;
        }
        let Some((dims, values)) = table_values(graph, data) else {
            continue;
        };
        found.push(Found {
            table: Table {
                node: n.name.clone().unwrap_or_default(),
                vocab: dims[0].max(0) as usize,
                dim: dims[1].max(0) as usize,
                values,
            },
            at,
        });
    }
    match found.len() {
        1 => {
            let f = found.remove(0);
            if f.table.vocab.checked_mul(f.table.dim) != Some(f.table.values.len()) {
                return Err("the embedding table's values do not match its shape".into());
            }
            Ok(f)
        }
        0 => Err(format!(
            "no Gather (axis 0) reads a float [vocab, dim] constant with `{ids}`: no word-embedding lookup to \
             differentiate at"
        )),
        n => Err(format!(
            "{n} Gathers read float tables with `{ids}`: name the word-embedding lookup with `text.embedding`"
        )),
    }
}

/// The dims and values of a float `[vocab, dim]` table: a float constant, or one dequantized from an
/// integer constant by `Mul(Cast(q), scale)` (either order) or `DequantizeLinear(q, scale,
/// zero_point)`, with a scale (and zero point) of one value, one per row or one per column.
fn table_values(graph: &GraphProto, name: &str) -> Option<(Vec<i64>, Vec<f32>)> {
    if let Some(t) = constant(graph, name) {
        let values = tensor_f32(t).filter(|v| t.data_type == Some(data_type::FLOAT) && !v.is_empty())?;
        return (t.dims.len() == 2).then(|| (t.dims.clone(), values));
    }
    let producer = graph
        .node
        .iter()
        .find(|n| n.output.first().map(String::as_str) == Some(name))?;
    // (integer table, scale, zero point, DequantizeLinear's axis)
    let (q, scale, zero, axis) = match op_type(producer) {
        "Mul" => {
            let cast_of = |x: &str| {
                graph
                    .node
                    .iter()
                    .find(|n| op_type(n) == "Cast" && n.output.first().map(String::as_str) == Some(x))
                    .filter(|n| attr_int(n, "to", 0).ok() == Some(data_type::FLOAT as i64))
                    .and_then(|n| constant(graph, n.input.first()?))
            };
            let (a, b) = (producer.input.first()?, producer.input.get(1)?);
            match (cast_of(a), cast_of(b)) {
                (Some(q), None) => (q, constant(graph, b)?, None, None),
                (None, Some(q)) => (q, constant(graph, a)?, None, None),
                _ => return None,
            }
        }
        "DequantizeLinear" => (
            constant(graph, producer.input.first()?)?,
            constant(graph, producer.input.get(1)?)?,
            producer
                .input
                .get(2)
                .filter(|z| !z.is_empty())
                .map(|z| constant(graph, z)),
            Some(attr_int(producer, "axis", 1).ok()?),
        ),
        _ => return None,
    };
    if q.dims.len() != 2 {
        return None;
    }
    let (rows, cols) = (usize::try_from(q.dims[0]).ok()?, usize::try_from(q.dims[1]).ok()?);
    let mut values = tensor_ints_f32(q)?;
    if values.len() != rows.checked_mul(cols)? {
        return None;
    }
    // A per-row or per-column factor as (rows, cols) of 1 or the table's.
    let layout = |t: &TensorProto| -> Option<(usize, usize)> {
        let n: usize = t
            .dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(usize::try_from(d).ok()?))?;
        let shape = match (t.dims.len(), axis) {
            (_, _) if n == 1 => (1, 1),
            (1, Some(0)) => (n, 1),
            (1, _) => (1, n),
            (2, None) => (usize::try_from(t.dims[0]).ok()?, usize::try_from(t.dims[1]).ok()?),
            _ => return None,
        };
        ((shape.0 == 1 || shape.0 == rows) && (shape.1 == 1 || shape.1 == cols)).then_some(shape)
    };
    let at = |values: &[f32], (r, c): (usize, usize), i: usize, j: usize| -> Option<f32> {
        values
            .get((if r == 1 { 0 } else { i }) * c + if c == 1 { 0 } else { j })
            .copied()
    };
    let scales = tensor_f32(scale).filter(|_| scale.data_type == Some(data_type::FLOAT))?;
    let scale_at = layout(scale)?;
    let zeros = match zero {
        Some(z) => {
            let z = z?;
            Some((tensor_ints_f32(z)?, layout(z)?))
        }
        None => None,
    };
    // Dequantized in place: the table is held once, as the floats it stands for.
    for i in 0..rows {
        for j in 0..cols {
            let zero = match &zeros {
                Some((z, l)) => at(z, *l, i, j)?,
                None => 0.0,
            };
            let v = &mut values[i * cols + j];
            *v = (*v - zero) * at(&scales, scale_at, i, j)?;
        }
    }
    Some((q.dims.clone(), values))
}

/// True for a Cast whose only reader is node `lookup` (the ids cast before the lookup: it then
/// casts the zeros that stand in for them, and nothing reads the result).
fn only_feeds(graph: &GraphProto, n: &NodeProto, lookup: usize) -> bool {
    if op_type(n) != "Cast" {
        return false;
    }
    let out = n.output.first().cloned().unwrap_or_default();
    let readers: Vec<usize> = (0..graph.node.len())
        .filter(|&m| graph.node[m].input.contains(&out))
        .collect();
    readers == [lookup]
}

/// The element type of graph input `name`.
fn input_type(graph: &GraphProto, name: &str) -> Result<i32, String> {
    let info = graph
        .input
        .iter()
        .find(|i| i.name.as_deref() == Some(name))
        .ok_or_else(|| {
            let names: Vec<String> = graph.input.iter().filter_map(|i| i.name.clone()).collect();
            format!("no graph input `{name}` (inputs: {})", names.join(", "))
        })?;
    match info.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => Ok(t.elem_type.unwrap_or(0)),
        _ => Err(format!("graph input `{name}` is not a tensor")),
    }
}

/// `ConstantOfShape` of the embeddings' `[batch, tokens]`, filled with `value`, named `name`.
fn filled(name: &str, elem_type: i32, value: i64) -> NodeProto {
    let mut t: TensorProto = int64_tensor("value", &[1], &[value]);
    if elem_type == data_type::INT32 {
        t.data_type = Some(data_type::INT32);
        t.raw_data = Some((value as i32).to_le_bytes().to_vec().into());
    } else if elem_type == data_type::FLOAT {
        t.data_type = Some(data_type::FLOAT);
        t.raw_data = Some((value as f32).to_le_bytes().to_vec().into());
    } else if elem_type == data_type::BOOL {
        t.data_type = Some(data_type::BOOL);
        t.raw_data = Some(vec![(value != 0) as u8].into());
    }
    node(
        "ConstantOfShape",
        &["embeddings.cut.tokens_shape"],
        name,
        vec![("value", Attr::Tensor(Box::new(t)))],
    )
}

fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<(&str, Attr)>) -> NodeProto {
    NodeProto {
        name: Some(format!("{output}.{}", op.to_ascii_lowercase())),
        op_type: Some(op.into()),
        domain: Some(String::new()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        attribute: attrs.into_iter().map(|(n, v)| attribute(n, v)).collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::builder::GraphBuilder;

    fn inputs() -> TextInputs {
        TextInputs {
            ids: "input_ids".into(),
            mask: Some("attention_mask".into()),
            types: None,
            positions: None,
        }
    }

    #[test]
    fn the_lookup_becomes_the_input_and_the_table_leaves_the_graph() {
        let model = crate::onnx::zoo::keyword_classifier(10, 4, &[5], &[6]);
        let cut = cut(&model, &inputs()).unwrap();
        let table = cut.table.as_ref().unwrap();
        assert_eq!((table.vocab, table.dim, table.values.len()), (10, 4, 40));
        assert_eq!(
            &table.values[5 * 4..5 * 4 + 2],
            &[2.0, -1.0],
            "row 5 is the positive word's"
        );
        let graph = cut.model.graph.as_ref().unwrap();
        let names: Vec<&str> = graph.input.iter().filter_map(|i| i.name.as_deref()).collect();
        assert_eq!(names, [EMBEDDINGS]);
        assert!(!graph
            .initializer
            .iter()
            .any(|t| t.name.as_deref() == Some("word_embeddings")));
        assert!(!graph.node.iter().any(|n| op_type(n) == "Gather"));
        // The mask is made, as ones, before anything reads it.
        let mask = graph
            .node
            .iter()
            .position(|n| n.output.first().map(String::as_str) == Some("attention_mask"))
            .unwrap();
        let reader = graph
            .node
            .iter()
            .position(|n| n.input.iter().any(|i| i == "attention_mask"))
            .unwrap();
        assert!(mask < reader);
    }

    #[test]
    fn int8_tables_are_read_dequantized_and_leave_the_graph_with_their_nodes() {
        let int8 = |name: &str, dims: &[i64], values: &[i8]| TensorProto {
            name: Some(name.into()),
            dims: dims.to_vec(),
            data_type: Some(data_type::INT8),
            raw_data: Some(values.iter().map(|&v| v as u8).collect()),
            ..Default::default()
        };
        // DequantizeLinear with one scale and zero point: (q - 2) * 0.5.
        let mut g = GraphBuilder::new("dq", 17);
        let ids = g.input_typed("input_ids", data_type::INT64, &[-1, -1]);
        let scale = g.constant("scale", &[], &[0.5]);
        let table = g.node("DequantizeLinear", &["q", &scale, "zero"], vec![]);
        g.node("Gather", &[&table, &ids], vec![("axis", Attr::Int(0))]);
        g.rename_last_output("y");
        g.output_any("y");
        let mut model = g.build();
        let graph = model.graph.as_mut().unwrap();
        graph.initializer.push(int8("q", &[3, 2], &[2, 4, -6, 0, 127, -128]));
        graph.initializer.push(int8("zero", &[], &[2]));
        let no_mask = TextInputs { mask: None, ..inputs() };
        let dq = cut(&model, &no_mask).unwrap();
        assert_eq!(dq.table.unwrap().values, [0.0, 1.0, -4.0, -1.0, 62.5, -65.0]);
        let graph = dq.model.graph.unwrap();
        assert!(!graph.node.iter().any(|n| op_type(n) == "DequantizeLinear"));
        assert!(graph.initializer.iter().all(|t| t.name.as_deref() != Some("q")));
        // Mul(Cast(q), scale) with a scale per row, and position ids derived from the length.
        let mut g = GraphBuilder::new("mul", 17);
        let ids = g.input_typed("input_ids", data_type::INT64, &[-1, -1]);
        let positions = g.input_typed("position_ids", data_type::INT64, &[-1, -1]);
        let scale = g.constant("scale", &[2, 1], &[0.5, 2.0]);
        let f = g.node("Cast", &["q"], vec![("to", Attr::Int(data_type::FLOAT as i64))]);
        let table = g.node("Mul", &[&scale, &f], vec![]);
        let e = g.node("Gather", &[&table, &ids], vec![("axis", Attr::Int(0))]);
        let p = g.node("Cast", &[&positions], vec![("to", Attr::Int(data_type::FLOAT as i64))]);
        g.node("Add", &[&e, &p], vec![]);
        g.rename_last_output("y");
        g.output_any("y");
        let mut model = g.build();
        model
            .graph
            .as_mut()
            .unwrap()
            .initializer
            .push(int8("q", &[2, 2], &[1, -2, 3, 4]));
        let with_positions = TextInputs {
            mask: None,
            positions: Some("position_ids".into()),
            ..inputs()
        };
        let mul = cut(&model, &with_positions).unwrap();
        assert_eq!(mul.table.unwrap().values, [0.5, -1.0, 6.0, 8.0]);
        let graph = mul.model.graph.unwrap();
        let names: Vec<&str> = graph.input.iter().filter_map(|i| i.name.as_deref()).collect();
        assert_eq!(names, [EMBEDDINGS]);
        assert!(graph.node.iter().any(|n| op_type(n) == "Range"));
        assert_eq!(graph.node.iter().filter(|n| op_type(n) == "Mul").count(), 0);
    }

    #[test]
    fn ids_read_for_their_values_or_missing_are_refused_by_name() {
        let mut g = GraphBuilder::new("ids_values", 17);
        let ids = g.input_typed("input_ids", data_type::INT64, &[-1, -1]);
        let table = g.constant("table", &[5, 2], &[0.0; 10]);
        let e = g.node("Gather", &[&table, &ids], vec![("axis", Attr::Int(0))]);
        let f = g.node("Cast", &[&ids], vec![("to", Attr::Int(data_type::FLOAT as i64))]);
        g.node("Add", &[&e, &f], vec![]);
        g.rename_last_output("logits");
        g.output_any("logits");
        let model = g.build();
        let no_mask = TextInputs { mask: None, ..inputs() };
        let err = cut(&model, &no_mask).unwrap_err();
        assert!(err.contains("read by Cast"), "{err}");
        let err = cut(&model, &inputs()).unwrap_err();
        assert!(err.contains("no graph input `attention_mask`"), "{err}");
    }
}
