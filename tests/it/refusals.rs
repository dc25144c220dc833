//! The model report and the request path agree on differentiability: a model whose operators all
//! have rules but whose attributes some rules refuse is reported non-differentiable at load, with
//! every refused node listed beside the operators without a rule (found by running the same
//! rules a request's build runs), and a gradient request is refused with the same reasons. One
//! model per form each rule refuses; each family of rules (exact, guided, DeconvNet, DeepLIFT, every
//! LRP composite) reports its own refusals; models that take or keep one row run one row per pass.

use crate::common;

use common::*;
use explaind::onnx::builder::{Attr, GraphBuilder};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// input [1, 1, 4, 4] -> Resize (the axes attribute) -> Resize (tf_crop_and_resize) -> Flatten ->
/// Sin -> Gemm: Resize has a rule, these two forms of it are refused; Sin has none.
fn refused_forms() -> explaind::onnx::proto::ModelProto {
    let mut g = GraphBuilder::new("refused", 18);
    let x = g.input("input", &[-1, 1, 4, 4]);
    let scales = g.constant("scales", &[2], &[2.0, 2.0]);
    g.node(
        "Resize",
        &[&x, "", &scales],
        vec![("axes", Attr::Ints(vec![2, 3])), ("mode", Attr::Str("linear".into()))],
    );
    let up = g.rename_last_output("upsampled");
    let roi = g.constant("roi", &[8], &[0.0, 0.0, 0.1, 0.1, 1.0, 1.0, 0.9, 0.9]);
    let half = g.constant("half", &[4], &[1.0, 1.0, 0.5, 0.5]);
    g.node(
        "Resize",
        &[&up, &roi, &half],
        vec![
            ("coordinate_transformation_mode", Attr::Str("tf_crop_and_resize".into())),
            ("mode", Attr::Str("nearest".into())),
        ],
    );
    g.rename_last_output("cropped");
    let flat = g.node("Flatten", &["cropped"], vec![("axis", Attr::Int(1))]);
    let flat = g.node("Sin", &[&flat], vec![]);
    let w: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin()).collect();
    let w = g.constant("w", &[16, 2], &w);
    g.node("Gemm", &[&flat, &w], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

/// A 4 x 4 grayscale PNG with some structure, base64.
fn gray_png() -> String {
    let mut out = std::io::Cursor::new(Vec::new());
    image::GrayImage::from_fn(4, 4, |x, y| image::Luma([(x * 50 + y * 13) as u8]))
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, out.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_lists_every_refused_node_and_requests_meet_the_same_refusal() {
    let dir = temp_dir("refusals-models");
    write_model(
        &dir,
        "refused",
        &refused_forms(),
        "task = \"image-classification\"\nlabels = [\"a\", \"b\"]\n[image]\ncolor = \"grayscale\"\n",
    );
    let s = start(test_config(&dir)).await;
    let report = get_json(&s, "/v1/models/refused").await;
    let gradients = &report["gradients"];
    assert_eq!(gradients["differentiable"], false, "{report}");
    let blocking: Vec<String> = gradients["blocking_operators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_string())
        .collect();
    assert_eq!(blocking.len(), 3, "{blocking:?}");
    assert!(
        blocking.iter().any(|b| b.contains("no gradient rule for ai.onnx::Sin")),
        "{blocking:?}"
    );
    assert!(
        blocking
            .iter()
            .any(|b| b.contains("Resize_2") && b.contains("axes attribute")),
        "{blocking:?}"
    );
    assert!(
        blocking
            .iter()
            .any(|b| b.contains("Resize_4") && b.contains("tf_crop_and_resize")),
        "{blocking:?}"
    );
    // The request path says the same.
    let img = gray_png();
    let body: Value = problem(
        post_json(&s, "/v1/models/refused/explain/saliency", &json!({"image": img})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "model-not-differentiable",
    )
    .await;
    let detail = body["detail"].as_str().unwrap();
    assert!(blocking.iter().all(|b| detail.contains(b.as_str())), "{detail}");
    // Forward methods still serve it.
    ok_json(post_json(&s, "/v1/models/refused/explain/occlusion", &json!({"image": img})).await).await;
    s.stop().await.unwrap();
}

/// A model: input [N, 1, 4, 4] -> `body` (returns its output and how many values per row it
/// holds) -> Flatten -> MatMul -> logits [N, 2].
fn form(opset: i64, body: impl FnOnce(&mut GraphBuilder, &str) -> (String, i64)) -> explaind::onnx::proto::ModelProto {
    form_batch(opset, -1, body)
}

/// As [`form`], with the input's batch fixed at `batch` (-1: free).
fn form_batch(
    opset: i64,
    batch: i64,
    body: impl FnOnce(&mut GraphBuilder, &str) -> (String, i64),
) -> explaind::onnx::proto::ModelProto {
    let mut g = GraphBuilder::new("form", opset);
    let x = g.input("input", &[batch, 1, 4, 4]);
    let (t, features) = body(&mut g, &x);
    let flat = g.node("Flatten", &[&t], vec![("axis", Attr::Int(1))]);
    let w: Vec<f32> = (0..features * 2).map(|i| (i as f32 * 0.37).sin()).collect();
    let w = g.constant("head_w", &[features, 2], &w);
    g.node("MatMul", &[&flat, &w], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

/// The mean of the input as a tensor of `dims` (a value that depends on the input).
fn input_mean(g: &mut GraphBuilder, x: &str, dims: &[i64]) -> String {
    let m = g.node("ReduceMean", &[x], vec![("keepdims", Attr::Int(0))]);
    let shape = g.constant_i64(&format!("mean_shape_{}", dims.len()), &[dims.len() as i64], dims);
    let zeros = g.node("ConstantOfShape", &[&shape], vec![]);
    let zeros = g.node("Cast", &[&zeros], vec![("to", Attr::Int(1))]);
    g.node("Add", &[&zeros, &m], vec![])
}

/// Every form of a node the standard rules refuse (beyond operators without a rule), each in a
/// model of its own: the report lists it at load with the rule's reason, and a saliency request
/// is refused with the same reason.
fn refused_forms_by_rule() -> Vec<(&'static str, explaind::onnx::proto::ModelProto, &'static str)> {
    let scales_const = |g: &mut GraphBuilder| g.constant("scales", &[4], &[1.0, 1.0, 2.0, 2.0]);
    vec![
        (
            "resize-scales-from-input",
            form(18, |g, x| {
                let s = input_mean(g, x, &[4]);
                let zero = g.node("Mul", &[&s, "zero"], vec![]);
                let s = g.node("Add", &[&zero, "base"], vec![]);
                g.constant("zero", &[], &[0.0]);
                g.constant("base", &[4], &[1.0, 1.0, 2.0, 2.0]);
                (
                    g.node("Resize", &[x, "", &s], vec![("mode", Attr::Str("nearest".into()))]),
                    64,
                )
            }),
            "scales or sizes that depend on the input",
        ),
        (
            "resize-keep-aspect",
            form(18, |g, x| {
                let sizes = g.constant_i64("sizes", &[2], &[8, 8]);
                let attrs = vec![
                    ("axes", Attr::Ints(vec![2, 3])),
                    ("keep_aspect_ratio_policy", Attr::Str("not_larger".into())),
                ];
                (g.node("Resize", &[x, "", "", &sizes], attrs), 64)
            }),
            "keep_aspect_ratio_policy",
        ),
        (
            "resize-sizes-follow-batch",
            form(18, |g, x| {
                let shape = g.node("Shape", &[x], vec![]);
                let batch = g.node("Slice", &[&shape, "s0", "s1"], vec![]);
                g.constant_i64("s0", &[1], &[0]);
                g.constant_i64("s1", &[1], &[2]);
                g.constant_i64("hw", &[2], &[8, 8]);
                let sizes = g.node("Concat", &[&batch, "hw"], vec![("axis", Attr::Int(0))]);
                let _ = scales_const;
                (g.node("Resize", &[x, "", "", &sizes], vec![]), 64)
            }),
            "needs constant scales or sizes",
        ),
        (
            "maxpool-storage-order",
            form(17, |g, x| {
                let attrs = vec![
                    ("kernel_shape", Attr::Ints(vec![3, 3])),
                    ("strides", Attr::Ints(vec![1, 1])),
                    ("storage_order", Attr::Int(1)),
                ];
                (g.node("MaxPool", &[x], attrs), 4)
            }),
            "storage_order=1",
        ),
        (
            "pow-exponent-from-input",
            form(17, |g, x| {
                let s = g.node("Sigmoid", &[x], vec![]);
                (g.node("Pow", &[&s, &s], vec![]), 16)
            }),
            "Pow with an exponent that depends on the input",
        ),
        (
            "conv-weight-from-input",
            form(17, |g, x| {
                let w = input_mean(g, x, &[1, 1, 1, 1]);
                (g.node("Conv", &[x, &w], vec![]), 16)
            }),
            "a Conv weight or bias depends on the input",
        ),
        (
            "prelu-slope-from-input",
            form(17, |g, x| {
                let slope = input_mean(g, x, &[1, 1, 1]);
                (g.node("PRelu", &[x, &slope], vec![]), 16)
            }),
            "the PRelu slope depends on the input",
        ),
        (
            "clip-bound-from-input",
            form(17, |g, x| {
                let low = g.node("ReduceMean", &[x], vec![("keepdims", Attr::Int(0))]);
                (g.node("Clip", &[x, &low], vec![]), 16)
            }),
            "a Clip bound depends on the input",
        ),
        (
            "instance-norm-scale-from-input",
            form(17, |g, x| {
                let scale = input_mean(g, x, &[1]);
                g.constant("in_bias", &[1], &[0.0]);
                (g.node("InstanceNormalization", &[x, &scale, "in_bias"], vec![]), 16)
            }),
            "an InstanceNormalization parameter depends on the input",
        ),
        (
            "slice-of-the-batch",
            form(17, |g, x| {
                g.constant_i64("b0", &[1], &[0]);
                g.constant_i64("b1", &[1], &[1]);
                g.constant_i64("axis0", &[1], &[0]);
                (g.node("Slice", &[x, "b0", "b1", "axis0"], vec![]), 16)
            }),
            "slicing axis 0 needs its size to be static",
        ),
        (
            "pad-value-from-input",
            form(17, |g, x| {
                g.constant_i64("pads", &[8], &[0, 0, 1, 1, 0, 0, 1, 1]);
                let value = g.node("ReduceMean", &[x], vec![("keepdims", Attr::Int(0))]);
                (g.node("Pad", &[x, "pads", &value], vec![]), 36)
            }),
            "a Pad constant value that depends on the input",
        ),
        (
            "pad-edge-of-the-batch",
            form(17, |g, x| {
                g.constant_i64("pads", &[8], &[1, 0, 0, 0, 0, 0, 0, 0]);
                (
                    g.node("Pad", &[x, "pads"], vec![("mode", Attr::Str("edge".into()))]),
                    16,
                )
            }),
            "axis 0 is dynamic",
        ),
        (
            "pad-edge-of-a-vector",
            // The input's batch fixed at 1, so the vector's size is static.
            form_batch(17, 1, |g, x| {
                g.constant_i64("flat", &[1], &[-1]);
                let v = g.node("Reshape", &[x, "flat"], vec![]);
                g.constant_i64("pads", &[2], &[1, 1]);
                let p = g.node("Pad", &[&v, "pads"], vec![("mode", Attr::Str("reflect".into()))]);
                // Cropped back to 16 values per row.
                g.constant_i64("c0", &[1], &[1]);
                g.constant_i64("c1", &[1], &[-1]);
                let c = g.node("Slice", &[&p, "c0", "c1"], vec![]);
                g.constant_i64("rows", &[2], &[-1, 16]);
                (g.node("Reshape", &[&c, "rows"], vec![]), 16)
            }),
            "of a 1-D tensor is not supported",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_form_of_every_rule_is_in_the_report() {
    let dir = temp_dir("refused-forms");
    let forms = refused_forms_by_rule();
    let manifest = "task = \"image-classification\"\nlabels = [\"a\", \"b\"]\n[image]\ncolor = \"grayscale\"\n";
    for (name, model, _) in &forms {
        write_model(&dir, name, model, manifest);
    }
    // An opset too old to build on refuses the whole model.
    write_model(
        &dir,
        "opset-10",
        &form(10, |g, x| (g.node("Relu", &[x], vec![]), 16)),
        manifest,
    );
    let s = start(test_config(&dir)).await;
    let img = gray_png();
    let cases = forms
        .iter()
        .map(|(name, _, reason)| (*name, *reason))
        .chain([("opset-10", "opset")]);
    for (name, reason) in cases {
        let report = get_json(&s, &format!("/v1/models/{name}")).await;
        let g = &report["gradients"];
        assert_eq!(g["differentiable"], false, "{name}: {g}");
        let blocking: Vec<&str> = g["blocking_operators"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap())
            .collect();
        assert!(blocking.iter().any(|b| b.contains(reason)), "{name}: {blocking:?}");
        let body: Value = problem(
            post_json(
                &s,
                &format!("/v1/models/{name}/explain/saliency"),
                &json!({"image": img}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "model-not-differentiable",
        )
        .await;
        let detail = body["detail"].as_str().unwrap();
        assert!(blocking.iter().all(|b| detail.contains(b)), "{name}: {detail}");
        // Forward methods still serve it: a graph that keeps only the batch's first row, or whose
        // input's batch is fixed at 1, runs one row per pass; one that pads the batch axis answers rows that belong to no input, and
        // is refused as unsupported, not indexed past.
        let one_row = ["slice-of-the-batch", "pad-edge-of-a-vector"].contains(&name);
        assert_eq!(g["one_row_per_pass"], one_row, "{name}");
        let occlusion = post_json(
            &s,
            &format!("/v1/models/{name}/explain/occlusion"),
            &json!({"image": img}),
        )
        .await;
        if name == "pad-edge-of-the-batch" {
            let body = problem(occlusion, StatusCode::UNPROCESSABLE_ENTITY, "unsupported-model").await;
            assert!(
                body["detail"].as_str().unwrap().contains("changes the batch size"),
                "{body}"
            );
        } else {
            ok_json(occlusion).await;
        }
    }
    s.stop().await.unwrap();
}

/// Each family of rules has its own refusals: a gating product (x * sigmoid(x), as squeeze-and-
/// excitation blocks and hard-swish write it) has exact gradients but no LRP rule. The report
/// lists it under every LRP composite and under no other family, the model's method list leaves
/// LRP out, and an LRP request meets the same reasons; saliency and DeepLIFT serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_family_reports_its_own_refusals() {
    let dir = temp_dir("family-refusals");
    let gated = form(17, |g, x| {
        let gate = g.node("Sigmoid", &[x], vec![]);
        (g.node("Mul", &[x, &gate], vec![]), 16)
    });
    let manifest = "task = \"image-classification\"\nlabels = [\"a\", \"b\"]\n[image]\ncolor = \"grayscale\"\n";
    write_model(&dir, "gated", &gated, manifest);
    let s = start(test_config(&dir)).await;
    let report = get_json(&s, "/v1/models/gated").await;
    let by_rules = report["gradients"]["refusals_by_rules"].as_object().unwrap().clone();
    assert_eq!(report["gradients"]["differentiable"], true, "{report}");
    for (family, refused) in &by_rules {
        let refused = refused.as_array().unwrap();
        if family.starts_with("lrp/") {
            assert!(
                refused
                    .iter()
                    .any(|r| r.as_str().unwrap().contains("product of two tensors")),
                "{family}: {refused:?}"
            );
        } else {
            assert!(refused.is_empty(), "{family}: {refused:?}");
        }
    }
    assert_eq!(
        by_rules.len(),
        explaind::onnx::autodiff::RuleSet::families().len(),
        "every family reports: {by_rules:?}"
    );
    let methods: Vec<&str> = report["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        methods.contains(&"saliency") && methods.contains(&"deeplift"),
        "{methods:?}"
    );
    assert!(!methods.contains(&"lrp"), "{methods:?}");
    let img = gray_png();
    for composite in ["epsilon_plus_flat", "epsilon"] {
        let body: Value = problem(
            post_json(
                &s,
                "/v1/models/gated/explain/lrp",
                &json!({"image": img, "params": {"composite": composite}}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "model-not-differentiable",
        )
        .await;
        let detail = body["detail"].as_str().unwrap();
        let listed = by_rules[&format!("lrp/{composite}")].as_array().unwrap();
        assert!(
            listed.iter().all(|r| detail.contains(r.as_str().unwrap())),
            "{composite}: {detail}"
        );
    }
    for method in ["saliency", "deeplift"] {
        ok_json(
            post_json(
                &s,
                &format!("/v1/models/gated/explain/{method}"),
                &json!({"image": img}),
            )
            .await,
        )
        .await;
    }
    s.stop().await.unwrap();
}
