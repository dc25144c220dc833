//! Gradient checks: the backward model's input gradient against central finite differences of the
//! forward model, both run by ONNX Runtime. Failures print the seed that replays them.

use explaind::onnx::autodiff::{
    build_backward, prepare_forward, BackwardModel, GradientSpec, RuleTable, WEIGHTS_INPUT,
};
use explaind::onnx::proto::ModelProto;
use explaind::runtime::graph_runner::{run_session, OrtRunner};
use explaind::runtime::shapes::probe_shapes;

use super::Rng;

/// Step, tolerances and sample count of a check.
#[derive(Clone, Copy)]
pub struct Check {
    pub h: f32,
    pub atol: f64,
    pub rtol: f64,
    pub samples: usize,
    pub seed: u64,
    /// Share of sampled points that must lie away from kinks.
    pub min_coverage: f64,
}

impl Default for Check {
    fn default() -> Self {
        Check {
            h: 1e-2,
            atol: 2e-3,
            rtol: 1e-2,
            samples: 48,
            seed: 7,
            min_coverage: 0.75,
        }
    }
}

/// The process's ONNX Runtime runner.
pub fn runner() -> OrtRunner {
    let env = explaind::runtime::library::init(None).expect("ONNX Runtime (run `make test`, which fetches it)");
    OrtRunner::new(env)
}

/// Builds the standard backward model of `model` for `input` -> `output`.
pub fn backward(
    model: &ModelProto,
    input: &str,
    x_dims: &[usize],
    output: &str,
    layers: &[&str],
    table: &RuleTable,
) -> BackwardModel {
    backward_to(model, input, x_dims, output, (layers, true), table)
}

/// [`backward`], its pass going on to the input's gradient only when `input_grad` (else it stops
/// at the layers).
pub fn backward_to(
    model: &ModelProto,
    input: &str,
    x_dims: &[usize],
    output: &str,
    (layers, input_grad): (&[&str], bool),
    table: &RuleTable,
) -> BackwardModel {
    let runner = runner();
    let model = &prepare_forward(model).unwrap_or_else(|e| panic!("prepare failed: {e}"));
    let shapes = probe_shapes(&runner, model, input, x_dims).unwrap_or_else(|e| panic!("probe failed: {e}"));
    let spec = GradientSpec {
        input: input.into(),
        output: output.into(),
        layers: layers.iter().map(|s| s.to_string()).collect(),
        input_grad,
    };
    build_backward(model, &spec, &shapes, table, Some(&runner)).unwrap_or_else(|e| panic!("build failed: {e}"))
}

/// Runs a model and returns the named float output.
pub fn run_output(
    session: &mut ort::session::Session,
    feeds: &[(&str, Vec<usize>, Vec<f32>)],
    name: &str,
) -> (Vec<usize>, Vec<f32>) {
    let outs = run_session(session, feeds, &[]).unwrap_or_else(|e| panic!("run failed: {e}"));
    let o = outs
        .into_iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| panic!("no output `{name}`"));
    (
        o.shape,
        o.values.unwrap_or_else(|| panic!("output `{name}` is not float")),
    )
}

/// Checks d sum(output * w) / d input at `x` against central differences; returns the max error seen.
pub fn check_gradient(
    label: &str,
    model: &ModelProto,
    input: &str,
    x_dims: &[usize],
    x: &[f32],
    output: &str,
    check: Check,
) -> f64 {
    let runner = runner();
    let bw = backward(model, input, x_dims, output, &[], &RuleTable::exact());
    let mut forward = runner
        .session(model)
        .unwrap_or_else(|e| panic!("{label}: forward session: {e}"));
    let mut backward = runner.session(&bw.model).unwrap_or_else(|e| {
        panic!(
            "{label}: backward session: {e}\n{:#?}",
            bw.model.graph.as_ref().map(|g| &g.node)
        )
    });
    let (y_shape, y) = run_output(&mut forward, &[(input, x_dims.to_vec(), x.to_vec())], output);
    let mut rng = Rng::new(check.seed);
    let w = rng.vec(y.len(), -1.0, 1.0);
    let feeds = [
        (input, x_dims.to_vec(), x.to_vec()),
        (WEIGHTS_INPUT, y_shape.clone(), w.clone()),
    ];
    let (_, grad) = run_output(&mut backward, &feeds, &bw.input_grad);
    let (_, y_again) = run_output(&mut backward, &feeds, output);
    for (a, b) in y.iter().zip(&y_again) {
        assert!(
            (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
            "{label}: the backward model changed the forward output"
        );
    }
    assert_eq!(
        grad.len(),
        x.len(),
        "{label}: gradient has {} values for an input of {}",
        grad.len(),
        x.len()
    );
    let target = |session: &mut ort::session::Session, xs: Vec<f32>| -> f64 {
        let (_, y) = run_output(session, &[(input, x_dims.to_vec(), xs)], output);
        y.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let indices: Vec<usize> = if x.len() <= check.samples {
        (0..x.len()).collect()
    } else {
        let mut all: Vec<usize> = (0..x.len()).collect();
        for i in (1..all.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            all.swap(i, j);
        }
        all.truncate(check.samples);
        all
    };
    let mut worst = 0f64;
    let mut checked = 0;
    let total = indices.len();
    let base = target(&mut forward, x.to_vec());
    // float32 rounding of the target, divided by the step: the noise floor of a difference quotient.
    let (_, y0) = run_output(&mut forward, &[(input, x_dims.to_vec(), x.to_vec())], output);
    let magnitude: f64 = y0.iter().zip(&w).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
    let noise = 2.0 * f32::EPSILON as f64 * magnitude / check.h as f64;
    let mut at = |i: usize, delta: f32| {
        let mut moved = x.to_vec();
        moved[i] += delta;
        target(&mut forward, moved)
    };
    for i in indices {
        // A kink (ReLU, max, clip) within the step makes the difference quotient meaningless there:
        // skip points where the one-sided slopes, or central differences at two steps, disagree.
        let (plus, minus) = (at(i, check.h), at(i, -check.h));
        let (half_plus, half_minus) = (at(i, check.h / 2.0), at(i, -check.h / 2.0));
        let (quarter_plus, quarter_minus) = (at(i, check.h / 4.0), at(i, -check.h / 4.0));
        let h = check.h as f64;
        let (right, left) = ((plus - base) / h, (base - minus) / h);
        let coarse = (plus - minus) / (2.0 * h);
        let numeric = (half_plus - half_minus) / h;
        let fine = (quarter_plus - quarter_minus) / (h / 2.0);
        // Central differences at three steps must agree (a kink between steps h/4 and h shows),
        // and so must the one-sided slopes (a kink right at x shows).
        let tolerance = check.atol + noise + check.rtol * numeric.abs();
        let kink = (right - left).abs() > 0.1 * (right.abs() + left.abs()) + 10.0 * (check.atol + noise)
            || (coarse - numeric).abs() > tolerance
            || (numeric - fine).abs() > tolerance + noise;
        if kink {
            continue;
        }
        checked += 1;
        let analytic = grad[i] as f64;
        let err = (analytic - numeric).abs();
        worst = worst.max(err);
        assert!(
            err <= check.atol + noise + check.rtol * numeric.abs(),
            "{label}: d/dx[{i}] analytic {analytic:.6} vs central difference {numeric:.6} (seed {}, h {})",
            check.seed,
            check.h / 2.0
        );
    }
    assert!(
        checked as f64 >= check.min_coverage * total as f64 && checked > 0,
        "{label}: only {checked} of {total} points were away from kinks (seed {})",
        check.seed
    );
    worst
}
