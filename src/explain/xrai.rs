//! XRAI (Kapishnikov et al., ICCV 2019), as PAIR's `saliency` library runs it (`core/xrai.py`, the
//! full algorithm): Integrated Gradients from a black and a white baseline, averaged, folded over
//! channels by their maximum; an over-segmentation of the image at several scales, each segment
//! dilated; then regions added greedily, each time the one whose not yet covered pixels have the
//! highest mean attribution (the gain density), skipping regions that would add fewer than
//! `min_pixel_diff` pixels. Each pixel takes the gain of the region that covered it; the answer
//! ranks the regions. PAIR segments with Felzenszwalb's graph method at six scales on the image
//! resized to 224 x 224; no maintained Rust crate offers it, so the scales here are SLIC's segment
//! counts (the superpixels LIME and KernelSHAP use), on the model's input, with the dilation and
//! the smallest addition scaled from 224 x 224 to that input.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::{self, Baseline};
use super::integrated_gradients::{path_attributions, plan_noise, quadrature, PathNoise};
use super::method::{
    bytes, check_range, mul, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext, CONFIGURED_MAX_SAMPLES,
    MAX_FEATURES,
};
use super::method::{schemas_of, NamedSchemas};
use super::segments::{multiscale, Region};
use super::{Cx, ExplainJob, Integration, TargetAttribution};
use crate::common::batch::pixel_index;
use crate::runtime::predict::Prediction;
use crate::runtime::{RuntimeError, Tensor};

/// The side PAIR resizes images to before segmenting them, which its dilation (5 pixels) and
/// smallest addition (50 pixels) are measured on.
const PAIR_SIDE: f64 = 224.0;

/// Most scales (segmentations) a request may name.
const MAX_SCALES: usize = 8;

/// Widest dilation, in pixels.
const MAX_DILATION: u32 = 64;

/// XRAI parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct XraiParams {
    /// Integrated Gradients points per baseline (PAIR's `steps`); each costs two model rows (black
    /// and white) per target.
    #[schema(default = 100, minimum = 2, extensions(("x-maximum" = json!(CONFIGURED_MAX_SAMPLES))))]
    pub steps: usize,
    /// Integrated Gradients' quadrature rule.
    #[schema(default = "gauss_legendre")]
    pub integration: Integration,
    /// The scales: segments asked of SLIC, one over-segmentation each (1 to 8 of them, each 2 to
    /// 500; at most a quarter of the input's pixels).
    #[schema(default = json!([8, 16, 32, 64, 128, 256]), min_items = 1, max_items = 8, minimum = 2, maximum = 500)]
    pub segments: Vec<u32>,
    /// SLIC compactness, 1 to 20.
    #[schema(default = 10, minimum = 1, maximum = 20)]
    pub compactness: u8,
    /// Radius in pixels each segment is dilated by, 0 to 64. Default: PAIR's 5 on 224 x 224, scaled
    /// to the input's shorter side (1 on 28 x 28).
    #[schema(minimum = 0, maximum = 64)]
    pub dilation: Option<u32>,
    /// Regions that would add fewer pixels than this are dropped, at most the input's pixels.
    /// Default: PAIR's 50 on 224 x 224, scaled to the input's area (at least 1).
    #[schema(minimum = 1, extensions(("x-maximum" = json!(MAX_FEATURES))))]
    pub min_pixel_diff: Option<usize>,
    /// Stop adding regions once they cover more than this share of the image (PAIR's
    /// `area_threshold`); the rest is one last region.
    #[schema(default = 1.0, exclusive_minimum = 0.0, maximum = 1.0)]
    pub area_threshold: f64,
    /// Rows per model pass (Captum's `internal_batch_size`); capped by the service's `max_batch`.
    #[schema(minimum = 1, extensions(("x-maximum" = json!(CONFIGURED_MAX_SAMPLES))))]
    pub internal_batch_size: Option<usize>,
    /// SmoothGrad on the integrated-gradients paths (as `integrated-gradients` takes it; Vertex
    /// AI's `xraiAttribution.smoothGradConfig`). None by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smooth_grad: Option<PathNoise>,
}

impl Default for XraiParams {
    fn default() -> Self {
        Self {
            steps: 100,
            integration: Integration::GaussLegendre,
            segments: vec![8, 16, 32, 64, 128, 256],
            compactness: 10,
            dilation: None,
            min_pixel_diff: None,
            area_threshold: 1.0,
            internal_batch_size: None,
            smooth_grad: None,
        }
    }
}

/// XRAI.
pub struct Xrai;

impl Method for Xrai {
    type Params = XraiParams;
    const NAME: &'static str = "xrai";
    const SUMMARY: &'static str =
        "Regions ranked by their Integrated Gradients density over multi-scale segments (Kapishnikov et al. 2019)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Gradients,
        inputs: Inputs::Image,
        layer: false,
        random: false,
        examples: false,
        decision: false,
        text: false,
        makes_image: false,
    };

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<XraiDetails>())
    }

    fn plan(p: &mut XraiParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        check_range("steps", p.steps, 2, cx.limits.max_samples)?;
        check_range("segments (count)", p.segments.len(), 1, MAX_SCALES)?;
        if let Some(s) = p.segments.iter().find(|s| !(2..=500).contains(*s)) {
            return Err(Invalid::Request(format!(
                "params.segments must each be between 2 and 500, got {s}"
            )));
        }
        check_range("compactness", p.compactness, 1, 20)?;
        if !(p.area_threshold > 0.0 && p.area_threshold <= 1.0) {
            return Err(Invalid::Request(format!(
                "params.area_threshold must be above 0 and at most 1, got {}",
                p.area_threshold
            )));
        }
        if let Some(b) = p.internal_batch_size {
            check_range("internal_batch_size", b, 1, cx.limits.max_samples)?;
        }
        let Some(image) = cx.model.spec.image.as_ref() else {
            return Err(Invalid::Model("xrai explains image models".into()));
        };
        let pixels = cx.pixels();
        let side = image.height.min(image.width) as f64;
        let dilation = *p.dilation.get_or_insert((5.0 * side / PAIR_SIDE).round() as u32);
        check_range("dilation", dilation, 0, MAX_DILATION)?;
        let least = *p
            .min_pixel_diff
            .get_or_insert(((50.0 * pixels as f64 / (PAIR_SIDE * PAIR_SIDE)).round() as usize).max(1));
        check_range("min_pixel_diff", least, 1, pixels.clamp(1, MAX_FEATURES))?;
        let copies = match &p.smooth_grad {
            Some(noise) => plan_noise(noise, cx)?,
            None => 1,
        };
        let samples = mul(
            mul(
                mul(2, p.steps, "steps x baselines")?,
                copies,
                "steps x baselines x smooth_grad.samples",
            )?,
            cx.targets,
            "steps x baselines x samples x targets",
        )?;
        // Each pixel lies in a segment of each scale, and in the dilations of at most the segments
        // its disk reaches: the regions' pixel lists, and their index by pixel.
        let disk = (2 * dilation as usize + 1).pow(2);
        let memberships = p
            .segments
            .iter()
            .map(|s| (*s as usize).saturating_mul(2).min(disk))
            .fold(0usize, usize::saturating_add)
            .saturating_mul(pixels);
        let regions: usize = p.segments.iter().map(|s| *s as usize * 2).sum();
        Ok(Cost {
            samples,
            rows: samples.saturating_add(2),
            // One batch streams through at a time; per baseline and target an f64 accumulator;
            // the two baselines; the regions; per target the attribution and the answer's maps.
            bytes: cx
                .batch_bytes(cx.limits.max_batch, true)
                .saturating_add(bytes(cx.input_len(), 8).saturating_mul(2 * cx.targets as u64))
                .saturating_add(bytes(cx.input_len(), 4 * 2))
                .saturating_add(bytes(memberships, 4 * 2))
                .saturating_add(bytes(regions, 64))
                .saturating_add(bytes(pixels, 32).saturating_mul(cx.targets as u64))
                .saturating_add(cx.answer_bytes()),
        })
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &XraiParams,
        targets: &[Prediction],
        scores: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        explain(cx, job, p, targets, scores)
    }
}

fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &XraiParams,
    targets: &[Prediction],
    scores: &[f64],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let spec = job.image_spec("xrai")?;
    let baselines: Vec<Vec<f32>> = [Baseline::Black, Baseline::White]
        .into_iter()
        .map(|b| {
            baselines::build(b, &job.input, Some(spec), job.seed)
                .as_f32()
                .unwrap_or(&[])
                .to_vec()
        })
        .collect();
    let points = quadrature(p.integration, p.steps);
    let chunk = p.internal_batch_size.unwrap_or(usize::MAX);
    let paths = path_attributions(cx, job, &baselines, targets, &points, p.smooth_grad.as_ref(), chunk)?;
    let mut shape = job.input.shape.clone();
    shape[0] = 2;
    let base_scores = cx.forward(&Tensor::f32(shape, baselines.concat()))?.to_f64();
    let classes = base_scores.len() / 2;
    let (regions, given) = multiscale(
        &job.input,
        spec,
        (&p.segments, p.compactness),
        p.dilation.unwrap_or(0) as usize,
        &|| cx.checkpoint(),
    )?;
    let index = PixelIndex::of(&regions, spec.height * spec.width);
    let least = p.min_pixel_diff.unwrap_or(1);
    let mut out = Vec::new();
    for (ti, t) in targets.iter().enumerate() {
        let (black, white) = (&paths[0][ti], &paths[1][ti]);
        // The delta of the averaged attribution: the mean of the two baselines' deltas.
        let deltas: Vec<f64> = [black, white]
            .iter()
            .enumerate()
            .map(|(b, a)| {
                let total: f64 = a.iter().map(|v| *v as f64).sum();
                total - (scores[t.index] - base_scores[b * classes + t.index])
            })
            .collect();
        let attr = folded(black, white, spec);
        let ranked = rank(&attr, &regions, &index, least, p.area_threshold, &|| cx.checkpoint())?;
        let map = Tensor::f32(vec![spec.height, spec.width], ranked.map.clone());
        let mut details = ranked.details(&attr, &regions, &given, &deltas, spec);
        // The model's output at each baseline (Vertex AI's `baselineOutputValue` is their mean).
        details["base_values"] = serde_json::json!({
            "black": base_scores[t.index],
            "white": base_scores[classes + t.index],
        });
        let mut answer = TargetAttribution::from_map(t, map, None, Some(details));
        answer.convergence_delta = Some((deltas[0] + deltas[1]) / 2.0);
        out.push(answer);
    }
    Ok(out)
}

/// The two baselines' attributions averaged, then each pixel's largest channel (PAIR's
/// `_attr_aggregation_max`).
fn folded(black: &[f32], white: &[f32], spec: &crate::runtime::manifest::ImageSpec) -> Vec<f64> {
    let mut out = vec![f64::NEG_INFINITY; spec.height * spec.width];
    for y in 0..spec.height {
        for x in 0..spec.width {
            for ch in 0..spec.channels {
                let i = pixel_index(spec, ch, y, x);
                let v = (black[i] as f64 + white[i] as f64) / 2.0;
                let o = &mut out[y * spec.width + x];
                *o = o.max(v);
            }
        }
    }
    out
}

/// For each pixel, the regions that hold it (compressed rows).
struct PixelIndex {
    starts: Vec<usize>,
    regions: Vec<u32>,
}

impl PixelIndex {
    fn of(regions: &[Region], pixels: usize) -> Self {
        let mut starts = vec![0usize; pixels + 1];
        for r in regions {
            for &p in &r.pixels {
                starts[p as usize + 1] += 1;
            }
        }
        for p in 0..pixels {
            starts[p + 1] += starts[p];
        }
        let mut next = starts.clone();
        let mut ids = vec![0u32; starts[pixels]];
        for (k, r) in regions.iter().enumerate() {
            for &p in &r.pixels {
                ids[next[p as usize]] = k as u32;
                next[p as usize] += 1;
            }
        }
        Self { starts, regions: ids }
    }

    fn of_pixel(&self, p: usize) -> &[u32] {
        &self.regions[self.starts[p]..self.starts[p + 1]]
    }
}

/// A region as added: the pixels it added and their mean attribution (its gain).
struct Added {
    region: Option<usize>,
    gain: f64,
    pixels: Vec<u32>,
}

/// The greedy ranking: the regions in the order of their gain, and the map.
struct Ranked {
    added: Vec<Added>,
    map: Vec<f32>,
}

/// XRAI's greedy search (PAIR's `_xrai`): while the covered share is at most `area_threshold`,
/// drop the regions that would add fewer than `least` pixels, add the one with the highest mean
/// attribution over the pixels it adds, and give those pixels that gain. Each region keeps the
/// count and the sum over its uncovered pixels, updated as pixels are covered, so a step costs
/// one pass over the regions, not over their pixels. Pixels left uncovered form one last region
/// with their mean attribution, so the map sums as the attribution does.
fn rank(
    attr: &[f64],
    regions: &[Region],
    index: &PixelIndex,
    least: usize,
    area_threshold: f64,
    checkpoint: &dyn Fn() -> Result<(), RuntimeError>,
) -> Result<Ranked, RuntimeError> {
    let pixels = attr.len();
    let mut count: Vec<usize> = regions.iter().map(|r| r.pixels.len()).collect();
    let mut sum: Vec<f64> = regions
        .iter()
        .map(|r| r.pixels.iter().map(|&p| attr[p as usize]).sum())
        .collect();
    let mut alive = vec![true; regions.len()];
    let mut covered = vec![false; pixels];
    let mut covered_count = 0usize;
    let mut map = vec![0f32; pixels];
    let mut added = Vec::new();
    while covered_count as f64 / pixels.max(1) as f64 <= area_threshold {
        checkpoint()?;
        let mut best: Option<(usize, f64)> = None;
        for k in 0..regions.len() {
            if !alive[k] {
                continue;
            }
            if count[k] < least {
                alive[k] = false;
                continue;
            }
            let gain = sum[k] / count[k] as f64;
            if best.is_none_or(|(_, g)| gain > g) {
                best = Some((k, gain));
            }
        }
        let Some((k, gain)) = best else {
            break;
        };
        alive[k] = false;
        let mut new = Vec::with_capacity(count[k]);
        for &p in &regions[k].pixels {
            let p = p as usize;
            if covered[p] {
                continue;
            }
            covered[p] = true;
            map[p] = gain as f32;
            new.push(p as u32);
            for &j in index.of_pixel(p) {
                count[j as usize] -= 1;
                sum[j as usize] -= attr[p];
            }
        }
        covered_count += new.len();
        added.push(Added {
            region: Some(k),
            gain,
            pixels: new,
        });
    }
    // A stable sort: regions of equal gain keep the order they were added in.
    added.sort_by(|a, b| b.gain.total_cmp(&a.gain));
    let rest: Vec<u32> = (0..pixels).filter(|p| !covered[*p]).map(|p| p as u32).collect();
    if !rest.is_empty() {
        let gain = rest.iter().map(|&p| attr[p as usize]).sum::<f64>() / rest.len() as f64;
        rest.iter().for_each(|&p| map[p as usize] = gain as f32);
        added.push(Added {
            region: None,
            gain,
            pixels: rest,
        });
    }
    Ok(Ranked { added, map })
}

impl Ranked {
    fn details(
        &self,
        attr: &[f64],
        regions: &[Region],
        given: &[usize],
        deltas: &[f64],
        spec: &crate::runtime::manifest::ImageSpec,
    ) -> serde_json::Value {
        let mut ranks = vec![0usize; attr.len()];
        let listed: Vec<serde_json::Value> = self
            .added
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.pixels.iter().for_each(|&p| ranks[p as usize] = i + 1);
                serde_json::json!({
                    "rank": i + 1,
                    "gain": a.gain,
                    "pixels": a.pixels.len(),
                    "attribution": a.pixels.iter().map(|&p| attr[p as usize]).sum::<f64>(),
                    "scale": a.region.map(|k| regions[k].scale),
                })
            })
            .collect();
        serde_json::json!({
            "regions": listed,
            "region_map": {"shape": [spec.height, spec.width], "values": ranks},
            "segmentations": given,
            "ig_convergence_deltas": {"black": deltas[0], "white": deltas[1]},
        })
    }
}

/// XRAI's `details`, as `explain` writes them.
#[derive(ToSchema)]
#[allow(dead_code)] // The answer's shape for the document; `explain` writes it as JSON.
#[serde(deny_unknown_fields)]
pub struct XraiDetails {
    /// The regions, best first: each the pixels it added when chosen, the last one (with a null
    /// `scale`) the pixels no region covered.
    regions: Vec<XraiRegion>,
    /// Each pixel's region by rank (1 is the best), row by row.
    region_map: super::players::SegmentMap,
    /// Segments each scale's SLIC gave, in the order of `segments` (scales that came to the same
    /// count once).
    segmentations: Vec<usize>,
    /// Integrated Gradients' convergence delta from each baseline (the answer's
    /// `convergence_delta` is their mean).
    ig_convergence_deltas: IgDeltas,
    /// The model's output for the target at each baseline.
    base_values: BaseValues,
}

/// The model's output for the target at each baseline.
#[derive(ToSchema)]
#[allow(dead_code)] // The answer's shape for the document; `explain` writes it as JSON.
#[serde(deny_unknown_fields)]
pub struct BaseValues {
    /// At the black image.
    black: f64,
    /// At the white image.
    white: f64,
}

/// One ranked region.
#[derive(ToSchema)]
#[allow(dead_code)] // The answer's shape for the document; `explain` writes it as JSON.
#[serde(deny_unknown_fields)]
pub struct XraiRegion {
    /// 1 for the best.
    rank: usize,
    /// Mean attribution over the pixels it added (its value in the map).
    gain: f64,
    /// Pixels it added.
    pixels: usize,
    /// Sum of the attribution over them.
    attribution: f64,
    /// The segments asked of the segmentation it came from; null for the uncovered rest.
    scale: Option<u32>,
}

/// Integrated Gradients' convergence delta from each baseline.
#[derive(ToSchema)]
#[allow(dead_code)] // The answer's shape for the document; `explain` writes it as JSON.
#[serde(deny_unknown_fields)]
pub struct IgDeltas {
    /// From the black image.
    black: f64,
    /// From the white image.
    white: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(pixels: &[u32]) -> Region {
        Region {
            pixels: pixels.to_vec(),
            scale: 2,
        }
    }

    /// PAIR's full algorithm on a small case: the densest region first, overlaps counted once,
    /// regions adding fewer than `least` pixels dropped, the uncovered rest last.
    #[test]
    fn greedy_gain_density_follows_pair() {
        // Eight pixels; attribution dense on 0-1, then 2-4.
        let attr = [5.0, 5.0, 3.0, 3.0, 3.0, 0.0, -1.0, 0.0];
        let regions = vec![
            region(&[0, 1, 2]),
            region(&[1, 2, 3, 4]),
            region(&[0, 1]),
            region(&[5, 6]),
        ];
        let index = PixelIndex::of(&regions, attr.len());
        let r = rank(&attr, &regions, &index, 2, 1.0, &|| Ok(())).unwrap();
        let order: Vec<Option<usize>> = r.added.iter().map(|a| a.region).collect();
        // [0, 1] (5.0); then [2, 3, 4] of region 1 (3.0) beats [2] of region 0 (too small anyway);
        // then [5, 6] (-0.5); pixel 7 is left over.
        assert_eq!(order, vec![Some(2), Some(1), Some(3), None]);
        assert_eq!(r.added[1].pixels, vec![2, 3, 4]);
        assert_eq!(r.map, vec![5.0, 5.0, 3.0, 3.0, 3.0, -0.5, -0.5, 0.0]);
        // The map sums as the attribution does.
        let total: f32 = r.map.iter().sum();
        assert!((total - attr.iter().sum::<f64>() as f32).abs() < 1e-6);
        // A threshold stops early: after the first region a quarter is covered.
        let r = rank(&attr, &regions, &index, 1, 0.2, &|| Ok(())).unwrap();
        assert_eq!(r.added.len(), 2);
        assert_eq!(r.added[1].region, None);
    }
}
