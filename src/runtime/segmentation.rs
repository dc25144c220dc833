//! Reading a segmenter's output: each pixel's class (softmax: the highest score; sigmoid: the
//! highest of the classes over the threshold, or none), on the output's grid. Predict answers it
//! as areas and a mask; explanations take a class's predicted region from it.

use super::manifest::{Activation, Layout, ScoreKind, SegmentationSpec};

/// Each pixel's class on the output's grid: `Some(class)`, or `None` where no class reaches the
/// threshold (sigmoid).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassMap {
    /// Output width.
    pub width: usize,
    /// Output height.
    pub height: usize,
    /// Classes.
    pub classes: usize,
    /// Row-major, `height * width`.
    pub pixels: Vec<Option<u16>>,
}

impl ClassMap {
    /// Pixels of each class.
    pub fn counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.classes];
        for c in self.pixels.iter().flatten() {
            if let Some(n) = counts.get_mut(*c as usize) {
                *n += 1;
            }
        }
        counts
    }
}

/// The (classes, height, width) of one row of a 4-D output `shape` (batch first), by layout.
pub fn grid(spec: &SegmentationSpec, shape: &[usize]) -> Option<(usize, usize, usize)> {
    match (spec.layout, shape) {
        (Layout::NCHW, [_, c, h, w]) => Some((*c, *h, *w)),
        (Layout::NHWC, [_, h, w, c]) => Some((*c, *h, *w)),
        _ => None,
    }
}

/// Index of (class, y, x) in one row of the output.
pub fn index(
    spec: &SegmentationSpec,
    (classes, height, width): (usize, usize, usize),
    c: usize,
    y: usize,
    x: usize,
) -> usize {
    match spec.layout {
        Layout::NCHW => (c * height + y) * width + x,
        Layout::NHWC => (y * width + x) * classes + c,
    }
}

/// The class map of one output row `values` (shape `shape`, batch first). Sigmoid scores given as
/// logits are compared with the threshold's logit, which is the same test without an `exp` per
/// value.
pub fn class_map(spec: &SegmentationSpec, scores: ScoreKind, shape: &[usize], values: &[f32]) -> Option<ClassMap> {
    let dims @ (classes, height, width) = grid(spec, shape)?;
    if values.len() != classes.checked_mul(height)?.checked_mul(width)? || classes > u16::MAX as usize {
        return None;
    }
    let cut = match (spec.activation, scores) {
        (Activation::Sigmoid, ScoreKind::Logits) => {
            let t = spec.threshold.clamp(1e-7, 1.0 - 1e-7);
            (t / (1.0 - t)).ln()
        }
        (Activation::Sigmoid, _) => spec.threshold,
        (Activation::Softmax, _) => f32::NEG_INFINITY,
    };
    let mut pixels = Vec::with_capacity(height * width);
    for y in 0..height {
        for x in 0..width {
            let mut best: Option<(u16, f32)> = None;
            for c in 0..classes {
                let v = values[index(spec, dims, c, y, x)];
                if v >= cut && best.is_none_or(|(_, b)| v > b) {
                    best = Some((c as u16, v));
                }
            }
            pixels.push(best.map(|(c, _)| c));
        }
    }
    Some(ClassMap {
        width,
        height,
        classes,
        pixels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(layout: Layout, activation: Activation) -> SegmentationSpec {
        SegmentationSpec {
            layout,
            activation,
            threshold: 0.5,
        }
    }

    #[test]
    fn softmax_takes_the_highest_class_and_sigmoid_the_threshold() {
        // Two classes over a 1x2 grid, NCHW: pixel 0 favours class 1, pixel 1 class 0.
        let nchw = [0.1, 0.9, 0.8, 0.2];
        let m = class_map(
            &spec(Layout::NCHW, Activation::Softmax),
            ScoreKind::Logits,
            &[1, 2, 1, 2],
            &nchw,
        )
        .unwrap();
        assert_eq!(m.pixels, vec![Some(1), Some(0)]);
        // The same scores channels-last.
        let nhwc = [0.1, 0.8, 0.9, 0.2];
        let m = class_map(
            &spec(Layout::NHWC, Activation::Softmax),
            ScoreKind::Logits,
            &[1, 1, 2, 2],
            &nhwc,
        )
        .unwrap();
        assert_eq!(m.pixels, vec![Some(1), Some(0)]);
        // One sigmoid class: probabilities against 0.5, logits against 0.
        let m = class_map(
            &spec(Layout::NCHW, Activation::Sigmoid),
            ScoreKind::Probabilities,
            &[1, 1, 1, 3],
            &[0.2, 0.5, 0.7],
        )
        .unwrap();
        assert_eq!(m.pixels, vec![None, Some(0), Some(0)]);
        assert_eq!(m.counts(), vec![2]);
        let m = class_map(
            &spec(Layout::NCHW, Activation::Sigmoid),
            ScoreKind::Logits,
            &[1, 1, 1, 3],
            &[-0.1, 0.0, 2.0],
        )
        .unwrap();
        assert_eq!(m.pixels, vec![None, Some(0), Some(0)]);
        assert!(class_map(
            &spec(Layout::NCHW, Activation::Softmax),
            ScoreKind::Logits,
            &[1, 2, 2, 2],
            &nchw
        )
        .is_none());
    }
}
