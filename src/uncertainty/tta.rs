//! Test-time augmentation: the model sees flipped, rotated or zoomed views of the input (ttach's
//! `hflip`, `d4`, `multiscale`) and the views' probabilities are merged by their mean. Views keep the
//! model's input size: a zoom resamples about the centre (bilinear, edges repeated) instead of
//! resizing, since most served models take one size only.

use serde::Serialize;
use utoipa::ToSchema;

use super::{segmenter_rows, split, Plan, Samples, Transforms, UncertaintyParams};
use crate::common::batch::zeroed_batch;
use crate::common::Invalid;
use crate::runtime::manifest::{Layout, SegmentationSpec};
use crate::runtime::{LoadedModel, RuntimeError, Tensor, WorkerRuntime};

/// Zooms when `multiscale` gives no `scales`.
const DEFAULT_SCALES: [f32; 3] = [0.9, 1.0, 1.1];
/// Most zooms per request.
const MAX_SCALES: usize = 16;

/// One view: mirrored, then turned, then zoomed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct View {
    /// Mirrored left to right.
    pub hflip: bool,
    /// Quarter turns (0 to 3).
    pub quarter_turns: u8,
    /// Zoom about the centre (above 1 enlarges).
    pub scale: f32,
}

const IDENTITY: View = View {
    hflip: false,
    quarter_turns: 0,
    scale: 1.0,
};

/// Checks the parameters against the model and lists the views.
pub(super) fn plan(model: &LoadedModel, params: &UncertaintyParams) -> Result<Plan, Invalid> {
    let image =
        model.spec.image.as_ref().ok_or_else(|| {
            Invalid::Unsupported(format!("model `{}` takes no image; tta transforms images", model.name))
        })?;
    let transforms = params.transforms.unwrap_or_default();
    if params.scales.is_some() && transforms != Transforms::Multiscale {
        return Err(Invalid::Request("`scales` applies to `multiscale` only".into()));
    }
    let views = match transforms {
        Transforms::Hflip => vec![
            IDENTITY,
            View {
                hflip: true,
                ..IDENTITY
            },
        ],
        Transforms::D4 => {
            if image.width != image.height {
                return Err(Invalid::Model(format!(
                    "d4 turns the input a quarter: it must be square, model `{}` takes {}x{}",
                    model.name, image.width, image.height
                )));
            }
            [false, true]
                .into_iter()
                .flat_map(|hflip| {
                    (0..4).map(move |quarter_turns| View {
                        hflip,
                        quarter_turns,
                        scale: 1.0,
                    })
                })
                .collect()
        }
        Transforms::Multiscale if model.spec.segmentation.is_some() => {
            return Err(Invalid::Unsupported(format!(
                "model `{}` is a segmenter: multiscale zooms crop or pad the image, so its output's margins \
                 cannot be brought back onto the image's pixels; use hflip or d4",
                model.name
            )))
        }
        Transforms::Multiscale => {
            let scales = params.scales.clone().unwrap_or(DEFAULT_SCALES.to_vec());
            if scales.is_empty() || scales.len() > MAX_SCALES {
                return Err(Invalid::Request(format!("scales: 1 to {MAX_SCALES} values")));
            }
            if let Some(bad) = scales.iter().find(|s| !(s.is_finite() && (0.5..=2.0).contains(*s))) {
                return Err(Invalid::Request(format!("scales must lie in [0.5, 2], got {bad}")));
            }
            scales.into_iter().map(|scale| View { scale, ..IDENTITY }).collect()
        }
    };
    Ok(Plan::Tta { transforms, views })
}

/// Each input's probabilities under every view.
pub(super) fn sample(
    rt: &mut WorkerRuntime,
    model: &LoadedModel,
    views: &[View],
    input: &Tensor,
) -> Result<Vec<Samples>, RuntimeError> {
    let (layout, c, h, w) = match &model.spec.image {
        Some(i) => (i.layout, i.channels, i.height, i.width),
        None => {
            return Err(RuntimeError::Inference {
                model: model.name.clone(),
                message: "tta needs an image model".into(),
            })
        }
    };
    let row = input.row_len();
    let values = input.as_f32().unwrap_or(&[]);
    let mut data = zeroed_batch(&model.name, values.len().saturating_mul(views.len()))?;
    let mut at = 0;
    for one in values.chunks(row.max(1)) {
        for view in views {
            apply(view, one, &mut data[at..at + row], layout, c, h, w);
            at += row;
        }
    }
    let mut shape = input.shape.clone();
    shape[0] = input.rows() * views.len();
    let batch = Tensor::f32(shape, data);
    let outputs = rt.run(model, &batch)?;
    match (&model.spec.segmentation, outputs.get(&model.spec.output)) {
        // A segmenter's pixels moved with its view: each output row is brought back first.
        (Some(seg), Some(scores)) => {
            let undone = undo_views(seg, scores, views).map_err(|message| RuntimeError::Inference {
                model: model.name.clone(),
                message,
            })?;
            segmenter_rows(model, &undone, views.len())
        }
        // A detector's boxes are brought back as they are decoded.
        _ => split(model, &outputs, views.len(), views),
    }
}

/// A segmenter's output rows, each seen through its view (row `r` through `views[r % views]`),
/// brought back onto the original image's grid.
fn undo_views(seg: &SegmentationSpec, scores: &Tensor, views: &[View]) -> Result<Tensor, String> {
    let (c, h, w) = crate::runtime::segmentation::grid(seg, &scores.shape)
        .ok_or_else(|| format!("a segmenter's output of shape {:?} is not 4-D", scores.shape))?;
    let values = scores.as_f32().ok_or("a segmenter's output is not float32")?;
    let row = scores.row_len().max(1);
    let mut undone = vec![0f32; values.len()];
    for (r, (src, out)) in values.chunks(row).zip(undone.chunks_mut(row)).enumerate() {
        let view = views.get(r % views.len().max(1)).ok_or("no views")?;
        let back = super::segmentation::inverse(view).ok_or("a zoomed view cannot be undone")?;
        apply(&back, src, out, seg.layout, c, h, w);
    }
    Ok(Tensor::f32(scores.shape.clone(), undone))
}

/// Writes `view` of the image `src` into `out`: each output pixel reads the source where the
/// inverse of the view takes it (zoom, then turn, then mirror, undone in that order).
pub(super) fn apply(view: &View, src: &[f32], out: &mut [f32], layout: Layout, c: usize, h: usize, w: usize) {
    let index = |ch: usize, y: usize, x: usize| match layout {
        Layout::NCHW => (ch * h + y) * w + x,
        Layout::NHWC => (y * w + x) * c + ch,
    };
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    for y in 0..h {
        for x in 0..w {
            let (mut u, mut v) = ((x as f32 - cx) / view.scale, (y as f32 - cy) / view.scale);
            for _ in 0..view.quarter_turns {
                (u, v) = (v, -u);
            }
            if view.hflip {
                u = -u;
            }
            let (sx, sy) = ((u + cx).clamp(0.0, w as f32 - 1.0), (v + cy).clamp(0.0, h as f32 - 1.0));
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            for ch in 0..c {
                let at = |yy, xx| src[index(ch, yy, xx)];
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                out[index(ch, y, x)] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
}

/// A corner box found in `view` of a `w x h` input, on the input's own grid: each corner taken
/// where the view read it from (as [`apply`] reads pixels), the box around them.
pub(super) fn box_back(view: &View, b: [f32; 4], w: usize, h: usize) -> [f32; 4] {
    // Continuous coordinates: pixel x covers [x, x + 1), so the centre is w / 2.
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let source = |x: f32, y: f32| {
        let (mut u, mut v) = ((x - cx) / view.scale, (y - cy) / view.scale);
        for _ in 0..view.quarter_turns {
            (u, v) = (v, -u);
        }
        if view.hflip {
            u = -u;
        }
        (u + cx, v + cy)
    };
    let corners = [
        source(b[0], b[1]),
        source(b[2], b[1]),
        source(b[0], b[3]),
        source(b[2], b[3]),
    ];
    let (xs, ys) = (corners.map(|c| c.0), corners.map(|c| c.1));
    let (min, max) = (
        |v: [f32; 4]| v.into_iter().fold(f32::INFINITY, f32::min),
        |v: [f32; 4]| v.into_iter().fold(f32::NEG_INFINITY, f32::max),
    );
    [min(xs), min(ys), max(xs), max(ys)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(hflip: bool, quarter_turns: u8, scale: f32) -> View {
        View {
            hflip,
            quarter_turns,
            scale,
        }
    }

    fn run(v: View, src: &[f32], h: usize, w: usize) -> Vec<f32> {
        let mut out = vec![0.0; src.len()];
        apply(&v, src, &mut out, Layout::NCHW, 1, h, w);
        out
    }

    #[test]
    fn flips_and_turns_move_pixels_exactly_and_four_turns_are_the_identity() {
        let img: Vec<f32> = (0..9).map(|i| i as f32).collect(); // 3x3, row-major
        assert_eq!(run(IDENTITY, &img, 3, 3), img);
        assert_eq!(
            run(view(true, 0, 1.0), &img, 3, 3),
            vec![2., 1., 0., 5., 4., 3., 8., 7., 6.]
        );
        let once = run(view(false, 1, 1.0), &img, 3, 3);
        assert_ne!(once, img);
        let mut turned = img.clone();
        for _ in 0..4 {
            turned = run(view(false, 1, 1.0), &turned, 3, 3);
        }
        assert_eq!(turned, img);
        let mut sorted = once.clone();
        sorted.sort_by(f32::total_cmp);
        assert_eq!(sorted, img, "a turn permutes the pixels");
    }

    #[test]
    fn a_box_seen_through_a_view_comes_back_where_the_view_took_it() {
        // A lit rectangle at [1, 2, 4, 3] (x0, y0, x1, y1) of a 6 x 6 image: every view's lit
        // pixels, boxed and brought back, give that rectangle again.
        let (side, lit) = (6usize, [1usize, 2, 4, 3]);
        let img: Vec<f32> = (0..side * side)
            .map(|i| {
                let (x, y) = (i % side, i / side);
                f32::from(u8::from(x >= lit[0] && x < lit[2] && y >= lit[1] && y < lit[3]))
            })
            .collect();
        for hflip in [false, true] {
            for turns in 0..4 {
                let v = view(hflip, turns, 1.0);
                let seen = run(v, &img, side, side);
                let on: Vec<(usize, usize)> = (0..side * side)
                    .filter(|&i| seen[i] > 0.5)
                    .map(|i| (i % side, i / side))
                    .collect();
                let found = [
                    on.iter().map(|p| p.0).min().unwrap() as f32,
                    on.iter().map(|p| p.1).min().unwrap() as f32,
                    on.iter().map(|p| p.0).max().unwrap() as f32 + 1.0,
                    on.iter().map(|p| p.1).max().unwrap() as f32 + 1.0,
                ];
                let back = box_back(&v, found, side, side);
                assert_eq!(back, lit.map(|c| c as f32), "view {v:?}: seen at {found:?}");
            }
        }
        // A zoom by 2 doubles a box's distance from the centre; back, it halves.
        assert_eq!(
            box_back(&view(false, 0, 2.0), [2., 2., 4., 4.], 6, 6),
            [2.5, 2.5, 3.5, 3.5]
        );
    }

    #[test]
    fn a_zoom_keeps_the_centre_and_spreads_the_rest() {
        let img: Vec<f32> = (0..25).map(|i| (i % 5) as f32).collect(); // columns 0..4
        let zoomed = run(view(false, 0, 2.0), &img, 5, 5);
        assert_eq!(zoomed[2 * 5 + 2], 2.0, "centre stays");
        assert_eq!(zoomed[2 * 5 + 4], 3.0, "edge column reads half way out");
    }
}
