//! A CNN whose decision rests on one known channel, for channel attribution: its right answer is
//! known by construction.

use super::super::builder::{Attr, GraphBuilder};
use super::super::proto::ModelProto;
use super::Weights;

/// The channel of [`one_channel`]'s layer `features` that class 0 reads.
pub const DECIDING_CHANNEL: usize = 5;
/// Channels of [`one_channel`]'s layer `features`.
pub const CHANNELS: usize = 8;

/// `logits = Gemm(GAP(features))`, `features = Relu(Conv3x3(input))` with `CHANNELS` channels of
/// positive seeded weights (so each is alive on any bright image), on a grayscale `side x side`
/// input. Class 0's logit is `2 x` the mean of channel [`DECIDING_CHANNEL`] alone; class 1's is
/// `0.3 x` the sum of the others' means. Explaining class 0, that channel holds all of the score
/// and every other channel none.
pub fn one_channel(side: i64) -> ModelProto {
    let mut g = GraphBuilder::new("one-channel", 17);
    let mut w = Weights(57);
    let x = g.input("input", &[-1, 1, side, side]);
    let c = CHANNELS as i64;
    let kernel: Vec<f32> = w.vec(CHANNELS * 9, 1.0).into_iter().map(|v| 0.1 + v.abs()).collect();
    let kernel = g.constant("conv_w", &[c, 1, 3, 3], &kernel);
    let bias = g.constant("conv_b", &[c], &w.vec(CHANNELS, 0.05));
    let conv = g.node(
        "Conv",
        &[&x, &kernel, &bias],
        vec![
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
        ],
    );
    g.node_with_outputs("Relu", &[&conv], &["features"], vec![]);
    let gap = g.node("GlobalAveragePool", &["features"], vec![]);
    let flat = g.node("Flatten", &[&gap], vec![("axis", Attr::Int(1))]);
    let mut fc = vec![0f32; CHANNELS * 2];
    for ch in 0..CHANNELS {
        if ch == DECIDING_CHANNEL {
            fc[ch * 2] = 2.0;
        } else {
            fc[ch * 2 + 1] = 0.3;
        }
    }
    let fc = g.constant("fc", &[c, 2], &fc);
    g.node("Gemm", &[&flat, &fc], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}
