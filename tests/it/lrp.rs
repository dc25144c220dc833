//! LRP: every composite's rules against their dense matrix forms (as zennit's own tests check
//! them), computed here on small Conv and Gemm networks; conservation on the bundled CNN with its
//! biases removed; batch normalisation folded; a model that reads one region; bad parameters; and
//! refusal of a model whose operators have no relevance rule.

use crate::common;

use base64::Engine;
use common::gradcheck::{backward, run_output, runner};
use common::*;
use explaind::onnx::autodiff::rules::{Composite, InputBounds, RelevanceRules};
use explaind::onnx::autodiff::{RuleSet, RuleTable, WEIGHTS_INPUT};
use explaind::onnx::builder::{Attr, GraphBuilder};
use explaind::onnx::proto::ModelProto;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A dense linear map: `m` is out x in, `b` one bias per output.
struct Dense {
    m: Vec<Vec<f64>>,
    b: Vec<f64>,
}

impl Dense {
    fn apply(m: &[Vec<f64>], x: &[f64]) -> Vec<f64> {
        m.iter()
            .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }

    fn transposed(m: &[Vec<f64>], s: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; m[0].len()];
        for (row, s) in m.iter().zip(s) {
            for (o, a) in out.iter_mut().zip(row) {
                *o += a * s;
            }
        }
        out
    }

    fn map(m: &[Vec<f64>], f: impl Fn(f64) -> f64) -> Vec<Vec<f64>> {
        m.iter().map(|r| r.iter().map(|v| f(*v)).collect()).collect()
    }
}

fn stab(z: f64, eps: f64) -> f64 {
    if z >= 0.0 {
        z + eps
    } else {
        z - eps
    }
}

fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a + b).collect()
}

fn mul(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a * b).collect()
}

fn ratio(r: &[f64], z: &[f64], eps: f64) -> Vec<f64> {
    r.iter().zip(z).map(|(r, z)| r / stab(*z, eps)).collect()
}

/// A rule in its dense matrix form.
#[derive(Clone, Copy)]
enum Rule {
    Epsilon(f64),
    AlphaBeta(f64, f64),
    Gamma(f64),
    ZBox(f64, f64),
    Flat,
}

const S: f64 = 1e-6;

fn dense_rule(rule: Rule, layer: &Dense, flat: &[Vec<f64>], x: &[f64], r: &[f64]) -> Vec<f64> {
    let (m, b) = (&layer.m, &layer.b);
    let pos = |v: f64| v.max(0.0);
    let neg = |v: f64| v.min(0.0);
    let (mp, mn) = (Dense::map(m, pos), Dense::map(m, neg));
    let (bp, bn): (Vec<f64>, Vec<f64>) = (b.iter().map(|v| pos(*v)).collect(), b.iter().map(|v| neg(*v)).collect());
    let (xp, xn): (Vec<f64>, Vec<f64>) = (x.iter().map(|v| pos(*v)).collect(), x.iter().map(|v| neg(*v)).collect());
    match rule {
        Rule::Epsilon(e) => {
            let z = add(&Dense::apply(m, x), b);
            mul(x, &Dense::transposed(m, &ratio(r, &z, e)))
        }
        Rule::AlphaBeta(alpha, beta) => {
            let z1 = add(&add(&Dense::apply(&mp, &xp), &bp), &Dense::apply(&mn, &xn));
            let z2 = add(&add(&Dense::apply(&mn, &xp), &bn), &Dense::apply(&mp, &xn));
            let (s1, s2) = (ratio(r, &z1, S), ratio(r, &z2, S));
            let up = add(
                &mul(&xp, &Dense::transposed(&mp, &s1)),
                &mul(&xn, &Dense::transposed(&mn, &s1)),
            );
            let down = add(
                &mul(&xp, &Dense::transposed(&mn, &s2)),
                &mul(&xn, &Dense::transposed(&mp, &s2)),
            );
            up.iter().zip(&down).map(|(u, d)| alpha * u - beta * d).collect()
        }
        Rule::Gamma(g) => {
            let gp = Dense::map(m, |v| v + g * v.max(0.0));
            let gn = Dense::map(m, |v| v + g * v.min(0.0));
            let bgp: Vec<f64> = b.iter().map(|v| v + g * v.max(0.0)).collect();
            let bgn: Vec<f64> = b.iter().map(|v| v + g * v.min(0.0)).collect();
            let y = add(&Dense::apply(m, x), b);
            let up = add(&add(&Dense::apply(&gp, &xp), &bgp), &Dense::apply(&gn, &xn));
            let down = add(&add(&Dense::apply(&gn, &xp), &bgn), &Dense::apply(&gp, &xn));
            let r_up: Vec<f64> = r.iter().zip(&y).map(|(r, y)| if *y > 0.0 { *r } else { 0.0 }).collect();
            let r_down: Vec<f64> = r.iter().zip(&y).map(|(r, y)| if *y < 0.0 { *r } else { 0.0 }).collect();
            let (s1, s2) = (ratio(&r_up, &up, S), ratio(&r_down, &down, S));
            let a = add(
                &mul(&xp, &Dense::transposed(&gp, &s1)),
                &mul(&xn, &Dense::transposed(&gn, &s1)),
            );
            let c = add(
                &mul(&xp, &Dense::transposed(&gn, &s2)),
                &mul(&xn, &Dense::transposed(&gp, &s2)),
            );
            add(&a, &c)
        }
        Rule::ZBox(low, high) => {
            let l = vec![low; x.len()];
            let h = vec![high; x.len()];
            let y = add(&Dense::apply(m, x), b);
            let zl = add(&Dense::apply(&mp, &l), &bp);
            let zh = add(&Dense::apply(&mn, &h), &bn);
            let z: Vec<f64> = (0..y.len()).map(|j| y[j] - zl[j] - zh[j]).collect();
            let s = ratio(r, &z, S);
            let a = mul(x, &Dense::transposed(m, &s));
            let c = mul(&l, &Dense::transposed(&mp, &s));
            let d = mul(&h, &Dense::transposed(&mn, &s));
            (0..x.len()).map(|i| a[i] - c[i] - d[i]).collect()
        }
        Rule::Flat => {
            let z = Dense::apply(flat, &vec![1.0; x.len()]);
            Dense::transposed(flat, &ratio(r, &z, S))
        }
    }
}

/// A convolution's geometry: `co` x `ci` kernels of `k` x `k` over a square `size` input.
#[derive(Clone, Copy)]
struct Geometry {
    co: usize,
    ci: usize,
    k: usize,
    size: usize,
    stride: usize,
    pad: usize,
}

/// A 2-D convolution (NCHW, one image) as a dense matrix: weight `[co, ci, k, k]`.
fn conv_dense(w: &[f32], bias: &[f32], geo: Geometry) -> Dense {
    let Geometry {
        co,
        ci,
        k,
        size,
        stride,
        pad,
    } = geo;
    let out = (size + 2 * pad - k) / stride + 1;
    let mut m = vec![vec![0.0; ci * size * size]; co * out * out];
    let mut b = vec![0.0; co * out * out];
    for o in 0..co {
        for oy in 0..out {
            for ox in 0..out {
                let row = (o * out + oy) * out + ox;
                b[row] = bias[o] as f64;
                for c in 0..ci {
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (
                                (oy * stride + ky) as isize - pad as isize,
                                (ox * stride + kx) as isize - pad as isize,
                            );
                            if iy < 0 || ix < 0 || iy >= size as isize || ix >= size as isize {
                                continue;
                            }
                            let col = (c * size + iy as usize) * size + ix as usize;
                            m[row][col] += w[((o * ci + c) * k + ky) * k + kx] as f64;
                        }
                    }
                }
            }
        }
    }
    Dense { m, b }
}

/// input [1, 2, 5, 5] -> Conv(2->3, 3x3, pad 1) -> activation -> Conv(3->2, 3x3, stride 2, pad 1)
/// -> Flatten. With Relu the second layer's input cannot be negative (the rules' shortcut); with
/// Tanh it can (their general form).
struct ConvNet {
    model: ModelProto,
    layers: [(Dense, Vec<Vec<f64>>); 2],
    activation: fn(f64) -> f64,
}

fn conv_net(seed: u64, activation: &str) -> ConvNet {
    let mut rng = Rng::new(seed);
    let w1 = rng.vec(3 * 2 * 9, -1.0, 1.0);
    let b1 = rng.vec(3, -0.3, 0.3);
    let w2 = rng.vec(2 * 3 * 9, -1.0, 1.0);
    let b2 = rng.vec(2, -0.3, 0.3);
    let mut g = GraphBuilder::new("conv-net", 17);
    let x = g.input("input", &[-1, 2, 5, 5]);
    let (cw1, cb1) = (g.constant("w1", &[3, 2, 3, 3], &w1), g.constant("b1", &[3], &b1));
    let (cw2, cb2) = (g.constant("w2", &[2, 3, 3, 3], &w2), g.constant("b2", &[2], &b2));
    let c1 = g.node("Conv", &[&x, &cw1, &cb1], vec![("pads", Attr::Ints(vec![1; 4]))]);
    let h = g.node(activation, &[&c1], vec![]);
    let c2 = g.node(
        "Conv",
        &[&h, &cw2, &cb2],
        vec![("pads", Attr::Ints(vec![1; 4])), ("strides", Attr::Ints(vec![2, 2]))],
    );
    g.node("Flatten", &[&c2], vec![("axis", Attr::Int(1))]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 18]);
    let first = Geometry {
        co: 3,
        ci: 2,
        k: 3,
        size: 5,
        stride: 1,
        pad: 1,
    };
    let second = Geometry {
        co: 2,
        ci: 3,
        stride: 2,
        ..first
    };
    let (d1, f1) = (conv_dense(&w1, &b1, first), conv_dense(&[1.0; 54], &[0.0; 3], first));
    let (d2, f2) = (conv_dense(&w2, &b2, second), conv_dense(&[1.0; 54], &[0.0; 2], second));
    ConvNet {
        model: g.build(),
        layers: [(d1, f1.m), (d2, f2.m)],
        activation: if activation == "Relu" {
            |v| v.max(0.0)
        } else {
            f64::tanh
        },
    }
}

/// Relevance at the input of the two-layer network in dense form (activations pass relevance).
fn dense_relevance(net: &ConvNet, rules: [Rule; 2], x: &[f64], target: usize) -> Vec<f64> {
    let (l1, flat1) = &net.layers[0];
    let (l2, flat2) = &net.layers[1];
    let h: Vec<f64> = add(&Dense::apply(&l1.m, x), &l1.b)
        .iter()
        .map(|v| (net.activation)(*v))
        .collect();
    let y = add(&Dense::apply(&l2.m, &h), &l2.b);
    let mut r = vec![0.0; y.len()];
    r[target] = y[target];
    let rh = dense_rule(rules[1], l2, flat2, &h, &r);
    dense_rule(rules[0], l1, flat1, x, &rh)
}

/// The backward model's input relevance for `target`.
fn graph_relevance(
    model: &ModelProto,
    table: &RuleTable,
    x: &[f32],
    dims: &[usize],
    outputs: usize,
    target: usize,
) -> Vec<f64> {
    let bw = backward(model, "input", dims, "logits", &[], table);
    let mut session = runner().session(&bw.model).expect("session");
    let mut w = vec![0f32; outputs];
    w[target] = 1.0;
    let (_, r) = run_output(
        &mut session,
        &[
            ("input", dims.to_vec(), x.to_vec()),
            (WEIGHTS_INPUT, vec![1, outputs], w),
        ],
        &bw.input_grad,
    );
    r.into_iter().map(f64::from).collect()
}

fn assert_close(label: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{label}: lengths");
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max).max(1e-6);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{label}: element {i}: {g} vs {w} (scale {scale})"
        );
    }
}

#[test]
fn every_composite_matches_its_dense_form_on_a_conv_network() {
    for activation in ["Relu", "Tanh"] {
        composites_match(&conv_net(3, activation), activation);
    }
}

fn composites_match(net: &ConvNet, activation: &str) {
    let mut rng = Rng::new(11);
    let x = rng.vec(50, -1.0, 1.0);
    let xd: Vec<f64> = x.iter().map(|v| f64::from(*v)).collect();
    let bounds = InputBounds {
        low: vec![-1.0, -1.0],
        high: vec![1.0, 1.0],
    };
    let cases = [
        (
            Composite::EpsilonPlusFlat,
            1e-6,
            [Rule::Flat, Rule::AlphaBeta(1.0, 0.0)],
        ),
        (
            Composite::EpsilonGammaBox,
            1e-6,
            [Rule::ZBox(-1.0, 1.0), Rule::Gamma(0.25)],
        ),
        (
            Composite::EpsilonAlpha2Beta1,
            1e-6,
            [Rule::AlphaBeta(2.0, 1.0), Rule::AlphaBeta(2.0, 1.0)],
        ),
        (Composite::Epsilon, 0.05, [Rule::Epsilon(0.05), Rule::Epsilon(0.05)]),
    ];
    for (composite, eps, rules) in cases {
        let table = RuleTable::for_set(RuleSet::Relevance(RelevanceRules::new(composite, eps as f32, 0.25)))
            .with_input_bounds(Some(bounds.clone()));
        for target in [0usize, 7, 13] {
            let got = graph_relevance(&net.model, &table, &x, &[1, 2, 5, 5], 18, target);
            let want = dense_relevance(net, rules, &xd, target);
            assert_close(
                &format!("{activation} {composite:?} target {target}"),
                &got,
                &want,
                1e-4,
            );
        }
    }
}

#[test]
fn dense_layers_take_flat_first_then_epsilon() {
    // input [1, 4] -> Gemm(transB, bias) -> Relu -> MatMul -> Add(bias).
    let mut rng = Rng::new(8);
    let w1 = rng.vec(5 * 4, -1.0, 1.0);
    let b1 = rng.vec(5, -0.2, 0.2);
    let w2 = rng.vec(5 * 3, -1.0, 1.0);
    let b2 = rng.vec(3, -0.2, 0.2);
    let mut g = GraphBuilder::new("mlp", 17);
    let x = g.input("input", &[-1, 4]);
    let (cw1, cb1) = (g.constant("w1", &[5, 4], &w1), g.constant("b1", &[5], &b1));
    let (cw2, cb2) = (g.constant("w2", &[5, 3], &w2), g.constant("b2", &[3], &b2));
    let z = g.node("Gemm", &[&x, &cw1, &cb1], vec![("transB", Attr::Int(1))]);
    let h = g.node("Relu", &[&z], vec![]);
    let y = g.node("MatMul", &[&h, &cw2], vec![]);
    g.node("Add", &[&y, &cb2], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 3]);
    let model = g.build();
    let x = rng.vec(4, -1.0, 1.0);
    let xd: Vec<f64> = x.iter().map(|v| f64::from(*v)).collect();
    let l1 = Dense {
        m: (0..5).map(|o| (0..4).map(|i| w1[o * 4 + i] as f64).collect()).collect(),
        b: b1.iter().map(|v| *v as f64).collect(),
    };
    // MatMul's bias comes as a separate Add: relevance passes it, the layer's z is without it.
    let l2 = Dense {
        m: (0..3).map(|o| (0..5).map(|i| w2[i * 3 + o] as f64).collect()).collect(),
        b: vec![0.0; 3],
    };
    let h: Vec<f64> = add(&Dense::apply(&l1.m, &xd), &l1.b)
        .iter()
        .map(|v| v.max(0.0))
        .collect();
    let out: Vec<f64> = add(
        &Dense::apply(&l2.m, &h),
        &b2.iter().map(|v| *v as f64).collect::<Vec<_>>(),
    );
    let ones = vec![vec![1.0; 4]; 5];
    let table = RuleTable::for_set(RuleSet::Relevance(RelevanceRules::new(
        Composite::EpsilonPlusFlat,
        1e-6,
        0.25,
    )));
    for target in 0..3 {
        let mut r = vec![0.0; 3];
        r[target] = out[target];
        let rh = dense_rule(Rule::Epsilon(1e-6), &l2, &[], &h, &r);
        let want = dense_rule(Rule::Flat, &l1, &ones, &xd, &rh);
        let got = graph_relevance(&model, &table, &x, &[1, 4], 3, target);
        assert_close(&format!("target {target}"), &got, &want, 1e-4);
    }
}

#[test]
fn batch_normalisation_is_folded_before_the_rules() {
    // Conv -> BatchNormalization -> Relu -> Flatten -> Gemm, against the same network with the
    // normalisation folded by hand.
    let mut rng = Rng::new(21);
    let w = rng.vec(3 * 9, -1.0, 1.0);
    let (scale, beta, mean, var) = (
        [1.5f32, 0.5, -1.0],
        [0.1f32, -0.2, 0.3],
        [0.2f32, -0.1, 0.0],
        [0.5f32, 2.0, 1.0],
    );
    let fc = rng.vec(3 * 16 * 2, -1.0, 1.0);
    let build = |folded: bool| {
        let mut g = GraphBuilder::new("bn", 17);
        let x = g.input("input", &[-1, 1, 4, 4]);
        let c = if folded {
            let k: Vec<f32> = (0..3).map(|c| scale[c] / (var[c] + 1e-5).sqrt()).collect();
            let wf: Vec<f32> = w.iter().enumerate().map(|(i, v)| v * k[i / 9]).collect();
            let bf: Vec<f32> = (0..3).map(|c| -mean[c] * k[c] + beta[c]).collect();
            let (cw, cb) = (g.constant("wf", &[3, 1, 3, 3], &wf), g.constant("bf", &[3], &bf));
            g.node("Conv", &[&x, &cw, &cb], vec![("pads", Attr::Ints(vec![1; 4]))])
        } else {
            let cw = g.constant("w", &[3, 1, 3, 3], &w);
            let c = g.node("Conv", &[&x, &cw], vec![("pads", Attr::Ints(vec![1; 4]))]);
            let p: Vec<String> = [("scale", scale), ("beta", beta), ("mean", mean), ("var", var)]
                .iter()
                .map(|(n, v)| g.constant(n, &[3], v))
                .collect();
            g.node("BatchNormalization", &[&c, &p[0], &p[1], &p[2], &p[3]], vec![])
        };
        let h = g.node("Relu", &[&c], vec![]);
        let f = g.node("Flatten", &[&h], vec![("axis", Attr::Int(1))]);
        let cfc = g.constant("fc", &[48, 2], &fc);
        g.node("Gemm", &[&f, &cfc], vec![]);
        g.rename_last_output("logits");
        g.output("logits", &[-1, 2]);
        g.build()
    };
    let x = rng.vec(16, 0.0, 1.0);
    for composite in [
        Composite::EpsilonPlusFlat,
        Composite::EpsilonAlpha2Beta1,
        Composite::Epsilon,
    ] {
        let table = RuleTable::for_set(RuleSet::Relevance(RelevanceRules::new(
            composite,
            composite.default_epsilon(),
            0.25,
        )));
        let with_bn = graph_relevance(&build(false), &table, &x, &[1, 1, 4, 4], 2, 1);
        let folded = graph_relevance(&build(true), &table, &x, &[1, 1, 4, 4], 2, 1);
        assert_close(&format!("{composite:?}"), &with_bn, &folded, 1e-4);
    }
}

fn fashion_without_biases() -> ModelProto {
    let bytes = std::fs::read(root().join("models/fashion-cnn/model.onnx")).unwrap();
    let mut model = explaind::onnx::proto::decode_model(&bytes).unwrap();
    let graph = model.graph.as_mut().unwrap();
    for t in &mut graph.initializer {
        if t.name.as_deref().is_some_and(|n| n.ends_with("_b")) {
            let n = t.dims.iter().product::<i64>() as usize;
            *t = explaind::onnx::builder::float_tensor(t.name.as_deref().unwrap(), &t.dims.clone(), &vec![0.0; n]);
        }
    }
    model
}

async fn start_models() -> explaind::Service {
    let dir = temp_dir("lrp-models");
    common::copy_bundled("fashion-cnn", &dir);
    let toml = std::fs::read_to_string(root().join("models/fashion-cnn/model.toml")).unwrap();
    // Without the reference set, whose folder sits beside the bundled model.
    let toml = toml.split("\n[reference]").next().unwrap();
    write_model(&dir, "fashion-nobias", &fashion_without_biases(), toml);
    write_model(
        &dir,
        "region",
        &region_model(),
        "task = \"image-classification\"\nlabels = [\"a\", \"b\"]\n[image]\ncolor = \"grayscale\"\n",
    );
    write_model(
        &dir,
        "gated",
        &gated_mlp(),
        "task = \"tabular-classification\"\nlabels = [\"a\", \"b\"]\n[tabular]\nfeatures = [\"f0\", \"f1\"]\n",
    );
    write_model(
        &dir,
        "exp",
        &exp_mlp(),
        "task = \"tabular-classification\"\nlabels = [\"a\", \"b\"]\n[tabular]\nfeatures = [\"f0\", \"f1\"]\n",
    );
    start(test_config(&dir)).await
}

/// input [1, 2] -> Gemm -> Exp -> Gemm: Exp has a gradient but no relevance rule.
fn exp_mlp() -> ModelProto {
    let mut g = GraphBuilder::new("exp", 17);
    let x = g.input("input", &[-1, 2]);
    let w1 = g.constant("w1", &[2, 2], &[0.5, -0.3, 0.2, 0.8]);
    let z = g.node("Gemm", &[&x, &w1], vec![]);
    let e = g.node("Exp", &[&z], vec![]);
    let w2 = g.constant("w2", &[2, 2], &[1.0, -1.0, 0.5, 0.7]);
    g.node("Gemm", &[&e, &w2], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

/// input [1, 2] -> Gemm -> z * z -> (z * z) * z -> Gemm: two products of tensors on the path.
fn gated_mlp() -> ModelProto {
    let mut g = GraphBuilder::new("gated", 17);
    let x = g.input("input", &[-1, 2]);
    let w1 = g.constant("w1", &[2, 2], &[0.5, -0.3, 0.2, 0.8]);
    let z = g.node("Gemm", &[&x, &w1], vec![]);
    let a = g.node("Mul", &[&z, &z], vec![]);
    let b = g.node("Mul", &[&a, &z], vec![]);
    let w2 = g.constant("w2", &[2, 2], &[1.0, -1.0, 0.5, 0.7]);
    g.node("Gemm", &[&b, &w2], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

/// A model that reads only the top-left 4x4 of an 8x8 image: Conv over the image, a mask that keeps
/// the region, then a linear layer.
fn region_model() -> ModelProto {
    let mut g = GraphBuilder::new("region", 17);
    let x = g.input("input", &[-1, 1, 8, 8]);
    let w = g.constant(
        "w",
        &[2, 1, 3, 3],
        &[
            0.2, 0.5, 0.1, 0.3, 0.9, 0.4, 0.1, 0.6, 0.2, 0.3, 0.1, 0.2, 0.4, 0.7, 0.1, 0.2, 0.3, 0.5,
        ],
    );
    let c = g.node("Conv", &[&x, &w], vec![("pads", Attr::Ints(vec![1; 4]))]);
    let h = g.node("Relu", &[&c], vec![]);
    let mask: Vec<f32> = (0..2 * 64)
        .map(|i| if (i % 64) / 8 < 3 && (i % 8) < 3 { 1.0 } else { 0.0 })
        .collect();
    let m = g.constant("mask", &[1, 2, 8, 8], &mask);
    let kept = g.node("Mul", &[&h, &m], vec![]);
    let f = g.node("Flatten", &[&kept], vec![("axis", Attr::Int(1))]);
    let fc: Vec<f32> = (0..128 * 2).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
    let cfc = g.constant("fc", &[128, 2], &fc);
    g.node("Gemm", &[&f, &cfc], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

fn png(img: &image::GrayImage) -> String {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(out.into_inner())
}

fn fashion_image() -> String {
    let path = root().join("tests/fixtures/fashion");
    let first = std::fs::read_dir(&path)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .min()
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(first).unwrap())
}

async fn explain(s: &explaind::Service, model: &str, body: Value) -> reqwest::Response {
    post_json(s, &format!("/v1/models/{model}/explain/lrp"), &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relevance_is_conserved_on_the_bundled_cnn_without_biases() {
    let s = start_models().await;
    let image = fashion_image();
    // Epsilon and the Flat / ZPlus mix conserve; AlphaBeta does not where a layer's negative part is
    // empty (zennit's rule does the same), so it is only checked to answer.
    for composite in ["epsilon", "epsilon_plus_flat"] {
        let v = ok_json(
            explain(
                &s,
                "fashion-nobias",
                json!({"image": image, "params": {"composite": composite, "epsilon": 1e-9}}),
            )
            .await,
        )
        .await;
        let score = v["details"]["target_score"].as_f64().unwrap();
        let sum = v["details"]["relevance_sum"].as_f64().unwrap();
        let delta = v["convergence_delta"].as_f64().unwrap();
        assert!((sum - score - delta).abs() < 1e-9 * score.abs().max(1.0), "{v}");
        assert!(
            delta.abs() <= 1e-3 * score.abs(),
            "{composite}: relevance {sum} vs score {score}"
        );
    }
    let v = ok_json(
        explain(
            &s,
            "fashion-nobias",
            json!({"image": image, "params": {"composite": "epsilon_alpha2_beta1"}}),
        )
        .await,
    )
    .await;
    assert!(v["convergence_delta"].as_f64().unwrap().is_finite(), "{v}");
    // With biases, the layers' biases absorb part of the score: the delta says how much.
    let v = ok_json(explain(&s, "fashion-cnn", json!({"image": image})).await).await;
    assert!(v["convergence_delta"].as_f64().unwrap().is_finite(), "{v}");
    assert_eq!(v["details"]["composite"], "epsilon_plus_flat");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relevance_lands_in_the_region_the_model_reads() {
    let s = start_models().await;
    let mut rng = Rng::new(4);
    let pixels: Vec<u8> = (0..64).map(|_| rng.uniform(40.0, 255.0) as u8).collect();
    let img = png(&image::GrayImage::from_raw(8, 8, pixels).unwrap());
    for composite in [
        "epsilon_plus_flat",
        "epsilon_gamma_box",
        "epsilon_alpha2_beta1",
        "epsilon",
    ] {
        let v = ok_json(
            explain(
                &s,
                "region",
                json!({"image": img, "target": 0, "params": {"composite": composite}}),
            )
            .await,
        )
        .await;
        let values = attribution_values(&v);
        assert_eq!(values.len(), 64);
        // Pixels the region's 3x3 outputs read: rows and columns 0..4.
        let inside: f64 = values
            .iter()
            .enumerate()
            .filter(|(i, _)| i / 8 < 4 && i % 8 < 4)
            .map(|(_, v)| v.abs())
            .sum();
        let outside: f64 = values
            .iter()
            .enumerate()
            .filter(|(i, _)| !(i / 8 < 4 && i % 8 < 4))
            .map(|(_, v)| v.abs())
            .sum();
        assert!(
            inside > 0.0 && outside < 1e-6 * inside,
            "{composite}: inside {inside}, outside {outside}"
        );
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_and_models_without_relevance_rules_are_refused() {
    let s = start_models().await;
    let image = fashion_image();
    for (params, name) in [
        (json!({"composite": "epsilon_plus"}), "composite"),
        (json!({"epsilon": 0.0}), "epsilon"),
        (json!({"epsilon": -1.0}), "epsilon"),
        (json!({"epsilon": 1e9}), "epsilon"),
        (json!({"gamma": -0.5}), "gamma"),
        (json!({"gamma": 1e6}), "gamma"),
    ] {
        let r = explain(&s, "fashion-cnn", json!({"image": image, "params": params})).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{params}");
        let body: Value = r.json().await.unwrap();
        assert!(body["detail"].as_str().unwrap().contains(name), "{body}");
    }
    // Exp has a gradient rule but no relevance rule: refused, naming it; saliency still works.
    let body = problem(
        explain(&s, "exp", json!({"features": [0.3, -0.2]})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "model-not-differentiable",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("Exp"), "{body}");
    ok_json(post_json(&s, "/v1/models/exp/explain/saliency", &json!({"features": [0.3, -0.2]})).await).await;
    // Every refused node is named, not only the first the build meets.
    let body = problem(
        explain(&s, "gated", json!({"features": [0.3, -0.2]})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "model-not-differentiable",
    )
    .await;
    let detail = body["detail"].as_str().unwrap();
    assert_eq!(detail.matches("product of two tensors").count(), 2, "{detail}");
    s.stop().await.unwrap();
}
