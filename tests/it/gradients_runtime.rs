//! Gradient passes through the service's own workers: built once per (model, layers, rules),
//! batched by `max_batch`, equal to a direct run of the backward model, and reported in the API.

use crate::common;

use common::gradcheck::{backward, run_output, runner};
use common::*;
use explaind::executor::{JobContext, Task};
use explaind::onnx::autodiff::{RuleSet, RuleTable, WEIGHTS_INPUT};
use explaind::onnx::builder::GraphBuilder;
use explaind::runtime::gradients::GradientKey;
use explaind::runtime::sessions::{GradientPass, Sizing};
use explaind::runtime::{RuntimeError, Tensor, WorkerRuntime};
use serde_json::Value;

struct Gradients {
    key: GradientKey,
    input: Tensor,
    weights: Tensor,
}

impl Task for Gradients {
    type Output = GradientPass;
    fn run(self, rt: &mut WorkerRuntime, _: &JobContext) -> Result<GradientPass, RuntimeError> {
        let model = rt.model(&self.key.model)?;
        if !self.key.input_grad {
            return rt.layer_gradients(&model, &self.key.layers, &self.input, &self.weights, Sizing::budget());
        }
        rt.gradients(
            &model,
            &self.key.layers,
            self.key.rules,
            &self.input,
            &self.weights,
            Sizing::budget(),
        )
    }
}

fn fashion_key(layers: &[&str]) -> GradientKey {
    GradientKey {
        model: "fashion-cnn".into(),
        layers: layers.iter().map(|s| s.to_string()).collect(),
        rules: RuleSet::Exact,
        input_grad: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_gradients_are_batched_cached_and_exact() {
    let mut config = test_config(&root().join("models"));
    config.max_batch = 2;
    let s = start(config).await;
    let rows = 5;
    let x = Rng::new(1).vec(rows * 28 * 28, -1.0, 1.0);
    let w = Rng::new(2).vec(rows * 10, -1.0, 1.0);
    let input = Tensor::f32(vec![rows, 1, 28, 28], x.clone());
    let weights = Tensor::f32(vec![rows, 10], w.clone());
    let pass = s
        .state
        .executor
        .submit(Gradients {
            key: fashion_key(&["relu3"]),
            input: input.clone(),
            weights: weights.clone(),
        })
        .await
        .unwrap();
    assert_eq!(pass.input_grad.shape, vec![rows, 1, 28, 28]);
    assert_eq!(pass.scores.shape, vec![rows, 10]);
    assert_eq!(pass.layers.len(), 1);
    assert_eq!(pass.layers[0].0.shape, vec![rows, 64, 7, 7]);

    // The same numbers as one unbatched run of a directly built backward model.
    let model =
        explaind::onnx::proto::decode_model(&std::fs::read(root().join("models/fashion-cnn/model.onnx")).unwrap())
            .unwrap();
    let bw = backward(
        &model,
        "input",
        &[1, 1, 28, 28],
        "logits",
        &["relu3"],
        &RuleTable::exact(),
    );
    let mut session = runner().session(&bw.model).unwrap();
    let feeds = [("input", vec![rows, 1, 28, 28], x), (WEIGHTS_INPUT, vec![rows, 10], w)];
    let (_, direct) = run_output(&mut session, &feeds, &bw.input_grad);
    let (_, direct_layer) = run_output(&mut session, &feeds, "relu3.grad");
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 + 1e-4 * y.abs());
    assert!(close(pass.input_grad.as_f32().unwrap(), &direct));
    assert!(close(pass.layers[0].1.as_f32().unwrap(), &direct_layer));

    // Again, from whichever worker takes it: no second build.
    for _ in 0..3 {
        s.state
            .executor
            .submit(Gradients {
                key: fashion_key(&["relu3"]),
                input: input.clone(),
                weights: weights.clone(),
            })
            .await
            .unwrap();
    }
    assert_eq!(s.state.gradients.built_count(), 1);
    // Plain gradients and the layer alone are graphs of their own: the first without the layer's
    // outputs, the second without the pass from the layer back to the input (what the CAM methods
    // use); the layer's gradient is the same.
    let plain = s
        .state
        .executor
        .submit(Gradients {
            key: fashion_key(&[]),
            input: input.clone(),
            weights: weights.clone(),
        })
        .await
        .unwrap();
    assert_eq!(s.state.gradients.built_count(), 2);
    assert!(plain.layers.is_empty());
    assert!(close(plain.input_grad.as_f32().unwrap(), &direct));
    let only_layer = s
        .state
        .executor
        .submit(Gradients {
            key: GradientKey {
                input_grad: false,
                ..fashion_key(&["relu3"])
            },
            input: input.clone(),
            weights: weights.clone(),
        })
        .await
        .unwrap();
    assert_eq!(s.state.gradients.built_count(), 3);
    assert!(only_layer.input_grad.as_f32().unwrap().is_empty());
    assert!(close(only_layer.layers[0].1.as_f32().unwrap(), &direct_layer));
    assert_eq!(only_layer.layers[0].0.as_f32(), pass.layers[0].0.as_f32());
    // Another layer is another graph.
    let other = s
        .state
        .executor
        .submit(Gradients {
            key: fashion_key(&["relu2"]),
            input,
            weights,
        })
        .await
        .unwrap();
    assert_eq!(s.state.gradients.built_count(), 4);
    assert!(close(other.input_grad.as_f32().unwrap(), &direct));
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_fed_no_weights_explain_their_top_prediction_in_the_same_pass() {
    let s = start(test_config(&root().join("models"))).await;
    let rows = 6;
    let input = Tensor::f32(vec![rows, 1, 28, 28], Rng::new(7).vec(rows * 28 * 28, 0.0, 1.0));
    // Rows 0, 2 and 4 fed all-zero weights; rows 1, 3, 5 a class each, or a mix.
    let mut mixed = vec![0f32; rows * 10];
    mixed[10 + 3] = 1.0;
    mixed[3 * 10 + 9] = 1.0;
    mixed[5 * 10 + 1] = 0.5;
    mixed[5 * 10 + 2] = -2.0;
    let pass = s
        .state
        .executor
        .submit(Gradients {
            key: fashion_key(&["relu3"]),
            input: input.clone(),
            weights: Tensor::f32(vec![rows, 10], mixed.clone()),
        })
        .await
        .unwrap();
    let chosen = pass.chosen.clone().expect("the graph names each row's top class");
    let scores = pass.scores.as_f32().unwrap();
    // The weights the graph used, spelled out: a fed row keeps its own, a zero row its top class.
    let mut spelled = mixed.clone();
    for (r, &c) in chosen.iter().enumerate() {
        let row = &scores[r * 10..(r + 1) * 10];
        let best = (0..10).fold(0, |b, i| if row[i] > row[b] { i } else { b });
        assert_eq!(c, best, "row {r}: the first highest score");
        if r % 2 == 0 {
            spelled[r * 10 + c] = 1.0;
        }
    }
    let fed = s
        .state
        .executor
        .submit(Gradients {
            key: fashion_key(&["relu3"]),
            input,
            weights: Tensor::f32(vec![rows, 10], spelled),
        })
        .await
        .unwrap();
    assert_eq!(pass.input_grad.as_f32(), fed.input_grad.as_f32());
    assert_eq!(pass.layers[0].1.as_f32(), fed.layers[0].1.as_f32());
    assert_eq!(s.state.gradients.built_count(), 1, "one backward model serves both");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn models_report_gradient_support_and_blocking_operators() {
    let dir = temp_dir("not-differentiable");
    let mut g = GraphBuilder::new("odd", 17);
    let x = g.input("input", &[-1, 3]);
    let s = g.node("Sin", &[&x], vec![]);
    g.node("Softmax", &[&s], vec![]);
    g.rename_last_output("scores");
    g.output("scores", &[-1, 3]);
    write_model(
        &dir,
        "odd",
        &g.build(),
        "task = \"tabular-classification\"\nscores = \"probabilities\"\n",
    );
    common::copy_bundled("fashion-cnn", &dir);
    let s = start(test_config(&dir)).await;
    let http = reqwest::Client::new();
    let fashion: Value = http
        .get(url(&s, "/v1/models/fashion-cnn"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fashion["gradients"]["differentiable"], true);
    assert_eq!(fashion["gradients"]["default_cam_layer"], "relu3");
    let odd: Value = http
        .get(url(&s, "/v1/models/odd"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(odd["gradients"]["differentiable"], false);
    let blocking = odd["gradients"]["blocking_operators"][0].as_str().unwrap();
    assert!(blocking.contains("ai.onnx::Sin (opset 17)"), "{blocking}");
    // Predictions still work; gradients say which operator blocks them.
    let r = http
        .post(url(&s, "/v1/models/odd/predict"))
        .json(&serde_json::json!({"features": [1, 2, 3]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let key = GradientKey {
        model: "odd".into(),
        layers: vec![],
        rules: RuleSet::Exact,
        input_grad: true,
    };
    let err = s
        .state
        .executor
        .submit(Gradients {
            key,
            input: Tensor::f32(vec![1, 3], vec![0.0; 3]),
            weights: Tensor::f32(vec![1, 3], vec![1.0; 3]),
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("Sin"), "{err}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backward_sessions_beyond_max_model_memory_are_dropped_and_rebuilt() {
    let mut config = test_config(&root().join("models"));
    config.max_model_memory = 1; // keep only the session last built
    let s = start(config).await;
    let input = Tensor::f32(vec![2, 1, 28, 28], Rng::new(3).vec(2 * 28 * 28, 0.0, 1.0));
    let weights = Tensor::f32(vec![2, 10], Rng::new(4).vec(20, -1.0, 1.0));
    let run = |layers: &'static [&'static str]| Gradients {
        key: fashion_key(layers),
        input: input.clone(),
        weights: weights.clone(),
    };
    let first = s.state.executor.submit(run(&[])).await.unwrap();
    s.state.executor.submit(run(&["relu2"])).await.unwrap();
    let again = s.state.executor.submit(run(&[])).await.unwrap();
    assert_eq!(
        s.state.gradients.built_count(),
        3,
        "the first graph was dropped and built again"
    );
    assert_eq!(first.input_grad.as_f32(), again.input_grad.as_f32());
    s.stop().await.unwrap();
}

/// A closure run on a worker's runtime.
struct OnWorker<F>(F);

impl<F, T> Task for OnWorker<F>
where
    F: FnOnce(&mut WorkerRuntime) -> Result<T, RuntimeError> + Send + 'static,
    T: Send + 'static,
{
    type Output = T;
    fn run(self, rt: &mut WorkerRuntime, _: &JobContext) -> Result<T, RuntimeError> {
        (self.0)(rt)
    }
}

/// What [`the_runtime_cuts_a_callers_rows_into_passes_and_checks_before_each`] saw.
struct Cuts {
    backward: Vec<usize>,
    forward: Vec<usize>,
    pairs: Vec<usize>,
    stopped_after: usize,
    stopped: bool,
    runs_when_stopped: u64,
    cut: GradientPass,
    uncut: GradientPass,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_cuts_a_callers_rows_into_passes_and_checks_before_each() {
    let mut config = test_config(&root().join("models"));
    config.workers = 1;
    let s = start(config).await;
    let rows = 7;
    let input = Tensor::f32(vec![rows, 1, 28, 28], Rng::new(3).vec(rows * 28 * 28, 0.0, 1.0));
    let weights = Tensor::f32(vec![rows, 10], Rng::new(4).vec(rows * 10, -1.0, 1.0));
    let runs = s.state.metrics.passes.runs.clone();
    let seen = s
        .state
        .executor
        .submit(OnWorker(move |rt: &mut WorkerRuntime| {
            let model = rt.model("fashion-cnn")?;
            let mut backward = Vec::new();
            let mut record = |n: usize| {
                backward.push(n);
                Ok(())
            };
            let sizing = Sizing {
                most: 3,
                before: Some(&mut record),
            };
            let cut = rt.gradients(&model, &[], RuleSet::Exact, &input, &weights, sizing)?;
            let uncut = rt.gradients(&model, &[], RuleSet::Exact, &input, &weights, Sizing::budget())?;
            let mut forward = Vec::new();
            let mut record = |n: usize| {
                forward.push(n);
                Ok(())
            };
            let sizing = Sizing {
                most: 2,
                before: Some(&mut record),
            };
            rt.run_sized(&model, &input, sizing)?;
            // DeepLIFT's rows pair up by halves of their pass: never cut, whatever `most` says.
            let mut pairs = Vec::new();
            let mut record = |n: usize| {
                pairs.push(n);
                Ok(())
            };
            let sizing = Sizing {
                most: 1,
                before: Some(&mut record),
            };
            let two = input.slice_rows(0, 2);
            rt.gradients(&model, &[], RuleSet::Rescale, &two, &weights.slice_rows(0, 2), sizing)?;
            // A check that fails (the job's deadline passed) stops the passes before the next one.
            let mut calls = 0;
            let mut check = |_: usize| {
                calls += 1;
                if calls > 1 {
                    Err(RuntimeError::Cancelled)
                } else {
                    Ok(())
                }
            };
            let sizing = Sizing {
                most: 2,
                before: Some(&mut check),
            };
            let before = runs.get();
            let stopped = matches!(rt.run_sized(&model, &input, sizing), Err(RuntimeError::Cancelled));
            let runs_when_stopped = runs.get() - before;
            Ok(Cuts {
                backward,
                forward,
                pairs,
                stopped_after: calls,
                stopped,
                runs_when_stopped,
                cut,
                uncut,
            })
        }))
        .await
        .unwrap();
    assert_eq!(seen.backward, [3, 3, 1], "at most `most` rows a pass");
    assert_eq!(seen.forward, [2, 2, 2, 1]);
    assert_eq!(seen.pairs, [2], "DeepLIFT's pair in one pass");
    assert!(seen.stopped, "the failed check's error is the answer");
    assert_eq!(seen.stopped_after, 2, "checked before each pass");
    assert_eq!(seen.runs_when_stopped, 1, "no pass ran after the failed check");
    // The passes' rows joined back in order.
    assert_eq!(seen.cut.input_grad.shape, vec![rows, 1, 28, 28]);
    assert_eq!(seen.cut.scores.shape, vec![rows, 10]);
    let close = |a: &[f32], b: &[f32]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 + 1e-4 * y.abs())
    };
    assert!(close(
        seen.cut.input_grad.as_f32().unwrap(),
        seen.uncut.input_grad.as_f32().unwrap()
    ));
    assert!(close(
        seen.cut.scores.as_f32().unwrap(),
        seen.uncut.scores.as_f32().unwrap()
    ));
    s.stop().await.unwrap();
}
