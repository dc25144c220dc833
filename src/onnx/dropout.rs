//! MC dropout as graph surgery: each place a dropout mask goes becomes `Mul(x, mask)`, the mask a
//! new graph input, so that explaind draws the masks itself. ONNX Runtime's own Dropout is no use
//! here: its optimiser removes a Dropout whose mask output is unused, and its random sequence is
//! not reproducible across sessions.

use serde::Serialize;
use utoipa::ToSchema;

use super::autodiff::analysis::Path;
use super::autodiff::ShapeMap;
use super::builder::value_info;
use super::node::op_type;
use super::proto::{data_type, ModelProto, NodeProto};

/// Metadata key that keeps an inference-time Dropout's ratio on the Identity it becomes.
pub const RATIO_KEY: &str = "explaind.dropout_ratio";

/// Where a mask goes, and why there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SiteOrigin {
    /// A Dropout node the model was exported with.
    DropoutNode,
    /// The input of the last linear layer (Gemm or MatMul; a fully convolutional network's last
    /// Conv) before the scores.
    LastLinear,
    /// A tensor named in `dropout_layers`.
    Named,
}

/// One masked tensor.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct MaskSite {
    /// The tensor masked.
    pub tensor: String,
    /// Why a mask goes there.
    pub origin: SiteOrigin,
    /// Its shape without the batch axis (one mask element per value).
    pub dims: Vec<usize>,
    /// The model's own dropout ratio there (a Dropout node's), used when the request gives no `p`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f32>,
    /// Mask only this node's use of the tensor (the last linear layer); others keep the tensor.
    #[serde(skip)]
    pub only_node: Option<String>,
}

impl MaskSite {
    /// Mask values per row.
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    /// Whether the mask is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The graph input that feeds the `k`-th mask.
pub fn mask_input(k: usize) -> String {
    format!("explaind.dropout_mask.{k}")
}

/// The masked tensor that replaces `site`'s (the `k`-th mask's) in the graph.
pub fn masked_tensor(site: &MaskSite, k: usize) -> String {
    format!("{}.dropped.{k}", site.tensor)
}

/// Where masks go in `model` (prepared for differentiation, `shapes` probed): the tensors named in
/// `layers`; else after every Dropout node the export kept; else the input of the last linear
/// layer before `output`. An error says why no mask can go where asked.
pub fn mask_sites(
    model: &ModelProto,
    shapes: &ShapeMap,
    input: &str,
    output: &str,
    layers: &[String],
) -> Result<Vec<MaskSite>, String> {
    let graph = model.graph.as_ref().ok_or("the model has no graph")?;
    let path = Path::find(graph, input, &[output.to_string()], shapes);
    let on_path = |t: &str| t != output && path.depends.contains(t) && path.needed.contains(t);
    let site = |tensor: &str, origin, ratio, only_node| site(shapes, tensor, origin, ratio, only_node);
    if !layers.is_empty() {
        return layers
            .iter()
            .map(|l| {
                if !on_path(l) {
                    return Err(format!("`{l}` is not a float tensor between the input and the scores"));
                }
                site(l, SiteOrigin::Named, None, None)
            })
            .collect();
    }
    let mut sites = Vec::new();
    for &i in &path.nodes {
        let node = &graph.node[i];
        let ratio = node
            .metadata_props
            .iter()
            .find(|p| p.key.as_deref() == Some(RATIO_KEY))
            .and_then(|p| p.value.as_deref()?.parse::<f32>().ok());
        if let (Some(ratio), Some(out)) = (ratio, node.output.first()) {
            sites.push(site(out, SiteOrigin::DropoutNode, Some(ratio), None)?);
        }
    }
    if !sites.is_empty() {
        return Ok(sites);
    }
    // The last Gemm or MatMul; in a fully convolutional network (a detector's or segmenter's
    // head) the last Conv, whose input is the feature map the head reads.
    let last_of = |ops: &[&str]| {
        path.nodes
            .iter()
            .rev()
            .map(|&i| &graph.node[i])
            .find(|n| ops.contains(&op_type(n)) && n.input.first().is_some_and(|a| on_path(a)))
    };
    let last_linear = last_of(&["Gemm", "MatMul"]).or_else(|| last_of(&["Conv"])).ok_or(
        "no Gemm, MatMul or Conv between the input and the scores to put a mask before; name tensors in `dropout_layers`",
    )?;
    let name = super::node::node_name(last_linear);
    Ok(vec![site(
        &last_linear.input[0],
        SiteOrigin::LastLinear,
        None,
        Some(name),
    )?])
}

/// A mask site at `tensor`: a float tensor with a dynamic batch axis and fixed other sizes.
fn site(
    shapes: &ShapeMap,
    tensor: &str,
    origin: SiteOrigin,
    ratio: Option<f32>,
    only_node: Option<String>,
) -> Result<MaskSite, String> {
    let shape = shapes
        .get(tensor)
        .ok_or_else(|| format!("`{tensor}` is not a tensor of the model"))?;
    if shape.elem_type != data_type::FLOAT {
        return Err(format!("`{tensor}` is not a float tensor"));
    }
    match shape.dims.first() {
        Some(None) => {}
        Some(Some(_)) => {
            return Err(format!(
                "`{tensor}` has a fixed batch axis; samples run as rows of one batch"
            ))
        }
        None => return Err(format!("`{tensor}` is a scalar")),
    }
    let dims = shape.dims[1..]
        .iter()
        .map(|d| d.and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| format!("`{tensor}` has a dimension that varies with the input"))?;
    Ok(MaskSite {
        tensor: tensor.to_string(),
        origin,
        dims,
        ratio,
        only_node,
    })
}

/// `model` with `Mul(tensor, mask)` at every site: mask `k` is the graph input [`mask_input`]`(k)`,
/// shaped like its tensor, batch first.
pub fn with_masks(model: &ModelProto, sites: &[MaskSite]) -> Result<ModelProto, String> {
    let mut masked = model.clone();
    let graph = masked.graph.as_mut().ok_or("the model has no graph")?;
    let mut inserts: Vec<(usize, NodeProto)> = Vec::new();
    for (k, site) in sites.iter().enumerate() {
        let mask = mask_input(k);
        let dropped = masked_tensor(site, k);
        let mut consumers = 0;
        for node in graph.node.iter_mut() {
            let chosen = site
                .only_node
                .as_ref()
                .is_none_or(|only| super::node::node_name(node) == *only);
            if !chosen {
                continue;
            }
            for input in node.input.iter_mut().filter(|i| **i == site.tensor) {
                *input = dropped.clone();
                consumers += 1;
            }
        }
        if consumers == 0 {
            return Err(format!("nothing reads `{}`", site.tensor));
        }
        // Right after the producer (first for a graph input), so the file stays in order.
        let at = graph
            .node
            .iter()
            .position(|n| n.output.contains(&site.tensor))
            .map_or(0, |p| p + 1);
        inserts.push((
            at,
            NodeProto {
                name: Some(format!("explaind.dropout.{k}")),
                op_type: Some("Mul".into()),
                domain: Some(String::new()),
                input: vec![site.tensor.clone(), mask.clone()],
                output: vec![dropped],
                ..Default::default()
            },
        ));
        let dims: Vec<i64> = std::iter::once(-1).chain(site.dims.iter().map(|&d| d as i64)).collect();
        graph.input.push(value_info(&mask, data_type::FLOAT, Some(&dims)));
    }
    // From the back, so earlier positions stay valid.
    inserts.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    for (at, node) in inserts {
        graph.node.insert(at, node);
    }
    Ok(masked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::builder::{Attr, GraphBuilder};

    /// x [N,4] -> Relu -> h -> Gemm -> y [N,3]
    fn mlp() -> (ModelProto, ShapeMap) {
        let mut b = GraphBuilder::new("mlp", 17);
        b.input("x", &[-1, 4]);
        let w = b.constant("w", &[4, 3], &[0.1; 12]);
        let h = b.node("Relu", &["x"], vec![]);
        let y = b.node("Gemm", &[&h, &w], vec![("alpha", Attr::Float(1.0))]);
        b.output(&y, &[-1, 3]);
        let model = b.build();
        let names: Vec<String> = model
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .map(|n| n.output[0].clone())
            .collect();
        let s = crate::onnx::float_shapes(&[
            ("x", &[None, Some(4)]),
            (&names[0], &[None, Some(4)]),
            (&names[1], &[None, Some(3)]),
        ]);
        (model, s)
    }

    #[test]
    fn the_default_site_is_the_last_linear_layers_input_and_the_mask_becomes_an_input() {
        let (model, shapes) = mlp();
        let graph = model.graph.as_ref().unwrap();
        let (h, y) = (graph.node[0].output[0].clone(), graph.node[1].output[0].clone());
        let sites = mask_sites(&model, &shapes, "x", &y, &[]).unwrap();
        assert_eq!(sites.len(), 1);
        assert_eq!(
            (sites[0].tensor.as_str(), sites[0].origin, sites[0].dims.as_slice()),
            (h.as_str(), SiteOrigin::LastLinear, &[4usize][..])
        );
        let masked = with_masks(&model, &sites).unwrap();
        let g = masked.graph.unwrap();
        assert_eq!(g.input.last().unwrap().name.as_deref(), Some("explaind.dropout_mask.0"));
        let mul = g.node.iter().position(|n| op_type(n) == "Mul").unwrap();
        assert_eq!(mul, 1, "right after the Relu");
        assert_eq!(
            g.node[2].input[0], g.node[1].output[0],
            "the Gemm reads the masked tensor"
        );
    }

    #[test]
    fn named_layers_off_the_path_or_of_unknown_size_are_refused_with_the_reason() {
        let (model, mut shapes) = mlp();
        let y = model.graph.as_ref().unwrap().node[1].output[0].clone();
        let err = mask_sites(&model, &shapes, "x", &y, &["nope".into()]).unwrap_err();
        assert!(err.contains("`nope`"), "{err}");
        let h = model.graph.as_ref().unwrap().node[0].output[0].clone();
        shapes.get_mut(&h).unwrap().dims = vec![None, None];
        let err = mask_sites(&model, &shapes, "x", &y, std::slice::from_ref(&h)).unwrap_err();
        assert!(err.contains("varies"), "{err}");
    }

    #[test]
    fn a_kept_dropout_node_is_the_site_with_its_own_ratio() {
        let (mut model, shapes) = mlp();
        let graph = model.graph.as_mut().unwrap();
        graph.node[0]
            .metadata_props
            .push(crate::onnx::proto::StringStringEntryProto {
                key: Some(RATIO_KEY.into()),
                value: Some("0.25".into()),
            });
        let y = graph.node[1].output[0].clone();
        let sites = mask_sites(&model, &shapes, "x", &y, &[]).unwrap();
        assert_eq!((sites[0].origin, sites[0].ratio), (SiteOrigin::DropoutNode, Some(0.25)));
    }
}
