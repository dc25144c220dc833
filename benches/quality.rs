//! Passes to quality: for each sampling method, the model rows explaind needs for a map whose
//! Pearson correlation with a long reference run of the same method (another seed) reaches 0.95
//! and 0.99 (the mean over three seeds), next to the same method drawn as the libraries draw it:
//! SmoothGrad with independent noise (Captum's NoiseTunnel), RISE with independent masks and the
//! paper's estimator (the authors' code), Integrated Gradients by Gauss-Legendre at a fixed step
//! count (Captum's default rule). The rows are those the answer's `details.cost` counts. Also the
//! points Integrated Gradients needs for its convergence delta to be within 1% of f(x) - f(x').
//! Models: the bundled Fashion-MNIST CNN and a ResNet-18 (blocks 2-2-2-2, widths 64-512, seeded
//! weights) at 64x64, so that the reference runs fit a few minutes on two cores; pass counts do
//! not depend on the input's size. Run with `cargo bench --bench quality [WORDS]`: only the
//! models and methods named (e.g. `rise`, `resnet`), all without; `sampler=WORD` keeps only the
//! explaind samplers whose label contains WORD (e.g. `sampler=sobol`; the libraries' row always
//! runs); `0.95` stops each sampler at the budget reaching 0.95 (its 0.99 column then reads
//! "-"; for long runs); `models` writes the models under target/bench-quality and stops
//! (scripts/quality_reference.py reads the ResNet from there).

mod common;

use std::path::PathBuf;

use serde_json::{json, Value};

/// Seeds whose correlations are averaged at each budget.
const SEEDS: [u64; 3] = [11, 12, 13];

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("bench-quality");
    let _ = std::fs::remove_dir_all(&dir);
    common::copy_bundled(&root, &dir, "fashion-cnn", &["model.onnx", "model.toml"]);
    common::write_resnet(&dir, "resnet-18-64", &[2, 2, 2, 2], &[64, 128, 256, 512], 64, 1000);
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let only_95 = args.iter().any(|a| a == "0.95");
    let (samplers_named, words): (Vec<String>, Vec<String>) = args
        .into_iter()
        .filter(|a| a != "0.95")
        .partition(|a| a.starts_with("sampler="));
    let sampler_wanted = |label: &str| {
        label.starts_with("libraries")
            || samplers_named.is_empty()
            || samplers_named
                .iter()
                .any(|w| label.to_lowercase().contains(&w["sampler=".len()..].to_lowercase()))
    };
    if words.iter().any(|w| w == "models") {
        println!("models written under {}", dir.display());
        return;
    }
    let wanted = |model: &str, method: &str| {
        let (model_named, method_named) = (
            words.iter().any(|w| model.contains(w.as_str())),
            words.iter().any(|w| method.contains(w.as_str())),
        );
        let names_models = words
            .iter()
            .any(|w| ["fashion", "resnet"].iter().any(|m| m.contains(w.as_str())));
        let names_methods = words.len() > usize::from(names_models);
        (!names_models || model_named) && (!names_methods || method_named)
    };
    let mut config = common::config(&dir);
    config.max_samples = 8192;
    // The reference runs take minutes on two cores without optimisation.
    config.job_deadline_ms = 900_000;
    config.request_timeout_ms = 960_000;
    let (rt, service) = common::serve(config);
    let http = reqwest::Client::new();
    let base = format!("http://{}", service.addr);
    let explain = |model: &str, method: &str, body: Value| -> Value {
        let url = format!("{base}/v1/models/{model}/explain/{method}");
        rt.block_on(async {
            let r = http.post(&url).json(&body).send().await.unwrap();
            let status = r.status();
            let v: Value = r.json().await.unwrap();
            assert!(status.is_success(), "{method}: {v}");
            v
        })
    };
    let fashion = {
        use base64::Engine;
        let fixture = root.join("tests/fixtures/fashion/test_00.png");
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(fixture).unwrap())
    };
    println!("passes to quality: model rows (forward + backward, as details.cost counts them) for a map correlation");
    println!(
        "with a long reference run of the same method; 'libraries' = the method sampled as Captum / RISE's code do"
    );
    println!(
        "{:<13} {:<21} {:<34} {:>9} {:>9}",
        "model", "method", "sampler", "rows@0.95", "rows@0.99"
    );
    for (model, image) in [("fashion-cnn", fashion), ("resnet-18-64", common::png(64))] {
        let run = |method: &str, seed: u64, params: Value| {
            explain(model, method, json!({"image": image, "seed": seed, "params": params}))
        };
        let studies: [Study; 2] = [
            (
                "smoothgrad",
                json!({"samples": 2048}),
                vec![4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024],
                vec![
                    ("explaind (antithetic pairs)", |n| json!({"samples": n})),
                    (
                        "explaind (Sobol, pairs)",
                        |n| json!({"samples": n, "sequence": "sobol"}),
                    ),
                    (
                        "explaind (Sobol)",
                        |n| json!({"samples": n, "sequence": "sobol", "antithetic": false}),
                    ),
                    (
                        "explaind (orthogonal, pairs)",
                        |n| json!({"samples": n, "sequence": "orthogonal"}),
                    ),
                    (
                        "libraries (iid noise, Captum)",
                        |n| json!({"samples": n, "antithetic": false}),
                    ),
                ],
            ),
            (
                "rise",
                json!({"masks": 8192}),
                vec![64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096],
                vec![
                    ("explaind (Sobol, centered)", |n| json!({"masks": n})),
                    (
                        "explaind (random pairs, centered)",
                        |n| json!({"masks": n, "sequence": "random"}),
                    ),
                    (
                        "libraries (iid, paper estimator)",
                        |n| json!({"masks": n, "antithetic": false, "estimator": "paper"}),
                    ),
                ],
            ),
        ];
        for (method, reference, grid, samplers) in studies {
            if !wanted(model, method) {
                continue;
            }
            let reference = values(&run(method, 1, reference));
            let mut found = Vec::new();
            for (label, params) in samplers.into_iter().filter(|(label, _)| sampler_wanted(label)) {
                let reached = reach(&grid, only_95, |n| {
                    let answers: Vec<Value> = SEEDS.iter().map(|s| run(method, *s, params(n))).collect();
                    let corr =
                        answers.iter().map(|a| pearson(&values(a), &reference)).sum::<f64>() / SEEDS.len() as f64;
                    (corr, rows(&answers[0]))
                });
                println!(
                    "{model:<13} {method:<21} {label:<34} {:>9} {:>9}",
                    show(reached.0),
                    show(reached.1)
                );
                found.push(reached);
            }
            print_ratio(model, method, &found);
        }
        // KernelSHAP and LIME (explaind's samplers; scripts/quality_reference.py measures shap's
        // and lime's on the same CNN).
        if model == "fashion-cnn" {
            for (method, label) in [("kernel-shap", "explaind (paired coalitions)"), ("lime", "explaind")] {
                if !wanted(model, method) {
                    continue;
                }
                let reference = values(&run(method, 1, json!({"samples": 8192})));
                let grid = [64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096];
                let reached = reach(&grid, only_95, |n| {
                    let answers: Vec<Value> = SEEDS.iter().map(|s| run(method, *s, json!({"samples": n}))).collect();
                    let corr =
                        answers.iter().map(|a| pearson(&values(a), &reference)).sum::<f64>() / SEEDS.len() as f64;
                    (corr, rows(&answers[0]))
                });
                println!(
                    "{model:<13} {method:<21} {label:<34} {:>9} {:>9}",
                    show(reached.0),
                    show(reached.1)
                );
            }
        }
        // Integrated Gradients: one reference of 1000 Gauss-Legendre points; the trapezoid levels
        // explaind's `delta_tolerance` refines through, against Gauss-Legendre at fixed steps.
        if !wanted(model, "integrated-gradients") {
            continue;
        }
        let ig = |params: Value| explain(model, "integrated-gradients", json!({"image": image, "params": params}));
        let reference = values(&ig(json!({"steps": 1000})));
        let levels = vec![5, 9, 17, 33, 65, 129, 257];
        let mut found = Vec::new();
        for (label, grid, rule) in [
            ("explaind (nested trapezoid)", levels, "riemann_trapezoid"),
            (
                "libraries (Gauss-Legendre, Captum)",
                vec![4, 8, 16, 25, 32, 50, 64, 128, 256],
                "gauss_legendre",
            ),
        ] {
            let reached = reach(&grid, only_95, |n| {
                let a = ig(json!({"steps": n, "integration": rule}));
                (pearson(&values(&a), &reference), rows(&a))
            });
            println!(
                "{model:<13} {:<21} {label:<34} {:>9} {:>9}",
                "integrated-gradients",
                show(reached.0),
                show(reached.1)
            );
            found.push(reached);
        }
        print_ratio(model, "integrated-gradients", &found);
        // The points for a convergence delta within 1%: explaind's refinement, and the fewest
        // Gauss-Legendre points of Captum's that get there.
        let adaptive = ig(json!({"delta_tolerance": 0.01, "steps": 257}));
        let d = &adaptive["details"];
        let gap =
            adaptive["convergence_delta"].as_f64().unwrap().abs() / d["relative_delta"].as_f64().unwrap().max(1e-300);
        let gl = [4usize, 8, 16, 25, 32, 50, 64, 128, 256].into_iter().find(|n| {
            let a = ig(json!({"steps": n}));
            a["convergence_delta"].as_f64().unwrap().abs() <= 0.01 * gap
        });
        println!(
            "{model:<13} IG delta within 1%: explaind {} points ({}, relative delta {:.4}); Gauss-Legendre {} points",
            d["steps"],
            d["stopped"].as_str().unwrap_or(""),
            d["relative_delta"].as_f64().unwrap_or(f64::NAN),
            gl.map_or("> 256".to_string(), |n| n.to_string())
        );
    }
}

/// A method, its reference run's parameters, the budgets tried, and its samplers (a label and
/// the parameters for a budget).
type Study = (&'static str, Value, Vec<usize>, Vec<(&'static str, fn(usize) -> Value)>);

/// The first budget of `grid` whose correlation reaches 0.95, and 0.99: their rows.
fn reach(grid: &[usize], only_95: bool, mut at: impl FnMut(usize) -> (f64, u64)) -> (Option<u64>, Option<u64>) {
    let (mut r95, mut r99) = (None, None);
    for &n in grid {
        let (corr, rows) = at(n);
        if corr >= 0.95 && r95.is_none() {
            r95 = Some(rows);
            if only_95 {
                break;
            }
        }
        if corr >= 0.99 {
            r99 = Some(rows);
            break;
        }
    }
    (r95, r99)
}

fn show(rows: Option<u64>) -> String {
    rows.map_or("-".into(), |r| r.to_string())
}

/// Per explaind sampler (all but the last), the libraries' rows (the last) over its own.
fn print_ratio(model: &str, method: &str, found: &[(Option<u64>, Option<u64>)]) {
    let ratio = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}x", b as f64 / a as f64),
        _ => "-".into(),
    };
    let Some((libraries, ours)) = found.split_last() else {
        return;
    };
    for (i, f) in ours.iter().enumerate() {
        println!(
            "{model:<13} {method:<21} {:<34} {:>9} {:>9}",
            format!("fewer rows (libraries / explaind {})", i + 1),
            ratio(f.0, libraries.0),
            ratio(f.1, libraries.1)
        );
    }
}

/// Model rows an answer ran, as its `details.cost` counts them.
fn rows(answer: &Value) -> u64 {
    let cost = &answer["details"]["cost"];
    cost["forward_rows"].as_u64().unwrap_or(0)
        + cost["backward_rows"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

fn values(answer: &Value) -> Vec<f64> {
    answer["attributions"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        ab += (x - ma) * (y - mb);
        aa += (x - ma) * (x - ma);
        bb += (y - mb) * (y - mb);
    }
    ab / (aa * bb).sqrt().max(f64::MIN_POSITIVE)
}
