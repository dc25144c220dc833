//! Every gradient rule against central finite differences: a one-operator (or few-operator) graph
//! built with explaind's graph builder, the backward graph built from it, both run by ONNX Runtime.
//! Inputs for non-smooth operators are spaced away from kinks and ties. A test holds the rule
//! tables against the cases: every registered rule must have one.

use crate::common;

use std::cell::RefCell;
use std::collections::BTreeSet;

use common::gradcheck::{check_gradient, runner, Check};
use common::Rng;
use explaind::onnx::autodiff::analysis::Path;
use explaind::onnx::autodiff::{prepare_forward, RuleSet, RuleTable};
use explaind::onnx::builder::{Attr, GraphBuilder};
use explaind::onnx::node::{domain, op_type};
use explaind::onnx::proto::ModelProto;
use explaind::runtime::shapes::probe_shapes;

/// (domain, operator) pairs.
type Ops = BTreeSet<(String, String)>;

/// What the passing checks on one thread covered.
#[derive(Default)]
struct Covered {
    /// Nodes the backward build ran a rule on.
    differentiated: Ops,
    /// Nodes on the differentiable path as the cases wrote them, before the build's rewrites.
    written: Ops,
}

thread_local! {
    /// Set by the coverage test only, so that the other tests skip the graph analysis. Each test
    /// runs on its own thread: the coverage test sees only the cases it ran itself.
    static COVERED: RefCell<Option<Covered>> = const { RefCell::new(None) };
}

/// Builds `x -> build(x) -> y` at `opset` and checks the gradient at `x`.
fn case(
    label: &str,
    opset: i64,
    dims: &[usize],
    x: Vec<f32>,
    check: Check,
    build: impl FnOnce(&mut GraphBuilder, &str) -> String,
) {
    let mut g = GraphBuilder::new(label, opset);
    let idims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
    let input = g.input("x", &idims);
    let out = build(&mut g, &input);
    g.rename_last_output("y");
    let _ = out;
    g.output_any("y");
    let model = g.build();
    check_gradient(label, &model, "x", dims, &x, "y", check);
    if COVERED.with(|c| c.borrow().is_none()) {
        return;
    }
    // The build runs its rules on the prepared graph (opset raised, Dropout made Identity).
    let prepared = prepare_forward(&model).unwrap_or_else(|e| panic!("{label}: prepare failed: {e}"));
    let (differentiated, written) = (path_ops(&prepared, dims), path_ops(&model, dims));
    COVERED.with(|c| {
        if let Some(c) = c.borrow_mut().as_mut() {
            c.differentiated.extend(differentiated);
            c.written.extend(written);
        }
    });
}

/// (domain, operator) of the nodes on `model`'s differentiable path from `x` to `y`, found as the
/// backward build finds them: read from the graph, so a case cannot claim an operator it does not
/// differentiate (one off the path, or only in shape arithmetic).
fn path_ops(model: &ModelProto, dims: &[usize]) -> Ops {
    let shapes = probe_shapes(&runner(), model, "x", dims).unwrap_or_else(|e| panic!("probe failed: {e}"));
    let graph = model.graph.as_ref().expect("a built model has a graph");
    let path = Path::find(graph, "x", &["y".to_string()], &shapes);
    path.nodes
        .iter()
        .map(|&i| (domain(&graph.node[i]).to_string(), op_type(&graph.node[i]).to_string()))
        .collect()
}

fn smooth(dims: &[usize], seed: u64) -> Vec<f32> {
    Rng::new(seed).vec(dims.iter().product(), -1.0, 1.0)
}

fn spaced(dims: &[usize], seed: u64) -> Vec<f32> {
    let n: usize = dims.iter().product();
    Rng::new(seed).separated(n, 2.0 / n as f32)
}

fn weights(g: &mut GraphBuilder, name: &str, dims: &[i64], seed: u64) -> String {
    let n: usize = dims.iter().product::<i64>() as usize;
    let v = Rng::new(seed).vec(n, -1.0, 1.0);
    g.constant(name, dims, &v)
}

/// ReduceSum in the opset 13 input form.
fn reduce_sum(g: &mut GraphBuilder, x: &str, axes: &[i64], keepdims: i64) -> String {
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let axes = g.constant_i64(&format!("reduce_axes_{n}"), &[axes.len() as i64], axes);
    g.node("ReduceSum", &[x, &axes], vec![("keepdims", Attr::Int(keepdims))])
}

fn kinked() -> Check {
    // Small steps; the inputs are spaced wider than twice the step.
    Check {
        h: 1e-3,
        atol: 3e-3,
        rtol: 1e-2,
        ..Check::default()
    }
}

#[test]
fn arithmetic_with_broadcasting() {
    let d = [2, 3, 4];
    case("add", 17, &d, smooth(&d, 1), Check::default(), |g, x| {
        let s = reduce_sum(g, x, &[2], 1);
        let b = weights(g, "b", &[3, 1], 2);
        let t = g.node("Add", &[x, &s], vec![]);
        g.node("Add", &[&t, &b], vec![])
    });
    case("sub", 17, &d, smooth(&d, 3), Check::default(), |g, x| {
        let m = g.node(
            "ReduceMean",
            &[x],
            vec![("axes", Attr::Ints(vec![0])), ("keepdims", Attr::Int(0))],
        );
        g.node("Sub", &[&m, x], vec![])
    });
    case("mul", 17, &d, smooth(&d, 4), Check::default(), |g, x| {
        let s = reduce_sum(g, x, &[1], 1);
        g.node("Mul", &[x, &s], vec![])
    });
    case("div", 17, &d, smooth(&d, 5), Check::default(), |g, x| {
        let sq = g.node("Mul", &[x, x], vec![]);
        let one = g.constant("one", &[], &[1.0]);
        let den = g.node("Add", &[&sq, &one], vec![]);
        let s = reduce_sum(g, &den, &[2], 1);
        g.node("Div", &[x, &s], vec![])
    });
    case("sum-mean-max-min", 17, &d, spaced(&d, 6), kinked(), |g, x| {
        let b = weights(g, "b", &[4], 7);
        let two = g.constant("two", &[], &[2.0]);
        let x2 = g.node("Mul", &[x, &two], vec![]);
        let s = g.node("Sum", &[x, &x2, &b], vec![]);
        let m = g.node("Mean", &[&s, x], vec![]);
        let neg = g.node("Neg", &[x], vec![]);
        let mx = g.node("Max", &[&m, &neg], vec![]);
        g.node("Min", &[&mx, &b], vec![])
    });
}

#[test]
fn unary_math() {
    let d = [2, 5];
    case("neg-abs", 17, &d, spaced(&d, 8), kinked(), |g, x| {
        let a = g.node("Abs", &[x], vec![]);
        g.node("Neg", &[&a], vec![])
    });
    case(
        "exp-log-sqrt-reciprocal",
        17,
        &d,
        smooth(&d, 9),
        Check::default(),
        |g, x| {
            let e = g.node("Exp", &[x], vec![]);
            let sq = g.node("Mul", &[x, x], vec![]);
            let one = g.constant("one", &[], &[1.0]);
            let p = g.node("Add", &[&sq, &one], vec![]);
            let l = g.node("Log", &[&p], vec![]);
            let r = g.node("Sqrt", &[&p], vec![]);
            let inv = g.node("Reciprocal", &[&r], vec![]);
            let a = g.node("Add", &[&e, &l], vec![]);
            g.node("Add", &[&a, &inv], vec![])
        },
    );
    case("pow", 17, &d, smooth(&d, 10), Check::default(), |g, x| {
        let sq = g.node("Mul", &[x, x], vec![]);
        let one = g.constant("one", &[], &[1.0]);
        let p = g.node("Add", &[&sq, &one], vec![]);
        let e = g.constant("e", &[], &[1.5]);
        let a = g.node("Pow", &[&p, &e], vec![]);
        let three = g.constant_i64("three", &[], &[3]);
        let b = g.node("Pow", &[x, &three], vec![]);
        g.node("Add", &[&a, &b], vec![])
    });
    case(
        "where-identity-dropout-cast",
        17,
        &d,
        spaced(&d, 11),
        kinked(),
        |g, x| {
            let zero = g.constant("zero", &[], &[0.0]);
            let c = g.node("Greater", &[x, &zero], vec![]);
            let sq = g.node("Mul", &[x, x], vec![]);
            let w = g.node("Where", &[&c, &sq, x], vec![]);
            let i = g.node("Identity", &[&w], vec![]);
            let dr = g.node("Dropout", &[&i], vec![]);
            let dbl = g.node("Cast", &[&dr], vec![("to", Attr::Int(11))]);
            g.node("Cast", &[&dbl], vec![("to", Attr::Int(1))])
        },
    );
}

#[test]
fn activations() {
    let d = [2, 3, 4];
    let acts: Vec<(&str, Vec<(&str, Attr)>)> = vec![
        ("Relu", vec![]),
        ("LeakyRelu", vec![("alpha", Attr::Float(0.1))]),
        ("Elu", vec![("alpha", Attr::Float(0.7))]),
        ("Sigmoid", vec![]),
        ("Tanh", vec![]),
        (
            "HardSigmoid",
            vec![("alpha", Attr::Float(0.4)), ("beta", Attr::Float(0.5))],
        ),
        ("Softplus", vec![]),
        ("Erf", vec![]),
    ];
    for (op, attrs) in acts {
        case(op, 17, &d, spaced(&d, 12), kinked(), |g, x| {
            let three = g.constant("three", &[], &[3.0]);
            let scaled = g.node("Mul", &[x, &three], vec![]);
            g.node(op, &[&scaled], attrs)
        });
    }
    case("HardSwish", 17, &d, spaced(&d, 13), kinked(), |g, x| {
        let five = g.constant("five", &[], &[5.0]);
        let scaled = g.node("Mul", &[x, &five], vec![]);
        g.node("HardSwish", &[&scaled], vec![])
    });
    case("PRelu", 17, &d, spaced(&d, 14), kinked(), |g, x| {
        let slope = g.constant("slope", &[3, 1], &[0.1, 0.2, 0.3]);
        g.node("PRelu", &[x, &slope], vec![])
    });
    case("Clip", 17, &d, spaced(&d, 15), kinked(), |g, x| {
        let lo = g.constant("lo", &[], &[-0.5]);
        let hi = g.constant("hi", &[], &[0.6]);
        let c = g.node("Clip", &[x, &lo, &hi], vec![]);
        let only_max = g.node("Clip", &[x, "", &hi], vec![]);
        g.node("Add", &[&c, &only_max], vec![])
    });
    for approximate in ["none", "tanh"] {
        case(
            &format!("Gelu-{approximate}"),
            20,
            &d,
            smooth(&d, 16),
            Check::default(),
            |g, x| {
                let two = g.constant("two", &[], &[2.0]);
                let s = g.node("Mul", &[x, &two], vec![]);
                g.node("Gelu", &[&s], vec![("approximate", Attr::Str(approximate.into()))])
            },
        );
    }
}

#[test]
fn softmax_both_axis_semantics() {
    let d = [2, 3, 4];
    for (opset, axis) in [(17, 1), (17, -1), (11, 1), (11, 2), (12, 0)] {
        for op in ["Softmax", "LogSoftmax"] {
            case(
                &format!("{op}-opset{opset}-axis{axis}"),
                opset,
                &d,
                smooth(&d, 17),
                Check::default(),
                |g, x| {
                    let two = g.constant("two", &[], &[2.0]);
                    let s = g.node("Mul", &[x, &two], vec![]);
                    g.node(op, &[&s], vec![("axis", Attr::Int(axis))])
                },
            );
        }
    }
}

fn conv_case(label: &str, dims: &[usize], w_dims: &[i64], attrs: Vec<(&'static str, Attr)>) {
    case(label, 17, dims, smooth(dims, 20), Check::default(), |g, x| {
        let w = weights(g, "w", w_dims, 21);
        let b = weights(g, "b", &[w_dims[0]], 22);
        g.node("Conv", &[x, &w, &b], attrs)
    });
}

#[test]
fn convolutions() {
    conv_case(
        "conv-3x3-pad1",
        &[2, 3, 6, 6],
        &[4, 3, 3, 3],
        vec![("pads", Attr::Ints(vec![1, 1, 1, 1]))],
    );
    conv_case(
        "conv-stride2-pad1",
        &[2, 3, 7, 6],
        &[4, 3, 3, 3],
        vec![
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
            ("strides", Attr::Ints(vec![2, 2])),
        ],
    );
    conv_case(
        "conv-dilated",
        &[1, 2, 9, 9],
        &[3, 2, 3, 3],
        vec![
            ("dilations", Attr::Ints(vec![2, 2])),
            ("pads", Attr::Ints(vec![2, 1, 0, 2])),
        ],
    );
    conv_case(
        "conv-grouped",
        &[2, 4, 5, 5],
        &[6, 2, 3, 3],
        vec![("group", Attr::Int(2)), ("pads", Attr::Ints(vec![1, 1, 1, 1]))],
    );
    conv_case(
        "conv-depthwise",
        &[2, 4, 6, 6],
        &[4, 1, 3, 3],
        vec![
            ("group", Attr::Int(4)),
            ("strides", Attr::Ints(vec![2, 2])),
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
        ],
    );
    // Strided depthwise: zeros spread between the gradient's pixels, then a stride-1 Conv. Odd
    // sizes, asymmetric pads, a channel multiplier, dilation, unequal strides.
    conv_case(
        "conv-depthwise-odd-asymmetric",
        &[2, 3, 7, 9],
        &[6, 1, 3, 3],
        vec![
            ("group", Attr::Int(3)),
            ("strides", Attr::Ints(vec![2, 3])),
            ("pads", Attr::Ints(vec![1, 0, 0, 2])),
        ],
    );
    conv_case(
        "conv-depthwise-dilated",
        &[1, 4, 11, 10],
        &[4, 1, 3, 3],
        vec![
            ("group", Attr::Int(4)),
            ("strides", Attr::Ints(vec![2, 2])),
            ("dilations", Attr::Ints(vec![2, 2])),
            ("pads", Attr::Ints(vec![2, 2, 2, 2])),
        ],
    );
    conv_case(
        "conv-same-upper",
        &[1, 2, 7, 8],
        &[3, 2, 3, 3],
        vec![
            ("auto_pad", Attr::Str("SAME_UPPER".into())),
            ("strides", Attr::Ints(vec![2, 2])),
        ],
    );
    conv_case(
        "conv-same-lower",
        &[1, 2, 6, 6],
        &[3, 2, 4, 4],
        vec![("auto_pad", Attr::Str("SAME_LOWER".into()))],
    );
    // Eight input channels, stride 1: the gradient is a convolution with flipped weights.
    conv_case(
        "conv-flipped-weights",
        &[2, 8, 5, 6],
        &[4, 8, 3, 3],
        vec![
            ("pads", Attr::Ints(vec![1, 0, 2, 1])),
            ("dilations", Attr::Ints(vec![1, 2])),
        ],
    );
    conv_case(
        "conv-flipped-grouped",
        &[1, 16, 6, 6],
        &[8, 8, 3, 3],
        vec![("group", Attr::Int(2)), ("pads", Attr::Ints(vec![1, 1, 1, 1]))],
    );
    conv_case(
        "conv-1d",
        &[2, 3, 10],
        &[2, 3, 3],
        vec![("strides", Attr::Ints(vec![3]))],
    );
    case(
        "conv-transpose",
        17,
        &[2, 3, 4, 4],
        smooth(&[2, 3, 4, 4], 23),
        Check::default(),
        |g, x| {
            let w = weights(g, "w", &[3, 2, 3, 3], 24);
            g.node(
                "ConvTranspose",
                &[x, &w],
                vec![
                    ("strides", Attr::Ints(vec![2, 2])),
                    ("pads", Attr::Ints(vec![1, 1, 1, 1])),
                    ("output_padding", Attr::Ints(vec![1, 1])),
                ],
            )
        },
    );
}

#[test]
fn gemm_and_matmul() {
    for (ta, tb) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let dims = if ta == 0 { [3, 4] } else { [4, 3] };
        case(
            &format!("gemm-t{ta}{tb}"),
            17,
            &dims,
            smooth(&dims, 30),
            Check::default(),
            |g, x| {
                let b = weights(g, "b", if tb == 0 { &[4, 5] } else { &[5, 4] }, 31);
                let c = weights(g, "c", &[5], 32);
                let y = g.node(
                    "Gemm",
                    &[x, &b, &c],
                    vec![
                        ("transA", Attr::Int(ta)),
                        ("transB", Attr::Int(tb)),
                        ("alpha", Attr::Float(0.7)),
                        ("beta", Attr::Float(1.3)),
                    ],
                );
                // The input also as B and C: every operand's gradient.
                let xt = g.node(
                    "Gemm",
                    &[&y, x],
                    vec![
                        ("transA", Attr::Int(1)),
                        ("transB", Attr::Int(if ta == 0 { 0 } else { 1 })),
                    ],
                );
                let _ = xt;
                y
            },
        );
    }
    case(
        "gemm-x-as-b-and-c",
        17,
        &[4, 4],
        smooth(&[4, 4], 33),
        Check::default(),
        |g, x| {
            let a = weights(g, "a", &[4, 4], 34);
            g.node(
                "Gemm",
                &[&a, x, x],
                vec![("transB", Attr::Int(1)), ("beta", Attr::Float(0.5))],
            )
        },
    );
    case(
        "matmul-batched",
        17,
        &[2, 3, 4, 5],
        smooth(&[2, 3, 4, 5], 35),
        Check::default(),
        |g, x| {
            let w = weights(g, "w", &[5, 6], 36);
            let y = g.node("MatMul", &[x, &w], vec![]);
            let xt = g.node("Transpose", &[x], vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))]);
            let self_product = g.node("MatMul", &[x, &xt], vec![]);
            let r = reduce_sum(g, &self_product, &[3], 1);
            g.node("Add", &[&y, &r], vec![])
        },
    );
    case(
        "matmul-broadcast",
        17,
        &[2, 1, 4, 5],
        smooth(&[2, 1, 4, 5], 37),
        Check::default(),
        |g, x| {
            let w = weights(g, "w", &[3, 5, 4], 38);
            let y = g.node("MatMul", &[x, &w], vec![]);
            let red = g.node(
                "ReduceMean",
                &[x],
                vec![("axes", Attr::Ints(vec![0, 1])), ("keepdims", Attr::Int(0))],
            );
            g.node("MatMul", &[&y, &red], vec![])
        },
    );
    case(
        "matmul-vectors",
        17,
        &[5],
        smooth(&[5], 39),
        Check::default(),
        |g, x| {
            let m = weights(g, "m", &[3, 5, 4], 40);
            let left = g.node("MatMul", &[x, &m], vec![]); // [3, 4]
            let v = weights(g, "v", &[4], 41);
            let right = g.node("MatMul", &[&left, &v], vec![]); // [3]
            let dot = g.node("MatMul", &[x, x], vec![]); // []
            g.node("Mul", &[&right, &dot], vec![])
        },
    );
}

#[test]
fn pooling() {
    let d = [2, 3, 6, 6];
    case("maxpool-2x2", 17, &d, spaced(&d, 50), kinked(), |g, x| {
        g.node(
            "MaxPool",
            &[x],
            vec![
                ("kernel_shape", Attr::Ints(vec![2, 2])),
                ("strides", Attr::Ints(vec![2, 2])),
            ],
        )
    });
    case(
        "maxpool-3x3-s2-overlapping",
        17,
        &d,
        spaced(&d, 51),
        kinked(),
        |g, x| {
            g.node(
                "MaxPool",
                &[x],
                vec![
                    ("kernel_shape", Attr::Ints(vec![3, 3])),
                    ("strides", Attr::Ints(vec![2, 2])),
                    ("pads", Attr::Ints(vec![1, 1, 1, 1])),
                ],
            )
        },
    );
    case(
        "maxpool-ceil",
        17,
        &[1, 2, 7, 7],
        spaced(&[1, 2, 7, 7], 52),
        kinked(),
        |g, x| {
            g.node(
                "MaxPool",
                &[x],
                vec![
                    ("kernel_shape", Attr::Ints(vec![2, 2])),
                    ("strides", Attr::Ints(vec![2, 2])),
                    ("ceil_mode", Attr::Int(1)),
                ],
            )
        },
    );
    case(
        "maxpool-2x2-cropped",
        17,
        &[1, 2, 7, 7],
        spaced(&[1, 2, 7, 7], 58),
        kinked(),
        |g, x| {
            g.node(
                "MaxPool",
                &[x],
                vec![
                    ("kernel_shape", Attr::Ints(vec![2, 2])),
                    ("strides", Attr::Ints(vec![2, 2])),
                ],
            )
        },
    );
    case(
        "maxpool-3x3-tiles",
        17,
        &[2, 2, 6, 9],
        spaced(&[2, 2, 6, 9], 59),
        kinked(),
        |g, x| {
            g.node(
                "MaxPool",
                &[x],
                vec![
                    ("kernel_shape", Attr::Ints(vec![3, 3])),
                    ("strides", Attr::Ints(vec![3, 3])),
                ],
            )
        },
    );
    case("global-maxpool", 17, &d, spaced(&d, 53), kinked(), |g, x| {
        g.node("GlobalMaxPool", &[x], vec![])
    });
    case(
        "global-averagepool",
        17,
        &d,
        smooth(&d, 54),
        Check::default(),
        |g, x| g.node("GlobalAveragePool", &[x], vec![]),
    );
    case("averagepool-2x2", 17, &d, smooth(&d, 55), Check::default(), |g, x| {
        g.node(
            "AveragePool",
            &[x],
            vec![
                ("kernel_shape", Attr::Ints(vec![2, 2])),
                ("strides", Attr::Ints(vec![2, 2])),
            ],
        )
    });
    for include in [0, 1] {
        case(
            &format!("averagepool-3x3-pad-include{include}"),
            17,
            &d,
            smooth(&d, 56),
            Check::default(),
            |g, x| {
                g.node(
                    "AveragePool",
                    &[x],
                    vec![
                        ("kernel_shape", Attr::Ints(vec![3, 3])),
                        ("strides", Attr::Ints(vec![2, 1])),
                        ("pads", Attr::Ints(vec![1, 1, 1, 1])),
                        ("count_include_pad", Attr::Int(include)),
                    ],
                )
            },
        );
    }
    case(
        "averagepool-ceil",
        17,
        &[1, 2, 7, 7],
        smooth(&[1, 2, 7, 7], 57),
        Check::default(),
        |g, x| {
            g.node(
                "AveragePool",
                &[x],
                vec![
                    ("kernel_shape", Attr::Ints(vec![2, 2])),
                    ("strides", Attr::Ints(vec![2, 2])),
                    ("ceil_mode", Attr::Int(1)),
                ],
            )
        },
    );
}

#[test]
fn normalizations() {
    let d = [2, 3, 4, 5];
    case("batchnorm", 17, &d, smooth(&d, 60), Check::default(), |g, x| {
        let scale = weights(g, "scale", &[3], 61);
        let bias = weights(g, "bias", &[3], 62);
        let mean = weights(g, "mean", &[3], 63);
        let var = g.constant("var", &[3], &[0.5, 1.5, 2.0]);
        g.node(
            "BatchNormalization",
            &[x, &scale, &bias, &mean, &var],
            vec![("epsilon", Attr::Float(1e-3))],
        )
    });
    case("instancenorm", 17, &d, smooth(&d, 64), Check::default(), |g, x| {
        let scale = weights(g, "scale", &[3], 65);
        let bias = weights(g, "bias", &[3], 66);
        g.node("InstanceNormalization", &[x, &scale, &bias], vec![])
    });
    for axis in [-1, 1] {
        case(
            &format!("layernorm-axis{axis}"),
            17,
            &d,
            smooth(&d, 67),
            Check::default(),
            |g, x| {
                let shape: Vec<i64> = if axis == -1 { vec![5] } else { vec![3, 4, 5] };
                let scale = weights(g, "scale", &shape, 68);
                let bias = weights(g, "bias", &shape, 69);
                g.node(
                    "LayerNormalization",
                    &[x, &scale, &bias],
                    vec![("axis", Attr::Int(axis))],
                )
            },
        );
    }
}

#[test]
fn reductions() {
    let d = [2, 3, 4];
    case("reducemean-attr", 17, &d, smooth(&d, 70), Check::default(), |g, x| {
        g.node(
            "ReduceMean",
            &[x],
            vec![("axes", Attr::Ints(vec![1, -1])), ("keepdims", Attr::Int(0))],
        )
    });
    case("reducemean-all", 17, &d, smooth(&d, 71), Check::default(), |g, x| {
        g.node("ReduceMean", &[x], vec![])
    });
    case(
        "reducemean-input-opset18",
        18,
        &d,
        smooth(&d, 72),
        Check::default(),
        |g, x| {
            let axes = g.constant_i64("axes", &[1], &[2]);
            g.node("ReduceMean", &[x, &axes], vec![("keepdims", Attr::Int(1))])
        },
    );
    case("reducesum-input", 17, &d, smooth(&d, 73), Check::default(), |g, x| {
        let axes = g.constant_i64("axes", &[2], &[0, 2]);
        let sq = g.node("Mul", &[x, x], vec![]);
        g.node("ReduceSum", &[&sq, &axes], vec![("keepdims", Attr::Int(0))])
    });
    case(
        "reducesum-opset11-attr",
        11,
        &d,
        smooth(&d, 74),
        Check::default(),
        |g, x| {
            let sq = g.node("Mul", &[x, x], vec![]);
            g.node(
                "ReduceSum",
                &[&sq],
                vec![("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(0))],
            )
        },
    );
}

#[test]
fn shape_operators() {
    let d = [2, 3, 4];
    case(
        "flatten-reshape-transpose",
        17,
        &d,
        smooth(&d, 80),
        Check::default(),
        |g, x| {
            let w = weights(g, "w", &[2, 12], 81);
            let f = g.node("Flatten", &[x], vec![("axis", Attr::Int(1))]);
            let m = g.node("Mul", &[&f, &w], vec![]);
            let shape = g.constant_i64("shape", &[3], &[4, 3, 2]);
            let r = g.node("Reshape", &[&m, &shape], vec![]);
            g.node("Transpose", &[&r], vec![("perm", Attr::Ints(vec![1, 2, 0]))])
        },
    );
    case(
        "squeeze-unsqueeze-opset11",
        11,
        &d,
        smooth(&d, 82),
        Check::default(),
        |g, x| {
            let u = g.node("Unsqueeze", &[x], vec![("axes", Attr::Ints(vec![1]))]);
            let w = weights(g, "w", &[2, 1, 3, 4], 83);
            let m = g.node("Mul", &[&u, &w], vec![]);
            g.node("Squeeze", &[&m], vec![("axes", Attr::Ints(vec![1]))])
        },
    );
    case(
        "squeeze-unsqueeze-opset13",
        13,
        &d,
        smooth(&d, 84),
        Check::default(),
        |g, x| {
            let axes = g.constant_i64("axes", &[1], &[0]);
            let u = g.node("Unsqueeze", &[x, &axes], vec![]);
            let w = weights(g, "w", &[1, 2, 3, 4], 85);
            let m = g.node("Mul", &[&u, &w], vec![]);
            g.node("Squeeze", &[&m, &axes], vec![])
        },
    );
    case("concat-split", 17, &d, smooth(&d, 86), Check::default(), |g, x| {
        let two = g.constant("two", &[], &[2.0]);
        let x2 = g.node("Mul", &[x, &two], vec![]);
        let c = g.node("Concat", &[x, &x2, x], vec![("axis", Attr::Int(1))]);
        let w = weights(g, "w", &[2, 9, 4], 87);
        let cw = g.node("Mul", &[&c, &w], vec![]);
        let sizes = g.constant_i64("sizes", &[3], &[2, 3, 4]);
        let parts = g.node_n("Split", &[&cw, &sizes], 3, vec![("axis", Attr::Int(1))]);
        // Only two of the three parts reach the output.
        let s0 = reduce_sum(g, &parts[0], &[1], 1);
        g.node("Mul", &[&parts[2], &s0], vec![])
    });
    case(
        "split-opset11",
        11,
        &[2, 6],
        smooth(&[2, 6], 88),
        Check::default(),
        |g, x| {
            let parts = g.node_n(
                "Split",
                &[x],
                2,
                vec![("axis", Attr::Int(1)), ("split", Attr::Ints(vec![4, 2]))],
            );
            let s = g.node(
                "ReduceSum",
                &[&parts[0]],
                vec![("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(1))],
            );
            g.node("Mul", &[&parts[1], &s], vec![])
        },
    );
    case(
        "slice-steps",
        17,
        &[2, 6, 7],
        smooth(&[2, 6, 7], 89),
        Check::default(),
        |g, x| {
            let starts = g.constant_i64("starts", &[3], &[1, -1, 1]);
            let ends = g.constant_i64("ends", &[3], &[i64::MAX, -100, 6]);
            let axes = g.constant_i64("axes", &[3], &[1, 2, 0]);
            let steps = g.constant_i64("steps", &[3], &[2, -2, 1]);
            let s = g.node("Slice", &[x, &starts, &ends, &axes, &steps], vec![]);
            let starts2 = g.constant_i64("starts2", &[1], &[1]);
            let ends2 = g.constant_i64("ends2", &[1], &[-1]);
            let axes2 = g.constant_i64("axes2", &[1], &[2]);
            let inner = g.node("Slice", &[x, &starts2, &ends2, &axes2], vec![]);
            let r = reduce_sum(g, &inner, &[1, 2], 1);
            let r1 = g.node("Slice", &[&r, &starts2, &ends2], vec![]);
            let _ = r1;
            g.node("Mul", &[&s, &r], vec![])
        },
    );
    case("gather", 17, &[5, 3], smooth(&[5, 3], 90), Check::default(), |g, x| {
        let rows = g.constant_i64("rows", &[2, 3], &[0, 4, 4, -1, 2, 0]);
        let picked = g.node("Gather", &[x, &rows], vec![("axis", Attr::Int(0))]); // [2, 3, 3]
        let col = g.constant_i64("col", &[], &[1]);
        let c = g.node("Gather", &[x, &col], vec![("axis", Attr::Int(1))]); // [5]
        let first = g.constant_i64("first", &[], &[0]);
        let c0 = g.node("Gather", &[&c, &first], vec![("axis", Attr::Int(0))]); // []
        g.node("Mul", &[&picked, &c0], vec![])
    });
    case(
        "gather-middle-axis",
        17,
        &[2, 4, 3],
        smooth(&[2, 4, 3], 91),
        Check::default(),
        |g, x| {
            let idx = g.constant_i64("idx", &[2], &[3, 3]);
            g.node("Gather", &[x, &idx], vec![("axis", Attr::Int(1))])
        },
    );
    case(
        "pad-expand",
        17,
        &[2, 3, 1],
        smooth(&[2, 3, 1], 92),
        Check::default(),
        |g, x| {
            let pads = g.constant_i64("pads", &[6], &[0, 1, 0, 0, 2, 3]);
            let value = g.constant("value", &[], &[0.5]);
            let p = g.node("Pad", &[x, &pads, &value], vec![]); // [2, 6, 4]
            let w = weights(g, "w", &[2, 6, 4], 93);
            let pw = g.node("Mul", &[&p, &w], vec![]);
            let shape = g.constant_i64("shape", &[3], &[2, 3, 5]);
            let e = g.node("Expand", &[x, &shape], vec![]);
            let es = reduce_sum(g, &e, &[1], 1);
            let ps = reduce_sum(g, &pw, &[1], 1);
            let ps = reduce_sum(g, &ps, &[2], 1);
            g.node("Mul", &[&es, &ps], vec![])
        },
    );
}

#[test]
fn pad_modes() {
    // Edge, reflect and wrap (opset 19), with pads computed from constants as converters emit
    // them, with an axes input (opset 18), and cropping (negative pads) in constant mode.
    let d = [1, 2, 4, 5];
    for (label, mode, opset, pads, axes) in [
        ("pad-edge", "edge", 17, vec![0, 0, 1, 2, 0, 0, 2, 1], None),
        ("pad-reflect", "reflect", 17, vec![0, 0, 2, 1, 0, 0, 1, 3], None),
        ("pad-wrap", "wrap", 19, vec![0, 0, 1, 3, 0, 0, 2, 2], None),
        ("pad-edge-axes", "edge", 18, vec![2, 1, 1, 3], Some(vec![-1, 2])),
        ("pad-crop", "constant", 17, vec![0, 0, -1, 1, 0, 0, 1, -2], None),
    ] {
        case(label, opset, &d, smooth(&d, 95), Check::default(), |g, x| {
            // pads = Cast(Reshape(constant)): computed, not an initializer.
            let raw = g.constant(
                "raw_pads",
                &[pads.len() as i64],
                &pads.iter().map(|p| *p as f32).collect::<Vec<_>>(),
            );
            let cast = g.node("Cast", &[&raw], vec![("to", Attr::Int(7))]);
            let mut inputs = vec![x.to_string(), cast, String::new()];
            if let Some(axes) = &axes {
                inputs.push(g.constant_i64("axes", &[axes.len() as i64], axes));
            }
            let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            let p = g.node("Pad", &refs, vec![("mode", Attr::Str(mode.into()))]);
            let sq = g.node("Mul", &[&p, &p], vec![]);
            let w = g.node("Tanh", &[&p], vec![]);
            g.node("Add", &[&sq, &w], vec![])
        });
    }
}

/// (label, attributes, scales, sizes)
type ResizeCase = (
    &'static str,
    Vec<(&'static str, Attr)>,
    Option<Vec<f32>>,
    Option<Vec<i64>>,
);

#[test]
fn resize_modes() {
    let d = [2, 2, 4, 5];
    let modes: Vec<ResizeCase> = vec![
        (
            "nearest-x2",
            vec![("mode", Attr::Str("nearest".into()))],
            Some(vec![1.0, 1.0, 2.0, 2.0]),
            None,
        ),
        (
            "linear-half-pixel-x2",
            vec![("mode", Attr::Str("linear".into()))],
            Some(vec![1.0, 1.0, 2.0, 2.0]),
            None,
        ),
        (
            "linear-align-corners-sizes",
            vec![
                ("mode", Attr::Str("linear".into())),
                ("coordinate_transformation_mode", Attr::Str("align_corners".into())),
            ],
            None,
            Some(vec![2, 2, 7, 3]),
        ),
        (
            "nearest-asymmetric-floor-down",
            vec![
                ("mode", Attr::Str("nearest".into())),
                ("coordinate_transformation_mode", Attr::Str("asymmetric".into())),
                ("nearest_mode", Attr::Str("floor".into())),
            ],
            Some(vec![1.0, 1.0, 0.5, 0.6]),
            None,
        ),
        (
            "cubic-x1.5",
            vec![("mode", Attr::Str("cubic".into()))],
            Some(vec![1.0, 1.0, 1.5, 1.5]),
            None,
        ),
    ];
    for (label, attrs, scales, sizes) in modes {
        case(
            &format!("resize-{label}"),
            17,
            &d,
            smooth(&d, 95),
            Check::default(),
            |g, x| {
                let roi = g.constant("roi", &[0], &[]);
                match (scales, sizes) {
                    (Some(s), _) => {
                        let s = g.constant("scales", &[4], &s);
                        g.node("Resize", &[x, &roi, &s], attrs)
                    }
                    (None, Some(z)) => {
                        let z = g.constant_i64("sizes", &[4], &z);
                        g.node("Resize", &[x, &roi, "", &z], attrs)
                    }
                    _ => unreachable!(),
                }
            },
        );
    }
}

#[test]
fn max_pool_ties_go_to_the_first_maximum_as_in_pytorch() {
    // Inputs of three values, so most windows tie; distinct upstream gradients show which window
    // each share came from. Expected: PyTorch's max indices (and ONNX Runtime's), the first maximum
    // of each window in row-major order, padding excluded, each taking its window's whole gradient.
    let pools: [(&str, usize, usize, usize, usize, usize); 5] = [
        // (label, h, w, kernel, stride, pad)
        ("2x2 tiles", 6, 6, 2, 2, 0),
        ("2x2 tiles, cropped", 7, 7, 2, 2, 0),
        ("3x3 tiles", 6, 9, 3, 3, 0),
        ("3x3 stride 2, padded (Indices)", 6, 6, 3, 2, 1),
        ("global", 5, 6, 0, 0, 0),
    ];
    for (seed, (label, h, w, kernel, stride, pad)) in pools.into_iter().enumerate() {
        let mut rng = Rng::new(70 + seed as u64);
        let x: Vec<f32> = (0..h * w).map(|_| (rng.next_u64() % 3) as f32).collect();
        let global = kernel == 0;
        let (kh, kw, s) = if global { (h, w, 1) } else { (kernel, kernel, stride) };
        let (oh, ow) = ((h + 2 * pad - kh) / s + 1, (w + 2 * pad - kw) / s + 1);
        let up: Vec<f32> = (1..=oh * ow).map(|v| v as f32).collect();
        let mut expected = vec![0f32; h * w];
        for oi in 0..oh {
            for oj in 0..ow {
                let mut best: Option<(f32, usize)> = None;
                for u in 0..kh {
                    for v in 0..kw {
                        let (Some(i), Some(j)) = ((oi * s + u).checked_sub(pad), (oj * s + v).checked_sub(pad)) else {
                            continue;
                        };
                        if i < h && j < w && best.is_none_or(|(m, _)| x[i * w + j] > m) {
                            best = Some((x[i * w + j], i * w + j));
                        }
                    }
                }
                expected[best.unwrap().1] += up[oi * ow + oj];
            }
        }
        let mut g = GraphBuilder::new("ties", 17);
        let input = g.input("x", &[1, 1, h as i64, w as i64]);
        if global {
            g.node("GlobalMaxPool", &[&input], vec![]);
        } else {
            let p = pad as i64;
            g.node(
                "MaxPool",
                &[&input],
                vec![
                    ("kernel_shape", Attr::Ints(vec![kernel as i64; 2])),
                    ("strides", Attr::Ints(vec![stride as i64; 2])),
                    ("pads", Attr::Ints(vec![p; 4])),
                ],
            );
        }
        g.rename_last_output("y");
        g.output_any("y");
        let bw = common::gradcheck::backward(
            &g.build(),
            "x",
            &[1, 1, h, w],
            "y",
            &[],
            &explaind::onnx::autodiff::RuleTable::exact(),
        );
        let mut session = common::gradcheck::runner().session(&bw.model).unwrap();
        let feeds = [
            ("x", vec![1, 1, h, w], x),
            (explaind::onnx::autodiff::WEIGHTS_INPUT, vec![1, 1, oh, ow], up),
        ];
        let (_, grad) = common::gradcheck::run_output(&mut session, &feeds, &bw.input_grad);
        assert_eq!(grad, expected, "{label}");
    }
}

/// Every group of finite-difference cases above. A group missing here makes the coverage test
/// fail for the operators only it covers, never pass for them.
const GROUPS: &[fn()] = &[
    arithmetic_with_broadcasting,
    unary_math,
    activations,
    softmax_both_axis_semantics,
    convolutions,
    gemm_and_matmul,
    pooling,
    normalizations,
    reductions,
    shape_operators,
    pad_modes,
    resize_modes,
];

/// Registered exact rules no build runs, so no finite-difference case can reach them: (domain,
/// operator, why). Each must stay so: the coverage test fails when a case differentiates one, when
/// no case writes one, or when its rule is gone.
const NEVER_RUN: &[(&str, &str, &str)] = &[(
    "",
    "Dropout",
    "prepare_forward turns inference Dropout into Identity (and refuses training mode) before any \
     rule runs; `where-identity-dropout-cast` checks the gradient through a Dropout it writes, by \
     the Identity rule",
)];

/// Every (domain, operator) with an exact-gradient rule has a finite-difference case, read from the
/// graphs of the cases that passed (they run again here: about a second in all).
///
/// The alternative tables ([`RuleSet::families`]) do not compute gradients, so finite differences
/// cannot check what they change; other properties do: guided backpropagation's and DeconvNet's
/// ReLU by their closed forms on an MLP (tests/it/autodiff_models.rs), guided backpropagation also by
/// the randomisation check (tests/it/eval.rs); DeepLIFT's rescale rules by their closed form on a tanh
/// network, completeness through every rescaled nonlinearity and Captum's max-pool ties
/// (tests/it/deeplift.rs); each LRP composite by its dense form on a convolutional network, batch-norm
/// folding and conservation (tests/it/lrp.rs). The rules they keep from the exact table are the ones
/// checked here, so each of their operators must have an exact rule too.
#[test]
fn every_registered_rule_has_a_finite_difference_case() {
    COVERED.with(|c| *c.borrow_mut() = Some(Covered::default()));
    for group in GROUPS {
        group();
    }
    let covered = COVERED.with(|c| c.take()).expect("set above");
    let standard = RuleTable::exact().operators();
    let key = |(d, o): (&str, &str)| (d.to_string(), o.to_string());
    let name = |(d, o): (&str, &str)| {
        if d.is_empty() {
            o.to_string()
        } else {
            format!("{d}::{o}")
        }
    };
    let never_run = |op: &(&str, &str)| NEVER_RUN.iter().any(|(d, o, _)| (*d, *o) == *op);
    let missing: Vec<String> = standard
        .iter()
        .filter(|&&op| !covered.differentiated.contains(&key(op)) && !never_run(&op))
        .map(|&op| name(op))
        .collect();
    assert!(
        missing.is_empty(),
        "gradient rules without a finite-difference case (add a `case` whose graph differentiates them): {}",
        missing.join(", ")
    );
    for &(d, o, why) in NEVER_RUN {
        let op = (d, o);
        assert!(
            standard.contains(&op),
            "{}: listed as never run, but has no rule",
            name(op)
        );
        assert!(
            !covered.differentiated.contains(&key(op)),
            "{}: listed as never run ({why}), but a case's build runs its rule: take it off the list",
            name(op)
        );
        assert!(
            covered.written.contains(&key(op)),
            "{}: listed as never run ({why}), but no case writes it",
            name(op)
        );
    }
    for set in RuleSet::families() {
        let only_here: Vec<String> = RuleTable::for_set(set)
            .operators()
            .into_iter()
            .filter(|op| !standard.contains(op))
            .map(name)
            .collect();
        assert!(
            only_here.is_empty(),
            "the {} table has rules for operators with no exact rule, so no finite-difference case: {}",
            explaind::runtime::gradients::family(&set),
            only_here.join(", ")
        );
    }
}
