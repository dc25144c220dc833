//! A CNN that uses a known concept: a 12x12 grayscale image, whose first layer's channel 0 detects
//! horizontal stripes (a bright row between dark ones), and whose class `striped` reads only that
//! channel. TCAV should find the stripes concept significant for `striped` at every layer, and a
//! concept of random images not; `relu3` copies the label (channel 0 positive on striped images
//! only, channel 1 always 0), as layer information's tests need.

use super::super::builder::{Attr, GraphBuilder};
use super::super::proto::ModelProto;

/// Side of the input image.
pub const SIDE: i64 = 12;

fn conv(g: &mut GraphBuilder, x: &str, name: &str, w: (&[i64], &[f32]), b: &[f32], k: i64) -> String {
    let wn = g.constant(&format!("{name}_w"), w.0, w.1);
    let bn = g.constant(&format!("{name}_b"), &[b.len() as i64], b);
    let p = k / 2;
    g.node(
        "Conv",
        &[x, &wn, &bn],
        vec![
            ("kernel_shape", Attr::Ints(vec![k, k])),
            ("pads", Attr::Ints(vec![p, p, p, p])),
        ],
    );
    g.rename_last_output(name)
}

/// The stripes model: input `image` `[N, 1, 12, 12]` (pixels in [0, 1]), output `logits`
/// `[N, 2]` (`plain`, `striped`); layers `relu1` (4 channels: horizontal stripes, brightness,
/// vertical stripes, a seeded mix), `relu2` (stripes above a threshold of 0.8, and three
/// others), `relu3` (the thresholded stripes, and a channel fixed at 0).
pub fn stripes() -> ModelProto {
    let mut g = GraphBuilder::new("stripes", 17);
    let x = g.input("image", &[-1, 1, SIDE, SIDE]);
    let third = 1.0 / 3.0;
    let horizontal = [
        -third,
        -third,
        -third,
        2.0 * third,
        2.0 * third,
        2.0 * third,
        -third,
        -third,
        -third,
    ];
    let vertical = [
        -third,
        2.0 * third,
        -third,
        -third,
        2.0 * third,
        -third,
        -third,
        2.0 * third,
        -third,
    ];
    let mixed = [0.3, -0.2, 0.1, 0.4, -0.5, 0.2, -0.1, 0.3, 0.2];
    let w1: Vec<f32> = horizontal
        .iter()
        .chain(&[1.0 / 9.0; 9])
        .chain(&vertical)
        .chain(&mixed)
        .copied()
        .collect();
    let c1 = conv(&mut g, &x, "conv1", (&[4, 1, 3, 3], &w1), &[0.0, 0.0, 0.0, 0.1], 3);
    g.node("Relu", &[&c1], vec![]);
    g.rename_last_output("relu1");
    // 1x1: channel 0 passes stripes above 0.8; the others mix.
    let w2 = [
        1.0, 0.0, 0.0, 0.0, //
        0.0, 1.0, 0.0, 0.0, //
        0.2, 0.0, 1.0, 0.3, //
        0.0, 0.5, 0.2, 0.6,
    ];
    let c2 = conv(
        &mut g,
        "relu1",
        "conv2",
        (&[4, 4, 1, 1], &w2),
        &[-0.8, 0.0, 0.0, 0.05],
        1,
    );
    g.node("Relu", &[&c2], vec![]);
    g.rename_last_output("relu2");
    let w3 = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let c3 = conv(&mut g, "relu2", "conv3", (&[2, 4, 1, 1], &w3), &[0.0, -1.0], 1);
    g.node("Relu", &[&c3], vec![]);
    g.rename_last_output("relu3");
    let gap = g.node("GlobalAveragePool", &["relu3"], vec![]);
    let flat = g.node("Flatten", &[&gap], vec![("axis", Attr::Int(1))]);
    // plain = -6 s + 0.5, striped = 6 s - 0.5 (s: the mean of relu3's stripes channel).
    let w = g.constant("head_w", &[2, 2], &[-6.0, 6.0, 0.0, 0.0]);
    let b = g.constant("head_b", &[2], &[0.5, -0.5]);
    g.node("Gemm", &[&flat, &w, &b], vec![]);
    g.rename_last_output("logits");
    g.output_any("logits");
    g.build()
}
