//! Interventional TreeSHAP: missing features take a background row's values; per leaf the game is
//! an indicator whose Shapley values are closed-form.

use super::Values;
use crate::explain::background::Background;
use crate::onnx::trees::{Forest, Tree};

/// 1 / (a * C(a + b, a)): the Shapley weight of a feature among `a` that must be present, with `b`
/// that must be absent (each present one is pivotal in that share of orderings).
fn pivotal(a: usize, b: usize) -> f64 {
    let mut c = 1.0f64;
    for i in 1..=b {
        c = c * (a + i) as f64 / i as f64;
    }
    1.0 / (a as f64 * c)
}

/// Interventional TreeSHAP: per background row z, the game v(S) = f(x_S, z_rest) is, per leaf, an
/// indicator "features A present, features B absent" (A: splits where x and z part and the leaf is
/// on x's side, B: on z's side); each such game's Shapley values are closed-form.
pub(super) fn interventional(forest: &Forest, x: &[f32], bg: &Background) -> Values {
    let n = x.len();
    let columns = forest.columns;
    let mut phi = vec![vec![0.0; columns]; n];
    let mut on_x = Vec::new();
    let mut on_z = Vec::new();
    for (z, w) in bg.rows.iter().zip(&bg.weights) {
        for tree in &forest.trees {
            walk(tree, 0, x, z, &mut on_x, &mut on_z, *w, &mut phi);
        }
    }
    let mut base = forest.base.clone();
    for (z, w) in bg.rows.iter().zip(&bg.weights) {
        for tree in &forest.trees {
            for (b, v) in base.iter_mut().zip(&tree.nodes[tree.leaf(z)].values) {
                *b += w * v;
            }
        }
    }
    Values { phi, base }
}

#[allow(clippy::too_many_arguments)]
fn walk(
    tree: &Tree,
    node: usize,
    x: &[f32],
    z: &[f32],
    on_x: &mut Vec<usize>,
    on_z: &mut Vec<usize>,
    weight: f64,
    phi: &mut [Vec<f64>],
) {
    let n = &tree.nodes[node];
    let Some(s) = &n.split else {
        let (a, b) = (on_x.len(), on_z.len());
        if a > 0 {
            let w = weight * pivotal(a, b);
            for &f in on_x.iter() {
                for (p, v) in phi[f].iter_mut().zip(&n.values) {
                    *p += w * v;
                }
            }
        }
        if b > 0 {
            let w = weight * pivotal(b, a);
            for &f in on_z.iter() {
                for (p, v) in phi[f].iter_mut().zip(&n.values) {
                    *p -= w * v;
                }
            }
        }
        return;
    };
    let (xc, zc) = (s.child(x), s.child(z));
    // Where x and z agree, or the feature is already on x's side, the path follows x.
    if xc == zc || on_x.contains(&s.feature) {
        walk(tree, xc, x, z, on_x, on_z, weight, phi);
    } else if on_z.contains(&s.feature) {
        walk(tree, zc, x, z, on_x, on_z, weight, phi);
    } else {
        on_x.push(s.feature);
        walk(tree, xc, x, z, on_x, on_z, weight, phi);
        on_x.pop();
        on_z.push(s.feature);
        walk(tree, zc, x, z, on_x, on_z, weight, phi);
        on_z.pop();
    }
}
