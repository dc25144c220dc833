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

/// A row of an output, read in place: as ONNX Runtime gave it (f32) or widened (f64).
#[derive(Debug, Clone, Copy)]
pub enum Row<'a> {
    /// float32 values.
    F32(&'a [f32]),
    /// float64 values.
    F64(&'a [f64]),
}

impl<'a> From<&'a [f32]> for Row<'a> {
    fn from(v: &'a [f32]) -> Self {
        Row::F32(v)
    }
}

impl<'a> From<&'a [f64]> for Row<'a> {
    fn from(v: &'a [f64]) -> Self {
        Row::F64(v)
    }
}

impl Row<'_> {
    fn len(&self) -> usize {
        match self {
            Row::F32(v) => v.len(),
            Row::F64(v) => v.len(),
        }
    }

    /// Value `i` as f32 (callers index within [`Row::len`]).
    #[inline]
    fn get(&self, i: usize) -> f32 {
        match self {
            Row::F32(v) => v[i],
            Row::F64(v) => v[i] as f32,
        }
    }
}

/// An element of a row, read as f32: lets the candidate scan run on either element type without
/// converting the row first.
trait Value: Copy {
    fn f32(self) -> f32;
}

impl Value for f32 {
    #[inline]
    fn f32(self) -> f32 {
        self
    }
}

impl Value for f64 {
    #[inline]
    fn f32(self) -> f32 {
        self as f32
    }
}

/// A kept candidate, before its class-probability vector is read: what thresholding, sorting and
/// NMS move around (no allocation each).
#[derive(Debug, Clone, Copy)]
struct Found {
    bbox: [f32; 4],
    class: usize,
    score: f32,
    position: usize,
    objectness: f32,
    /// The candidate (yolo) or detection (post-NMS) index in its row.
    index: usize,
}

/// One input's detections as decoded, their class-probability vectors still in the output row:
/// D-RISE weighs a masked image's detections against its targets without copying them out.
pub struct Decoded<'a> {
    found: Vec<Found>,
    /// The scores row and how a candidate's class scores lie in it.
    scores: Row<'a>,
    layout: DetectionLayout,
    classes: usize,
    first_class: usize,
    candidates: usize,
    channels_first: bool,
}

/// Decodes one input's outputs; `read(name)` gives a row of an output (f32 as ONNX Runtime gave
/// it, or f64). An output missing or of the wrong length is an error naming it.
pub fn decode<'a, R: Into<Row<'a>>>(
    spec: &ModelSpec,
    read: impl Fn(&str) -> Option<R>,
) -> Result<Vec<Detection>, String> {
    decode_in_place(spec, read).map(Decoded::detections)
}

/// [`decode`] without copying the detections' class-probability vectors out of the row.
pub fn decode_in_place<'a, R: Into<Row<'a>>>(
    spec: &ModelSpec,
    read: impl Fn(&str) -> Option<R>,
) -> Result<Decoded<'a>, String> {
    let (Some(d), Some(image)) = (spec.detection.as_ref(), spec.image.as_ref()) else {
        return Err("the model is not a detector".into());
    };
    let size = (image.width as f32, image.height as f32);
    let row = |name: &str| {
        read(name)
            .map(Into::into)
            .ok_or_else(|| format!("output `{name}` missing from the run"))
    };
    let classes = spec.labels.len();
    let scores = row(&spec.output)?;
    let found = match d.layout {
        DetectionLayout::Yolo => match scores {
            Row::F32(v) => candidates(d, classes, size, v)?,
            Row::F64(v) => candidates(d, classes, size, v)?,
        },
        DetectionLayout::BoxesScoresClasses => {
            let (boxes, classes_out) = match (&d.boxes, &d.classes) {
                (Some(b), Some(c)) => (row(b)?, row(c)?),
                _ => return Err("the detector names no boxes or classes output".into()),
            };
            listed(d, classes, size, (boxes, scores, classes_out), d.score_threshold)?
        }
    };
    // Best first, taken lazily from a heap: NMS stops once it keeps `max_detections`, mostly long
    // before the candidates run out, so most of them are never ordered.
    let ranked = best_first(found).take(MAX_NMS);
    let found = match d.nms {
        true => nms(ranked, classes, d.nms_iou, d.max_detections),
        false => ranked.take(d.max_detections).collect(),
    };
    Ok(Decoded {
        found,
        scores,
        layout: d.layout,
        classes,
        first_class: 4 + usize::from(d.objectness),
        candidates: d.candidates,
        channels_first: d.channels_first,
    })
}

impl Decoded<'_> {
    /// How many detections were kept.
    pub fn len(&self) -> usize {
        self.found.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// The kept detections, best first, with their class-probability vectors.
    pub fn detections(self) -> Vec<Detection> {
        self.found
            .iter()
            .map(|f| Detection {
                bbox: f.bbox,
                class: f.class,
                score: f.score,
                position: f.position,
                objectness: f.objectness,
                probs: self.probs(f).collect(),
            })
            .collect()
    }

    /// The best D-RISE similarity of a kept detection to `target` ([`similarity`]), 0 when none
    /// overlaps it: class-probability vectors are read only for boxes that overlap.
    pub fn best_similarity(&self, target: &Detection) -> f64 {
        let target_norm = norm(target.probs.iter().copied());
        self.found
            .iter()
            .filter_map(|f| {
                let iou = iou(&target.bbox, &f.bbox);
                (iou > 0.0).then(|| weigh(iou, target, target_norm, self.probs(f), f.objectness))
            })
            .fold(0f64, f64::max)
    }

    /// A kept candidate's class-probability vector, read from the row; a post-NMS output's is the
    /// one-hot of its class, times its score.
    fn probs<'s>(&'s self, f: &'s Found) -> impl Iterator<Item = f32> + Clone + 's {
        (0..self.classes).map(move |c| match self.layout {
            DetectionLayout::Yolo => {
                let j = self.first_class + c;
                let at = match self.channels_first {
                    true => j * self.candidates + f.index,
                    false => f.index * (self.first_class + self.classes) + j,
                };
                self.scores.get(at)
            }
            DetectionLayout::BoxesScoresClasses => match c == f.class {
                true => f.score,
                false => 0.0,
            },
        })
    }
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

/// The candidates of a `yolo` row over the threshold. Each candidate's best class is found first
/// (channels-first rows class by class, so the reads run along memory); only those whose score
/// passes the threshold have their box decoded.
fn candidates<V: Value>(d: &DetectionSpec, classes: usize, size: (f32, f32), row: &[V]) -> Result<Vec<Found>, String> {
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
    // Each candidate's best class and its score (the first of equal ones; NaN never wins), as two
    // arrays so that the channels-first scan is a vectorisable select over a class's column.
    if u32::try_from(classes).is_err() {
        return Err(format!("the detector declares {classes} classes"));
    }
    let mut best_score = vec![f32::NEG_INFINITY; n];
    let mut best_class = vec![0u32; n];
    if d.channels_first {
        best_of_columns(&row[first_class * n..], n, &mut best_score, &mut best_class);
    } else {
        for ((s, b), candidate) in best_score
            .iter_mut()
            .zip(best_class.iter_mut())
            .zip(row.chunks_exact(k))
        {
            for (c, v) in candidate[first_class..].iter().enumerate() {
                let v = v.f32();
                if v > *s {
                    (*s, *b) = (v, c as u32);
                }
            }
        }
    }
    let mut out = Vec::new();
    for (i, (&best_score, &class)) in best_score.iter().zip(&best_class).enumerate() {
        let class = class as usize;
        let objectness = if d.objectness { row[at(i, 4)].f32() } else { 1.0 };
        // A graph that scores candidates (objectness x class) holds the detection's score.
        let score = if d.scored { best_score } else { best_score * objectness };
        // NaN scores fail the comparison and are dropped with the low ones.
        let kept = score >= d.score_threshold;
        if !kept {
            continue;
        }
        let mut raw = [0, 1, 2, 3].map(|j| row[at(i, j)].f32());
        if let Some(grids) = &grids {
            raw = grid_offsets(grids, i, raw);
        }
        out.push(Found {
            bbox: corners(raw, d.box_format, d.box_scale, size),
            class,
            score,
            position: at(i, first_class + class),
            objectness,
            index: i,
        });
    }
    Ok(out)
}

/// Each candidate's best class and its score over a channels-first row's class columns
/// (`columns`: the row from its first class column on; `n` candidates), the first of equal ones,
/// NaN never winning: a select along each column, vectorised, over blocks of candidates whose
/// running bests stay in the nearest cache.
fn best_of_columns<V: Value>(columns: &[V], n: usize, best_score: &mut [f32], best_class: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has the feature the function is compiled for (just detected).
        return unsafe { best_of_columns_avx2(columns, n, best_score, best_class) };
    }
    best_of_columns_body(columns, n, best_score, best_class)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn best_of_columns_avx2<V: Value>(columns: &[V], n: usize, best_score: &mut [f32], best_class: &mut [u32]) {
    best_of_columns_body(columns, n, best_score, best_class)
}

#[inline(always)]
fn best_of_columns_body<V: Value>(columns: &[V], n: usize, best_score: &mut [f32], best_class: &mut [u32]) {
    const BLOCK: usize = 512;
    if n == 0 {
        return;
    }
    let blocks = best_score.chunks_mut(BLOCK).zip(best_class.chunks_mut(BLOCK));
    for (start, (scores, classes)) in (0..n).step_by(BLOCK).zip(blocks) {
        for (c, column) in columns.chunks_exact(n).enumerate() {
            let c = c as u32;
            let values = &column[start..start + scores.len()];
            for ((s, b), v) in scores.iter_mut().zip(classes.iter_mut()).zip(values) {
                let v = v.f32();
                let better = v > *s;
                *s = if better { v } else { *s };
                *b = if better { c } else { *b };
            }
        }
    }
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

/// The detections of a post-NMS output over the threshold.
fn listed(
    d: &DetectionSpec,
    classes: usize,
    size: (f32, f32),
    (boxes, scores, labels): (Row, Row, Row),
    threshold: f32,
) -> Result<Vec<Found>, String> {
    if boxes.len() != scores.len() * 4 || labels.len() != scores.len() {
        return Err(format!(
            "the detector's outputs disagree: {} boxes values, {} scores, {} classes",
            boxes.len(),
            scores.len(),
            labels.len()
        ));
    }
    let mut out = Vec::new();
    for i in 0..scores.len() {
        let (score, class) = (scores.get(i), labels.get(i));
        let kept = score >= threshold && class >= 0.0 && (class as usize) < classes;
        if !kept {
            continue;
        }
        out.push(Found {
            bbox: corners(
                [0, 1, 2, 3].map(|j| boxes.get(i * 4 + j)),
                d.box_format,
                d.box_scale,
                size,
            ),
            class: class as usize,
            score,
            position: i,
            objectness: 1.0,
            index: i,
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
        (row(boxes)?.into(), scores.into(), row(classes)?.into()),
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
#[inline]
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

/// A candidate ranked by score, then by its position in the row (positions are unique, so the
/// order is total: ties keep the row's order and the answer is deterministic).
struct Ranked(Found);

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let (a, b) = (&self.0, &other.0);
        a.score.total_cmp(&b.score).then(b.position.cmp(&a.position))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Ranked {}

/// The candidates best first: a heap built in linear time, each popped in logarithmic time as it
/// is asked for (a full sort orders every candidate first).
fn best_first(found: Vec<Found>) -> impl Iterator<Item = Found> {
    let mut heap: std::collections::BinaryHeap<Ranked> = found.into_iter().map(Ranked).collect();
    std::iter::from_fn(move || heap.pop().map(|r| r.0))
}

/// Greedy class-wise NMS over candidates sorted by score: a box is dropped when it overlaps a
/// kept box of its class by more than `threshold` (torchvision's `batched_nms`). Stops at `keep`.
/// Each candidate is weighed against the kept boxes of its own class only.
fn nms(sorted: impl IntoIterator<Item = Found>, classes: usize, threshold: f32, keep: usize) -> Vec<Found> {
    let mut kept: Vec<Found> = Vec::new();
    // Per class, the kept boxes (a class's list allocated when it keeps its first).
    let mut by_class: Vec<Vec<[f32; 4]>> = vec![Vec::new(); classes];
    for d in sorted {
        if kept.len() >= keep {
            break;
        }
        let Some(same) = by_class.get_mut(d.class) else {
            continue;
        };
        if !same.iter().any(|k| iou(k, &d.bbox) > threshold) {
            same.push(d.bbox);
            kept.push(d);
        }
    }
    kept
}

/// D-RISE's similarity of a detection to the target (Petsiuk et al. 2021, eq. 2): IoU of the boxes
/// x cosine of the class-probability vectors x the objectness of `other`.
pub fn similarity(target: &Detection, other: &Detection) -> f64 {
    let iou = iou(&target.bbox, &other.bbox);
    let target_norm = norm(target.probs.iter().copied());
    weigh(iou, target, target_norm, other.probs.iter().copied(), other.objectness)
}

/// The Euclidean norm of a class-probability vector, in f64.
fn norm(v: impl Iterator<Item = f32>) -> f64 {
    v.map(|x| f64::from(x).powi(2)).sum::<f64>().sqrt()
}

/// [`similarity`] from its parts: `iou`, the target (and its vector's norm), the other
/// detection's class-probability vector and objectness.
fn weigh(
    iou: f32,
    target: &Detection,
    target_norm: f64,
    probs: impl Iterator<Item = f32> + Clone,
    objectness: f32,
) -> f64 {
    let dot: f64 = target
        .probs
        .iter()
        .zip(probs.clone())
        .map(|(a, b)| f64::from(*a) * f64::from(b))
        .sum();
    let other_norm = norm(probs);
    if target_norm == 0.0 || other_norm == 0.0 {
        return 0.0;
    }
    f64::from(iou) * (dot / (target_norm * other_norm)) * f64::from(objectness)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(bbox: [f32; 4], class: usize, score: f32) -> Found {
        Found {
            bbox,
            class,
            score,
            position: 0,
            objectness: 1.0,
            index: 0,
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
        let kept: Vec<f32> = nms(sorted, 2, 0.5, 10).iter().map(|d| d.score).collect();
        assert_eq!(kept, vec![0.9, 0.7, 0.6]);
        assert!((iou(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-6);
    }

    /// The heap gives the candidates in the order a sort by score, then position, gives: equal
    /// scores (and NaN, -0.0 and 0.0) in the row's order.
    #[test]
    fn best_first_is_the_sorted_order() {
        let scores = [0.5, 0.25, 0.5, f32::NAN, 0.0, -0.0, 0.75, 0.25, 0.5, 1.0, 0.0];
        // Positions not in the candidates' order, as a channels-first row's are.
        let found: Vec<Found> = scores
            .iter()
            .enumerate()
            .map(|(i, &s)| Found {
                position: (i * 7) % 11,
                ..det([0.0; 4], 0, s)
            })
            .collect();
        let mut sorted = found.clone();
        sorted.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.position.cmp(&b.position)));
        let key = |f: &Found| (f.score.to_bits(), f.position);
        let heap: Vec<_> = best_first(found).map(|f| key(&f)).collect();
        assert_eq!(heap, sorted.iter().map(key).collect::<Vec<_>>());
        assert_eq!(best_first(Vec::new()).count(), 0);
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
