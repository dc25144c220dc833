//! Text benchmark: each text method run through the service's executor on one review, next to the
//! same model rows run raw through ONNX Runtime sessions of the cut graph (forward rows through the
//! forward model, the first alone and the rest in batches of max_batch; gradient rows through the
//! backward model). On models/minilm-sentiment when `make minilm` has made it, else on a seeded
//! BERT-mini-sized text transformer from the zoo (4 layers, hidden 256, 4 heads).
//! Run with `cargo bench --bench text`.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use explaind::explain::{Methods, PlanContext};
use explaind::jobs::ExplainTask;
use explaind::onnx::autodiff::{build_backward, prepare_forward, GradientSpec, RuleTable};
use explaind::onnx::embedding::EMBEDDINGS;
use explaind::runtime::graph_runner::OrtRunner;
use explaind::runtime::sessions::create_session_from_bytes;
use explaind::runtime::shapes::probe_shapes;
use prost::Message;

const REVIEW: &str = "The plot was predictable and the first hour drags, but the acting is wonderful and the \
                      music carries every scene.";

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("bench-text");
    let _ = std::fs::remove_dir_all(&dir);
    let minilm = root.join("models/minilm-sentiment");
    let name = if minilm.join("model.onnx").exists() {
        common::copy_bundled(
            &root,
            &dir,
            "minilm-sentiment",
            &["model.onnx", "model.toml", "tokenizer.json"],
        );
        "minilm-sentiment"
    } else {
        let folder = dir.join("text-transformer");
        std::fs::create_dir_all(&folder).unwrap();
        let vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .map(|s| s.to_string())
            .chain(
                REVIEW
                    .to_lowercase()
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .map(String::from),
            )
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut ordered: Vec<&str> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].to_vec();
        ordered.extend(vocab.iter().map(String::as_str).filter(|w| !w.starts_with('[')));
        let model = explaind::onnx::zoo::text_transformer(ordered.len() as i64, 128, (256, 4, 4), 2);
        std::fs::write(folder.join("model.onnx"), model.encode_to_vec()).unwrap();
        std::fs::write(
            folder.join("tokenizer.json"),
            serde_json::to_vec(&explaind::onnx::zoo::wordpiece_tokenizer(&ordered)).unwrap(),
        )
        .unwrap();
        std::fs::write(
            folder.join("model.toml"),
            "task = \"text-classification\"\nlabels = [\"negative\", \"positive\"]\n[text]\ntokenizer = \"tokenizer.json\"\n",
        )
        .unwrap();
        "text-transformer"
    };
    let mut config = common::config(&dir);
    config.max_batch = 16;
    let max_batch = config.max_batch;
    let (rt, service) = common::serve(config);
    let env = explaind::runtime::library::init(None).unwrap();
    let runner = OrtRunner::new(env);
    let limits = common::limits(max_batch);
    let methods = Methods::standard();
    let model = service.state.registry.get(name).unwrap().clone();
    let text = model.text.as_ref().unwrap();
    let encoded = Arc::new(text.encode(REVIEW, 1 << 16).unwrap());
    let input = text.embed(&encoded.tokens);
    let dims = input.shape.clone();
    let x = input.as_f32().unwrap().to_vec();
    let classes = model.spec.labels.len();
    let decoded = explaind::onnx::proto::decode_model(&model.bytes).unwrap();
    let mut forward = create_session_from_bytes(env, &model.bytes).unwrap();
    let prepared = prepare_forward(&decoded).unwrap();
    let shapes = probe_shapes(&runner, &prepared, EMBEDDINGS, &dims).unwrap();
    let maps = model.gradient_report.get().unwrap().attention_maps.clone();
    println!(
        "text benchmark on `{name}`, one review of {} tokens; {} intra-op threads, max_batch {max_batch}; raw = the \
         same rows through bare ONNX Runtime sessions of the cut graph",
        encoded.tokens.len(),
        explaind::runtime::library::Threads::default().resolved()
    );
    println!(
        "{:<24} {:>6} {:>11} {:>11} {:>7}",
        "method", "rows", "method ms", "raw ms", "ratio"
    );
    let mut backward = std::collections::HashMap::new();
    for (method, params) in [
        ("saliency", serde_json::json!({})),
        ("gradient-x-input", serde_json::json!({})),
        ("integrated-gradients", serde_json::json!({"steps": 50})),
        ("smoothgrad", serde_json::json!({})),
        ("transformer-relevance", serde_json::json!({})),
        ("attention-rollout", serde_json::json!({})),
        ("occlusion", serde_json::json!({})),
        ("lime", serde_json::json!({"samples": 1000})),
        ("kernel-shap", serde_json::json!({"samples": 1000})),
    ] {
        let cx = PlanContext {
            model: &model,
            limits,
            targets: 1,
            reference: None,
        };
        let planned = methods.get(method).unwrap().plan(params, &cx).unwrap();
        let mut job = common::job(&model, input.clone(), &planned, limits);
        job.text = Some(encoded.clone());
        let rounds = 3;
        let mut result = None;
        let method_time = common::median_of_rounds(rounds, || {
            result = Some(
                rt.block_on(service.state.executor.submit(ExplainTask::new(job.clone())))
                    .unwrap(),
            );
        });
        let result = result.unwrap();
        let layers: Vec<String> = if method == "transformer-relevance" {
            maps.clone()
        } else {
            vec![]
        };
        let session = backward.entry(layers.clone()).or_insert_with(|| {
            let spec = GradientSpec {
                input: EMBEDDINGS.into(),
                output: model.spec.output.clone(),
                layers: layers.clone(),
                input_grad: true,
            };
            let bw = build_backward(&prepared, &spec, &shapes, &RuleTable::exact(), Some(&runner)).unwrap();
            create_session_from_bytes(env, &bw.model.encode_to_vec()).unwrap()
        });
        let raw_time = common::median_of_rounds(rounds, || {
            common::run_raw_rows(
                &mut forward,
                &mut [&mut *session],
                EMBEDDINGS,
                (&dims, &x),
                classes,
                result.rows - result.gradient_rows,
                result.gradient_rows,
                max_batch,
            );
        });
        let (m, r) = (method_time, raw_time);
        println!(
            "{method:<24} {:>6} {:>11.2} {:>11.2} {:>7.2}",
            result.rows,
            m.as_secs_f64() * 1e3,
            r.as_secs_f64() * 1e3,
            m.as_secs_f64() / r.as_secs_f64()
        );
    }
    rt.block_on(service.stop()).unwrap();
}
