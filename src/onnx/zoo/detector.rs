//! A YOLO-style detector with seeded weights whose every candidate reads one cell of the image and
//! nothing else: the known answer of the detection tests. The input (`[batch, 3, 32, 32]`) is cut
//! into a 2 x 2 grid of 16-pixel cells by two non-overlapping strided convolutions (4 x 4 stride 4,
//! then 4 x 4 stride 4); each cell is one candidate with a fixed box (the cell) and one sigmoid
//! score per class. The output `output0` is `[batch, 4 + classes, 4]`, YOLOv8's layout (centre-size
//! boxes in input pixels, no objectness). Class 0 reads bright pixels (positive weights) and every
//! score starts low (a bias of -4), so a black image detects nothing and a bright patch in one cell
//! detects class 0 there, its score a function of that cell's pixels alone.

use super::super::builder::{Attr, GraphBuilder};
use super::super::proto::ModelProto;
use super::Weights;

/// Side of the detector's square input.
pub const DETECTOR_SIDE: i64 = 32;
/// Side of one cell: one candidate.
pub const DETECTOR_CELL: i64 = 16;

/// The detector, with `classes` classes (at least 2).
pub fn detector(classes: i64) -> ModelProto {
    detector_sized(DETECTOR_SIDE, classes, 8, 0)
}

/// The same head on a `side` x `side` input (a multiple of 16: one candidate per 16-pixel cell),
/// `hidden` feature maps, and `depth` 3 x 3 convolutions between the two strided ones (they let a
/// candidate read past its cell: benchmarks only).
pub fn detector_sized(side: i64, classes: i64, hidden: i64, depth: usize) -> ModelProto {
    let mut g = GraphBuilder::new("zoo-detector", 17);
    let mut w = Weights(34);
    let x = g.input("images", &[-1, 3, side, side]);
    let h = trunk(&mut g, &mut w, &x, hidden, depth);
    let cells = (side / DETECTOR_CELL).pow(2);
    // Boxes first, so that the last feature map before the output (the default CAM layer) is the
    // class scores'. A zero-weight convolution (it keeps the batch axis) plus each cell's box.
    let wb = g.constant("box_w", &[4, hidden, 4, 4], &vec![0.0; (4 * hidden * 16) as usize]);
    let zero = g.node("Conv", &[&h, &wb], strided(4));
    let grid = side / DETECTOR_CELL;
    let mut fixed = Vec::new();
    for value in 0..4 {
        for r in 0..grid {
            for c in 0..grid {
                let half = DETECTOR_CELL as f32 / 2.0;
                fixed.push(match value {
                    0 => c as f32 * DETECTOR_CELL as f32 + half,
                    1 => r as f32 * DETECTOR_CELL as f32 + half,
                    _ => DETECTOR_CELL as f32,
                });
            }
        }
    }
    let fixed = g.constant("cell_boxes", &[1, 4, grid, grid], &fixed);
    let boxes = g.node("Add", &[&zero, &fixed], vec![]);
    let box_shape = g.constant_i64("boxes_shape", &[3], &[0, 4, cells]);
    let boxes = g.node("Reshape", &[&boxes, &box_shape], vec![]);
    let scores = class_scores(&mut g, &mut w, &h, classes, hidden);
    let shape = g.constant_i64("scores_shape", &[3], &[0, classes, cells]);
    let scores = g.node("Reshape", &[&scores, &shape], vec![]);
    g.node("Concat", &[&boxes, &scores], vec![("axis", Attr::Int(1))]);
    g.rename_last_output("output0");
    g.output("output0", &[-1, 4 + classes, cells]);
    g.build()
}

/// The same cells after their own NMS, as SSD / RetinaNet / torchvision-style exports give it:
/// outputs `boxes` `[batch, 4, 4]` (corners in input pixels), `scores` `[batch, 4]` and `classes`
/// `[batch, 4]` (as floats), the four cells of a 32 x 32 input ranked by their best class score,
/// best first. Each cell's score reads that cell's pixels alone, but which slot holds it depends
/// on every cell: another input's ranking may give a slot to another box. The ranking is a
/// permutation (TopK, OneHot) applied by MatMul, so the scores are differentiable.
pub fn post_nms_detector(classes: i64) -> ModelProto {
    let (side, hidden) = (DETECTOR_SIDE, 8);
    let mut g = GraphBuilder::new("zoo-post-nms-detector", 17);
    let mut w = Weights(34);
    let x = g.input("images", &[-1, 3, side, side]);
    let h = trunk(&mut g, &mut w, &x, hidden, 0);
    let grid = side / DETECTOR_CELL;
    let cells = grid * grid;
    let scores = class_scores(&mut g, &mut w, &h, classes, hidden);
    let shape = g.constant_i64("scores_shape", &[3], &[0, classes, cells]);
    let per_class = g.node("Reshape", &[&scores, &shape], vec![]);
    // Each cell's best class and its score (Max over the classes: a rule of its own).
    let split = g.node_n("Split", &[&per_class], classes as usize, vec![("axis", Attr::Int(1))]);
    let split: Vec<&str> = split.iter().map(String::as_str).collect();
    let best = g.node("Max", &split, vec![]);
    let flat = g.constant_i64("cells_shape", &[2], &[0, cells]);
    let best = g.node("Reshape", &[&best, &flat], vec![]);
    let class = g.node(
        "ArgMax",
        &[&per_class],
        vec![("axis", Attr::Int(1)), ("keepdims", Attr::Int(0))],
    );
    let class = g.node("Cast", &[&class], vec![("to", Attr::Int(1))]);
    // The ranking, as a permutation matrix: row i is the one-hot of the i-th best cell.
    let k = g.constant_i64("cells_k", &[1], &[cells]);
    let ranked = g.node_n("TopK", &[&best, &k], 2, vec![("axis", Attr::Int(1))]);
    let values = g.constant("one_hot_values", &[2], &[0.0, 1.0]);
    let permutation = g.node("OneHot", &[&ranked[1], &k, &values], vec![("axis", Attr::Int(-1))]);
    let column = g.constant_i64("column_shape", &[3], &[0, cells, 1]);
    let sorted = |g: &mut GraphBuilder, v: &str, name: &str| {
        let v = g.node("Reshape", &[v, &column], vec![]);
        let v = g.node("MatMul", &[&permutation, &v], vec![]);
        g.node("Reshape", &[&v, &flat], vec![]);
        g.rename_last_output(name);
        g.output(name, &[-1, cells]);
    };
    sorted(&mut g, &best, "scores");
    sorted(&mut g, &class, "classes");
    let mut corners = Vec::new();
    for cell in 0..cells {
        let (r, c) = ((cell / grid) as f32, (cell % grid) as f32);
        let s = DETECTOR_CELL as f32;
        corners.extend([c * s, r * s, (c + 1.0) * s, (r + 1.0) * s]);
    }
    let corners = g.constant("cell_corners", &[cells, 4], &corners);
    g.node("MatMul", &[&permutation, &corners], vec![]);
    g.rename_last_output("boxes");
    g.output("boxes", &[-1, cells, 4]);
    g.build()
}

fn strided(k: i64) -> Vec<(&'static str, Attr)> {
    vec![
        ("kernel_shape", Attr::Ints(vec![k, k])),
        ("strides", Attr::Ints(vec![k, k])),
    ]
}

/// The features: a non-overlapping 4 x 4 convolution, stride 4, then `depth` 3 x 3 ones.
fn trunk(g: &mut GraphBuilder, w: &mut Weights, x: &str, hidden: i64, depth: usize) -> String {
    // Non-negative first-layer weights: a brighter cell gives larger activations.
    let w1: Vec<f32> = w.vec((hidden * 3 * 16) as usize, 0.1).iter().map(|v| v.abs()).collect();
    let w1 = g.constant("conv1_w", &[hidden, 3, 4, 4], &w1);
    let h = g.node("Conv", &[x, &w1], strided(4));
    let mut h = g.node("Relu", &[&h], vec![]);
    let mut deep = Weights(35);
    for layer in 0..depth {
        let k = deep.vec((hidden * hidden * 9) as usize, (2.0 / (hidden * 9) as f32).sqrt());
        let k = g.constant(&format!("deep{layer}_w"), &[hidden, hidden, 3, 3], &k);
        let c = g.node("Conv", &[&h, &k], vec![("pads", Attr::Ints(vec![1, 1, 1, 1]))]);
        h = g.node("Relu", &[&c], vec![]);
    }
    h
}

/// Each cell's class scores, `[batch, classes, grid, grid]` (sigmoids): class 0 weighs the
/// features up, the other classes down, every score starting low (a bias of -4).
fn class_scores(g: &mut GraphBuilder, w: &mut Weights, h: &str, classes: i64, hidden: i64) -> String {
    let per_class = (hidden * 16) as usize;
    let mut w2 = Vec::new();
    for c in 0..classes {
        let sign = if c == 0 { 1.0 } else { -1.0 };
        w2.extend(w.vec(per_class, 0.05).iter().map(|v| sign * v.abs()));
    }
    let w2 = g.constant("conv2_w", &[classes, hidden, 4, 4], &w2);
    let b2 = g.constant("conv2_b", &[classes], &vec![-4.0; classes as usize]);
    let logits = g.node("Conv", &[h, &w2, &b2], strided(4));
    g.node("Sigmoid", &[&logits], vec![])
}
