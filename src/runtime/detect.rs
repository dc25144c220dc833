//! A detector's outputs read into detections: candidates decoded as the manifest's `[detection]`
//! says, thresholded, class-wise NMS where the graph has none, the best `max_detections` kept, by
//! score. Boxes stay in the model's input pixels here; the HTTP face maps them onto the original
//! image (its geometry). Pure arithmetic over output rows: predict, targets and D-RISE share it.

use serde::Serialize;
use utoipa::ToSchema;

use super::manifest::{BoxDecode, BoxFormat, BoxScale, DetectionLayout, DetectionSpec, Grid, ModelSpec};

/// Most candidates NMS weighs, the best by score (Ultralytics' `max_nms`): bounds its quadratic
/// work whatever the threshold lets through.
const MAX_NMS: usize = 30_000;

/// One detection, in the model's input pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// Corner box `[x0, y0, x1, y1]`.
    pub bbox: [f32; 4],
    /// Class index.
    pub class: usize,
    /// Score: the class score, times the objectness where the layout has one.
    pub score: f32,
    /// Where the candidate's class score lies in a row of the scores output: the value a target
    /// weighs, and what a perturbed input's row is read at.
    pub position: usize,
    /// The candidate's objectness (1 where the layout has none).
    pub objectness: f32,
    /// The candidate's class-probability vector (D-RISE compares them by cosine); a post-NMS
    /// output's is the one-hot of its class, times its score.
    pub probs: Vec<f32>,
}

/// A detection as answered: the box in the original image's pixels.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct DetectionAnswer {
    /// Corner box `[x0, y0, x1, y1]` in the original image's pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// Class label.
    pub label: String,
    /// Score (class score, times objectness where the model has one).
    pub score: f32,
}

/// Decodes one input's outputs; `read(name)` gives a row of an output. An output missing or of
/// the wrong length is an error naming it.
pub fn decode<'a>(spec: &ModelSpec, read: impl Fn(&str) -> Option<&'a [f64]>) -> Result<Vec<Detection>, String> {
    let (Some(d), Some(image)) = (spec.detection.as_ref(), spec.image.as_ref()) else {
        return Err("the model is not a detector".into());
    };
    let size = (image.width as f32, image.height as f32);
    let row = |name: &str| read(name).ok_or_else(|| format!("output `{name}` missing from the run"));
    let classes = spec.labels.len();
    let mut found = match d.layout {
        DetectionLayout::Yolo => candidates(d, classes, size, row(&spec.output)?)?,
        DetectionLayout::BoxesScoresClasses => {
            let (boxes, classes_out) = match (&d.boxes, &d.classes) {
                (Some(b), Some(c)) => (row(b)?, row(c)?),
                _ => return Err("the detector names no boxes or classes output".into()),
            };
            listed(
                d,
                classes,
                size,
                (boxes, row(&spec.output)?, classes_out),
                d.score_threshold,
            )?
        }
    };
    // Best first; equal scores keep the candidates' order, so the answer is deterministic.
    found.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.position.cmp(&b.position)));
    found.truncate(MAX_NMS);
    if d.nms {
        found = nms(found, d.nms_iou, d.max_detections);
    }
    found.truncate(d.max_detections);
    Ok(found)
}

/// Which values of a `yolo` row are detection scores (a candidate's class values; with an
/// objectness, once the graph multiplies them by it), in the row's order: where the best
/// detection's score is its highest value. `None` for other layouts and for an objectness the
/// graph does not multiply in.
pub fn score_positions(d: &DetectionSpec, classes: usize) -> Option<Vec<bool>> {
    if d.layout != DetectionLayout::Yolo || (d.objectness && !d.scored) {
        return None;
    }
    let (n, k) = (d.candidates, d.stride(classes));
    let first_class = 4 + usize::from(d.objectness);
    let mut scores = vec![false; n.checked_mul(k)?];
    for (at, s) in scores.iter_mut().enumerate() {
        let value = if d.channels_first { at / n.max(1) } else { at % k };
        *s = value >= first_class;
    }
    Some(scores)
}

/// The candidates of a `yolo` row over the threshold.
fn candidates(d: &DetectionSpec, classes: usize, size: (f32, f32), row: &[f64]) -> Result<Vec<Detection>, String> {
    let (n, k) = (d.candidates, d.stride(classes));
    if Some(row.len()) != n.checked_mul(k) {
        return Err(format!(
            "the detector's output holds {} values a row, not {n} candidates x {k}",
            row.len()
        ));
    }
    let at = |i: usize, j: usize| if d.channels_first { j * n + i } else { i * k + j };
    let first_class = 4 + usize::from(d.objectness);
    let grids = match d.box_decode {
        BoxDecode::Direct => None,
        BoxDecode::GridOffsets => match d.grids(size.0 as usize, size.1 as usize) {
            Some((grids, cells)) if cells == n => Some(grids),
            _ => return Err(format!("the detector's grids do not make its {n} candidates")),
        },
    };
    let mut out = Vec::new();
    for i in 0..n {
        let objectness = if d.objectness { row[at(i, 4)] as f32 } else { 1.0 };
        let (mut best, mut best_score) = (0, f32::NEG_INFINITY);
        for c in 0..classes {
            let v = row[at(i, first_class + c)] as f32;
            if v > best_score {
                (best, best_score) = (c, v);
            }
        }
        // A graph that scores candidates (objectness x class) holds the detection's score.
        let score = if d.scored { best_score } else { best_score * objectness };
        // NaN scores fail the comparison and are dropped with the low ones.
        let kept = score >= d.score_threshold;
        if !kept {
            continue;
        }
        let mut raw = [0, 1, 2, 3].map(|j| row[at(i, j)] as f32);
        if let Some(grids) = &grids {
            raw = grid_offsets(grids, i, raw);
        }
        out.push(Detection {
            bbox: corners(raw, d.box_format, d.box_scale, size),
            class: best,
            score,
            position: at(i, first_class + best),
            objectness,
            probs: (0..classes).map(|c| row[at(i, first_class + c)] as f32).collect(),
        });
    }
    Ok(out)
}

/// Candidate `i`'s grid offsets as centre and size in input pixels (YOLOX's `decode_outputs`):
/// `(offset + cell) x stride`, `exp(value) x stride`.
fn grid_offsets(grids: &[Grid], i: usize, [x, y, w, h]: [f32; 4]) -> [f32; 4] {
    // The last grid starting at or before `i` holds it (they run in candidate order).
    let Some(g) = grids.iter().rev().find(|g| g.first <= i) else {
        return [x, y, w, h];
    };
    let cell = i - g.first;
    let (column, row) = (cell % g.columns.max(1), cell / g.columns.max(1));
    let s = g.stride as f32;
    [(x + column as f32) * s, (y + row as f32) * s, w.exp() * s, h.exp() * s]
}

/// The detections of a post-NMS output scoring at least `threshold`.
fn listed(
    d: &DetectionSpec,
    classes: usize,
    size: (f32, f32),
    (boxes, scores, labels): (&[f64], &[f64], &[f64]),
    threshold: f32,
) -> Result<Vec<Detection>, String> {
    if boxes.len() != scores.len() * 4 || labels.len() != scores.len() {
        return Err(format!(
            "the detector's outputs disagree: {} boxes values, {} scores, {} classes",
            boxes.len(),
            scores.len(),
            labels.len()
        ));
    }
    let mut out = Vec::new();
    for (i, (&score, &class)) in scores.iter().zip(labels).enumerate() {
        let score = score as f32;
        let kept = score >= threshold && class >= 0.0 && (class as usize) < classes;
        if !kept {
            continue;
        }
        let class = class as usize;
        let mut probs = vec![0.0; classes];
        probs[class] = score;
        out.push(Detection {
            bbox: corners(
                [0, 1, 2, 3].map(|j| boxes[i * 4 + j] as f32),
                d.box_format,
                d.box_scale,
                size,
            ),
            class,
            score,
            position: i,
            objectness: 1.0,
            probs,
        });
    }
    Ok(out)
}

/// A post-NMS output row read against `reference`, another input's detections of the same model
/// (positions are slots of that input's row): at each one's position, the score of this row's
/// detection of the same class whose box overlaps it most, whatever its score (0 where none
/// overlaps); every other value 0. Another input's NMS may give a slot to another box, so a
/// perturbed input's score for a detection is its match's, not its slot's.
pub fn matched_scores<'a>(
    spec: &ModelSpec,
    reference: &[Detection],
    read: impl Fn(&str) -> Option<&'a [f64]>,
) -> Result<Vec<f64>, String> {
    let (Some(d), Some(image)) = (spec.detection.as_ref(), spec.image.as_ref()) else {
        return Err("the model is not a detector".into());
    };
    let row = |name: &str| read(name).ok_or_else(|| format!("output `{name}` missing from the run"));
    let (Some(boxes), Some(classes)) = (&d.boxes, &d.classes) else {
        return Err("the detector names no boxes or classes output".into());
    };
    let scores = row(&spec.output)?;
    let size = (image.width as f32, image.height as f32);
    let slots = listed(
        d,
        spec.labels.len(),
        size,
        (row(boxes)?, scores, row(classes)?),
        f32::NEG_INFINITY,
    )?;
    let mut out = vec![0.0; scores.len()];
    for r in reference {
        // The largest overlap; of equal ones, the higher score.
        let best = slots
            .iter()
            .filter(|s| s.class == r.class)
            .map(|s| (iou(&r.bbox, &s.bbox), s.score))
            .filter(|(overlap, _)| *overlap > 0.0)
            .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        if let Some(value) = out.get_mut(r.position) {
            *value = best.map_or(0.0, |(_, score)| f64::from(score));
        }
    }
    Ok(out)
}

/// A box as `[x0, y0, x1, y1]` in input pixels.
fn corners(b: [f32; 4], format: BoxFormat, scale: BoxScale, (w, h): (f32, f32)) -> [f32; 4] {
    let [x0, y0, x1, y1] = match format {
        BoxFormat::Cxcywh => [
            b[0] - b[2] / 2.0,
            b[1] - b[3] / 2.0,
            b[0] + b[2] / 2.0,
            b[1] + b[3] / 2.0,
        ],
        BoxFormat::Xyxy => b,
        BoxFormat::Xywh => [b[0], b[1], b[0] + b[2], b[1] + b[3]],
        BoxFormat::Yxyx => [b[1], b[0], b[3], b[2]],
    };
    match scale {
        BoxScale::Pixels => [x0, y0, x1, y1],
        BoxScale::Normalized => [x0 * w, y0 * h, x1 * w, y1 * h],
    }
}

/// Intersection over union of two corner boxes (0 for empty ones), as torchvision's `box_iou`.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Greedy class-wise NMS over detections sorted by score: a box is dropped when it overlaps a kept
/// box of its class by more than `threshold` (torchvision's `batched_nms`). Stops at `keep`.
pub fn nms(sorted: Vec<Detection>, threshold: f32, keep: usize) -> Vec<Detection> {
    let mut kept: Vec<Detection> = Vec::new();
    for d in sorted {
        if kept.len() >= keep {
            break;
        }
        if !kept
            .iter()
            .any(|k| k.class == d.class && iou(&k.bbox, &d.bbox) > threshold)
        {
            kept.push(d);
        }
    }
    kept
}

/// D-RISE's similarity of a detection to the target (Petsiuk et al. 2021, eq. 2): IoU of the boxes
/// x cosine of the class-probability vectors x the objectness of `other`.
pub fn similarity(target: &Detection, other: &Detection) -> f64 {
    let dot: f64 = target
        .probs
        .iter()
        .zip(&other.probs)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let (na, nb) = (norm(&target.probs), norm(&other.probs));
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    f64::from(iou(&target.bbox, &other.bbox)) * (dot / (na * nb)) * f64::from(other.objectness)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(bbox: [f32; 4], class: usize, score: f32) -> Detection {
        Detection {
            bbox,
            class,
            score,
            position: 0,
            objectness: 1.0,
            probs: vec![],
        }
    }

    #[test]
    fn nms_drops_overlaps_of_a_class_and_keeps_other_classes() {
        let sorted = vec![
            det([0.0, 0.0, 10.0, 10.0], 0, 0.9),
            det([1.0, 0.0, 11.0, 10.0], 0, 0.8),
            det([1.0, 0.0, 11.0, 10.0], 1, 0.7),
            det([20.0, 20.0, 30.0, 30.0], 0, 0.6),
        ];
        let kept: Vec<f32> = nms(sorted, 0.5, 10).iter().map(|d| d.score).collect();
        assert_eq!(kept, vec![0.9, 0.7, 0.6]);
        assert!((iou(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn grid_offsets_place_a_candidate_in_its_cell_of_its_grid() {
        // A 32 x 16 input with strides 8 and 16: 4 x 2 cells, then 2 x 1.
        let grids = [
            Grid {
                first: 0,
                columns: 4,
                stride: 8,
            },
            Grid {
                first: 8,
                columns: 2,
                stride: 16,
            },
        ];
        // Candidate 6: row 1, column 2 of the fine grid.
        assert_eq!(
            grid_offsets(&grids, 6, [0.5, 0.25, 0.0, 1.0f32.ln()]),
            [20.0, 10.0, 8.0, 8.0]
        );
        // Candidate 9: column 1 of the coarse grid.
        assert_eq!(grid_offsets(&grids, 9, [0.0, 0.0, 0.0, 0.0]), [16.0, 0.0, 16.0, 16.0]);
    }

    #[test]
    fn boxes_of_each_format_become_corners() {
        let b = [10.0, 20.0, 4.0, 6.0];
        assert_eq!(
            corners(b, BoxFormat::Cxcywh, BoxScale::Pixels, (1.0, 1.0)),
            [8.0, 17.0, 12.0, 23.0]
        );
        assert_eq!(
            corners(b, BoxFormat::Xywh, BoxScale::Pixels, (1.0, 1.0)),
            [10.0, 20.0, 14.0, 26.0]
        );
        assert_eq!(
            corners(
                [0.1, 0.2, 0.3, 0.4],
                BoxFormat::Yxyx,
                BoxScale::Normalized,
                (100.0, 10.0)
            ),
            [20.0, 1.0, 40.0, 3.0]
        );
    }
}
