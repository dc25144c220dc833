//! Path-dependent TreeSHAP (Lundberg et al. 2018, Algorithm 2): missing features follow the node
//! covers' split proportions; the covers from the model or counted from background rows.

use super::Values;
use crate::explain::background::Background;
use crate::onnx::trees::{Forest, Tree};

/// Node covers counted from weighted background rows.
pub(super) fn counted_covers(forest: &Forest, bg: &Background) -> Vec<Vec<f64>> {
    forest
        .trees
        .iter()
        .map(|tree| {
            let mut covers = vec![0.0; tree.nodes.len()];
            for (z, w) in bg.rows.iter().zip(&bg.weights) {
                let mut i = 0;
                loop {
                    covers[i] += w;
                    match &tree.nodes[i].split {
                        Some(s) => i = s.child(z),
                        None => break,
                    }
                }
            }
            covers
        })
        .collect()
}

/// One feature's slot on the path: the fractions of coalitions that go on without it (zero) and
/// with it (one), and the permutation weight.
#[derive(Debug, Clone, Copy)]
struct Slot {
    feature: usize,
    zero: f64,
    one: f64,
    weight: f64,
}

fn extend(path: &mut Vec<Slot>, zero: f64, one: f64, feature: usize) {
    let l = path.len();
    path.push(Slot {
        feature,
        zero,
        one,
        weight: if l == 0 { 1.0 } else { 0.0 },
    });
    for i in (0..l).rev() {
        path[i + 1].weight += one * path[i].weight * (i + 1) as f64 / (l + 1) as f64;
        path[i].weight = zero * path[i].weight * (l - i) as f64 / (l + 1) as f64;
    }
}

fn unwind(path: &mut Vec<Slot>, idx: usize) {
    let l = path.len() - 1;
    let (one, zero) = (path[idx].one, path[idx].zero);
    let mut next = path[l].weight;
    for i in (0..l).rev() {
        if one != 0.0 {
            let kept = path[i].weight;
            path[i].weight = next * (l + 1) as f64 / ((i + 1) as f64 * one);
            next = kept - path[i].weight * zero * (l - i) as f64 / (l + 1) as f64;
        } else {
            path[i].weight = path[i].weight * (l + 1) as f64 / (zero * (l - i) as f64);
        }
    }
    for i in idx..l {
        path[i].feature = path[i + 1].feature;
        path[i].zero = path[i + 1].zero;
        path[i].one = path[i + 1].one;
    }
    path.pop();
}

/// The path's total weight with slot `idx` taken out, without changing the path.
fn unwound_sum(path: &[Slot], idx: usize) -> f64 {
    let l = path.len() - 1;
    let (one, zero) = (path[idx].one, path[idx].zero);
    let mut next = path[l].weight;
    let mut total = 0.0;
    for i in (0..l).rev() {
        if one != 0.0 {
            let t = next * (l + 1) as f64 / ((i + 1) as f64 * one);
            total += t;
            next = path[i].weight - t * zero * (l - i) as f64 / (l + 1) as f64;
        } else if zero != 0.0 {
            total += path[i].weight / zero / ((l - i) as f64 / (l + 1) as f64);
        }
    }
    total
}

/// Path-dependent TreeSHAP (Lundberg et al. 2018, Algorithm 2), all output columns at once.
pub(super) fn path_dependent(forest: &Forest, covers: &[Vec<f64>], x: &[f32]) -> Values {
    let mut phi = vec![vec![0.0; forest.columns]; x.len()];
    let mut base = forest.base.clone();
    for (tree, cover) in forest.trees.iter().zip(covers) {
        recurse(tree, cover, x, 0, Vec::new(), 1.0, 1.0, usize::MAX, &mut phi);
        for (b, v) in base.iter_mut().zip(expected(tree, cover, 0)) {
            *b += v;
        }
    }
    Values { phi, base }
}

/// The subtree's mean leaf weights under the covers' split proportions.
fn expected(tree: &Tree, cover: &[f64], node: usize) -> Vec<f64> {
    match &tree.nodes[node].split {
        None => tree.nodes[node].values.clone(),
        Some(s) => {
            let (fy, fn_) = fractions(cover, node, s.yes, s.no);
            let (a, b) = (expected(tree, cover, s.yes), expected(tree, cover, s.no));
            a.iter().zip(&b).map(|(a, b)| fy * a + fn_ * b).collect()
        }
    }
}

/// The shares of a node's cover that go to each child; a node no row reached splits evenly, so
/// the arithmetic stays finite where the covers say nothing.
fn fractions(cover: &[f64], node: usize, yes: usize, no: usize) -> (f64, f64) {
    let c = cover[node];
    if c > 0.0 {
        (cover[yes] / c, cover[no] / c)
    } else {
        (0.5, 0.5)
    }
}

#[allow(clippy::too_many_arguments)]
fn recurse(
    tree: &Tree,
    cover: &[f64],
    x: &[f32],
    node: usize,
    mut path: Vec<Slot>,
    zero: f64,
    one: f64,
    feature: usize,
    phi: &mut [Vec<f64>],
) {
    extend(&mut path, zero, one, feature);
    let n = &tree.nodes[node];
    let Some(s) = &n.split else {
        for i in 1..path.len() {
            let w = unwound_sum(&path, i) * (path[i].one - path[i].zero);
            for (p, v) in phi[path[i].feature].iter_mut().zip(&n.values) {
                *p += w * v;
            }
        }
        return;
    };
    let hot = s.child(x);
    let cold = if hot == s.yes { s.no } else { s.yes };
    let (f_yes, f_no) = fractions(cover, node, s.yes, s.no);
    let (f_hot, f_cold) = if hot == s.yes { (f_yes, f_no) } else { (f_no, f_yes) };
    let (mut in_zero, mut in_one) = (1.0, 1.0);
    if let Some(k) = (1..path.len()).find(|&k| path[k].feature == s.feature) {
        in_zero = path[k].zero;
        in_one = path[k].one;
        unwind(&mut path, k);
    }
    // A branch no coalition reaches (no cover and not x's side) adds nothing: skip it.
    if in_zero * f_hot != 0.0 || in_one != 0.0 {
        recurse(
            tree,
            cover,
            x,
            hot,
            path.clone(),
            in_zero * f_hot,
            in_one,
            s.feature,
            phi,
        );
    }
    if in_zero * f_cold != 0.0 {
        recurse(tree, cover, x, cold, path, in_zero * f_cold, 0.0, s.feature, phi);
    }
}
