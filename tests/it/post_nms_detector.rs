//! A post-NMS (`boxes-scores-classes`) detector: the zoo's `post_nms_detector` ranks its four
//! 16-pixel cells by score, so which slot holds a box depends on every cell, and another input's
//! ranking may give a detection's slot to another box. The image lights two cells: the lower-left
//! brightly (detection 0) and the upper-right dimly (detection 1, the one explained). A perturbed
//! input's score for detection 1 must be read at its match (the same label, the box that overlaps
//! it most), not at slot 1: hiding the bright cell moves detection 1 into slot 0 without changing
//! its score, so occlusion gives that cell nothing. The same holds for a `{"box", "label"}` target,
//! for a prediction's attached explanation (which reads the prediction's own boxes and classes)
//! and for its replay. A real server on loopback, its audit log in SQLite.

use crate::common;

use base64::Engine;
use common::*;
use explaind::config::AuditMode;
use explaind::onnx::zoo::{post_nms_detector, DETECTOR_CELL, DETECTOR_SIDE};
use serde_json::{json, Value};

const SIDE: usize = DETECTOR_SIDE as usize;
const CELL: usize = DETECTOR_CELL as usize;

const MANIFEST: &str = "task = \"object-detection\"\nlabels = [\"bright\", \"dark\"]\n\
    [detection]\nlayout = \"boxes-scores-classes\"\nboxes = \"boxes\"\nscores = \"scores\"\n\
    classes = \"classes\"\nscore_threshold = 0.25\n";

/// The brightly lit cell (detection 0): rows 16..32, columns 0..16.
fn in_bright(x: usize, y: usize) -> bool {
    x < CELL && y >= CELL
}

/// The dimly lit cell (detection 1, explained): rows 0..16, columns 16..32.
fn in_dim(x: usize, y: usize) -> bool {
    x >= CELL && y < CELL
}

fn two_cells_png() -> String {
    let mut rng = Rng::new(3);
    let img = image::RgbImage::from_fn(SIDE as u32, SIDE as u32, |x, y| {
        let v = rng.uniform(120.0, 255.0);
        let (x, y) = (x as usize, y as usize);
        let scale = if in_bright(x, y) {
            1.0
        } else if in_dim(x, y) {
            0.75
        } else {
            0.0
        };
        let v = v * scale;
        image::Rgb([v as u8, (v / 2.0 + 60.0 * scale) as u8, (v * 0.8) as u8])
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(out)
}

async fn start_audited() -> explaind::Service {
    let dir = temp_dir("post-nms-models");
    write_model(&dir, "post-nms", &post_nms_detector(2), MANIFEST);
    let mut c = test_config(&dir);
    c.data_dir = temp_dir("post-nms-data");
    c.audit = AuditMode::All;
    c.audit_store_inputs = true;
    c.audit_store_maps = true;
    start(c).await
}

/// The occlusion map (one 16-pixel window per cell) of detection 1: all of it in the dim cell.
fn assert_only_the_dim_cell(what: &str, v: &Value) {
    assert_eq!(v["detection"]["box"], json!([16.0, 0.0, 32.0, 16.0]), "{what}: {v}");
    let map = attribution_values(v);
    assert_eq!(map.len(), SIDE * SIDE, "{what}");
    let at = |x: usize, y: usize| map[y * SIDE + x];
    let dim = at(20, 8);
    assert!(dim > 0.05, "{what}: hiding the explained cell drops its score by {dim}");
    for y in 0..SIDE {
        for x in 0..SIDE {
            if !in_dim(x, y) {
                assert!(
                    at(x, y).abs() < 1e-6,
                    "{what}: hiding the cell of ({x}, {y}) changes the explained detection's score by {} \
                     (the dim cell's drop is {dim}): read at its slot rather than its match",
                    at(x, y)
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_nms_detection_is_read_at_its_match_on_every_input() {
    let s = start_audited().await;
    let image = two_cells_png();
    let predicted = ok_json(post_json(&s, "/v1/models/post-nms/predict", &json!({"image": image})).await).await;
    let found = predicted["detections"].as_array().unwrap();
    assert_eq!(found.len(), 2, "{predicted}");
    assert_eq!(found[0]["box"], json!([0.0, 16.0, 16.0, 32.0]), "{predicted}");
    assert_eq!(found[1]["box"], json!([16.0, 0.0, 32.0, 16.0]), "{predicted}");

    let occlusion = json!({"window": 16, "stride": 16});
    let by_index = ok_json(
        post_json(
            &s,
            "/v1/models/post-nms/explain/occlusion",
            &json!({"image": image, "target": {"detection": 1}, "params": occlusion}),
        )
        .await,
    )
    .await;
    assert_only_the_dim_cell("{\"detection\": 1}", &by_index);
    let by_box = ok_json(
        post_json(
            &s,
            "/v1/models/post-nms/explain/occlusion",
            &json!({"image": image, "target": {"box": [17, 1, 31, 15], "label": "bright"}, "params": occlusion}),
        )
        .await,
    )
    .await;
    assert_only_the_dim_cell("a box target", &by_box);
    assert_eq!(by_box["attributions"], by_index["attributions"]);

    // The gradient of detection 1's score lies in its cell.
    let saliency = ok_json(
        post_json(
            &s,
            "/v1/models/post-nms/explain/saliency",
            &json!({"image": image, "target": {"detection": 1}}),
        )
        .await,
    )
    .await;
    let map = attribution_values(&saliency);
    let hottest = (0..SIDE * SIDE).max_by(|a, b| map[*a].total_cmp(&map[*b])).unwrap();
    assert!(
        in_dim(hottest % SIDE, hottest / SIDE),
        "saliency's hottest pixel {hottest}"
    );
    assert!(
        (0..SIDE * SIDE)
            .filter(|i| !in_dim(i % SIDE, i / SIDE))
            .all(|i| map[i] == 0.0),
        "saliency outside the dim cell"
    );

    // Attached to a prediction: the prediction's own boxes and classes name the detection, and the
    // explanation is the explain route's; its replay gives the recorded bytes.
    let predicted = ok_json(
        post_json(
            &s,
            "/v1/models/post-nms/predict",
            &json!({"image": image, "explain": {"method": "occlusion", "target": {"detection": 1}, "params": occlusion}}),
        )
        .await,
    )
    .await;
    let attached = &predicted["explanation"];
    assert_only_the_dim_cell("attached to a prediction", attached);
    assert_eq!(attached["attributions"], by_index["attributions"], "{predicted}");
    let id = predicted["audit_record"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{predicted}"));
    let replay = ok_json(post_json(&s, &format!("/v1/audit/records/{id}/replay"), &json!({})).await).await;
    assert_eq!(replay["equal"], true, "{replay}");
    s.stop().await.unwrap();
}
