//! A YOLO head with an objectness (YOLOv5's `[batch, candidates, 5 + classes]`) rewritten so each
//! candidate's class values are its detection scores, objectness x class score, computed in the
//! graph with standard operators (Slice, Mul, Concat). A detection's score is then one value of the
//! output, which a one-hot weight selects: gradients, LRP and DeepLIFT explain the product, and
//! perturbation methods read it on each perturbed row.

use super::builder::{attribute, int64_tensor, value_info, Attr};
use super::proto::{data_type, ModelProto, NodeProto};

/// The rewritten output's name.
pub const SCORED_OUTPUT: &str = "explaind.detection.scored";

/// Appends the scoring to `model`, whose output `output` holds candidates along one axis and their
/// values (4 box values, the objectness, the class scores) along `axis` (1 or 2); the new output
/// [`SCORED_OUTPUT`] replaces it, with its shape.
pub fn score_by_objectness(model: &mut ModelProto, output: &str, axis: i64) -> Result<(), String> {
    let graph = model.graph.as_mut().ok_or("the model has no graph")?;
    let at = graph
        .output
        .iter()
        .position(|o| o.name.as_deref() == Some(output))
        .ok_or_else(|| format!("no output `{output}`"))?;
    let name = |s: &str| format!("explaind.detection.{s}");
    let ints = |n: &str, v: i64| int64_tensor(&name(n), &[1], &[v]);
    graph.initializer.extend([
        ints("zero", 0),
        ints("four", 4),
        ints("five", 5),
        ints("end", i64::MAX),
        ints("axis", axis),
    ]);
    let slice = |out: &str, start: &str, end: &str| NodeProto {
        name: Some(name(out)),
        op_type: Some("Slice".into()),
        domain: Some(String::new()),
        input: vec![output.to_string(), name(start), name(end), name("axis")],
        output: vec![name(out)],
        ..Default::default()
    };
    graph.node.extend([
        slice("box_objectness", "zero", "five"),
        slice("objectness", "four", "five"),
        slice("classes", "five", "end"),
        NodeProto {
            name: Some(name("scores")),
            op_type: Some("Mul".into()),
            domain: Some(String::new()),
            input: vec![name("classes"), name("objectness")],
            output: vec![name("scores")],
            ..Default::default()
        },
        NodeProto {
            name: Some(name("concat")),
            op_type: Some("Concat".into()),
            domain: Some(String::new()),
            input: vec![name("box_objectness"), name("scores")],
            output: vec![SCORED_OUTPUT.to_string()],
            attribute: vec![attribute("axis", Attr::Int(axis))],
            ..Default::default()
        },
    ]);
    let mut scored = graph.output[at].clone();
    scored.name = Some(SCORED_OUTPUT.to_string());
    if scored.r#type.is_none() {
        scored = value_info(SCORED_OUTPUT, data_type::FLOAT, None);
    }
    graph.output[at] = scored;
    Ok(())
}
