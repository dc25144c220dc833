//! Actionable feature tweaking (Tolomei et al., KDD 2017) on an ONNX-ML tree ensemble, as a beam
//! search over the path boxes of the leaves that favour the target.

use serde_json::json;

use super::space::{step_down, step_up, Space};
use super::CounterfactualParams;
use crate::onnx::trees::{Forest, Mode, Node, Tree};

/// Leaves of `tree` that raise class `target`'s raw score, or lower `current`'s.
pub(super) fn favouring_leaves(forest: &Forest, tree: &Tree, target: usize, current: Option<usize>) -> Vec<usize> {
    let contribution = |leaf: &Node, class: usize| {
        forest
            .class_column(class)
            .and_then(|(col, sign, _)| leaf.values.get(col).map(|v| sign * v))
            .unwrap_or(0.0)
    };
    (0..tree.nodes.len())
        .filter(|&i| {
            let n = &tree.nodes[i];
            n.split.is_none() && (contribution(n, target) > 0.0 || current.is_some_and(|c| contribution(n, c) < 0.0))
        })
        .collect()
}

/// Per feature, the interval a path to `leaf` requires: (low, low open, high, high open).
type Box = Vec<(f64, bool, f64, bool)>;

fn path_box(tree: &Tree, leaf: usize, features: usize) -> Option<Box> {
    // Parents, to walk from the leaf up.
    let mut parent = vec![None; tree.nodes.len()];
    for (i, n) in tree.nodes.iter().enumerate() {
        if let Some(s) = &n.split {
            for c in [s.yes, s.no] {
                if let Some(p) = parent.get_mut(c) {
                    *p = Some((i, c == s.yes));
                }
            }
        }
    }
    let mut bounds: Box = vec![(f64::NEG_INFINITY, false, f64::INFINITY, false); features];
    let mut at = leaf;
    while let Some((p, yes)) = parent[at] {
        let s = tree.nodes[p].split.as_ref()?;
        let t = f64::from(s.threshold);
        let b = bounds.get_mut(s.feature)?;
        // (is an upper bound, open) for the branch taken.
        let upper = |b: &mut (f64, bool, f64, bool), open: bool| {
            if t < b.2 || (t == b.2 && open) {
                (b.2, b.3) = (t, open);
            }
        };
        let lower = |b: &mut (f64, bool, f64, bool), open: bool| {
            if t > b.0 || (t == b.0 && open) {
                (b.0, b.1) = (t, open);
            }
        };
        match (s.mode, yes) {
            (Mode::Leq, true) | (Mode::Gt, false) => upper(b, false),
            (Mode::Lt, true) | (Mode::Gte, false) => upper(b, true),
            (Mode::Gte, true) | (Mode::Lt, false) => lower(b, false),
            (Mode::Gt, true) | (Mode::Leq, false) => lower(b, true),
            (Mode::Eq, true) | (Mode::Neq, false) => {
                lower(b, false);
                upper(b, false);
            }
            // "not equal": an interval cannot say it; such paths are not tweaked into.
            (Mode::Eq, false) | (Mode::Neq, true) => return None,
        }
        at = p;
    }
    Some(bounds)
}

/// Most tweak rounds of the tree search, and states kept between rounds.
const ROUNDS: usize = 10;
const BEAM: usize = 10;

/// `state` moved into `bounds` (a leaf's path box), each feature to the nearest allowed point of
/// its interval (past an open threshold by the next float, or by `epsilon` scales).
fn tweak(space: &Space, state: &[f32], bounds: &Box, epsilon: f32) -> Option<Vec<f32>> {
    let mut y = state.to_vec();
    for (i, &(lo, lo_open, hi, hi_open)) in bounds.iter().enumerate() {
        let v = f64::from(state[i]);
        let inside = (v > lo || (v == lo && !lo_open)) && (v < hi || (v == hi && !hi_open));
        if inside {
            continue;
        }
        let margin = f64::from(epsilon) * space.scale[i];
        let room = if lo.is_finite() && hi.is_finite() {
            (hi - lo) / 2.0
        } else {
            f64::INFINITY
        };
        let lo = if lo_open {
            f64::from(step_up(lo as f32)).max(lo + margin)
        } else {
            lo + margin.min(room)
        };
        let hi = if hi_open {
            f64::from(step_down(hi as f32)).min(hi - margin)
        } else {
            hi - margin.min(room)
        };
        y[i] = space.place(i, v, lo, hi)?;
    }
    Some(y)
}

/// The target's raw score minus the best other class's, as the ensemble computes it.
fn raw_margin(forest: &Forest, y: &[f32], target: usize, classes: usize) -> f64 {
    let raw = forest.raw(y);
    let score = |j: usize| {
        forest
            .class_column(j)
            .map(|(col, sign, offset)| offset + sign * raw[col])
            .unwrap_or(f64::NEG_INFINITY)
    };
    let best_other = (0..classes)
        .filter(|&j| j != target)
        .map(score)
        .fold(f64::NEG_INFINITY, f64::max);
    score(target) - best_other
}

/// Actionable feature tweaking as a beam search: each round moves every kept state into the path
/// box of every leaf that favours the target (Tolomei et al.'s tweak) and scores the moved points
/// on the ensemble read from the graph; the flipped ones are kept, and of the others the states
/// that gained the most margin per unit of cost and are still cheaper than the cheapest flip go
/// on to the next round. A boosted ensemble rarely flips on one tree's path, and two cheap tweaks
/// can beat one dear one, so tweaks compose across rounds. At most `limit` points are scored;
/// the valid ones come back cheapest first.
pub(super) fn tree_candidates(
    forest: &Forest,
    space: &Space,
    x: &[f32],
    (target, current, classes): (usize, usize, usize),
    p: &CounterfactualParams,
    limit: usize,
) -> (Vec<Vec<f32>>, serde_json::Value) {
    let mut boxes = Vec::new();
    let mut leaves = 0usize;
    for tree in &forest.trees {
        for leaf in favouring_leaves(forest, tree, target, Some(current)) {
            leaves += 1;
            boxes.extend(path_box(tree, leaf, x.len()));
        }
    }
    let start = raw_margin(forest, x, target, classes);
    let mut beam: Vec<Vec<f32>> = vec![x.to_vec()];
    let mut valid: Vec<(f64, Vec<f32>)> = Vec::new();
    let mut cheapest = f64::INFINITY;
    let (mut scored, mut rounds) = (0usize, 0usize);
    'rounds: for _ in 0..ROUNDS {
        rounds += 1;
        let mut next: Vec<(f64, Vec<f32>)> = Vec::new();
        for state in &beam {
            for b in &boxes {
                let Some(y) = tweak(space, state, b, p.epsilon) else {
                    continue;
                };
                if y == *state {
                    continue;
                }
                if scored == limit {
                    break 'rounds;
                }
                scored += 1;
                let (m, c) = (raw_margin(forest, &y, target, classes), space.cost(x, &y));
                if m > 0.0 {
                    cheapest = cheapest.min(c);
                    valid.push((c, y));
                } else if c < cheapest {
                    next.push(((m - start) / c.max(1e-12), y));
                }
            }
        }
        // A state already dearer than a flip found cannot lead to a cheaper one.
        next.retain(|(_, y)| space.cost(x, y) < cheapest);
        if next.is_empty() {
            break;
        }
        next.sort_by(|a, b| b.0.total_cmp(&a.0));
        next.dedup_by(|a, b| a.1 == b.1);
        beam = next.into_iter().take(BEAM).map(|(_, y)| y).collect();
    }
    valid.sort_by(|a, b| a.0.total_cmp(&b.0));
    valid.dedup_by(|a, b| a.1 == b.1);
    let found = valid.len();
    valid.truncate(256);
    let stats = json!({
        "favouring_leaves": leaves,
        "paths": boxes.len(),
        "rounds": rounds,
        "scored": scored,
        "flipped": found,
    });
    (valid.into_iter().map(|(_, y)| y).collect(), stats)
}
