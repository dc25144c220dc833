//! Copies of a model with the weights of its last layers re-drawn at random, for the model
//! randomisation sanity check (Adebayo et al., 2018): an explanation that barely changes when the
//! weights it should depend on are randomised does not explain the model.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::node::{op_type, tensor_f32};
use super::proto::{data_type, ModelProto};

/// The layers that carry weights (Conv, ConvTranspose, Gemm, MatMul with a constant operand), in
/// graph order; each entry lists the float initializers it reads (weights and bias).
pub fn weighted_layers(model: &ModelProto) -> Vec<(String, Vec<String>)> {
    let Some(graph) = model.graph.as_ref() else {
        return Vec::new();
    };
    let is_float_initializer = |name: &str| {
        graph
            .initializer
            .iter()
            .any(|t| t.name.as_deref() == Some(name) && t.data_type == Some(data_type::FLOAT))
    };
    graph
        .node
        .iter()
        .filter(|n| matches!(op_type(n), "Conv" | "ConvTranspose" | "Gemm" | "MatMul"))
        .filter_map(|n| {
            let weights: Vec<String> = n.input.iter().filter(|i| is_float_initializer(i)).cloned().collect();
            (!weights.is_empty()).then(|| (super::node::node_name(n), weights))
        })
        .collect()
}

/// `model` with every initializer in `names` replaced by normal noise of the same mean and standard
/// deviation (a bias of zeros stays zeros), drawn from `seed`.
pub fn randomized(model: &ModelProto, names: &[String], seed: u64) -> ModelProto {
    let mut out = model.clone();
    let Some(graph) = out.graph.as_mut() else {
        return out;
    };
    for (i, tensor) in graph.initializer.iter_mut().enumerate() {
        if !tensor.name.as_ref().is_some_and(|n| names.contains(n)) {
            continue;
        }
        // One stream per tensor: a tensor gets the same noise whichever others are redrawn with it,
        // so the cascade's steps differ only by the layers they add.
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        let Some(values) = tensor_f32(tensor) else {
            continue;
        };
        let n = values.len().max(1) as f64;
        let mean = values.iter().map(|v| f64::from(*v)).sum::<f64>() / n;
        let std = (values.iter().map(|v| (f64::from(*v) - mean).powi(2)).sum::<f64>() / n).sqrt();
        let noise = Normal::new(mean, std.max(1e-12)).ok();
        tensor.float_data = values
            .iter()
            .map(|_| match (&noise, std > 0.0) {
                (Some(d), true) => d.sample(&mut rng) as f32,
                _ => mean as f32,
            })
            .collect();
        tensor.raw_data = None;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::builder::GraphBuilder;

    #[test]
    fn weights_of_the_named_layers_are_redrawn_with_their_scale_and_the_rest_kept() {
        let mut b = GraphBuilder::new("m", 17);
        b.input("x", &[-1, 2]);
        let w1: Vec<f32> = (0..4).map(|i| i as f32).collect();
        let w1 = b.constant("w1", &[2, 2], &w1);
        let w2 = b.constant("w2", &[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let h = b.node("MatMul", &["x", &w1], vec![]);
        let y = b.node("MatMul", &[&h, &w2], vec![]);
        b.output(&y, &[-1, 2]);
        let model = b.build();
        let layers = weighted_layers(&model);
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[1].1, vec!["w2".to_string()]);
        let r = randomized(&model, &layers[1].1, 1);
        let get = |m: &ModelProto, n: &str| {
            tensor_f32(
                m.graph
                    .as_ref()
                    .unwrap()
                    .initializer
                    .iter()
                    .find(|t| t.name.as_deref() == Some(n))
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(get(&r, "w1"), get(&model, "w1"));
        assert_ne!(get(&r, "w2"), get(&model, "w2"));
        assert_eq!(randomized(&model, &layers[1].1, 1), r, "seeded");
    }
}
