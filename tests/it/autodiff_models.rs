//! Whole-model gradient checks: real architectures (VGG, ResNet, MobileNet, a transformer encoder)
//! built by explaind's zoo with seeded weights, and the bundled example models. Also: per-row
//! targets in one batch, intermediate layers with their gradients, guided backpropagation and
//! DeconvNet against their closed forms, dynamic batch sizes, and the up-front list of unsupported
//! operators.

use crate::common;

use common::gradcheck::{backward, backward_to, check_gradient, run_output, runner, Check};
use common::{root, Rng};
use explaind::onnx::autodiff::{
    build_backward, prepare_forward, unsupported_ops, AutodiffError, GradientSpec, RuleTable, WEIGHTS_INPUT,
};
use explaind::onnx::builder::{Attr, GraphBuilder};
use explaind::onnx::node::{constant, tensor_f32};
use explaind::onnx::proto::ModelProto;
use explaind::onnx::zoo;
use explaind::runtime::shapes::probe_shapes;

/// Networks of ReLUs and max-pools are piecewise linear: small steps cost no truncation error and
/// cross fewer kinks.
fn model_check() -> Check {
    Check {
        h: 2e-3,
        atol: 2e-3,
        rtol: 2e-2,
        samples: 24,
        seed: 101,
        min_coverage: 0.75,
    }
}

fn image(dims: &[usize], seed: u64) -> Vec<f32> {
    Rng::new(seed).vec(dims.iter().product(), -1.0, 1.0)
}

fn bundled(name: &str) -> ModelProto {
    let bytes = std::fs::read(root().join("models").join(name).join("model.onnx")).unwrap();
    explaind::onnx::proto::decode_model(&bytes).unwrap()
}

#[test]
fn vgg_style() {
    let d = [2, 3, 16, 16];
    check_gradient(
        "vgg",
        &zoo::vgg(&[8, 16], 16, 10),
        "input",
        &d,
        &image(&d, 1),
        "logits",
        model_check(),
    );
}

#[test]
fn resnet_style() {
    let d = [2, 3, 32, 32];
    let model = zoo::resnet(&[1, 1], &[8, 16], 32, 10);
    check_gradient("resnet", &model, "input", &d, &image(&d, 2), "logits", model_check());
}

#[test]
fn mobilenet_style() {
    let d = [2, 3, 32, 32];
    let model = zoo::mobilenet(&[8, 16, 24], 32, 10);
    check_gradient("mobilenet", &model, "input", &d, &image(&d, 3), "logits", model_check());
}

#[test]
fn transformer_encoder() {
    let d = [2, 6, 16];
    let model = zoo::transformer(6, 16, 2, 3, None);
    check_gradient(
        "transformer",
        &model,
        "input",
        &d,
        &image(&d, 4),
        "logits",
        model_check(),
    );
}

#[test]
fn vision_transformer() {
    // Patch embedding (strided Conv), class token expanded to the batch (Shape, Gather, Concat,
    // Expand), then the encoder layer.
    let d = [2, 3, 16, 16];
    let model = zoo::vit(16, 8, (16, 2, 2), 3);
    check_gradient("vit", &model, "input", &d, &image(&d, 5), "logits", model_check());
}

#[test]
fn transformer_gradient_at_the_embeddings_of_token_ids() {
    // The same network fed token ids: the gradient w.r.t. the looked-up embeddings must equal the
    // gradient of the embeddings-input model at those embeddings.
    let vocab = 11;
    let with_ids = zoo::transformer(6, 16, 2, 3, Some(vocab));
    let runner = runner();
    let prepared = prepare_forward(&with_ids).unwrap();
    let ids: Vec<i64> = vec![1, 5, 7, 2, 10, 0, 3, 3, 9, 4, 8, 6];
    // Probe by feeding ids: the probe feeds zeros to other inputs, so feed embeddings by name instead.
    let shapes = probe_for_ids(&runner, &prepared, &ids);
    let spec = GradientSpec {
        input: "embeddings".into(),
        output: "logits".into(),
        layers: vec![],
        input_grad: true,
    };
    let bw = build_backward(&prepared, &spec, &shapes, &RuleTable::exact(), Some(&runner)).unwrap();
    let w: Vec<f32> = Rng::new(5).vec(2 * 3, -1.0, 1.0);
    let mut session = runner.session(&bw.model).unwrap();
    let outs = explaind::runtime::graph_runner::run_session(
        &mut session,
        &[(WEIGHTS_INPUT, vec![2, 3], w.clone())],
        &[("input_ids", vec![2, 6], ids.clone())],
    )
    .unwrap();
    let grad_ids = outs
        .iter()
        .find(|o| o.name == bw.input_grad)
        .unwrap()
        .values
        .clone()
        .unwrap();
    let embeddings = outs
        .iter()
        .find(|o| o.name == "embeddings")
        .map(|o| o.values.clone().unwrap());
    // Embeddings are not an output of the ids model; recompute them from the table.
    let table_name = &with_ids.graph.as_ref().unwrap().node[0].input[0];
    let table = tensor_f32(constant(with_ids.graph.as_ref().unwrap(), table_name).unwrap()).unwrap();
    let emb: Vec<f32> = ids
        .iter()
        .flat_map(|&i| table[i as usize * 16..(i as usize + 1) * 16].to_vec())
        .collect();
    assert!(embeddings.is_none());
    let plain = zoo::transformer(6, 16, 2, 3, None);
    let bw_plain = backward(&plain, "input", &[2, 6, 16], "logits", &[], &RuleTable::exact());
    let mut s2 = runner.session(&bw_plain.model).unwrap();
    let (_, grad_plain) = run_output(
        &mut s2,
        &[("input", vec![2, 6, 16], emb), (WEIGHTS_INPUT, vec![2, 3], w)],
        &bw_plain.input_grad,
    );
    for (a, b) in grad_ids.iter().zip(&grad_plain) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}

fn probe_for_ids(
    runner: &explaind::runtime::graph_runner::OrtRunner,
    model: &ModelProto,
    ids: &[i64],
) -> explaind::onnx::autodiff::ShapeMap {
    // Run once with every intermediate as an output, to record shapes; batch 2 only (static).
    let mut probe = model.clone();
    let graph = probe.graph.as_mut().unwrap();
    let names: Vec<String> = graph.node.iter().flat_map(|n| n.output.clone()).collect();
    for n in names {
        graph.output.push(explaind::onnx::proto::ValueInfoProto {
            name: Some(n),
            ..Default::default()
        });
    }
    let outs = runner
        .run(&probe, &[], &[("input_ids", vec![2, 6], ids.to_vec())])
        .unwrap();
    let mut shapes: explaind::onnx::autodiff::ShapeMap = outs
        .into_iter()
        .map(|o| {
            let dims = o.shape.iter().map(|&d| Some(d as i64)).collect();
            (
                o.name,
                explaind::onnx::autodiff::TensorShape {
                    dims,
                    elem_type: o.elem_type,
                },
            )
        })
        .collect();
    for init in &model.graph.as_ref().unwrap().initializer {
        shapes.insert(
            init.name.clone().unwrap(),
            explaind::onnx::autodiff::TensorShape {
                dims: init.dims.iter().map(|&d| Some(d)).collect(),
                elem_type: init.data_type.unwrap(),
            },
        );
    }
    shapes
}

#[test]
fn bundled_models() {
    let d = [2, 1, 28, 28];
    let x = image(&d, 6);
    check_gradient(
        "fashion-cnn",
        &bundled("fashion-cnn"),
        "input",
        &d,
        &x,
        "logits",
        model_check(),
    );
    let holdout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/breast_cancer_holdout.json")).unwrap())
            .unwrap();
    let rows: Vec<f32> = holdout["cases"].as_array().unwrap()[..3]
        .iter()
        .flat_map(|c| {
            c["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    // Raw measurements span 1e-3 to 1e3: a relative step per feature would be kinder, but a small
    // absolute one works because the first layer standardises the inputs.
    let check = Check {
        h: 1e-3,
        atol: 2e-3,
        rtol: 2e-2,
        samples: 90,
        seed: 7,
        min_coverage: 0.75,
    };
    check_gradient(
        "breast-cancer",
        &bundled("breast-cancer"),
        "input",
        &[3, 30],
        &rows,
        "logits",
        check,
    );
}

#[test]
fn one_batch_gives_each_row_its_own_target() {
    let runner = runner();
    let model = bundled("fashion-cnn");
    let d = [3usize, 1, 28, 28];
    let x = image(&d, 8);
    let bw = backward(&model, "input", &d, "logits", &[], &RuleTable::exact());
    let mut session = runner.session(&bw.model).unwrap();
    // Row r targets class 2r+1 (one-hot weights).
    let mut w = vec![0f32; 3 * 10];
    for r in 0..3 {
        w[r * 10 + 2 * r + 1] = 1.0;
    }
    let (_, batched) = run_output(
        &mut session,
        &[("input", d.to_vec(), x.clone()), (WEIGHTS_INPUT, vec![3, 10], w)],
        &bw.input_grad,
    );
    let per_row = 28 * 28;
    for r in 0..3 {
        let mut w1 = vec![0f32; 10];
        w1[2 * r + 1] = 1.0;
        let row = x[r * per_row..(r + 1) * per_row].to_vec();
        let (_, alone) = run_output(
            &mut session,
            &[("input", vec![1, 1, 28, 28], row), (WEIGHTS_INPUT, vec![1, 10], w1)],
            &bw.input_grad,
        );
        for (a, b) in batched[r * per_row..(r + 1) * per_row].iter().zip(&alone) {
            assert!((a - b).abs() < 1e-5, "row {r}: {a} vs {b}");
        }
    }
}

#[test]
fn a_layer_and_its_gradient_match_the_closed_form() {
    // fashion-cnn ends relu3 -> GlobalAveragePool -> Flatten -> Gemm(fc_w [64, 10]): the gradient at
    // relu3[n, c, h, w] is sum_k weights[n, k] * fc_w[c, k] / 49.
    let runner = runner();
    let model = bundled("fashion-cnn");
    let d = [2usize, 1, 28, 28];
    let x = image(&d, 9);
    let bw = backward(&model, "input", &d, "logits", &["relu3"], &RuleTable::exact());
    assert_eq!(bw.layers, vec![("relu3".to_string(), "relu3.grad".to_string())]);
    let w = Rng::new(10).vec(20, -1.0, 1.0);
    let mut session = runner.session(&bw.model).unwrap();
    let feeds = [
        ("input", d.to_vec(), x.clone()),
        (WEIGHTS_INPUT, vec![2, 10], w.clone()),
    ];
    let (shape, grad) = run_output(&mut session, &feeds, "relu3.grad");
    let (act_shape, act) = run_output(&mut session, &feeds, "relu3");
    assert_eq!(shape, vec![2, 64, 7, 7]);
    assert_eq!(act_shape, shape);
    assert!(act.iter().all(|v| *v >= 0.0), "relu3 holds post-ReLU activations");
    let fc_w = tensor_f32(constant(model.graph.as_ref().unwrap(), "fc_w").unwrap()).unwrap();
    for n in 0..2 {
        for c in 0..64 {
            let expected: f32 = (0..10).map(|k| w[n * 10 + k] * fc_w[c * 10 + k]).sum::<f32>() / 49.0;
            for p in 0..49 {
                let got = grad[((n * 64) + c) * 49 + p];
                assert!(
                    (got - expected).abs() < 1e-5,
                    "relu3.grad[{n},{c},{p}] = {got}, expected {expected}"
                );
            }
        }
    }
}

#[test]
fn a_backward_pass_asked_only_for_layers_stops_there_with_the_same_gradients() {
    // ResNet blocks add a skip connection from before the layer: the pass must not follow it back.
    // The layers: a block's output, the last feature map (the CAM default), and a ViT's tokens.
    let resnet = zoo::resnet(&[1, 1], &[8, 16], 32, 10);
    let d = [2usize, 3, 32, 32];
    let shapes = probe_shapes(&runner(), &prepare_forward(&resnet).unwrap(), "input", &d).unwrap();
    let cams = explaind::onnx::autodiff::analysis_layers(&resnet, "input", "logits", &shapes);
    assert!(cams.len() > 2, "{cams:?}");
    let (middle, last) = (cams[cams.len() / 2].name.clone(), cams[cams.len() - 1].name.clone());
    let vit = zoo::vit(16, 8, (16, 2, 2), 3);
    let vd = [2usize, 3, 16, 16];
    let vshapes = probe_shapes(&runner(), &prepare_forward(&vit).unwrap(), "input", &vd).unwrap();
    let vcams = explaind::onnx::autodiff::analysis_layers(&vit, "input", "logits", &vshapes);
    let tokens = vcams.last().expect("a token layer").name.clone();
    for (label, model, dims, classes, layers) in [
        ("resnet last", &resnet, &d, 10, vec![last.as_str()]),
        (
            "resnet middle+last",
            &resnet,
            &d,
            10,
            vec![middle.as_str(), last.as_str()],
        ),
        ("vit tokens", &vit, &vd, 3, vec![tokens.as_str()]),
    ] {
        let full = backward_to(model, "input", dims, "logits", (&layers, true), &RuleTable::exact());
        let cut = backward_to(model, "input", dims, "logits", (&layers, false), &RuleTable::exact());
        assert_eq!(full.layers, cut.layers, "{label}");
        assert!(cut.input_grad.is_empty(), "{label}");
        let outputs = |m: &ModelProto| -> Vec<String> {
            m.graph
                .as_ref()
                .unwrap()
                .output
                .iter()
                .filter_map(|o| o.name.clone())
                .collect()
        };
        assert!(
            !outputs(&cut.model).contains(&full.input_grad),
            "{label}: no input gradient"
        );
        let nodes = |m: &ModelProto| m.graph.as_ref().unwrap().node.len();
        assert!(
            nodes(&cut.model) < nodes(&full.model),
            "{label}: {} nodes, not fewer than the full pass's {}",
            nodes(&cut.model),
            nodes(&full.model)
        );
        let x = image(dims, 11);
        let w = Rng::new(12).vec(2 * classes, -1.0, 1.0);
        let feeds = [("input", dims.to_vec(), x), (WEIGHTS_INPUT, vec![2, classes], w)];
        let mut a = runner().session(&full.model).unwrap();
        let mut b = runner().session(&cut.model).unwrap();
        for (activation, grad) in &full.layers {
            for name in [activation, grad] {
                let (sa, va) = run_output(&mut a, &feeds, name);
                let (sb, vb) = run_output(&mut b, &feeds, name);
                assert_eq!(sa, sb, "{label}: {name}");
                assert!(va.iter().any(|v| *v != 0.0), "{label}: {name} is all zeros");
                for (p, q) in va.iter().zip(&vb) {
                    assert!((p - q).abs() <= 1e-6 + 1e-5 * p.abs(), "{label}: {name}: {p} vs {q}");
                }
            }
        }
    }
}

/// y = W2 relu(W1 x), x of 4 features, 6 hidden units, 3 outputs (W1 [4, 6], W2 [6, 3], seeded).
fn relu_mlp() -> (ModelProto, Vec<f32>, Vec<f32>) {
    let mut g = GraphBuilder::new("mlp", 17);
    let x = g.input("x", &[-1, 4]);
    let w1: Vec<f32> = Rng::new(11).vec(4 * 6, -1.0, 1.0);
    let w2: Vec<f32> = Rng::new(12).vec(6 * 3, -1.0, 1.0);
    let w1n = g.constant("w1", &[4, 6], &w1);
    let w2n = g.constant("w2", &[6, 3], &w2);
    let h = g.node("MatMul", &[&x, &w1n], vec![]);
    let a = g.node("Relu", &[&h], vec![]);
    g.node("MatMul", &[&a, &w2n], vec![]);
    g.rename_last_output("y");
    g.output_any("y");
    (g.build(), w1, w2)
}

/// d sum(y * w) / dx of `relu_mlp` at `x`, through the rules of `table`.
fn mlp_input_grad(model: &ModelProto, table: &RuleTable, x: &[f32], w: &[f32]) -> Vec<f32> {
    let bw = backward(model, "x", &[1, 4], "y", &[], table);
    let mut session = runner().session(&bw.model).unwrap();
    let (_, got) = run_output(
        &mut session,
        &[("x", vec![1, 4], x.to_vec()), (WEIGHTS_INPUT, vec![1, 3], w.to_vec())],
        &bw.input_grad,
    );
    got
}

#[test]
fn guided_backprop_passes_only_positive_gradients_through_positive_inputs() {
    // y = W2 relu(W1 x): guided dx = W1^T [ (W1 x > 0) * relu(W2^T w) ].
    let (model, w1, w2) = relu_mlp();
    let xv: Vec<f32> = Rng::new(13).vec(4, -1.0, 1.0);
    let wv: Vec<f32> = Rng::new(14).vec(3, -1.0, 1.0);
    let got = mlp_input_grad(&model, &RuleTable::relu_masked_by_input_and_gradient(), &xv, &wv);
    let hv: Vec<f32> = (0..6).map(|j| (0..4).map(|i| xv[i] * w1[i * 6 + j]).sum()).collect();
    let back: Vec<f32> = (0..6)
        .map(|j| {
            let upstream: f32 = (0..3).map(|k| w2[j * 3 + k] * wv[k]).sum();
            if hv[j] > 0.0 {
                upstream.max(0.0)
            } else {
                0.0
            }
        })
        .collect();
    for i in 0..4 {
        let expected: f32 = (0..6).map(|j| w1[i * 6 + j] * back[j]).sum();
        assert!(
            (got[i] - expected).abs() < 1e-5,
            "dx[{i}] = {}, expected {expected}",
            got[i]
        );
    }
}

#[test]
fn deconvnet_passes_positive_gradients_whatever_the_relu_input() {
    // y = W2 relu(W1 x): DeconvNet's dx = W1^T relu(W2^T w), the same at every x; the gradient
    // is W1^T [ (W1 x > 0) * W2^T w ] and guided backpropagation W1^T [ (W1 x > 0) * relu(W2^T w) ].
    let (model, w1, w2) = relu_mlp();
    let wv: Vec<f32> = Rng::new(14).vec(3, -1.0, 1.0);
    let upstream: Vec<f32> = (0..6).map(|j| (0..3).map(|k| w2[j * 3 + k] * wv[k]).sum()).collect();
    let through = |pass: &dyn Fn(usize) -> f32| -> Vec<f32> {
        (0..4).map(|i| (0..6).map(|j| w1[i * 6 + j] * pass(j)).sum()).collect()
    };
    let expected = through(&|j| upstream[j].max(0.0));
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-5);
    let far = |a: &[f32], b: &[f32]| a.iter().zip(b).any(|(a, b)| (a - b).abs() > 1e-2);
    // The input and its negation: each hidden unit active at one of them, inactive at the other.
    let x0: Vec<f32> = Rng::new(13).vec(4, -1.0, 1.0);
    let x1: Vec<f32> = x0.iter().map(|v| -v).collect();
    for xv in [x0, x1] {
        let hv: Vec<f32> = (0..6).map(|j| (0..4).map(|i| xv[i] * w1[i * 6 + j]).sum()).collect();
        // The case that tells the three apart: an inactive unit whose upstream gradient is positive
        // (DeconvNet passes it, the others do not), and an active one whose upstream is negative
        // (the gradient passes it, the others do not).
        assert!(
            (0..6).any(|j| hv[j] <= 0.0 && upstream[j] > 0.0) && (0..6).any(|j| hv[j] > 0.0 && upstream[j] < 0.0),
            "the seeds no longer give both cases: h {hv:?}, upstream {upstream:?}"
        );
        let deconv = mlp_input_grad(&model, &RuleTable::relu_masked_by_gradient(), &xv, &wv);
        assert!(close(&deconv, &expected), "deconvnet {deconv:?}, expected {expected:?}");
        let gradient = mlp_input_grad(&model, &RuleTable::exact(), &xv, &wv);
        let exact = through(&|j| if hv[j] > 0.0 { upstream[j] } else { 0.0 });
        assert!(close(&gradient, &exact), "gradient {gradient:?}, expected {exact:?}");
        let guided = mlp_input_grad(&model, &RuleTable::relu_masked_by_input_and_gradient(), &xv, &wv);
        assert!(far(&deconv, &gradient), "deconvnet {deconv:?} = gradient {gradient:?}");
        assert!(far(&deconv, &guided), "deconvnet {deconv:?} = guided {guided:?}");
    }
}

#[test]
fn a_backward_model_serves_any_batch_size() {
    let runner = runner();
    let model = zoo::resnet(&[1], &[8], 16, 4);
    let bw = backward(&model, "input", &[1, 3, 16, 16], "logits", &[], &RuleTable::exact());
    let mut session = runner.session(&bw.model).unwrap();
    for batch in [1usize, 5] {
        let x = image(&[batch, 3, 16, 16], 15);
        let w = vec![1f32; batch * 4];
        let (shape, _) = run_output(
            &mut session,
            &[("input", vec![batch, 3, 16, 16], x), (WEIGHTS_INPUT, vec![batch, 4], w)],
            &bw.input_grad,
        );
        assert_eq!(shape, vec![batch, 3, 16, 16]);
    }
}

#[test]
fn unsupported_operators_are_listed_once_with_their_nodes() {
    let mut g = GraphBuilder::new("odd", 17);
    let x = g.input("x", &[-1, 4]);
    let a = g.node("Sin", &[&x], vec![]);
    let b = g.node("Sin", &[&a], vec![]);
    let c = g.node("Cos", &[&b], vec![]);
    // Off the differentiable path: integer shape arithmetic and an argmax.
    let shape = g.node("Shape", &[&x], vec![]);
    let _arg = g.node("ArgMax", &[&c], vec![]);
    let _ = shape;
    let two = g.constant("two", &[], &[2.0]);
    g.node("Mul", &[&c, &two], vec![]);
    g.rename_last_output("y");
    g.output_any("y");
    let model = g.build();
    let runner = runner();
    let prepared = prepare_forward(&model).unwrap();
    let shapes = probe_shapes(&runner, &prepared, "x", &[1, 4]).unwrap();
    let spec = GradientSpec {
        input: "x".into(),
        output: "y".into(),
        layers: vec![],
        input_grad: true,
    };
    let listed = unsupported_ops(&prepared, &spec, &shapes, &RuleTable::exact()).unwrap();
    let ops: Vec<(&str, usize)> = listed.iter().map(|u| (u.op.as_str(), u.nodes.len())).collect();
    assert_eq!(ops, vec![("Sin", 2), ("Cos", 1)]);
    assert_eq!(listed[0].nodes, vec!["Sin_2", "Sin_4"]);
    let err = build_backward(&prepared, &spec, &shapes, &RuleTable::exact(), Some(&runner)).unwrap_err();
    assert!(matches!(err, AutodiffError::Unsupported(_)));
    let text = err.to_string();
    assert!(
        text.contains("ai.onnx::Sin (opset 17) at Sin_2, Sin_4") && text.contains("ai.onnx::Cos"),
        "{text}"
    );
    let _ = Attr::Int(0);
}

#[test]
fn convnext_style() {
    // Depthwise 7x7 Convs, LayerNormalization over channels-last maps between Transposes, a GELU
    // MLP, layer scale, and the head's LayerNorm2d on the pooled 1x1 map.
    let d = [2, 3, 32, 32];
    let model = zoo::convnext(&[8, 16], 32, 5);
    check_gradient("convnext", &model, "input", &d, &image(&d, 6), "logits", model_check());
}
