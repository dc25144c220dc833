//! A real detector nobody here made: ddddocr's click-captcha glyph detector (PyPI `ddddocr`
//! 1.6.1, `common_det.onnx`, fetched by scripts/test-setup.sh with the package's
//! `detection_engine.py` beside it): a YOLOX exported without its decode, input `images`
//! [1, 3, 416, 416] (BGR, 0-255, letterboxed at the top-left on 114 grey), output `output`
//! [1, 3549, 6]: per cell of three grids (strides 8, 16, 32) the box as grid offsets, a sigmoid
//! objectness and a sigmoid glyph score. Served with the README's manifest (`box_decode =
//! "grid-offsets"`, `fit = "letterbox-top-left"`) and its tour; its detections equal the
//! package's own pipeline (`DetectionEngine.get_bbox`, run in Python with ONNX Runtime), the
//! gradient of a detection's score passes finite differences, and Grad-CAM and D-RISE put their
//! maps on the explained glyph.

use crate::common;

use base64::Engine;
use common::*;
use serde_json::Value;

/// The test image: 416 wide, so the package's letterbox keeps its scale (r = 1, no resampling on
/// either side) and pads 96 rows below it.
const WIDTH: u32 = 416;
const HEIGHT: u32 = 320;
/// Top-left corners of the five glyphs drawn.
const GLYPHS: [(u32, u32); 5] = [(40, 40), (200, 60), (330, 40), (80, 200), (260, 220)];
/// A glyph's side and stroke width, in pixels.
const GLYPH: u32 = 40;
const STROKE: u32 = 5;

fn model_file() -> std::path::PathBuf {
    let cached = cache_dir().join("models/ddddocr-detector/model.onnx");
    assert!(
        cached.is_file(),
        "{} is missing: run `make test` (scripts/test-setup.sh fetches it)",
        cached.display()
    );
    cached
}

/// A click captcha: grey noise and five glyph-like figures of four strokes each (of three
/// horizontal and three vertical bars), dark blue or dark red.
fn captcha() -> image::RgbImage {
    let mut rng = Rng::new(31);
    let mut img = image::RgbImage::from_fn(WIDTH, HEIGHT, |_, _| {
        let v = rng.uniform(190.0, 240.0) as u8;
        image::Rgb([v, v, v])
    });
    for (x, y) in GLYPHS {
        let colour = if rng.uniform(0.0, 1.0) < 0.5 {
            [110, 30, 30]
        } else {
            [30, 30, 110]
        };
        let mut strokes: Vec<usize> = (0..6).collect();
        for i in (1..strokes.len()).rev() {
            strokes.swap(i, rng.next_u64() as usize % (i + 1));
        }
        for &k in &strokes[..4] {
            let at = [0.1, 0.5, 0.9, 0.2, 0.5, 0.8][k];
            let offset = (at * GLYPH as f32) as u32;
            let (x0, y0, w, h) = match k < 3 {
                true => (x, y + offset, GLYPH, STROKE),
                false => (x + offset, y, STROKE, GLYPH),
            };
            for yy in y0..y0 + h {
                for xx in x0..x0 + w {
                    img.put_pixel(xx, yy, image::Rgb(colour));
                }
            }
        }
    }
    img
}

/// The package's own pipeline on `img`: `DetectionEngine.get_bbox` (preprocessing, ONNX
/// Runtime, YOLOX decode, NMS, boxes clipped and truncated to integers), its methods taken
/// verbatim from the package's `detection_engine.py`; OpenCV, which it decodes and resizes with,
/// is not installed, so the image is handed over decoded (BGR) and the resize, at scale 1, is
/// the identity it is in OpenCV. Returns the integer boxes and the float detections NMS kept
/// (`[x0, y0, x1, y1, score, class]`).
fn package_detections(img: &image::RgbImage) -> (Vec<[f64; 4]>, Vec<[f64; 6]>) {
    let script = r#"
import ast, json, sys, types, numpy, onnxruntime
model, engine, w, h = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tree = ast.parse(open(engine).read())
cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == 'DetectionEngine')
cls.body = [f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name in
            ('preproc', 'demo_postprocess', 'nms', 'multiclass_nms_class_agnostic', 'multiclass_nms', 'get_bbox')]
cls.bases = []
rgb = numpy.array(json.load(sys.stdin), dtype=numpy.uint8).reshape(h, w, 3)
def resize(img, size, interpolation):
    assert tuple(size) == (img.shape[1], img.shape[0]), 'the test image must keep its scale'
    return img.copy()
cv2 = types.SimpleNamespace(IMREAD_COLOR=1, INTER_LINEAR=1, resize=resize,
                            imdecode=lambda buf, flag: numpy.ascontiguousarray(rgb[:, :, ::-1]))
ns = {'np': numpy, 'cv2': cv2}
exec(compile(ast.Module(body=[cls], type_ignores=[]), engine, 'exec'), ns)
engine = ns['DetectionEngine']()
engine.session = onnxruntime.InferenceSession(model, providers=['CPUExecutionProvider'])
kept = []
nms = engine.multiclass_nms
engine.multiclass_nms = lambda *a, **k: kept.append(nms(*a, **k)) or kept[-1]
boxes = engine.get_bbox(b'')
print(json.dumps({'boxes': boxes, 'detections': kept[0].tolist()}))
"#;
    let model = model_file();
    let (width, height) = (WIDTH.to_string(), HEIGHT.to_string());
    let engine = model.with_file_name("detection_engine.py");
    let args = [model.as_os_str(), engine.as_os_str(), width.as_ref(), height.as_ref()];
    let v: Value = python_json(script, &args, img.as_raw());
    let floats = |v: &Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
    let boxes = v["boxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| floats(b).try_into().unwrap())
        .collect();
    let detections = v["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| floats(d).try_into().unwrap())
        .collect();
    (boxes, detections)
}

/// The README's real-detector subsection: its manifest block and its tour's commands.
fn readme_section() -> (String, Vec<String>) {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("#### A real detector")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap()
        .split("\n### ")
        .next()
        .unwrap();
    let manifest = section.split("```toml\n").nth(1).unwrap().split("```").next().unwrap();
    let tour = section.split("```sh\n").nth(1).unwrap().split("```").next().unwrap();
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in tour
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
    {
        current.push_str(line.trim_end().trim_end_matches('\\'));
        current.push(' ');
        if !line.trim_end().ends_with('\\') {
            commands.push(std::mem::take(&mut current).trim().to_string());
        }
    }
    (manifest.to_string(), commands)
}

/// A map's mean inside a box (`[x0, y0, x1, y1]` in the map's pixels) over its mean outside.
fn contrast(answer: &Value, bbox: &[f64]) -> f64 {
    let values = attribution_values(answer);
    let width = answer["attributions"]["shape"][1].as_u64().unwrap() as usize;
    let (mut inside, mut outside) = ((0.0, 0usize), (0.0, 0usize));
    for (i, v) in values.iter().enumerate() {
        let (x, y) = ((i % width) as f64 + 0.5, (i / width) as f64 + 0.5);
        let sum = match x >= bbox[0] && x < bbox[2] && y >= bbox[1] && y < bbox[3] {
            true => &mut inside,
            false => &mut outside,
        };
        sum.0 += v;
        sum.1 += 1;
    }
    (inside.0 / inside.1.max(1) as f64) / (outside.0 / outside.1.max(1) as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_yolox_detector_serves_the_readme_tour_as_its_package_detects() {
    let cached = model_file();
    let (manifest, commands) = readme_section();
    assert_eq!(commands.len(), 3, "{commands:?}");
    let dir = temp_dir("real-detector");
    std::fs::create_dir_all(dir.join("captcha-detector")).unwrap();
    std::fs::copy(&cached, dir.join("captcha-detector/model.onnx")).unwrap();
    std::fs::write(dir.join("captcha-detector/model.toml"), &manifest).unwrap();
    // Strides whose grids do not make the output's candidates: refused at start, naming the
    // output and its candidates; the other model serves.
    std::fs::create_dir_all(dir.join("misdeclared")).unwrap();
    std::fs::copy(&cached, dir.join("misdeclared/model.onnx")).unwrap();
    std::fs::write(
        dir.join("misdeclared/model.toml"),
        manifest.replace("strides = [8, 16, 32]", "strides = [8, 16]"),
    )
    .unwrap();
    let img = captcha();
    let (package_boxes, package) = package_detections(&img);
    assert_eq!(
        package.len(),
        GLYPHS.len(),
        "the package finds the five glyphs: {package:?}"
    );

    let s = start(test_config(&dir)).await;
    let listed = get_json(&s, "/v1/models").await;
    let why = listed["failed"][0]["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("detection.strides")
            && why.contains("3380 grid cells")
            && why.contains("`output` has 3549 candidates"),
        "{listed}"
    );
    assert_discloses_nothing(why);
    let scratch = temp_dir("real-detector-tour");
    img.save(scratch.join("captcha.png")).unwrap();
    let mut answers = Vec::new();
    for command in &commands {
        let command = command.replace("localhost:8080", &s.addr.to_string());
        let started = std::time::Instant::now();
        let mut shell = std::process::Command::new("sh");
        shell
            .arg("-c")
            .arg(format!("set -e; {command} --fail-with-body"))
            .current_dir(&scratch);
        let stdout = run_ok(shell, command.clone()).await;
        eprintln!("captcha detector tour: {:?} for {command:.80}", started.elapsed());
        answers.push(serde_json::from_str::<Value>(&stdout).unwrap());
    }

    // The same detections as the package, in the same order (by score): scores to ONNX Runtime's
    // rounding, boxes to a hundredth of a pixel, and the package's integer boxes are them
    // truncated.
    let found = answers[0]["detections"].as_array().unwrap();
    assert_eq!(found.len(), package.len(), "{}", answers[0]);
    let mut worst = (0f64, 0f64);
    for ((ours, theirs), truncated) in found.iter().zip(&package).zip(&package_boxes) {
        assert_eq!(ours["label"], "glyph");
        let score = ours["score"].as_f64().unwrap();
        worst.0 = worst.0.max((score - theirs[4]).abs());
        for j in 0..4 {
            let b = ours["box"][j].as_f64().unwrap();
            worst.1 = worst.1.max((b - theirs[j]).abs());
            assert!(
                (b.floor() - truncated[j]).abs() <= 1.0,
                "box {ours} against the package's {truncated:?}"
            );
        }
    }
    eprintln!(
        "captcha detector: {} detections as the package's; largest differences: score {:.2e}, box {:.2e} px",
        found.len(),
        worst.0,
        worst.1
    );
    assert!(worst.0 < 1e-4 && worst.1 < 1e-2, "{worst:?}: {}", answers[0]);

    // Grad-CAM and D-RISE of the best detection are higher on its glyph than elsewhere. (D-RISE
    // weighs every mask by how well its best detection matches: outside the box a pixel's value
    // is the mean weight, inside it the weight of masks that keep the glyph, about twice that.)
    let bbox: Vec<f64> = (0..4).map(|j| found[0]["box"][j].as_f64().unwrap()).collect();
    for (method, answer, least) in [("grad-cam", &answers[1], 1.5), ("d-rise", &answers[2], 1.3)] {
        assert_eq!(answer["detection"]["box"], found[0]["box"], "{method}: {answer}");
        let map = attribution_values(answer);
        assert!(map.iter().all(|v| v.is_finite()), "{method}");
        let contrast = contrast(answer, &bbox);
        eprintln!(
            "captcha detector {method} (layer {}): mean in the box {contrast:.2}x the mean outside",
            answer["layer"]
        );
        assert!(
            contrast > least,
            "{method}: mean in the box {contrast:.2}x the mean outside"
        );
        // The pictures (the heat map over the image, the box outlined), for the README.
        let shots = root().join("target").join("screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(answer["overlay_png"].as_str().unwrap())
            .unwrap();
        std::fs::write(shots.join(format!("captcha-detector-{method}.png")), png).unwrap();
    }

    // Uncertainty by mirrored views: its detections are predict's, each with the share of the
    // views that find it in place.
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let png = base64::engine::general_purpose::STANDARD.encode(png);
    let v = ok_json(
        post_json(
            &s,
            "/v1/models/captcha-detector/uncertainty",
            &serde_json::json!({"image": png, "method": "tta"}),
        )
        .await,
    )
    .await;
    let seen = v["uncertainty"]["detection"]["detections"].as_array().unwrap();
    assert_eq!(seen.len(), found.len(), "{v}");
    for (u, d) in seen.iter().zip(found) {
        assert_eq!(
            (&u["box"], &u["label"], &u["score"]),
            (&d["box"], &d["label"], &d["score"]),
            "{v}"
        );
        let share = u["found"].as_f64().unwrap();
        assert!(share == 0.5 || share == 1.0, "two views: {v}");
    }
    eprintln!(
        "captcha detector tta (hflip): found shares {:?}, mean IoU {:?}",
        seen.iter().map(|u| u["found"].as_f64().unwrap()).collect::<Vec<_>>(),
        seen.iter()
            .map(|u| (u["iou_mean"].as_f64().unwrap() * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
    s.stop().await.unwrap();
}

/// The gradient the explaining graph gives for a detection's score (objectness x glyph score,
/// the product rule's one-hot weights on the raw output) agrees with central differences of the
/// forward model's product, on the pixels that matter most and on a spread of others.
#[test]
fn the_gradient_of_a_real_detection_s_score_passes_finite_differences() {
    use common::gradcheck::{backward, run_output, runner};
    use prost::Message;
    let model = explaind::onnx::proto::ModelProto::decode(std::fs::read(model_file()).unwrap().as_slice()).unwrap();
    let side = 416usize;
    let img = captcha();
    let mut x = vec![114f32; 3 * side * side];
    for (px, py, p) in img.enumerate_pixels() {
        for c in 0..3 {
            // BGR planes, 0-255, the image at the top-left.
            x[c * side * side + py as usize * side + px as usize] = f32::from(p.0[2 - c]);
        }
    }
    let dims = vec![1, 3, side, side];
    let runner = runner();
    let mut fwd = runner.session(&model).unwrap();
    let (_, out) = run_output(&mut fwd, &[("images", dims.clone(), x.clone())], "output");
    // The best candidate: the first detection.
    let k = (0..3549)
        .max_by(|a, b| (out[a * 6 + 4] * out[a * 6 + 5]).total_cmp(&(out[b * 6 + 4] * out[b * 6 + 5])))
        .unwrap();
    let (obj, cls) = (out[k * 6 + 4], out[k * 6 + 5]);
    assert!(obj * cls > 0.5, "candidate {k}: {obj} x {cls}");
    let bw = backward(
        &model,
        "images",
        &dims,
        "output",
        &[],
        &explaind::onnx::autodiff::RuleTable::exact(),
    );
    let mut bwd = runner.session(&bw.model).unwrap();
    let mut w = vec![0f32; 3549 * 6];
    w[k * 6 + 4] = cls;
    w[k * 6 + 5] = obj;
    let feeds = [
        ("images", dims.clone(), x.clone()),
        (explaind::onnx::autodiff::WEIGHTS_INPUT, vec![1, 3549, 6], w),
    ];
    let (_, grad) = run_output(&mut bwd, &feeds, &bw.input_grad);
    let mut score = |xs: Vec<f32>| -> f64 {
        let (_, o) = run_output(&mut fwd, &[("images", dims.clone(), xs)], "output");
        f64::from(o[k * 6 + 4]) * f64::from(o[k * 6 + 5])
    };
    let scale = grad.iter().map(|g| f64::from(g.abs())).fold(0.0, f64::max);
    assert!(scale > 0.0);
    // The 12 largest gradients, and every 90,001st pixel (each check is two forward passes).
    let mut order: Vec<usize> = (0..grad.len()).collect();
    order.sort_by(|a, b| grad[*b].abs().total_cmp(&grad[*a].abs()));
    let picked: Vec<usize> = order[..12]
        .iter()
        .copied()
        .chain((0..grad.len()).step_by(90_001))
        .collect();
    // Two grey levels: the largest gradients move the score by about 1e-4, far over float32's
    // resolution near 1 (6e-8).
    let h = 2f32;
    let mut worst = 0f64;
    for &i in &picked {
        let (mut plus, mut minus) = (x.clone(), x.clone());
        plus[i] += h;
        minus[i] -= h;
        let numeric = (score(plus) - score(minus)) / (2.0 * f64::from(h));
        let analytic = f64::from(grad[i]);
        let error = (numeric - analytic).abs();
        worst = worst.max(error / scale);
        assert!(
            error <= 1e-2 * scale + 5e-2 * numeric.abs(),
            "pixel {i}: analytic {analytic:.3e}, numeric {numeric:.3e} (largest gradient {scale:.3e})"
        );
    }
    eprintln!(
        "captcha detector: {} pixels' gradients within {worst:.1e} of the largest from central differences",
        picked.len()
    );
}
