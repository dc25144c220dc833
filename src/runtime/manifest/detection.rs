//! `[detection]`: how a detector's outputs are read, which the graph cannot say: the layout of its
//! outputs, the box format and scale, the score threshold, NMS and the detection count. The
//! declared layout is checked against the graph's outputs at start; one that does not fit names
//! the output and its shape.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FieldError, ManifestError};
use crate::onnx::{Dim, TensorInfo};

/// Most detections one answer lists (`max_detections`'s bound).
pub const MAX_DETECTIONS: usize = 1000;

/// The `[detection]` section as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct DetectionManifest {
    layout: Option<DetectionLayout>,
    score_threshold: Option<f32>,
    nms_iou: Option<f32>,
    nms: Option<bool>,
    max_detections: Option<usize>,
    box_format: Option<BoxFormat>,
    box_scale: Option<BoxScale>,
    box_decode: Option<BoxDecode>,
    strides: Option<Vec<usize>>,
    objectness: Option<bool>,
    boxes: Option<String>,
    scores: Option<String>,
    classes: Option<String>,
}

/// How a detector's outputs are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DetectionLayout {
    /// One tensor of candidates x (4 box values, an optional objectness, one score per class), in
    /// either axis order, before NMS: YOLOv5 (`[1, 25200, 85]`), YOLOv8 / v11 (`[1, 84, 8400]`).
    Yolo,
    /// Separate outputs after NMS: boxes `[1, n, 4]`, scores `[1, n]`, classes `[1, n]` (SSD,
    /// RetinaNet, torchvision-style exports).
    BoxesScoresClasses,
}

/// How a box's four numbers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BoxFormat {
    /// Centre x, centre y, width, height (YOLO's).
    Cxcywh,
    /// Left, top, right, bottom.
    Xyxy,
    /// Left, top, width, height.
    Xywh,
    /// Top, left, bottom, right (TensorFlow's).
    Yxyx,
}

/// How a `yolo` output's four box values become a box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BoxDecode {
    /// The values are the box (`box_format`, `box_scale`), as YOLOv5 / v8 / v11 exports give.
    Direct,
    /// Anchor-free grid offsets, as YOLOX exports without their decode give: candidates run over
    /// the cells of one grid per stride (row by row, the finest first); a candidate's centre is
    /// `(value + cell) x stride` and its size `exp(value) x stride`, in input pixels.
    GridOffsets,
}

/// Strides of YOLOX's heads (P3 to P5), the grid offsets' default.
const DEFAULT_STRIDES: [usize; 3] = [8, 16, 32];

/// Largest stride a grid may have: bounds the grid arithmetic (a detector's coarsest is 64).
const MAX_STRIDE: usize = 4096;

/// The unit of box coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BoxScale {
    /// Pixels of the model's input.
    Pixels,
    /// Fractions of the input's width and height (0 to 1).
    Normalized,
}

/// A detector's output reading, resolved against its graph.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DetectionSpec {
    /// Output layout.
    pub layout: DetectionLayout,
    /// Detections scoring below this are dropped.
    pub score_threshold: f32,
    /// IoU over which class-wise NMS drops the lower-scoring box of a class.
    pub nms_iou: f32,
    /// Whether explaind runs NMS (`yolo`: yes; `boxes-scores-classes`: the graph has).
    pub nms: bool,
    /// Most detections kept, by score.
    pub max_detections: usize,
    /// Box format.
    pub box_format: BoxFormat,
    /// Box unit.
    pub box_scale: BoxScale,
    /// `yolo`: how the box values become a box.
    pub box_decode: BoxDecode,
    /// `yolo` with `grid-offsets`: the grids' strides, in candidate order (empty otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub strides: Vec<usize>,
    /// `yolo`: whether each candidate has an objectness before its class scores (a detection's
    /// score is then objectness x class score).
    pub objectness: bool,
    /// `yolo`: true when the candidates run along the last axis (`[1, 4 + classes, candidates]`).
    pub channels_first: bool,
    /// `yolo` with an objectness: true once the graph multiplies each class score by it (the
    /// registry appends that at load, [`crate::onnx::objectness`]): the class values are then the
    /// detections' scores.
    #[serde(skip)]
    #[schema(ignore)]
    pub scored: bool,
    /// `yolo`: candidates per image (fixed by the graph); `boxes-scores-classes`: 0.
    pub candidates: usize,
    /// `boxes-scores-classes`: the boxes output (the scores output is the model's `output`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boxes: Option<String>,
    /// `boxes-scores-classes`: the classes output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<String>,
}

impl DetectionSpec {
    /// Values per candidate in a `yolo` output: 4 box values, the objectness, the class scores.
    pub fn stride(&self, classes: usize) -> usize {
        4 + usize::from(self.objectness) + classes
    }

    /// The outputs besides `output` that decoding reads.
    pub fn other_outputs(&self) -> Vec<String> {
        self.boxes.iter().chain(&self.classes).cloned().collect()
    }

    /// `grid-offsets` on a `width x height` input: each grid's first candidate, columns and
    /// stride, in candidate order, and the candidates they hold together (None past `usize`).
    pub fn grids(&self, width: usize, height: usize) -> Option<(Vec<Grid>, usize)> {
        let mut grids = Vec::with_capacity(self.strides.len());
        let mut first = 0usize;
        for &stride in &self.strides {
            let (columns, rows) = (width / stride.max(1), height / stride.max(1));
            grids.push(Grid { first, columns, stride });
            first = first.checked_add(columns.checked_mul(rows)?)?;
        }
        Some((grids, first))
    }

    /// Checks `grid-offsets` against the input's size: the grids' cells must be the candidates.
    /// Names the output and its shape where they differ.
    pub(super) fn check_grids(
        &self,
        output: &str,
        (width, height): (usize, usize),
        err: &FieldError,
    ) -> Result<(), ManifestError> {
        if self.box_decode != BoxDecode::GridOffsets {
            return Ok(());
        }
        let cells = self.grids(width, height).map(|(_, n)| n);
        if cells != Some(self.candidates) {
            return Err(err(
                "detection.strides",
                format!(
                    "strides {:?} on a {width} x {height} input make {} grid cells, but `{output}` \
                     has {} candidates",
                    self.strides,
                    cells.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                    self.candidates
                ),
            ));
        }
        Ok(())
    }
}

/// One grid of `grid-offsets`: its candidates start at `first`, run row by row over `columns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// Index of its first candidate.
    pub first: usize,
    /// Cells per row.
    pub columns: usize,
    /// Input pixels per cell.
    pub stride: usize,
}

/// Completes `[detection]` against the graph's outputs: the output of the scores (what targets
/// weigh) and the spec. `labels` as the manifest gives them (empty: `class_i`, counted from the
/// graph where it can be).
pub(super) fn resolve(
    m: DetectionManifest,
    outputs: &[TensorInfo],
    output: Option<&str>,
    labels: &mut Vec<String>,
    err: &FieldError,
) -> Result<(String, DetectionSpec), ManifestError> {
    let layout = m.layout.ok_or_else(|| {
        err(
            "detection.layout",
            "missing: `yolo` (one tensor of candidates, before NMS) or `boxes-scores-classes` (after NMS)".into(),
        )
    })?;
    let unit = |field: &str, v: Option<f32>, default: f32| match v.unwrap_or(default) {
        v if (0.0..=1.0).contains(&v) => Ok(v),
        v => Err(err(field, format!("{v} is not between 0 and 1"))),
    };
    let max_detections = m.max_detections.unwrap_or(100);
    if !(1..=MAX_DETECTIONS).contains(&max_detections) {
        return Err(err(
            "detection.max_detections",
            format!("{max_detections}: between 1 and {MAX_DETECTIONS}"),
        ));
    }
    let mut spec = DetectionSpec {
        layout,
        // Ultralytics' predict defaults: conf 0.25; NMS IoU 0.45 as YOLOv5's detect.py.
        score_threshold: unit("detection.score_threshold", m.score_threshold, 0.25)?,
        nms_iou: unit("detection.nms_iou", m.nms_iou, 0.45)?,
        nms: m.nms.unwrap_or(layout == DetectionLayout::Yolo),
        max_detections,
        box_format: m.box_format.unwrap_or(match layout {
            DetectionLayout::Yolo => BoxFormat::Cxcywh,
            DetectionLayout::BoxesScoresClasses => BoxFormat::Xyxy,
        }),
        box_scale: m.box_scale.unwrap_or(BoxScale::Pixels),
        box_decode: m.box_decode.unwrap_or(BoxDecode::Direct),
        strides: Vec::new(),
        objectness: false,
        channels_first: false,
        scored: false,
        candidates: 0,
        boxes: None,
        classes: None,
    };
    let find = |field: &str, name: &str| {
        outputs
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| err(field, format!("no output `{name}` in the graph")))
    };
    let dims = |t: &TensorInfo| t.shape.clone().unwrap_or_default();
    let shown = |t: &TensorInfo| {
        let d: Vec<String> = dims(t)
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => n.to_string(),
                Dim::Symbolic(s) => s.clone(),
            })
            .collect();
        format!("`{}` has shape [{}]", t.name, d.join(", "))
    };
    if spec.box_decode == BoxDecode::GridOffsets {
        if layout != DetectionLayout::Yolo {
            return Err(err(
                "detection.box_decode",
                "only a `yolo` output's boxes are grid offsets; a post-NMS output's are boxes".into(),
            ));
        }
        // The offsets decode to centre and size in input pixels; no other format or unit applies.
        if m.box_format.is_some_and(|f| f != BoxFormat::Cxcywh) || m.box_scale.is_some_and(|s| s != BoxScale::Pixels) {
            return Err(err(
                "detection.box_format",
                "grid offsets decode to centre, size in input pixels: leave `box_format` and `box_scale` out".into(),
            ));
        }
        let strides = m.strides.unwrap_or_else(|| DEFAULT_STRIDES.to_vec());
        if strides.is_empty() || strides.len() > 8 || strides.iter().any(|s| !(1..=MAX_STRIDE).contains(s)) {
            return Err(err(
                "detection.strides",
                format!("{strides:?}: one to 8 strides, each between 1 and {MAX_STRIDE}"),
            ));
        }
        spec.strides = strides;
    } else if m.strides.is_some() {
        return Err(err(
            "detection.strides",
            "strides place grid offsets: only with box_decode = \"grid-offsets\"".into(),
        ));
    }
    match layout {
        DetectionLayout::Yolo => {
            if m.boxes.is_some() || m.scores.is_some() || m.classes.is_some() {
                return Err(err(
                    "detection",
                    "`boxes`, `scores` and `classes` name the outputs of layout `boxes-scores-classes`; \
                     a `yolo` output is the model's `output`"
                        .into(),
                ));
            }
            let tensor = super::pick(outputs, output, |t| t.dtype == "float32").map_err(|e| err("output", e))?;
            let d = dims(tensor);
            let fixed: Vec<Option<usize>> = d.iter().map(Dim::fixed).collect();
            let wrong = |why: String| {
                err(
                    "detection.layout",
                    format!(
                        "layout `yolo` needs one float output [batch, 4 + classes, candidates] or \
                         [batch, candidates, 4 + classes] (an objectness after the box where it has one); {}{why}",
                        shown(tensor)
                    ),
                )
            };
            if tensor.dtype != "float32" {
                return Err(wrong(format!(" of {}", tensor.dtype)));
            }
            let (Some(a), Some(b)) = (fixed.get(1).copied().flatten(), fixed.get(2).copied().flatten()) else {
                return Err(wrong(String::new()));
            };
            if d.len() != 3 {
                return Err(wrong(String::new()));
            }
            // Which axis holds the candidate's values: the one that fits the labels (and the
            // objectness, as declared), else the smaller (a detector has more candidates than
            // values per candidate).
            let fits = |n: usize, o: bool| labels.is_empty() || n == 4 + usize::from(o) + labels.len();
            let objectness = |n: usize| match m.objectness {
                Some(o) => fits(n, o).then_some(o),
                None if fits(n, false) && !labels.is_empty() => Some(false),
                None if fits(n, true) && !labels.is_empty() => Some(true),
                // No labels: YOLOv8's layout (no objectness) is the common one.
                None if labels.is_empty() => Some(false),
                None => None,
            };
            let (first, o) = match (objectness(a), objectness(b)) {
                (Some(o), None) => (true, o),
                (None, Some(o)) => (false, o),
                (Some(o), Some(_)) => (a <= b, o),
                (None, None) => {
                    return Err(wrong(format!(
                        ", which fits neither axis to 4 box values{} + {} labels",
                        if m.objectness == Some(true) {
                            " + 1 objectness"
                        } else {
                            ""
                        },
                        labels.len()
                    )))
                }
            };
            let (values, candidates) = if first { (a, b) } else { (b, a) };
            let classes = values.checked_sub(4 + usize::from(o)).filter(|c| *c > 0);
            let Some(classes) = classes else {
                return Err(wrong(" (no class scores)".into()));
            };
            if labels.is_empty() {
                *labels = (0..classes).map(|i| format!("class_{i}")).collect();
            }
            spec.objectness = o;
            spec.channels_first = first;
            spec.candidates = candidates;
            Ok((tensor.name.clone(), spec))
        }
        DetectionLayout::BoxesScoresClasses => {
            if m.objectness == Some(true) {
                return Err(err(
                    "detection.objectness",
                    "a post-NMS output's scores are final; only `yolo` has an objectness".into(),
                ));
            }
            let named = |field: &str, v: &Option<String>| {
                v.clone()
                    .ok_or_else(|| err(field, "missing: layout `boxes-scores-classes` names its outputs".into()))
            };
            let boxes = find("detection.boxes", &named("detection.boxes", &m.boxes)?)?;
            let scores = find("detection.scores", &named("detection.scores", &m.scores)?)?;
            let classes = find("detection.classes", &named("detection.classes", &m.classes)?)?;
            if output.is_some_and(|o| o != scores.name) {
                return Err(err(
                    "output",
                    "a `boxes-scores-classes` detector's output is its `detection.scores`".into(),
                ));
            }
            let last = |t: &TensorInfo| dims(t).last().and_then(Dim::fixed);
            if dims(boxes).len() != 3 || last(boxes) != Some(4) || boxes.dtype != "float32" {
                return Err(err(
                    "detection.boxes",
                    format!("boxes must be float [batch, detections, 4]; {}", shown(boxes)),
                ));
            }
            if dims(scores).len() != 2 || scores.dtype != "float32" {
                return Err(err(
                    "detection.scores",
                    format!("scores must be float [batch, detections]; {}", shown(scores)),
                ));
            }
            if dims(classes).len() != 2 {
                return Err(err(
                    "detection.classes",
                    format!("classes must be [batch, detections]; {}", shown(classes)),
                ));
            }
            if labels.is_empty() {
                return Err(err(
                    "labels",
                    "missing: a post-NMS detector's graph does not say how many classes it has".into(),
                ));
            }
            spec.boxes = Some(boxes.name.clone());
            spec.classes = Some(classes.name.clone());
            Ok((scores.name.clone(), spec))
        }
    }
}
