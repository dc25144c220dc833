//! A model's weights held once by explaind's own code: the graph kept decoded for building
//! backward graphs (and every graph cloned from it while one is built) holds slices of the
//! model's bytes rather than a second copy of its weights.

use crate::common;

use common::*;

/// The initializers of `model`'s prepared graph (the one backward graphs are built from) with at
/// least 1 KiB of data, and how many of their bytes lie inside the model's own bytes.
pub(crate) fn shared_bytes(s: &explaind::Service, name: &str) -> (usize, usize) {
    let model = s.state.registry.get(name).unwrap().clone();
    let prepared = s.state.gradients.prepared(&model).unwrap();
    let range = model.bytes.as_ptr_range();
    let (mut total, mut inside) = (0, 0);
    for t in &prepared.0.graph.as_ref().unwrap().initializer {
        let Some(raw) = t.raw_data.as_ref().filter(|r| r.len() >= 1024) else {
            continue;
        };
        total += raw.len();
        if range.contains(&raw.as_ptr()) && raw.as_ptr_range().end <= range.end {
            inside += raw.len();
        }
    }
    (total, inside)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_kept_for_backward_models_holds_no_second_copy_of_the_weights() {
    let s = start_bundled().await;
    let (total, inside) = shared_bytes(&s, "fashion-cnn");
    assert!(total > 50_000, "the CNN's weights: {total} bytes");
    assert_eq!(
        inside, total,
        "every weight of the kept graph is a slice of the model's bytes"
    );
    // The check tells the two apart: a copying decode (what the kept graph was before) holds none
    // of its weights inside the model's bytes.
    let model = s.state.registry.get("fashion-cnn").unwrap().clone();
    let copied = explaind::onnx::proto::decode_model(&model.bytes).unwrap();
    let range = model.bytes.as_ptr_range();
    let graph = copied.graph.unwrap();
    let raws = graph.initializer.iter().filter_map(|t| t.raw_data.as_ref());
    assert!(raws.filter(|r| r.len() >= 1024).all(|r| !range.contains(&r.as_ptr())));
    // Backward graphs built from it still answer.
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, fashion_png());
    let resp = post_json(
        &s,
        "/v1/models/fashion-cnn/explain/saliency",
        &serde_json::json!({"image": b64, "target": 3}),
    )
    .await;
    ok_json(resp).await;
}
