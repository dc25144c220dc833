//! Small known-answer models for the outputs beside a row of class scores: a segmenter whose
//! class logits at a pixel read only the 5 x 5 input neighbourhood around it (two 3 x 3
//! convolutions), a multi-label tagger and an image regressor whose answers are closed forms of
//! the image's mean.

use super::{Attr, ModelProto, Net};

/// Where a segmenter puts its classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegLayout {
    /// `[batch, classes, height, width]`.
    Nchw,
    /// `[batch, height, width, classes]` (a Transpose at the end, as TensorFlow exports give).
    Nhwc,
}

/// Input pixels each output pixel of [`segmenter`] reads on either side (two 3 x 3 convolutions).
pub const SEGMENTER_REACH: usize = 2;

/// A grayscale `side x side` segmenter with seeded weights: Conv 3x3 (1 -> 8) + ReLU, Conv 3x3
/// (8 -> `classes`, the last class's weights positive, the others' negative), both padded so the
/// logits keep the input's size. Input `image`
/// `[batch, 1, side, side]`, output `logits`.
pub fn segmenter(side: i64, classes: i64, layout: SegLayout, seed: u64) -> ModelProto {
    let mut net = Net::new("segmenter", 17, seed);
    let x = net.g.input("image", &[-1, 1, side, side]);
    let c1 = net.conv(&x, 1, 8, 3, 1, 1);
    let r1 = net.relu(&c1);
    // The last class reads the features with positive weights and the others with negative
    // ones: its logits rise with the evidence in their neighbourhood, a known direction.
    let scale = (6.0f32 / 72.0).sqrt();
    let w2: Vec<f32> = (0..classes * 8 * 9)
        .map(|i| {
            let v = net.w.next().abs() * scale;
            if i / (8 * 9) == classes - 1 {
                v
            } else {
                -v
            }
        })
        .collect();
    let w2 = net.g.constant("seg_w2", &[classes, 8, 3, 3], &w2);
    let b2 = net.param(&[classes], 0.05);
    let c2 = net.g.node(
        "Conv",
        &[&r1, &w2, &b2],
        vec![
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
        ],
    );
    let out = match layout {
        SegLayout::Nchw => c2,
        SegLayout::Nhwc => net
            .g
            .node("Transpose", &[&c2], vec![("perm", Attr::Ints(vec![0, 2, 3, 1]))]),
    };
    let _ = out;
    net.g.rename_last_output("logits");
    match layout {
        SegLayout::Nchw => net.g.output("logits", &[-1, classes, side, side]),
        SegLayout::Nhwc => net.g.output("logits", &[-1, side, side, classes]),
    }
    net.g.build()
}

/// A grayscale `side x side` model whose outputs are `weights * m + biases`, `m` the image's mean
/// input value: a multi-label tagger's logits (one per weight) or, with one weight, a regressor's
/// value. Input `image` `[batch, 1, side, side]`, output `scores` `[batch, weights.len()]`.
pub fn mean_linear(side: i64, weights: &[f32], biases: &[f32]) -> ModelProto {
    let mut net = Net::new("mean-linear", 17, 0);
    let n = weights.len() as i64;
    let x = net.g.input("image", &[-1, 1, side, side]);
    let gap = net.g.node("GlobalAveragePool", &[&x], vec![]);
    let flat = net.g.node("Flatten", &[&gap], vec![("axis", Attr::Int(1))]);
    let w = net.g.constant("w", &[1, n], weights);
    let b = net.g.constant("b", &[n], biases);
    net.g.node("Gemm", &[&flat, &w, &b], vec![]);
    net.g.rename_last_output("scores");
    net.g.output("scores", &[-1, n]);
    net.g.build()
}
