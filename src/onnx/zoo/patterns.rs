//! Small tabular networks for PatternNet and PatternAttribution: the paper's linear toy (signal,
//! distractor, and a filter that cancels the distractor), and seeded Conv and dense networks whose
//! weights a NumPy implementation of both estimators reads back by name (`conv.w`, `fc.w`, ...).

use super::super::builder::{Attr, GraphBuilder};
use super::super::proto::ModelProto;
use super::Weights;

/// Kindermans et al.'s linear toy: scores `w^T x` and `-w^T x` over two features, no bias;
/// with `x = s y + d e` and `w` orthogonal to the distractor `d`, the gradient is `w`, not `s`.
pub fn signal_distractor(w: [f32; 2]) -> ModelProto {
    let mut g = GraphBuilder::new("signal_distractor", 17);
    g.input("x", &[-1, 2]);
    let w = g.constant("w", &[2, 2], &[w[0], -w[0], w[1], -w[1]]);
    g.node_with_outputs("Gemm", &["x", &w], &["scores"], vec![]);
    g.output("scores", &[-1, 2]);
    g.build()
}

/// 36 features read as a 1x6x6 image: a 3x3 convolution to 3 channels (`conv.w`, `conv.b`; zero
/// padding 1 when `pad`), a ReLU when `relu`, then a Gemm to 2 scores (`fc.w` stored `[2, n]`,
/// transB, `fc.b`). Without ReLU and padding every layer conserves PatternAttribution's relevance.
pub fn pattern_conv(seed: u64, relu: bool, pad: bool) -> ModelProto {
    let mut w = Weights(seed);
    let mut g = GraphBuilder::new("pattern_conv", 17);
    g.input("x", &[-1, 36]);
    let shape = g.constant_i64("image_shape", &[4], &[-1, 1, 6, 6]);
    let image = g.node("Reshape", &["x", &shape], vec![]);
    let cw = g.constant("conv.w", &[3, 1, 3, 3], &w.vec(27, 0.6));
    let cb = g.constant("conv.b", &[3], &w.vec(3, 0.1));
    let p = i64::from(pad);
    let mut h = g.node(
        "Conv",
        &[&image, &cw, &cb],
        vec![
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("pads", Attr::Ints(vec![p, p, p, p])),
        ],
    );
    if relu {
        h = g.node("Relu", &[&h], vec![]);
    }
    let flat = g.node("Flatten", &[&h], vec![("axis", Attr::Int(1))]);
    let side = if pad { 6 } else { 4 };
    let n = 3 * side * side;
    let fw = g.constant("fc.w", &[2, n], &w.vec(2 * n as usize, 0.3));
    let fb = g.constant("fc.b", &[2], &w.vec(2, 0.1));
    g.node_with_outputs("Gemm", &[&flat, &fw, &fb], &["scores"], vec![("transB", Attr::Int(1))]);
    g.output("scores", &[-1, 2]);
    g.build()
}

/// Four features, a MatMul to 5 with its bias as a separate Add (`fc1.w` `[4, 5]`, `fc1.b`), a
/// ReLU, and a Gemm to 3 scores (`fc2.w` `[5, 3]`, `fc2.b`).
pub fn pattern_dense(seed: u64) -> ModelProto {
    let mut w = Weights(seed);
    let mut g = GraphBuilder::new("pattern_dense", 17);
    g.input("x", &[-1, 4]);
    let w1 = g.constant("fc1.w", &[4, 5], &w.vec(20, 0.8));
    let b1 = g.constant("fc1.b", &[5], &w.vec(5, 0.2));
    let h = g.node("MatMul", &["x", &w1], vec![]);
    let h = g.node("Add", &[&h, &b1], vec![]);
    let r = g.node("Relu", &[&h], vec![]);
    let w2 = g.constant("fc2.w", &[5, 3], &w.vec(15, 0.8));
    let b2 = g.constant("fc2.b", &[3], &w.vec(3, 0.1));
    g.node_with_outputs("Gemm", &[&r, &w2, &b2], &["scores"], vec![]);
    g.output("scores", &[-1, 3]);
    g.build()
}
